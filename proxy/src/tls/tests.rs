use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A throwaway CA for these tests.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            root: root.der().clone(),
        }
    }

    /// A leaf with these URI names, valid from `from` to `until`.
    fn leaf(&self, uris: &[&str], from: SystemTime, until: SystemTime) -> Certified {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = from.into();
        params.not_after = until.into();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Certified {
            spiffe_id: uris.first().map(|u| (*u).to_owned()).unwrap_or_default(),
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            issued: from,
            not_after: until,
        }
    }

    fn valid(&self, uri: &str) -> Certified {
        let now = SystemTime::now();
        self.leaf(
            &[uri],
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
    }
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// Runs one handshake over an in-memory pipe and one byte each way; the
/// outcome of each side.
async fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> (Result<(), String>, Result<SpiffeId, String>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let client_side = async move {
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(server_name(std::net::Ipv4Addr::new(10, 0, 0, 1)), c)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok(())
    };
    let server_side = async move {
        let mut tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(s)
            .await
            .map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        let who = identity_of(peer).map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        tls.write_all(b"y").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok(who)
    };
    tokio::join!(client_side, server_side)
}

#[test]
fn spiffe_ids_parse_print_and_reject_what_is_not_a_workload_id() {
    let web = id(WEB);
    assert_eq!(web.namespace, "shop");
    assert_eq!(web.service_account, "web");
    assert_eq!(web.trust_domain, "cluster.local");
    assert_eq!(web.to_string(), WEB);
    assert_eq!(web.account(), ("shop".to_owned(), "web".to_owned()));
    for bad in [
        "cluster.local/ns/shop/sa/web",
        "spiffe://cluster.local/ns/shop/sa/",
        "spiffe:///ns/shop/sa/web",
        "spiffe://cluster.local/ns/shop/sa/web/extra",
        "spiffe://cluster.local/sa/web/ns/shop",
        "https://cluster.local/ns/shop/sa/web",
    ] {
        assert_eq!(
            SpiffeId::parse(bad),
            Err(IdentityError::Malformed(bad.to_owned())),
            "{bad}"
        );
    }
}

#[test]
fn a_certificate_names_its_one_spiffe_uri_and_none_or_two_are_refused() {
    let ca = TestCa::new("mesh");
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    assert_eq!(identity_of(&ca.valid(WEB).chain[0]), Ok(id(WEB)));
    let two = ca.leaf(&[WEB, DB], now, now + hour);
    assert_eq!(identity_of(&two.chain[0]), Err(IdentityError::Count(2)));
    let none = ca.leaf(&["https://example.com/x"], now, now + hour);
    assert_eq!(identity_of(&none.chain[0]), Err(IdentityError::Count(0)));
    assert!(matches!(
        identity_of(&CertificateDer::from(vec![1u8, 2, 3])),
        Err(IdentityError::Parse(_))
    ));
}

#[tokio::test]
async fn mutual_tls_succeeds_with_the_expected_server_and_the_server_learns_the_client_identity() {
    let ca = TestCa::new("mesh");
    let roots = vec![ca.root.clone()];
    let client = client_config(&ca.valid(WEB), &roots, id(DB)).unwrap();
    let server = server_config(&ca.valid(DB), &roots).unwrap();
    let (c, s) = handshake(client, server).await;
    assert_eq!(c, Ok(()));
    assert_eq!(s, Ok(id(WEB)));
}

#[tokio::test]
async fn a_client_refuses_a_server_certified_for_another_identity() {
    let ca = TestCa::new("mesh");
    let roots = vec![ca.root.clone()];
    let client = client_config(&ca.valid(WEB), &roots, id(DB)).unwrap();
    let impostor =
        server_config(&ca.valid("spiffe://cluster.local/ns/shop/sa/evil"), &roots).unwrap();
    let (c, s) = handshake(client, impostor).await;
    let c = c.unwrap_err();
    assert!(
        c.contains("certifies spiffe://cluster.local/ns/shop/sa/evil")
            && c.contains("runs as spiffe://cluster.local/ns/shop/sa/db"),
        "{c}"
    );
    assert!(s.is_err());
}

#[tokio::test]
async fn a_server_refuses_an_expired_client_certificate() {
    let ca = TestCa::new("mesh");
    let roots = vec![ca.root.clone()];
    let now = SystemTime::now();
    let expired = ca.leaf(
        &[WEB],
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    );
    let client = client_config(&expired, &roots, id(DB)).unwrap();
    let server = server_config(&ca.valid(DB), &roots).unwrap();
    let (c, s) = handshake(client, server).await;
    assert!(c.is_err());
    let s = s.unwrap_err();
    assert!(s.contains("expired"), "{s}");
}

#[tokio::test]
async fn both_sides_refuse_a_peer_from_another_ca() {
    let ca = TestCa::new("mesh");
    let stranger = TestCa::new("stranger");
    let roots = vec![ca.root.clone()];
    let client = client_config(&stranger.valid(WEB), &roots, id(DB)).unwrap();
    let server = server_config(&ca.valid(DB), &roots).unwrap();
    let (_, s) = handshake(client, server).await;
    let s = s.unwrap_err();
    assert!(
        s.contains("UnknownIssuer") || s.contains("unknown issuer"),
        "{s}"
    );

    let client = client_config(&ca.valid(WEB), &roots, id(DB)).unwrap();
    let server = server_config(&stranger.valid(DB), std::slice::from_ref(&stranger.root)).unwrap();
    let (c, _) = handshake(client, server).await;
    let c = c.unwrap_err();
    assert!(
        c.contains("UnknownIssuer") || c.contains("unknown issuer"),
        "{c}"
    );
}
