//! weft's `Telemetry` (`weft.io/v1alpha1`): where the node proxies send
//! trace spans, how many they sample, and which access logs they write.
//! The mesh runs on one: when several exist, the first by
//! `namespace/name` applies (the control plane warns about the others).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// How the mesh's proxies trace and log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Telemetry {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Trace export; none: the proxies follow the standard
    /// `OTEL_EXPORTER_OTLP_*` variables they were started with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Access logs.
    #[serde(default)]
    pub access_logs: AccessLogs,
}

impl Telemetry {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Where spans go and how many are made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracing {
    /// The OTLP receiver, `http://host:port` (gRPC) or its base URL
    /// (HTTP: `/v1/traces` is added). None: `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// of the proxy's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// `grpc` or `http/protobuf`; none: `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    /// Percent of new traces sampled (requests without a `traceparent`);
    /// a request that carries one follows its sampled flag.
    #[serde(default = "one_percent")]
    pub sampling_percent: Percent,
    /// Percent of L4 connections that get a span of their own.
    #[serde(default)]
    pub connection_sampling_percent: Percent,
    /// Headers sent with every export (for example a tenant or a token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl Default for Tracing {
    fn default() -> Tracing {
        Tracing {
            endpoint: None,
            protocol: None,
            sampling_percent: one_percent(),
            connection_sampling_percent: Percent::default(),
            headers: BTreeMap::new(),
        }
    }
}

fn one_percent() -> Percent {
    Percent(1.0)
}

/// OTLP's transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// As `OTEL_EXPORTER_OTLP_PROTOCOL` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }

    /// From `OTEL_EXPORTER_OTLP_PROTOCOL`'s spelling.
    pub fn parse(s: &str) -> Option<OtlpProtocol> {
        match s {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// Which access log lines the proxies write (JSON, one per line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogs {
    /// One line per HTTP request.
    #[serde(default)]
    pub requests: bool,
    /// One line per TCP connection.
    #[serde(default)]
    pub connections: bool,
    /// At most this many lines a second per proxy; the rest are counted
    /// and dropped, so a flood cannot fill a disk.
    #[serde(default = "d_lines_per_second")]
    pub lines_per_second: u32,
}

fn d_lines_per_second() -> u32 {
    1000
}

impl Default for AccessLogs {
    fn default() -> AccessLogs {
        AccessLogs {
            requests: false,
            connections: false,
            lines_per_second: d_lines_per_second(),
        }
    }
}

/// A percentage, 0 to 100 (validated when read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Percent(f64);

impl Eq for Percent {}

impl Percent {
    /// `value` if it is a percentage.
    pub fn new(value: f64) -> Result<Percent, String> {
        if value.is_finite() && (0.0..=100.0).contains(&value) {
            Ok(Percent(value))
        } else {
            Err(format!("{value} is not a percentage from 0 to 100"))
        }
    }

    /// As a fraction, 0 to 1.
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }

    /// As written, 0 to 100.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Percent, D::Error> {
        Percent::new(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An OTLP endpoint: an `http://` or `https://` URL with a host (checked
/// when read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Endpoint(String);

impl Endpoint {
    /// `url` if it is `http(s)://host[:port][/path]`.
    pub fn new(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| format!("`{url}` is not an http:// or https:// URL"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.rsplit_once(':') {
            Some((host, port)) => {
                if port.parse::<u16>().is_err() {
                    return Err(format!(
                        "`{url}`: the port `{port}` is not a number up to 65535"
                    ));
                }
                host
            }
            _ => authority,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') {
            return Err(format!("`{url}` has no usable host"));
        }
        Ok(Endpoint(url.to_owned()))
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
        Endpoint::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The telemetry that applies among `all`: the first by `namespace/name`.
pub fn effective<'a, I: IntoIterator<Item = &'a Telemetry>>(all: I) -> Option<&'a Telemetry> {
    all.into_iter()
        .min_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
}
