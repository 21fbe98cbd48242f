//! Node authentication in Kubernetes: each node proxy presents a projected
//! ServiceAccount token (bound to its pod, with weft's audience); the
//! control plane asks the API server about it with a TokenReview.
//!
//! A token is accepted when the API server says it is authenticated for
//! the audience, it belongs to the node proxies' service account, and it is
//! bound to a pod on a node: the node is the `authentication.kubernetes.io/
//! node-name` extra that pod-bound tokens carry (Kubernetes 1.30 and
//! later). Answers are cached briefly so that a reconnecting fleet of proxies
//! does not turn into a burst of reviews.
//!
//! The control plane's service account needs `create` on `tokenreviews`
//! (`authentication.k8s.io`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use crate::auth::digest;

/// The extra that a pod-bound token carries its node's name in.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// How long an answer is reused.
const CACHE_FOR: Duration = Duration::from_secs(60);
/// Positive answers kept at most (one per node proxy is the norm).
const CACHE_MAX: usize = 10_000;
/// Negative answers kept at most: a flood of bogus tokens fills only this,
/// never the positive cache.
const NEGATIVE_MAX: usize = 1_000;

/// Why a token does not authenticate a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server could not be asked.
    #[error("TokenReview request failed: {0}")]
    Api(String),
    /// The API server did not authenticate it.
    #[error("the API server did not authenticate the token{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotAuthenticated(Option<String>),
    /// Authenticated, but not for weft's audience.
    #[error("the token is not for the audience `{0}`")]
    Audience(String),
    /// Someone else's token.
    #[error("the token belongs to `{got}`, not to the node proxies' service account `{want}`")]
    WrongAccount {
        /// Whose it is.
        got: String,
        /// Whose it must be.
        want: String,
    },
    /// Not bound to a pod on a node.
    #[error(
        "the token names no node (`{NODE_NAME_EXTRA}`): give the proxy a projected, pod-bound service account token (Kubernetes 1.30+)"
    )]
    NoNode,
}

/// An answer (by token digest) and when it was given.
type Cached = (Result<String, ReviewError>, Instant);

/// Asks the API server who a token belongs to.
#[derive(Debug)]
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    username: String,
    cache: Mutex<HashMap<String, Cached>>,
    refused: Mutex<HashMap<String, Cached>>,
}

impl TokenReviewer {
    /// Reviews with `client`; tokens must carry `audience` and belong to the
    /// service account `namespace/name` of the node proxies.
    pub fn new(client: kube::Client, audience: &str, proxy_account: (&str, &str)) -> Self {
        TokenReviewer {
            api: Api::all(client),
            audience: audience.to_owned(),
            username: format!(
                "system:serviceaccount:{}:{}",
                proxy_account.0, proxy_account.1
            ),
            cache: Mutex::default(),
            refused: Mutex::default(),
        }
    }

    /// The node a token authenticates.
    pub async fn node_of(&self, token: &str) -> Result<String, ReviewError> {
        let key = digest(token);
        let now = Instant::now();
        for cache in [&self.cache, &self.refused] {
            if let Some((answer, at)) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
                && now.duration_since(*at) < CACHE_FOR
            {
                return answer.clone();
            }
        }
        let answer = self.review(token).await;
        let (cache, max) = match &answer {
            // A failure to reach the API server is not remembered.
            Err(ReviewError::Api(_)) => return answer,
            Ok(_) => (&self.cache, CACHE_MAX),
            Err(_) => (&self.refused, NEGATIVE_MAX),
        };
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= max {
            cache.retain(|_, (_, at)| now.duration_since(*at) < CACHE_FOR);
        }
        if cache.len() < max {
            cache.insert(key, (answer.clone(), now));
        }
        answer
    }

    async fn review(&self, token: &str) -> Result<String, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Api(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::NotAuthenticated(
                status.error.filter(|e| !e.is_empty()),
            ));
        }
        // No audiences in the answer means the API server's own audience,
        // not ours.
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience))
        {
            return Err(ReviewError::Audience(self.audience.clone()));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if username != self.username {
            return Err(ReviewError::WrongAccount {
                got: username,
                want: self.username.clone(),
            });
        }
        user.extra
            .and_then(|mut e| e.remove(NODE_NAME_EXTRA))
            .and_then(|names| names.into_iter().next())
            .filter(|n| !n.is_empty())
            .ok_or(ReviewError::NoNode)
    }
}
