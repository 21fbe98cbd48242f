//! mTLS between node proxies: TLS 1.3 only, both sides present a workload
//! certificate from the mesh CA, and both check the peer's SPIFFE ID, not
//! just its chain.
//!
//! - The client (the source node) knows which identity the destination pod
//!   runs as, and refuses a server certificate for any other.
//! - The server (the destination node) verifies the client's chain; the
//!   identity it reads from the certificate is what policy and the access log
//!   see ([`identity_of`]).
//!
//! Configs are built per certificate: a renewed certificate gives new
//! configs, and a connection keeps the one it was made with.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use x509_parser::extensions::GeneralName;

use crate::identity::{Certified, IdentityError, SpiffeId};

/// The ALPN protocol both sides speak: HTTP/2 (HBONE).
pub const ALPN_H2: &[u8] = b"h2";

/// The one crypto provider weft uses (ring), passed to every config
/// explicitly: nothing depends on a process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The SPIFFE ID a certificate certifies (its one `spiffe://` URI SAN).
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => SpiffeId::parse(one),
        other => Err(IdentityError::Count(other.len())),
    }
}

/// A TLS config that cannot be built from what the node holds.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the certificate, key or roots.
    #[error("TLS config for {identity}: {source}")]
    Config {
        /// Whose config.
        identity: String,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// A root that is not a usable trust anchor.
    #[error("trust root {index} is not usable: {reason}")]
    Root {
        /// Its position in the roots.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The client verifier could not be built (no roots, say).
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The client side: presents `own`, accepts only a server that chains to
/// `roots` and certifies `expected`.
pub fn client_config(
    own: &Certified,
    roots: &[CertificateDer<'static>],
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    let anchors = roots
        .iter()
        .enumerate()
        .map(|(index, r)| {
            webpki::anchor_from_trusted_cert(r)
                .map(|a| a.to_owned())
                .map_err(|e| TlsError::Root {
                    index,
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config_error = |source| TlsError::Config {
        identity: own.spiffe_id.clone(),
        source,
    };
    let verifier = ExpectServer {
        anchors,
        expected,
        provider: provider(),
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(own.chain.clone(), own.private_key())
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The server side: presents `own`, requires a client certificate that
/// chains to `roots` (its identity is read after the handshake).
pub fn server_config(
    own: &Certified,
    roots: &[CertificateDer<'static>],
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut store = RootCertStore::empty();
    for (index, root) in roots.iter().enumerate() {
        store.add(root.clone()).map_err(|e| TlsError::Root {
            index,
            reason: e.to_string(),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let config_error = |source| TlsError::Config {
        identity: own.spiffe_id.clone(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(own.chain.clone(), own.private_key())
        .map_err(config_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The name a client connects with: the destination's address. The
/// verifier ignores it (it checks the SPIFFE ID instead), and rustls sends
/// no SNI for an address.
pub fn server_name(ip: std::net::Ipv4Addr) -> ServerName<'static> {
    ServerName::IpAddress(std::net::IpAddr::V4(ip).into())
}

/// Verifies a server's chain to the mesh roots, then that it certifies the
/// expected identity.
#[derive(Debug)]
struct ExpectServer {
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

/// The peer certified someone other than the workload we meant to reach.
#[derive(thiserror::Error)]
#[error("the server certifies {got}, but the destination runs as {expected}")]
struct WrongIdentity {
    got: String,
    expected: SpiffeId,
}

/// rustls shows the cause with `{:?}`: make that the readable message.
impl fmt::Debug for WrongIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    let e = match e {
        webpki::Error::CertExpired { .. } => CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
        webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(e)
}

impl ServerCertVerifier for ExpectServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        let got = identity_of(end_entity).map_err(other)?;
        if got != self.expected {
            return Err(other(WrongIdentity {
                got: got.to_string(),
                expected: self.expected.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests;
