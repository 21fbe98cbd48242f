//! Workload certificates from an in-process control plane: node
//! authentication, certificates only for service accounts with a pod on
//! the calling node, renewal at half-life, and the valid certificate kept
//! while the CA is away.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use weft_control::auth::{NodeAuth, NodeCredentials};
use weft_control::ca::Ca;
use weft_control::index::Store;
use weft_control::server::{ControlPlane, Security, serve_on};
use weft_control::source::file::parse;
use weft_control_api::discovery as pb;
use weft_control_api::discovery::discovery_client::DiscoveryClient;
use weft_proxy::discovery::client::ControlPlaneClient;
use weft_proxy::identity::{Identities, run};

const WORLD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.io/mesh: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop}
spec: {nodeName: node-1, serviceAccountName: web, containers: [{name: web}]}
status: {podIP: 198.18.1.2}
"#;

const TOKEN_1: &str = "token-of-node-1";
const TOKEN_2: &str = "token-of-node-2";

/// A secured control plane with 2-second certificates on a loopback port.
async fn control_plane() -> (String, oneshot::Sender<()>) {
    let store = Store::default()
        .applied(parse("world.yaml", WORLD).expect("parse"))
        .expect("valid")
        .0;
    let cp = ControlPlane::new(store, None).expect("control plane");
    cp.secure(Security {
        ca: Arc::new(Ca::generate("cluster.local", Duration::from_secs(2)).expect("CA")),
        nodes: NodeAuth::Tokens(NodeCredentials::from_tokens([
            ("node-1", TOKEN_1),
            ("node-2", TOKEN_2),
        ])),
    })
    .expect("secure");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        serve_on(cp, listener, None, async {
            let _ = stopped.await;
        })
        .await
    });
    (url, stop)
}

fn request(ns: &str, sa: &str) -> pb::CertificateRequest {
    let key = rcgen::KeyPair::generate().expect("key");
    pb::CertificateRequest {
        namespace: ns.into(),
        service_account: sa.into(),
        csr: rcgen::CertificateParams::default()
            .serialize_request(&key)
            .expect("csr")
            .der()
            .to_vec(),
    }
}

#[tokio::test]
async fn only_an_authenticated_node_with_a_pod_of_the_service_account_gets_its_certificate() {
    let (url, _stop) = control_plane().await;
    let node1 = ControlPlaneClient::new(&url, Some(TOKEN_1)).expect("client");
    let cert = node1
        .certificate(request("shop", "web"))
        .await
        .expect("issued");
    assert_eq!(cert.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(cert.chain.len(), 1);
    assert_eq!(cert.roots.len(), 1);

    let node2 = ControlPlaneClient::new(&url, Some(TOKEN_2)).expect("client");
    let e = node2.certificate(request("shop", "web")).await.unwrap_err();
    assert!(
        e.contains("node node-2 has no pod with service account shop/web"),
        "{e}"
    );
    let e = node1
        .certificate(request("shop", "admin"))
        .await
        .unwrap_err();
    assert!(e.contains("no pod with service account shop/admin"), "{e}");

    let anonymous = ControlPlaneClient::new(&url, None).expect("client");
    let e = anonymous
        .certificate(request("shop", "web"))
        .await
        .unwrap_err();
    assert!(e.contains("a node credential is required"), "{e}");
    let guess = ControlPlaneClient::new(&url, Some("guess")).expect("client");
    let e = guess.certificate(request("shop", "web")).await.unwrap_err();
    assert!(e.contains("unknown node credential"), "{e}");
    // A renewed credential (as a rotated projected token) is sent from the
    // next call on, on the same client.
    guess.set_token(TOKEN_1).expect("a printable token");
    guess
        .certificate(request("shop", "web"))
        .await
        .expect("issued with the renewed credential");
    assert!(guess.set_token("bad\ntoken").is_err());

    // node-1's credential cannot open node-2's config stream.
    let mut grpc = DiscoveryClient::connect(url.clone())
        .await
        .expect("connect");
    let hello = pb::NodeMessage {
        kind: Some(pb::node_message::Kind::Hello(pb::Hello {
            node: "node-2".into(),
            version: 0,
        })),
    };
    let mut call = tonic::Request::new(tokio_stream::iter([hello]));
    call.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN_1}").parse().expect("metadata"),
    );
    let e = grpc.stream(call).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.message().contains("node node-1's, not node node-2's"),
        "{e}"
    );
    // Nor can anyone on the network change the mesh.
    let e = grpc
        .apply(pb::ApplyRequest {
            files: vec![],
            replace_all: true,
            strict: true,
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn certificates_are_renewed_at_half_life_and_the_valid_one_stays_while_the_ca_is_away() {
    let (url, stop) = control_plane().await;
    let ids = Arc::new(Identities::default());
    let account = ("shop".to_owned(), "web".to_owned());
    let (wanted, rx) = watch::channel(BTreeSet::from([account.clone()]));
    let client = ControlPlaneClient::new(&url, Some(TOKEN_1)).expect("client");
    let manager = tokio::spawn(run(client, rx, ids.clone()));

    // 2-second certificates: a new one about every second.
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut seen: Vec<Arc<weft_proxy::identity::Certified>> = Vec::new();
    while ids.issued.load(Ordering::Relaxed) < 3 {
        tick.tick().await;
        if let Some(c) = ids.get(&account)
            && !seen.last().is_some_and(|l| Arc::ptr_eq(l, &c))
        {
            seen.push(c);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "three certificates in 10 s"
        );
    }
    assert!(ids.roots().len() == 1);
    assert!(seen.len() >= 2, "{seen:?}");
    for w in seen.windows(2) {
        // Renewed at half-life, not before (the manager sleeps until then;
        // a little slack for its monotonic clock against the wall clock).
        assert!(
            w[1].issued + Duration::from_millis(50) >= w[0].renew_at(),
            "renewed before half-life: {w:?}"
        );
        assert!(w[0].not_after <= w[1].not_after, "{w:?}");
    }

    // The CA goes away: requests fail, the valid certificate stays.
    stop.send(()).expect("stop");
    let held = ids.get(&account).expect("a certificate");
    let failing = Instant::now();
    while ids.failures.load(Ordering::Relaxed) == 0 {
        tick.tick().await;
        assert!(
            failing.elapsed() < Duration::from_secs(10),
            "a failed renewal"
        );
    }
    let kept = ids.get(&account).expect("still a certificate");
    assert!(Arc::ptr_eq(&held, &kept), "the valid certificate is kept");

    // A service account no longer wanted loses its certificate.
    wanted.send_replace(BTreeSet::new());
    let dropping = Instant::now();
    while ids.get(&account).is_some() {
        tick.tick().await;
        assert!(dropping.elapsed() < Duration::from_secs(5));
    }
    manager.abort();
}
