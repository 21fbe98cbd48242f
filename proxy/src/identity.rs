//! Workload certificates for the service accounts that have meshed pods on
//! this node: a key and CSR per identity, signed by the control plane's
//! CA, renewed at half-life; on a CA failure the valid certificate stays
//! and the request is retried with backoff.
//!
//! Certificates are swapped, never changed in place: a connection keeps the
//! certificate it started with, so a renewal drops nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

/// Identities are the domain model's: a service account and its SPIFFE ID.
pub use weft_model::{Account, IdentityError, SpiffeId};

/// A certificate and its key.
#[derive(Debug)]
pub struct Certified {
    /// `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub spiffe_id: String,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key (PKCS#8).
    pub key: PrivatePkcs8KeyDer<'static>,
    /// When it was received.
    pub issued: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Certified {
    /// The key, as rustls takes it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// When to renew: at half of its lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.issued)
            .unwrap_or_default();
        self.issued + life / 2
    }
}

/// What the node holds: certificates by service account, and the roots.
#[derive(Debug, Default)]
pub struct Identities {
    certs: RwLock<BTreeMap<Account, Arc<Certified>>>,
    roots: RwLock<Arc<Vec<CertificateDer<'static>>>>,
    /// Certificates received.
    pub issued: std::sync::atomic::AtomicU64,
    /// Requests that failed.
    pub failures: std::sync::atomic::AtomicU64,
    /// Bumped whenever a certificate arrives.
    arrived: watch::Sender<u64>,
}

impl Identities {
    /// The certificate of a service account, if it has one.
    pub fn get(&self, account: &Account) -> Option<Arc<Certified>> {
        self.certs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(account)
            .cloned()
    }

    /// The certificate of a service account, waiting up to `timeout` for it
    /// to arrive (a new pod's first connection, while its certificate is
    /// being requested).
    pub async fn wait_for(&self, account: &Account, timeout: Duration) -> Option<Arc<Certified>> {
        let mut arrived = self.arrived.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(c) = self.get(account) {
                return Some(c);
            }
            match tokio::time::timeout_at(deadline, arrived.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// The trust domain of the certificates held, if any is held.
    pub fn trust_domain(&self) -> Option<String> {
        let certs = self.certs.read().unwrap_or_else(|p| p.into_inner());
        certs
            .values()
            .find_map(|c| SpiffeId::parse(&c.spiffe_id).ok())
            .map(|id| id.trust_domain)
    }

    /// The roots the mesh trusts.
    pub fn roots(&self) -> Arc<Vec<CertificateDer<'static>>> {
        self.roots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every certificate held: (SPIFFE ID, seconds since the epoch it is
    /// valid until), for the config dump.
    pub fn summary(&self) -> Vec<(String, u64)> {
        self.certs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| {
                (
                    c.spiffe_id.clone(),
                    c.not_after
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    fn put(&self, account: Account, cert: Certified, roots: Vec<CertificateDer<'static>>) {
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(account, Arc::new(cert));
        if !roots.is_empty() {
            *self.roots.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(roots);
        }
        self.issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.arrived.send_modify(|n| *n += 1);
    }

    fn keep_only(&self, wanted: &BTreeSet<Account>) {
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|a, _| wanted.contains(a));
    }
}

/// What a CA answers to a CSR.
#[derive(Debug, Clone)]
pub struct Issued {
    /// `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub spiffe_id: String,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// End of validity, in seconds since the epoch.
    pub not_after: u64,
    /// Every root the mesh trusts (DER).
    pub roots: Vec<Vec<u8>>,
}

/// Who signs workload certificates: the control plane's CA in a running
/// mesh (`discovery::client::ControlPlaneClient`), anything else in tests.
/// The identity manager sees only this, so it depends on no transport.
pub trait Issuer: Send + Sync {
    /// Signs `csr` (DER) for `account`; the error says why not.
    fn sign(
        &self,
        account: &Account,
        csr: Vec<u8>,
    ) -> impl Future<Output = Result<Issued, String>> + Send;
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Keeps `ids` holding a valid certificate for every account in `wanted`,
/// until `wanted` closes.
pub async fn run(
    client: impl Issuer,
    mut wanted: watch::Receiver<BTreeSet<Account>>,
    ids: Arc<Identities>,
) {
    // Per account: when to try again after a failure, and the backoff.
    let mut retry: BTreeMap<Account, (Instant, Duration)> = BTreeMap::new();
    loop {
        let want = wanted.borrow_and_update().clone();
        ids.keep_only(&want);
        retry.retain(|a, _| want.contains(a));
        let now = SystemTime::now();
        let instant = Instant::now();
        // The next account due, and when.
        let mut next: Option<(Instant, &Account)> = None;
        for account in &want {
            let due = match (retry.get(account), ids.get(account)) {
                (Some((at, _)), _) => *at,
                (None, None) => instant,
                (None, Some(c)) => instant + c.renew_at().duration_since(now).unwrap_or_default(),
            };
            if next.is_none_or(|(at, _)| due < at) {
                next = Some((due, account));
            }
        }
        let Some((due, account)) = next else {
            if wanted.changed().await.is_err() {
                return;
            }
            continue;
        };
        let account = account.clone();
        tokio::select! {
            changed = wanted.changed() => {
                if changed.is_err() { return; }
                continue;
            }
            () = tokio::time::sleep_until(due.into()) => {}
        }
        match request(&client, &account).await {
            Ok((cert, roots)) => {
                tracing::info!(identity = %cert.spiffe_id,
                    valid_for_s = cert.not_after.duration_since(SystemTime::now()).unwrap_or_default().as_secs(),
                    "certificate received");
                retry.remove(&account);
                ids.put(account, cert, roots);
            }
            Err(e) => {
                ids.failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let backoff = retry
                    .get(&account)
                    .map_or(BACKOFF_MIN, |(_, b)| (*b * 2).min(BACKOFF_MAX));
                let held = ids.get(&account).map(|c| c.not_after);
                tracing::warn!(namespace = %account.0, service_account = %account.1, error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    keeping_until = ?held.map(|t| t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()),
                    "certificate request failed; keeping the current certificate");
                retry.insert(account, (Instant::now() + backoff, backoff));
            }
        }
    }
}

/// One CSR and its answer.
async fn request(
    client: &impl Issuer,
    account: &Account,
) -> Result<(Certified, Vec<CertificateDer<'static>>), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("generating a key: {e}"))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| format!("writing the CSR: {e}"))?;
    let answer = client.sign(account, csr.der().to_vec()).await?;
    if answer.chain.is_empty() {
        return Err("the CA sent no certificate".into());
    }
    let cert = Certified {
        spiffe_id: answer.spiffe_id,
        chain: answer.chain.into_iter().map(CertificateDer::from).collect(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        issued: SystemTime::now(),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(answer.not_after),
    };
    let roots = answer.roots.into_iter().map(CertificateDer::from).collect();
    Ok((cert, roots))
}
