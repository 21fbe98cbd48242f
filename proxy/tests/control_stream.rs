//! The proxy's config client against a real control plane, in-process:
//! full snapshot, ACK, incremental update, NACK and resend, control plane
//! restart and resync. The proxy's own apply step is played by the test.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use weft_control::index::{Check, Store};
use weft_control::server::{ControlPlane, serve_on};
use weft_control::source::file::parse;
use weft_proxy::config::PolicyAction;
use weft_proxy::discovery::client::{ControlPlaneClient, Update, follow};

const WORLD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.io/mesh: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: web}]}
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
"#;

const POLICY: &str = r#"
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
    - from: [{namespaces: [legacy]}]
      to: [{ports: [8080]}]
"#;

const SECOND_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: web}]}
status: {podIP: 198.18.2.2}
"#;

async fn start(listener: TcpListener) -> (Arc<ControlPlane>, oneshot::Sender<()>) {
    let store = Store::default()
        .applied(parse("world.yaml", WORLD).expect("parse"))
        .expect("valid")
        .0;
    let cp = ControlPlane::new(store, None).expect("control plane");
    let (stop, stopped) = oneshot::channel::<()>();
    let served = cp.clone();
    tokio::spawn(async move {
        serve_on(served, listener, None, async {
            let _ = stopped.await;
        })
        .await
    });
    (cp, stop)
}

fn mesh(u: &Update) -> &weft_proxy::update::Mesh {
    u.mesh().expect("an update from the control plane")
}

async fn next(rx: &mut mpsc::Receiver<Update>) -> Update {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an update within 10 s")
        .expect("the client is running")
}

/// Waits (checking every 10 ms, at most 10 s) until `cond` holds.
async fn eventually<F: Future<Output = bool>>(mut cond: impl FnMut() -> F) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tick.tick().await;
            if cond().await {
                return;
            }
        }
    })
    .await
    .expect("the condition within 10 s");
}

#[tokio::test]
async fn the_proxy_gets_a_snapshot_acks_refuses_a_bad_update_and_resyncs_after_a_control_plane_restart()
 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (cp, stop) = start(listener).await;
    let (tx, mut rx) = mpsc::channel(1);
    let client = tokio::spawn(follow(
        ControlPlaneClient::new(&format!("http://{addr}"), None).expect("client"),
        "node-1".into(),
        tx,
    ));

    // 1. A full snapshot; the proxy applies it.
    let u = next(&mut rx).await;
    assert_eq!(mesh(&u).workloads.len(), 1);
    assert_eq!(
        mesh(&u).services[0].endpoints,
        ["198.18.1.2".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    u.done.expect("a reply channel").send(Ok(2)).unwrap();
    eventually(|| {
        let cp = cp.clone();
        async move {
            cp.nodes()
                .get("node-1")
                .is_some_and(|s| s.acked_version == 1 && s.connected)
        }
    })
    .await;

    // 2. A change arrives as an update on top of version 1; the proxy
    //    refuses it, keeps its config, and gets a full snapshot at once.
    let version = cp
        .apply(
            &[("second.yaml".into(), SECOND_POD.into())],
            false,
            Check::Strict,
        )
        .expect("applied")
        .0;
    assert_eq!(version, 2);
    let u = next(&mut rx).await;
    assert_eq!(mesh(&u).services[0].endpoints.len(), 2);
    u.done
        .expect("reply")
        .send(Err("not today".into()))
        .unwrap();
    eventually(|| {
        let cp = cp.clone();
        async move {
            cp.nodes()
                .get("node-1")
                .is_some_and(|s| s.last_nack == "not today" && s.acked_version == 1)
        }
    })
    .await;
    let u = next(&mut rx).await;
    assert_eq!(
        mesh(&u).workloads.len(),
        2,
        "the full snapshot after a NACK"
    );
    u.done.expect("reply").send(Ok(3)).unwrap();
    eventually(|| {
        let cp = cp.clone();
        async move {
            cp.nodes()
                .get("node-1")
                .is_some_and(|s| s.acked_version == 2)
        }
    })
    .await;

    // 3. A bad apply changes nothing and sends nothing.
    let rejected = cp
        .apply(
            &[(
                "bad.yaml".into(),
                SECOND_POD.replace("198.18.2.2", "198.18.1.2"),
            )],
            false,
            Check::Strict,
        )
        .unwrap_err();
    assert!(
        rejected
            .to_string()
            .contains("bad.yaml document 1: status.podIP"),
        "{rejected}"
    );
    assert_eq!(cp.published().version, 2);

    // 4. A policy selecting the web pods reaches node-1 listing only its
    //    own pod, as an update on top of what it ACKed.
    let version = cp
        .apply(
            &[("policy.yaml".into(), POLICY.into())],
            false,
            Check::Strict,
        )
        .expect("applied")
        .0;
    let u = next(&mut rx).await;
    let policies = &mesh(&u).policies;
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].key(), "shop/web-allow");
    assert_eq!(policies[0].action, PolicyAction::Deny);
    assert_eq!(policies[0].rules[0].to[0].ports, [8080]);
    assert_eq!(
        policies[0].workloads,
        ["198.18.1.2".parse::<std::net::Ipv4Addr>().unwrap()],
        "web-2 is on node-2"
    );
    u.done.expect("reply").send(Ok(4)).unwrap();
    eventually(|| {
        let cp = cp.clone();
        async move {
            cp.nodes()
                .get("node-1")
                .is_some_and(|s| s.acked_version == version)
        }
    })
    .await;

    // 5. The control plane goes away and comes back on the same address:
    //    the proxy resyncs without a restart.
    stop.send(()).unwrap();
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::task::yield_now().await,
        }
    };
    let (cp2, _stop2) = start(listener).await;
    let u = next(&mut rx).await;
    assert_eq!(mesh(&u).workloads.len(), 1, "the new control plane's world");
    u.done.expect("reply").send(Ok(5)).unwrap();
    eventually(|| {
        let cp2 = cp2.clone();
        async move {
            cp2.nodes()
                .get("node-1")
                .is_some_and(|s| s.acked_version == 1)
        }
    })
    .await;
    client.abort();
}

#[tokio::test]
async fn a_stream_waiting_after_a_refused_snapshot_still_ends_when_the_control_plane_stops() {
    use weft_control_api::discovery as pb;
    use weft_control_api::discovery::discovery_client::DiscoveryClient;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (cp, _stop) = start(listener).await;
    let mut grpc = DiscoveryClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::NodeMessage {
        kind: Some(pb::node_message::Kind::Hello(pb::Hello {
            node: "node-1".into(),
            version: 0,
        })),
    })
    .await
    .expect("hello");
    let mut inbound = grpc
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let full = inbound.message().await.expect("ok").expect("a snapshot");
    assert!(full.full);
    tx.send(pb::NodeMessage {
        kind: Some(pb::node_message::Kind::Nack(pb::Nack {
            version: full.version,
            reason: "no".into(),
        })),
    })
    .await
    .expect("nack");
    eventually(|| {
        let cp = cp.clone();
        async move {
            cp.nodes()
                .get("node-1")
                .is_some_and(|s| s.last_nack == "no")
        }
    })
    .await;
    cp.close_streams();
    let ended = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("the stream ends within 5 s");
    assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");
}
