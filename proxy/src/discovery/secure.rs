//! TLS to the control plane. The proxy checks the control plane's serving
//! certificate (name and chain) against the roots it trusts: a bootstrap
//! file, read again at every connection so that a rotated bundle is picked
//! up, and every root the control plane has sent since over this same
//! verified channel (so a root rotation does not cut the proxy off).

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls;

/// The roots the control plane's certificate may chain to.
#[derive(Debug)]
pub(crate) struct Trust {
    bootstrap: PathBuf,
    learned: RwLock<Vec<CertificateDer<'static>>>,
}

impl Trust {
    pub(crate) fn new(bootstrap: PathBuf) -> Trust {
        Trust {
            bootstrap,
            learned: RwLock::default(),
        }
    }

    /// Trusts these roots too (from a certificate answer, which came over
    /// a verified connection).
    pub(crate) fn learn(&self, roots: Vec<CertificateDer<'static>>) {
        if !roots.is_empty() {
            *self.learned.write().unwrap_or_else(|p| p.into_inner()) = roots;
        }
    }

    async fn roots(&self) -> io::Result<RootCertStore> {
        let pem = tokio::fs::read(&self.bootstrap).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading controlPlaneCa {}: {e}", self.bootstrap.display()),
            )
        })?;
        let mut store = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("controlPlaneCa {}: {e}", self.bootstrap.display()),
                )
            })?;
            store.add(cert).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("controlPlaneCa {}: {e}", self.bootstrap.display()),
                )
            })?;
        }
        let learned = self
            .learned
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for cert in learned {
            // A root that does not parse was refused when it came.
            let _ = store.add(cert);
        }
        if store.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "controlPlaneCa {} holds no certificate",
                    self.bootstrap.display()
                ),
            ));
        }
        Ok(store)
    }
}

/// Connects to the control plane over TLS, whatever address tonic asks for
/// (it is given the same one).
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    trust: Arc<Trust>,
    /// `host:port` to connect to.
    authority: String,
    /// The name its certificate must carry.
    name: ServerName<'static>,
}

impl Connector {
    /// For `https://host:port`.
    pub(crate) fn new(url: &str, trust: Arc<Trust>) -> Result<Connector, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("control plane address `{url}`: {e}"))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("control plane address `{url}` has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.clone())
                .map_err(|e| format!("control plane host `{host}`: {e}"))?,
        };
        Ok(Connector {
            trust,
            authority: format!("{}:{port}", uri.host().unwrap_or_default()),
            name,
        })
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let roots = this.trust.roots().await?;
            let mut config = ClientConfig::builder_with_provider(tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(io::Error::other)?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
            let tcp = TcpStream::connect(&this.authority).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(this.name.clone(), tcp)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("TLS to the control plane: {e}")))?;
            Ok(TokioIo::new(stream))
        })
    }
}
