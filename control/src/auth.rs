//! Node credentials: which node a caller of the control plane is.
//!
//! A proxy sends its credential as `authorization: Bearer <token>`. Two
//! kinds ([`NodeAuth`]):
//! - static tokens: each node's proxy holds a secret token; the control
//!   plane holds only their SHA-256 digests, in a YAML map
//!   `node: <hex digest>` (the lab; any cluster without TokenReview);
//! - in Kubernetes, a projected ServiceAccount token checked with a
//!   TokenReview ([`crate::token_review`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ring::rand::SecureRandom;

/// How the control plane tells which node a caller is.
#[derive(Debug)]
pub enum NodeAuth {
    /// Static tokens, by digest.
    Tokens(NodeCredentials),
    /// Projected ServiceAccount tokens, reviewed by the API server.
    Kubernetes(Box<crate::token_review::TokenReviewer>),
}

impl NodeAuth {
    /// The node `token` authenticates, or why it does not.
    pub async fn node_of(&self, token: &str) -> Result<String, String> {
        match self {
            NodeAuth::Tokens(c) => c
                .node_of(token)
                .map(str::to_owned)
                .ok_or_else(|| "unknown node credential".to_owned()),
            NodeAuth::Kubernetes(r) => r.node_of(token).await.map_err(|e| e.to_string()),
        }
    }
}

/// Digests of node tokens, and their nodes.
#[derive(Debug, Clone, Default)]
pub struct NodeCredentials {
    by_digest: HashMap<String, String>,
}

/// Why a credentials file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CredentialsError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl NodeCredentials {
    /// Reads a YAML map of node names to token digests (64 hex digits).
    pub fn load(path: &Path) -> Result<NodeCredentials, CredentialsError> {
        let err = |message: String| CredentialsError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let map: BTreeMap<String, String> = serde_yaml::from_str(&text)
            .map_err(|e| err(format!("not a map of node: digest: {e}")))?;
        let mut by_digest = HashMap::new();
        for (node, digest) in map {
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(format!(
                    "{node}: `{digest}` is not a SHA-256 digest (64 hex digits)"
                )));
            }
            if let Some(other) = by_digest.insert(digest.to_ascii_lowercase(), node.clone()) {
                return Err(err(format!("{node} and {other} have the same token")));
            }
        }
        Ok(NodeCredentials { by_digest })
    }

    /// Credentials from (node, token) pairs.
    pub fn from_tokens<'a>(tokens: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        NodeCredentials {
            by_digest: tokens
                .into_iter()
                .map(|(node, token)| (digest(token), node.to_owned()))
                .collect(),
        }
    }

    /// The node whose token this is.
    pub fn node_of(&self, token: &str) -> Option<&str> {
        self.by_digest.get(&digest(token)).map(String::as_str)
    }
}

/// The hex SHA-256 digest of a token, as credentials files hold it.
pub fn digest(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// A new random token (32 bytes, hex).
pub fn new_token() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_node_and_a_bad_file_is_named() {
        let t1 = new_token().unwrap();
        let dir = std::env::temp_dir().join(format!("weft-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nodes.yaml");
        std::fs::write(
            &path,
            format!("node-1: {}\nnode-2: {}\n", digest(&t1), digest("x")),
        )
        .unwrap();
        let creds = NodeCredentials::load(&path).unwrap();
        assert_eq!(creds.node_of(&t1), Some("node-1"));
        assert_eq!(creds.node_of("x"), Some("node-2"));
        assert_eq!(creds.node_of("guess"), None);
        std::fs::write(&path, "node-1: abc\n").unwrap();
        let e = NodeCredentials::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("nodes.yaml: node-1: `abc` is not a SHA-256 digest"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
