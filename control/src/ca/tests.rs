use super::*;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};

fn identity() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap()
}

/// A key and a CSR that asks for something else than what the CA grants.
fn csr(asking: &str) -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.subject_alt_names = vec![SanType::URI(asking.try_into().unwrap())];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    (key, der)
}

/// Verifies `leaf` up to one of `roots` as webpki (and so rustls) would,
/// for client and server use.
fn verifies(leaf: &[u8], roots: &[Vec<u8>], at: SystemTime) -> bool {
    let ders: Vec<CertificateDer<'_>> =
        roots.iter().map(|r| CertificateDer::from(&r[..])).collect();
    let anchors: Vec<_> = ders
        .iter()
        .map(|d| webpki::anchor_from_trusted_cert(d).unwrap())
        .collect();
    let leaf = CertificateDer::from(leaf);
    let cert = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let time = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ]
    .iter()
    .all(|usage| {
        cert.verify_for_usage(
            &[webpki::ring::ECDSA_P256_SHA256],
            &anchors,
            &[],
            time,
            *usage,
            None,
            None,
        )
        .is_ok()
    })
}

#[test]
fn a_certificate_says_only_the_granted_spiffe_id_and_verifies_to_the_root_for_its_lifetime() {
    let ca = Ca::generate("cluster.local", Duration::from_secs(30)).unwrap();
    let (_, der) = csr("spiffe://cluster.local/ns/kube-system/sa/admin");
    let issued = ca.sign(&identity(), &der).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
    let uris: Vec<String> = cert
        .extensions()
        .iter()
        .filter_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(
                san.general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some((*u).to_owned()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(uris, ["spiffe://cluster.local/ns/shop/sa/web"]);
    assert!(!cert.is_ca(), "the CSR asked to be a CA; it is not");
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 30 + 60, "30 s, backdated by a minute");

    let now = SystemTime::now();
    assert!(verifies(&issued.chain[0], ca.roots(), now));
    assert!(
        !verifies(&issued.chain[0], ca.roots(), now + Duration::from_secs(31)),
        "expired"
    );
    let other = Ca::generate("cluster.local", DEFAULT_TTL).unwrap();
    assert!(
        !verifies(&issued.chain[0], other.roots(), now),
        "another root"
    );
}

#[test]
fn a_csr_whose_signature_does_not_match_its_key_is_refused() {
    let (_, mut der) = csr("spiffe://cluster.local/ns/shop/sa/web");
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let ca = Ca::generate("cluster.local", DEFAULT_TTL).unwrap();
    let e = ca.sign(&identity(), &der).unwrap_err();
    assert!(matches!(e, CaError::Csr(_)), "{e}");
    assert!(ca.sign(&identity(), b"not a csr").is_err());
}

#[test]
fn a_root_created_in_a_directory_is_kept_across_restarts_and_bad_files_are_named() {
    let dir = std::env::temp_dir().join(format!("weft-ca-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = Ca::from_dir(&dir, "cluster.local", DEFAULT_TTL, true).unwrap();
    let mode = std::fs::metadata(dir.join("ca-key.pem"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let again = Ca::from_dir(&dir, "cluster.local", DEFAULT_TTL, true).unwrap();
    assert_eq!(
        first.roots(),
        again.roots(),
        "the same root after a restart"
    );
    let (_, der) = csr("x:y");
    let issued = again.sign(&identity(), &der).unwrap();
    assert!(verifies(&issued.chain[0], first.roots(), SystemTime::now()));

    // A previous root to keep trusting during a rotation.
    let old = Ca::generate("cluster.local", DEFAULT_TTL).unwrap();
    std::fs::write(dir.join("trusted-roots.pem"), old.root_pem()).unwrap();
    let rotated = Ca::from_dir(&dir, "cluster.local", DEFAULT_TTL, false).unwrap();
    assert_eq!(rotated.roots().len(), 2);

    // A key that is not the certificate's.
    std::fs::remove_file(dir.join("ca-key.pem")).unwrap();
    write_private(
        &dir.join("ca-key.pem"),
        &KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let e = Ca::from_dir(&dir, "cluster.local", DEFAULT_TTL, true).unwrap_err();
    assert!(
        e.to_string()
            .contains("ca-key.pem: this key does not belong to"),
        "{e}"
    );
    // A certificate that is not a CA.
    std::fs::write(dir.join("ca.pem"), pem_cert(&issued.chain[0])).unwrap();
    let e = Ca::from_dir(&dir, "cluster.local", DEFAULT_TTL, true).unwrap_err();
    assert!(
        e.to_string().contains("ca.pem: not a CA certificate"),
        "{e}"
    );
    std::fs::write(dir.join("ca.pem"), "garbage").unwrap();
    assert!(Ca::from_dir(&dir, "cluster.local", DEFAULT_TTL, true).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
