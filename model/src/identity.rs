//! Workload identities: SPIFFE IDs of service accounts.

use std::fmt;
use std::str::FromStr;

use crate::Account;

/// A workload identity: a service account in a trust domain, written
/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
}

/// A text that is not a workload SPIFFE ID, or a certificate that names
/// none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not of the form `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[error(
        "`{0}` is not a SPIFFE workload ID (spiffe://<trust domain>/ns/<namespace>/sa/<service account>)"
    )]
    Malformed(String),
    /// A trust domain with characters SPIFFE does not allow.
    #[error("`{0}` is not a trust domain (lowercase letters, digits, `.`, `-`, `_`)")]
    TrustDomain(String),
    /// Not a parsable X.509 certificate.
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
    /// Zero or several SPIFFE URI names.
    #[error("the certificate has {0} SPIFFE URI names; a workload certificate has exactly one")]
    Count(usize),
}

impl SpiffeId {
    /// The identity of a service account in a trust domain.
    pub fn new(trust_domain: &str, account: &Account) -> Self {
        SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: account.0.clone(),
            service_account: account.1.clone(),
        }
    }

    /// Parses a workload SPIFFE ID; anything else is an error that says
    /// what is wrong.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(malformed)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                let td_ok = td.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
                });
                if !td_ok {
                    return Err(IdentityError::TrustDomain((*td).to_owned()));
                }
                Ok(SpiffeId {
                    trust_domain: (*td).to_owned(),
                    namespace: (*ns).to_owned(),
                    service_account: (*sa).to_owned(),
                })
            }
            _ => Err(malformed()),
        }
    }

    /// The service account it names.
    pub fn account(&self) -> Account {
        (self.namespace.clone(), self.service_account.clone())
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<SpiffeId, IdentityError> {
        SpiffeId::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}
