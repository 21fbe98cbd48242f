//! Follows the control plane's config stream and hands each update to the
//! proxy, answering ACK or NACK with the outcome.
//!
//! The proxy keeps serving its last good config while the control plane is
//! away; this client reconnects with backoff and resyncs (a new stream gets
//! a full snapshot).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use weft_control_api::discovery as pb;
use weft_control_api::discovery::discovery_client::DiscoveryClient;

use crate::config::{Policy, Route, Service, Telemetry, Workload};
pub use crate::update::{Change, Mesh, Update};

/// What the proxy holds from the control plane: version and objects.
#[derive(Debug, Clone, Default)]
struct Held {
    version: u64,
    workloads: BTreeMap<Ipv4Addr, Workload>,
    services: BTreeMap<String, Service>,
    routes: BTreeMap<String, Route>,
    policies: BTreeMap<String, Policy>,
    telemetry: BTreeMap<String, Telemetry>,
}

/// The control plane, as this node reaches it: its address and the node's
/// credential (sent as `authorization: Bearer <token>`). Cheap to clone;
/// the connection is made when first used and again after a failure.
#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    endpoint: String,
    channel: Channel,
    bearer: Bearer,
    /// With TLS: the roots the control plane's certificate may chain to.
    trust: Option<Arc<super::secure::Trust>>,
}

/// Adds the node's credential to every request. It can be replaced while
/// the client runs (a projected service account token is rotated by the
/// kubelet).
#[derive(Debug, Clone, Default)]
struct Bearer(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let value = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(v) = value {
            request.metadata_mut().insert("authorization", v);
        }
        Ok(request)
    }
}

fn bearer_value(token: &str) -> Result<MetadataValue<Ascii>, String> {
    format!("Bearer {}", token.trim())
        .parse::<MetadataValue<Ascii>>()
        .map_err(|_| "the node token is not printable ASCII".to_owned())
}

impl ControlPlaneClient {
    /// A client of `endpoint` (`http://host:15012`), with the node's token
    /// if it has one.
    pub fn new(endpoint: &str, token: Option<&str>) -> Result<ControlPlaneClient, String> {
        Self::build(endpoint, token, None)
    }

    /// A client of `endpoint` (`https://host:port`) over TLS: its serving
    /// certificate must carry that host and chain to a root in `ca` (a PEM
    /// file) or one the control plane has sent since.
    pub fn with_tls(
        endpoint: &str,
        token: Option<&str>,
        ca: &std::path::Path,
    ) -> Result<ControlPlaneClient, String> {
        Self::build(endpoint, token, Some(ca.to_path_buf()))
    }

    fn build(
        endpoint: &str,
        token: Option<&str>,
        ca: Option<std::path::PathBuf>,
    ) -> Result<ControlPlaneClient, String> {
        let bearer = token.map(bearer_value).transpose()?;
        let bad = |e: &dyn std::fmt::Display| format!("control plane address `{endpoint}`: {e}");
        let (channel, trust) = match ca {
            None => {
                if endpoint.starts_with("https://") {
                    return Err(format!(
                        "control plane address `{endpoint}`: https needs the roots its certificate chains to"
                    ));
                }
                let channel = Endpoint::from_shared(endpoint.to_owned())
                    .map_err(|e| bad(&e))?
                    .connect_timeout(Duration::from_secs(5))
                    .connect_lazy();
                (channel, None)
            }
            Some(ca) => {
                let Some(rest) = endpoint.strip_prefix("https://") else {
                    return Err(format!(
                        "control plane address `{endpoint}`: TLS needs an https:// address"
                    ));
                };
                let trust = Arc::new(super::secure::Trust::new(ca));
                let connector = super::secure::Connector::new(endpoint, trust.clone())?;
                // The connector makes the TLS connection; tonic speaks
                // HTTP/2 over it.
                let channel = Endpoint::from_shared(format!("http://{rest}"))
                    .map_err(|e| bad(&e))?
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector_lazy(connector);
                (channel, Some(trust))
            }
        };
        Ok(ControlPlaneClient {
            endpoint: endpoint.to_owned(),
            channel,
            bearer: Bearer(Arc::new(RwLock::new(bearer))),
            trust,
        })
    }

    /// Sends `token` from the next request on (a renewed credential).
    pub fn set_token(&self, token: &str) -> Result<(), String> {
        let value = bearer_value(token)?;
        *self.bearer.0.write().unwrap_or_else(|p| p.into_inner()) = Some(value);
        Ok(())
    }

    fn grpc(&self) -> DiscoveryClient<InterceptedService<Channel, Bearer>> {
        DiscoveryClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// Asks the CA to sign a certificate.
    pub async fn certificate(
        &self,
        request: pb::CertificateRequest,
    ) -> Result<pb::CertificateResponse, String> {
        let answer = self
            .grpc()
            .certificate(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
        // Roots that came over a verified connection may verify the next.
        if let Some(trust) = &self.trust {
            trust.learn(
                answer
                    .roots
                    .iter()
                    .map(|r| rustls_pki_types::CertificateDer::from(r.clone()))
                    .collect(),
            );
        }
        Ok(answer)
    }
}

impl crate::identity::Issuer for ControlPlaneClient {
    async fn sign(
        &self,
        account: &crate::identity::Account,
        csr: Vec<u8>,
    ) -> Result<crate::identity::Issued, String> {
        let answer = self
            .certificate(pb::CertificateRequest {
                namespace: account.0.clone(),
                service_account: account.1.clone(),
                csr,
            })
            .await?;
        Ok(crate::identity::Issued {
            spiffe_id: answer.spiffe_id,
            chain: answer.chain,
            not_after: answer.not_after,
            roots: answer.roots,
        })
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Follows the control plane for `node` until `updates` closes, sending
/// each version as a [`Mesh`].
pub async fn follow(client: ControlPlaneClient, node: String, updates: mpsc::Sender<Update>) {
    let endpoint = client.endpoint.clone();
    let mut held = Held::default();
    let mut backoff = BACKOFF_MIN;
    loop {
        let before = held.version;
        match session(&client, &node, &mut held, &updates).await {
            Ok(()) => return,
            Err(e) => {
                // A stream that delivered something was a working
                // connection: start the next retries from the minimum.
                if held.version != before {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(%endpoint, error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "control plane unreachable; serving the last good config");
            }
        }
        // A retry backoff, not a wait for a condition.
        tokio::time::sleep_until(tokio::time::Instant::now() + backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One stream; `Ok` only when the proxy is shutting down (`updates` closed).
async fn session(
    client: &ControlPlaneClient,
    node: &str,
    held: &mut Held,
    updates: &mpsc::Sender<Update>,
) -> Result<(), String> {
    let endpoint = &client.endpoint;
    let mut grpc = client.grpc();
    let (tx, rx) = mpsc::channel(4);
    let hello = pb::NodeMessage {
        kind: Some(pb::node_message::Kind::Hello(pb::Hello {
            node: node.to_owned(),
            version: held.version,
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| "stream closed".to_owned())?;
    let mut inbound = grpc
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("opening the stream: {e}"))?
        .into_inner();
    tracing::info!(%endpoint, %node, "following the control plane");
    loop {
        let update = match inbound.message().await {
            Ok(Some(u)) => u,
            Ok(None) => return Err("the control plane closed the stream".into()),
            Err(e) => return Err(format!("stream: {e}")),
        };
        let version = update.version;
        let answer = match next_held(held, &update) {
            Err(reason) => Err(reason),
            Ok(next) => {
                let mesh = Mesh {
                    workloads: next.workloads.values().cloned().collect(),
                    services: next.services.values().cloned().collect(),
                    routes: next.routes.values().cloned().collect(),
                    policies: next.policies.values().cloned().collect(),
                    telemetry: next.telemetry.values().cloned().collect(),
                };
                let (done, outcome) = oneshot::channel();
                if updates
                    .send(Update {
                        change: Change::Mesh(mesh),
                        done: Some(done),
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                match outcome.await {
                    Ok(Ok(_generation)) => {
                        *held = next;
                        Ok(())
                    }
                    Ok(Err(reason)) => Err(reason),
                    Err(_) => return Ok(()),
                }
            }
        };
        let kind = match answer {
            Ok(()) => pb::node_message::Kind::Ack(pb::Ack { version }),
            Err(reason) => {
                tracing::warn!(version, %reason, "refusing a config from the control plane");
                pb::node_message::Kind::Nack(pb::Nack { version, reason })
            }
        };
        tx.send(pb::NodeMessage { kind: Some(kind) })
            .await
            .map_err(|_| "stream closed".to_owned())?;
    }
}

/// What the proxy would hold after `update`, or why it cannot be applied.
fn next_held(held: &Held, update: &pb::ConfigUpdate) -> Result<Held, String> {
    let mut next = if update.full {
        Held::default()
    } else if update.base_version == held.version {
        held.clone()
    } else {
        return Err(format!(
            "an update on top of version {} but this proxy holds version {}",
            update.base_version, held.version
        ));
    };
    next.version = update.version;
    for key in &update.removed_workloads {
        let ip: Ipv4Addr = key
            .parse()
            .map_err(|_| format!("removed workload `{key}` is not an IPv4 address"))?;
        next.workloads.remove(&ip);
    }
    for key in &update.removed_services {
        next.services.remove(key);
    }
    for w in &update.workloads {
        let w = Workload::try_from(w).map_err(|e| e.to_string())?;
        next.workloads.insert(w.ip, w);
    }
    for s in &update.services {
        let s = Service::try_from(s).map_err(|e| e.to_string())?;
        next.services.insert(s.key(), s);
    }
    for key in &update.removed_routes {
        next.routes.remove(key);
    }
    for r in &update.routes {
        let r = Route::try_from(r).map_err(|e| e.to_string())?;
        next.routes.insert(r.key(), r);
    }
    for key in &update.removed_policies {
        next.policies.remove(key);
    }
    for p in &update.policies {
        let p = Policy::try_from(p).map_err(|e| e.to_string())?;
        next.policies.insert(p.key(), p);
    }
    for key in &update.removed_telemetry {
        next.telemetry.remove(key);
    }
    for t in &update.telemetry {
        let t = Telemetry::try_from(t).map_err(|e| e.to_string())?;
        next.telemetry.insert(t.key(), t);
    }
    Ok(next)
}
