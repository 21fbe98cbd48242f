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
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::grpcroutes::GrpcRoute;
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
use crate::error::{Problem, ProblemKind};
use crate::index::{Store, is_unresolved_backend};
use crate::server::ControlPlane;
use crate::source::{Document, Object, ObjectKey};

/// The `controllerName` weft writes in route parent statuses.
pub const CONTROLLER_NAME: &str = "weft.io/mesh";

/// The kinds weft watches; the world is published once each was listed.
pub const KINDS: [&str; 8] = [
    "Namespace",
    "Pod",
    "Service",
    "EndpointSlice",
    "HTTPRoute",
    "GRPCRoute",
    "AuthorizationPolicy",
    "Telemetry",
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
        crate::crd::Telemetry => "Telemetry", Telemetry;
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
        let mut by_object: std::collections::HashMap<&str, Vec<&Problem>> =
            std::collections::HashMap::new();
        for p in problems {
            by_object.entry(p.file.as_str()).or_default().push(p);
        }
        let now = now();
        let mut writes = Vec::new();
        for doc in store.documents() {
            let value = match &doc.object {
                Object::HttpRoute(r) => serde_json::to_value(r),
                Object::GrpcRoute(r) => serde_json::to_value(r),
                _ => continue,
            };
            let Ok(route) = value else { continue };
            let mine = by_object
                .get(doc.file.as_str())
                .map_or(&[][..], Vec::as_slice);
            if let Some(parents) = parent_statuses(&route, mine, &now) {
                let grpc = matches!(doc.object, Object::GrpcRoute(_));
                // With the resourceVersion it was computed from: if the
                // route changed meanwhile (another controller wrote its
                // entry), the API server refuses (409) and the next round
                // starts from the newer route.
                let mut patch = json!({ "status": { "parents": parents } });
                if let Some(rv) = route.pointer("/metadata/resourceVersion") {
                    patch["metadata"] = json!({ "resourceVersion": rv });
                }
                writes.push((doc.key(), grpc, patch));
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
    let mut mine: Vec<Value> = Vec::new();
    let text = |p: &&Problem| format!("{}: {}", p.path, p.message);
    // Anything but a dangling reference leaves the route out of the mesh
    // (index: tolerant mode), so it is not Accepted.
    let invalid: Vec<String> = problems
        .iter()
        .filter(|p| !p.path.starts_with("spec.parentRefs") && !is_unresolved_backend(p))
        .map(text)
        .collect();
    let bad_kind: Vec<String> = problems
        .iter()
        .filter(|p| p.kind == ProblemKind::UnsupportedKind && p.path.contains("backendRefs"))
        .map(text)
        .collect();
    let unresolved: Vec<String> = problems
        .iter()
        .filter(|p| is_unresolved_backend(p))
        .map(text)
        .collect();
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
        let resolved = if !bad_kind.is_empty() {
            ("False", "InvalidKind", bad_kind.join("; "))
        } else if !unresolved.is_empty() {
            ("False", "BackendNotFound", unresolved.join("; "))
        } else {
            ("True", "ResolvedRefs", "every backend resolved".to_owned())
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
        mine.push(json!({
            "parentRef": r,
            "controllerName": CONTROLLER_NAME,
            "conditions": [condition("Accepted", accepted), condition("ResolvedRefs", resolved)],
        }));
    }
    // weft's entries replace its old ones where they stand (no reordering
    // that another controller might undo); new ones go last.
    let ours = |p: &Value| p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME);
    let mut parents = Vec::with_capacity(old.len().max(mine.len()));
    for p in &old {
        if !ours(p) {
            parents.push(p.clone());
        } else if let Some(i) = mine
            .iter()
            .position(|m| m.get("parentRef") == p.get("parentRef"))
        {
            parents.push(mine.remove(i));
        }
    }
    parents.append(&mut mine);
    (parents != old).then_some(parents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(path: &str, message: &str, kind: ProblemKind) -> Problem {
        Problem {
            file: "HTTPRoute a/r".into(),
            document: 0,
            path: path.into(),
            message: message.into(),
            kind,
        }
    }

    fn route(parents: &Value) -> Value {
        json!({
            "metadata": { "generation": 2, "resourceVersion": "7" },
            "spec": { "parentRefs": [
                { "kind": "Service", "group": "", "name": "web" },
                { "name": "gw" },
            ]},
            "status": { "parents": parents.clone() },
        })
    }

    #[test]
    fn weft_entries_stay_where_they_are_and_an_unchanged_status_is_not_written() {
        let first = parent_statuses(&route(&json!([])), &[], "2026-11-25T00:00:00Z")
            .expect("a first status");
        // Another controller's entry lands before weft's; weft's is unchanged.
        let gateway = json!({ "parentRef": { "name": "gw" }, "controllerName": "example.com/gw", "conditions": [] });
        let both = json!([gateway, first[0]]);
        assert_eq!(
            parent_statuses(&route(&both), &[], "2026-11-25T01:00:00Z"),
            None,
            "same conditions, same place: nothing to write"
        );
        // A change rewrites weft's entry in place and keeps the other.
        let p = problem(
            "spec.rules[0].backendRefs[0].name",
            "service a/x does not exist",
            ProblemKind::MissingService,
        );
        let next = parent_statuses(&route(&both), &[&p], "2026-11-25T01:00:00Z").expect("changed");
        assert_eq!(next[0]["controllerName"], "example.com/gw");
        assert_eq!(next[1]["conditions"][1]["reason"], "BackendNotFound");
        assert_eq!(
            next[1]["conditions"][0]["lastTransitionTime"], "2026-11-25T00:00:00Z",
            "Accepted did not change"
        );
    }

    #[test]
    fn a_route_left_out_for_zero_weights_or_a_bad_kind_is_not_accepted() {
        let zero = problem(
            "spec.rules[0].backendRefs",
            "the weights sum to zero",
            ProblemKind::Invalid,
        );
        let s = parent_statuses(&route(&json!([])), &[&zero], "t").expect("status");
        assert_eq!(s[0]["conditions"][0]["status"], "False");
        assert_eq!(s[0]["conditions"][0]["reason"], "UnsupportedValue");
        assert_eq!(s[0]["conditions"][1]["reason"], "ResolvedRefs");
        let kind = problem(
            "spec.rules[0].backendRefs[0]",
            "only Service references are supported (GAMMA); Gateways are not",
            ProblemKind::UnsupportedKind,
        );
        let s = parent_statuses(&route(&json!([])), &[&kind], "t").expect("status");
        assert_eq!(s[0]["conditions"][0]["status"], "False");
        assert_eq!(s[0]["conditions"][1]["reason"], "InvalidKind");
    }
}
