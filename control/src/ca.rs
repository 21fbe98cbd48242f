//! The mesh's certificate authority: a root (generated, or loaded from PEM
//! files such as a mounted Kubernetes Secret) that signs short-lived SPIFFE
//! X.509 certificates for workload identities.
//!
//! The CA decides what a certificate says: it takes only the public key
//! from a CSR (whose signature it checks) and writes the SPIFFE ID it
//! authorized, the validity and the key usages itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;

use crate::model::SpiffeId;

/// The default lifetime of a workload certificate.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How far back a certificate's validity starts (clock skew between nodes).
const BACKDATE: Duration = Duration::from_secs(60);
/// The root's lifetime when weft generates it.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The lifetime of the control plane's own serving certificate (issued
/// again at every start).
pub const SERVING_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the CA cannot start or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A CSR is not a valid, signed PKCS#10 request.
    #[error("the certificate signing request is invalid: {0}")]
    Csr(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// The end of its validity.
    pub not_after: SystemTime,
}

/// The certificate authority.
#[derive(Debug)]
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root_der: Vec<u8>,
    /// Roots the mesh trusts: this CA's, then any others given (an old root
    /// during a rotation).
    roots: Vec<Vec<u8>>,
    trust_domain: String,
    ttl: Duration,
}

impl Ca {
    /// A new root, in memory.
    pub fn generate(trust_domain: &str, ttl: Duration) -> Result<Ca, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "weft");
        name.push(DnType::CommonName, format!("weft root CA ({trust_domain})"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ROOT_TTL).into();
        params.serial_number = Some(serial()?);
        let root = params
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let root_der = root.der().to_vec();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            roots: vec![root_der.clone()],
            root_der,
            trust_domain: trust_domain.to_owned(),
            ttl,
        })
    }

    /// The root in `dir` (`ca.pem`, `ca-key.pem`, and optionally
    /// `trusted-roots.pem`: more roots to trust, such as the previous one
    /// during a rotation). With `create`, a missing root is generated and
    /// written there (the key readable by its owner only), so that a
    /// restart keeps it.
    pub fn from_dir(
        dir: &Path,
        trust_domain: &str,
        ttl: Duration,
        create: bool,
    ) -> Result<Ca, CaError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        if create && !cert_path.exists() && !key_path.exists() {
            let ca = Ca::generate(trust_domain, ttl)?;
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            write_private(&key_path, &ca.issuer.key().serialize_pem())?;
            std::fs::write(&cert_path, pem_cert(&ca.root_der)).map_err(io(&cert_path))?;
            return Ok(ca);
        }
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
            path: key_path.clone(),
            message: format!("not a private key in PEM: {e}"),
        })?;
        let root_der = pem_blocks(&cert_path, &cert_pem, "CERTIFICATE")?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Invalid {
                path: cert_path.clone(),
                message: "no CERTIFICATE block".into(),
            })?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&root_der).map_err(|e| CaError::Invalid {
                path: cert_path.clone(),
                message: format!("not an X.509 certificate: {e}"),
            })?;
        if !parsed.is_ca() {
            return Err(CaError::Invalid {
                path: cert_path,
                message: "not a CA certificate (basicConstraints CA:TRUE is missing)".into(),
            });
        }
        if *parsed.public_key().subject_public_key.data != *key.public_key_raw() {
            return Err(CaError::Invalid {
                path: key_path,
                message: format!("this key does not belong to {}", cert_path.display()),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&root_der.clone().into(), key).map_err(|e| {
            CaError::Invalid {
                path: cert_path.clone(),
                message: e.to_string(),
            }
        })?;
        let mut roots = vec![root_der.clone()];
        let extra = dir.join("trusted-roots.pem");
        if extra.exists() {
            let text = std::fs::read_to_string(&extra).map_err(io(&extra))?;
            for der in pem_blocks(&extra, &text, "CERTIFICATE")? {
                if !roots.contains(&der) {
                    roots.push(der);
                }
            }
        }
        Ok(Ca {
            issuer,
            root_der,
            roots,
            trust_domain: trust_domain.to_owned(),
            ttl,
        })
    }

    /// The trust domain of the identities it signs.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Every root the mesh trusts (DER), this CA's first.
    pub fn roots(&self) -> &[Vec<u8>] {
        &self.roots
    }

    /// This CA's root in PEM.
    pub fn root_pem(&self) -> String {
        pem_cert(&self.root_der)
    }

    /// A serving certificate for the control plane's own port, for `names`
    /// (DNS names or IP addresses), with a new key: (certificate PEM, key
    /// PEM).
    pub fn serving_certificate(&self, names: &[String]) -> Result<(String, String), CaError> {
        if names.is_empty() {
            return Err(CaError::Sign(
                "a serving certificate needs at least one name".into(),
            ));
        }
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "weft");
        dn.push(DnType::CommonName, "weft control plane");
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| CaError::Sign(format!("`{n}` is not a DNS name: {e}"))),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + SERVING_TTL).into();
        params.serial_number = Some(serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((pem_cert(cert.der()), key.serialize_pem()))
    }

    /// Signs the key of `csr_der` (a PKCS#10 request, DER) for `identity`.
    pub fn sign(&self, identity: &SpiffeId, csr_der: &[u8]) -> Result<Issued, CaError> {
        let mut csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let now = SystemTime::now();
        let not_after = now + self.ttl;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity
                .to_string()
                .try_into()
                .map_err(|e| CaError::Sign(format!("{identity}: {e:?}")))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(serial()?);
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Issued {
            chain: vec![cert.der().to_vec()],
            not_after,
        })
    }
}

/// A random positive 16-byte serial number.
fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Sign("no randomness for a serial number".into()))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

/// A DER certificate as PEM.
pub fn pem_cert(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// The DER contents of every `label` block of a PEM text.
fn pem_blocks(path: &Path, text: &str, label: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let blocks = pem::parse_many(text).map_err(|e| CaError::Invalid {
        path: path.to_owned(),
        message: format!("not PEM: {e}"),
    })?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == label)
        .map(pem::Pem::into_contents)
        .collect())
}

#[cfg(test)]
mod tests;
