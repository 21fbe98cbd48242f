//! The lab's built-in test workload, run as `weft lab app echo|client`.
//!
//! The echo server answers on four ports: raw TCP echo (bytes back until the
//! peer half-closes, then a half-close back), a TCP "whoami" that writes a
//! [`Served`] line and closes, a TCP sink that counts what it reads, and
//! HTTP/1.1 plus HTTP/2 with prior knowledge (h2c) on one port, and the
//! Gateway API conformance gRPC echo (h2c). Every HTTP response names the
//! pod that served it, so a test knows where a request landed.

pub mod blocking;
pub mod client;
pub mod echo;
pub mod grpc;
pub mod pingpong;
pub mod stream;

use serde::{Deserialize, Serialize};

/// Who served a request, as the echo server reports it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// Pod name.
    pub pod: String,
    /// Pod namespace.
    pub namespace: String,
    /// Node name.
    pub node: String,
    /// The protocol the request came in over: `TCP`, `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// HTTP method, when HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP path, when HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The raw query (without `?`), when HTTP and there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The Host header (HTTP/1.1) or `:authority` (HTTP/2), when HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Request headers, name to values in received order, when HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// With `x-echo-body: digest`: how many body bytes arrived.
    #[serde(default, rename = "bodyBytes", skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<u64>,
    /// With `x-echo-body: digest`: the body's SHA-256, lowercase hex.
    #[serde(
        default,
        rename = "bodySha256",
        skip_serializing_if = "Option::is_none"
    )]
    pub body_sha256: Option<String>,
    /// The peer address the server saw.
    pub peer: String,
    /// The local address the connection arrived on.
    pub local: String,
}

impl Served {
    /// `namespace/pod`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

/// The identity a workload reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Node name.
    pub node: String,
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Response header naming the pod that served an HTTP request.
pub const SERVED_BY_HEADER: &str = "x-weft-served-by";
