//! Kubernetes mode: one watcher (kube-runtime) per kind weft reads feeds one
//! [`Store`]; once every kind has been listed, each change publishes the
//! world of the valid objects to the [`ControlPlane`], and the routes get
//! their Gateway API status (`Accepted`, `ResolvedRefs` per parent service).
//!
//! A relist (the first list, or after the API server answered a watch with
//! 410 Gone) replaces every object of its kind, so objects deleted while the
//! watch was away disappear. A kind the API server does not serve (Gateway
//! API CRDs not installed) counts as listed and empty, and is logged.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::crd::AuthorizationPolicy;
use crate::error::Problem;
use crate::index::{Store, is_unresolved_backend};
use crate::server::ControlPlane;
use crate::source::{Document, Object, ObjectKey};

/// The `controllerName` weft writes in route parent statuses.
pub const CONTROLLER_NAME: &str = "weft.io/mesh";

/// The kinds weft watches; the world is published once each was listed.
pub const KINDS: [&str; 7] = [
    "Namespace",
    "Pod",
    "Service",
    "EndpointSlice",
    "HTTPRoute",
    "GRPCRoute",
    "AuthorizationPolicy",
];

/// How long a failed status write waits before the next try.
const STATUS_RETRY: Duration = Duration::from_secs(5);

/// What a watcher reports.
#[derive(Debug)]
enum Change {
    /// Every object of a kind (a list or relist).
    Listed(&'static str, Vec<Document>),
    /// An object was added or changed.
    Applied(Document),
    /// An object was deleted.
    Deleted(ObjectKey),
}

/// Follows the Kubernetes API with `client` and publishes into `cp` until
/// the returned future is dropped (the watchers end with it).
pub async fn run(client: Client, cp: Arc<ControlPlane>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let mut watchers = JoinSet::new();
    macro_rules! watch {
        ($($t:ty => $kind:literal, $variant:ident;)*) => {$(
            watchers.spawn(follow(
                Api::<$t>::all(client.clone()),
                $kind,
                |o| Object::$variant(Box::new(o)),
                tx.clone(),
            ));
        )*};
    }
    watch! {
        Namespace => "Namespace", Namespace;
        Pod => "Pod", Pod;
        Service => "Service", Service;
        EndpointSlice => "EndpointSlice", EndpointSlice;
        HttpRoute => "HTTPRoute", HttpRoute;
        GrpcRoute => "GRPCRoute", GrpcRoute;
        AuthorizationPolicy => "AuthorizationPolicy", AuthorizationPolicy;
    }
    drop(tx);

    let mut store = Store::default();
    let mut listed: BTreeSet<&'static str> = BTreeSet::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut status = Status {
        client,
        retry: false,
    };
    loop {
        let first = if status.retry {
            match tokio::time::timeout(STATUS_RETRY, rx.recv()).await {
                Ok(c) => c,
                // Nothing changed, but some status writes failed: again.
                Err(_) => {
                    let (_, problems) = store.world_tolerant();
                    status.reconcile(&mut store, &problems).await;
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(first) = first else {
            tracing::error!("every Kubernetes watcher ended");
            return;
        };
        // Take every change already queued: one world for a burst.
        let mut next = Some(first);
        while let Some(change) = next {
            match change {
                Change::Listed(kind, docs) => {
                    tracing::debug!(kind, objects = docs.len(), "listed");
                    store.replace_kind(kind, docs);
                    listed.insert(kind);
                }
                Change::Applied(doc) => store.upsert(doc),
                Change::Deleted(key) => {
                    store.remove(&key);
                }
            }
            next = rx.try_recv().ok();
        }
        if listed.len() < KINDS.len() {
            continue;
        }
        let (world, problems) = store.world_tolerant();
        let now: BTreeSet<String> = problems.iter().map(ToString::to_string).collect();
        for p in now.difference(&reported) {
            tracing::warn!(problem = %p, "left out of the mesh's config");
        }
        reported = now;
        let (workloads, services, routes) = (
            world.workloads.len(),
            world.services.len(),
            world.routes.len(),
        );
        let version = cp.publish(world);
        tracing::debug!(version, workloads, services, routes, "published");
        status.reconcile(&mut store, &problems).await;
    }
}

/// Watches one kind, sending its changes until the receiver is gone.
async fn follow<K>(api: Api<K>, kind: &'static str, wrap: fn(K) -> Object, tx: mpsc::Sender<Change>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let doc = |mut o: K| {
        // Field managers are the bulk of most objects and weft never reads
        // them.
        o.meta_mut().managed_fields = None;
        document(wrap(o))
    };
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listing = Vec::new();
    let mut listed = false;
    while let Some(event) = events.next().await {
        let change = match event {
            Ok(watcher::Event::Init) => {
                listing.clear();
                None
            }
            Ok(watcher::Event::InitApply(o)) => {
                listing.push(doc(o));
                None
            }
            Ok(watcher::Event::InitDone) => {
                listed = true;
                Some(Change::Listed(kind, std::mem::take(&mut listing)))
            }
            Ok(watcher::Event::Apply(o)) => Some(Change::Applied(doc(o))),
            Ok(watcher::Event::Delete(o)) => Some(Change::Deleted(doc(o).key())),
            Err(e) => {
                let not_served = matches!(
                    &e,
                    watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404
                );
                if not_served && listed {
                    // Said once already.
                    tracing::debug!(kind, error = %e, "still not served");
                    None
                } else if not_served {
                    tracing::warn!(
                        kind,
                        "the API server does not serve this kind (its CRD is not installed?): \
                         none are read until it does"
                    );
                    listed = true;
                    Some(Change::Listed(kind, Vec::new()))
                } else {
                    tracing::warn!(kind, error = %e, "watching the Kubernetes API (retrying)");
                    None
                }
            }
        };
        if let Some(change) = change
            && tx.send(change).await.is_err()
        {
            return;
        }
    }
}

/// An object from the API server, named `Kind namespace/name` in problems.
fn document(object: Object) -> Document {
    let mut doc = Document {
        file: String::new(),
        document: 0,
        object,
    };
    doc.file = doc.key().to_string();
    doc
}

/// Writes route statuses.
struct Status {
    client: Client,
    /// A write failed: try again soon even if nothing changes.
    retry: bool,
}

impl Status {
    /// Brings every route's status (weft's parent entries) in line with its
    /// problems; writes only what differs. The API server's answer goes
    /// into the store at once, so that a change seen before the watch
    /// brings the written route back does not write it again.
    async fn reconcile(&mut self, store: &mut Store, problems: &[Problem]) {
        self.retry = false;
        let mut writes = Vec::new();
        for doc in store.documents() {
            let value = match &doc.object {
                Object::HttpRoute(r) => serde_json::to_value(r),
                Object::GrpcRoute(r) => serde_json::to_value(r),
                _ => continue,
            };
            let Ok(route) = value else { continue };
            let mine: Vec<&Problem> = problems.iter().filter(|p| p.file == doc.file).collect();
            if let Some(parents) = parent_statuses(&route, &mine, &now()) {
                let grpc = matches!(doc.object, Object::GrpcRoute(_));
                writes.push((doc.key(), grpc, json!({ "status": { "parents": parents } })));
            }
        }
        let params = PatchParams::default();
        for (key, grpc, patch) in writes {
            let patch = Patch::Merge(&patch);
            let written = if grpc {
                Api::<GrpcRoute>::namespaced(self.client.clone(), &key.namespace)
                    .patch_status(&key.name, &params, &patch)
                    .await
                    .map(|r| Object::GrpcRoute(Box::new(r)))
            } else {
                Api::<HttpRoute>::namespaced(self.client.clone(), &key.namespace)
                    .patch_status(&key.name, &params, &patch)
                    .await
                    .map(|r| Object::HttpRoute(Box::new(r)))
            };
            match written {
                Ok(object) => {
                    tracing::debug!(route = %key, "status written");
                    store.upsert(document(object));
                }
                Err(e) => {
                    tracing::warn!(route = %key, error = %e, "cannot write the route's status (retrying)");
                    self.retry = true;
                }
            }
        }
    }
}

/// Now, as Kubernetes writes times (RFC 3339, seconds).
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The route's `status.parents` with weft's entries as `problems` say, or
/// `None` when that is what it already has. Entries of other controllers
/// (Gateways' parents) are kept as they are; a condition keeps its
/// `lastTransitionTime` while its status stays.
pub fn parent_statuses(route: &Value, problems: &[&Problem], now: &str) -> Option<Vec<Value>> {
    let generation = route.pointer("/metadata/generation").cloned();
    let old: Vec<Value> = route
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let refs = route
        .pointer("/spec/parentRefs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut parents: Vec<Value> = old
        .iter()
        .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER_NAME))
        .cloned()
        .collect();
    let other = |p: &&&Problem| !p.path.starts_with("spec.parentRefs");
    let invalid: Vec<String> = problems
        .iter()
        .filter(other)
        .filter(|p| !is_unresolved_backend(p) && !p.path.contains("backendRefs"))
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    let unresolved: Vec<String> = problems
        .iter()
        .filter(|p| p.path.contains("backendRefs"))
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    let bad_kind = problems
        .iter()
        .any(|p| p.path.contains("backendRefs") && !is_unresolved_backend(p));
    for (i, r) in refs.iter().enumerate() {
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or("Gateway");
        let group = r
            .get("group")
            .and_then(Value::as_str)
            .unwrap_or("gateway.networking.k8s.io");
        if kind != "Service" || !(group.is_empty() || group == "core") {
            // A Gateway's: its controller writes that entry.
            continue;
        }
        let at = format!("spec.parentRefs[{i}]");
        let parent_problems: Vec<String> = problems
            .iter()
            .filter(|p| p.path == at || p.path.starts_with(&format!("{at}.")))
            .map(|p| p.message.clone())
            .collect();
        let accepted = if !parent_problems.is_empty() {
            ("False", "NoMatchingParent", parent_problems.join("; "))
        } else if !invalid.is_empty() {
            ("False", "UnsupportedValue", invalid.join("; "))
        } else {
            ("True", "Accepted", "attached to the service".to_owned())
        };
        let resolved = if unresolved.is_empty() {
            ("True", "ResolvedRefs", "every backend resolved".to_owned())
        } else if bad_kind {
            ("False", "InvalidKind", unresolved.join("; "))
        } else {
            ("False", "BackendNotFound", unresolved.join("; "))
        };
        let before = old.iter().find(|p| {
            p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                && p.get("parentRef") == Some(r)
        });
        let condition = |kind: &str, (status, reason, message): (&str, &str, String)| {
            let since = before
                .and_then(|b| b.get("conditions")?.as_array())
                .and_then(|cs| {
                    cs.iter().find(|c| {
                        c.get("type").and_then(Value::as_str) == Some(kind)
                            && c.get("status").and_then(Value::as_str) == Some(status)
                    })
                })
                .and_then(|c| c.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| Value::from(now));
            let mut c = json!({
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
            });
            if let Some(g) = &generation {
                c["observedGeneration"] = g.clone();
            }
            c
        };
        parents.push(json!({
            "parentRef": r,
            "controllerName": CONTROLLER_NAME,
            "conditions": [condition("Accepted", accepted), condition("ResolvedRefs", resolved)],
        }));
    }
    (parents != old).then_some(parents)
}
