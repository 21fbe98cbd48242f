//! The control plane at scale: 1,000 services and 1,000 policies over
//! 10,000 pods on 100 nodes, read, validated and streamed to 100 proxy
//! config clients at once. Reports
//! timings (a measurement, not a timed assertion) and checks the results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weft_control::index::{Check, Store};
use weft_control::server::{ControlPlane, serve_on};
use weft_control::source::file::parse;
use weft_control_api::discovery as pb;
use weft_control_api::discovery::discovery_client::DiscoveryClient;
use weft_proxy::discovery::client::{ControlPlaneClient, Update, follow};

const PODS: usize = 10_000;
const SERVICES: usize = 1_000;
const NODES: usize = 100;

fn world_yaml() -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: scale, labels: {weft.io/mesh: enabled}}\n",
    );
    for i in 0..PODS {
        let (a, b) = (i / 250, i % 250 + 2);
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: scale, labels: {{app: s{}}}}}\n\
             spec: {{nodeName: node-{}, containers: [{{name: c}}]}}\nstatus: {{podIP: 10.{a}.{b}.1}}\n",
            i % SERVICES,
            i % NODES
        ));
    }
    for s in 0..SERVICES {
        y.push_str(&format!(
            "---\napiVersion: weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: s{s}, namespace: scale}}\n\
             spec: {{selector: {{matchLabels: {{app: s{s}}}}}, action: ALLOW, rules: [{{from: [{{namespaces: [scale]}}]}}]}}\n"
        ));
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{s}, namespace: scale}}\n\
             spec: {{clusterIP: 10.200.{}.{}, selector: {{app: s{s}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n",
            s / 250,
            s % 250 + 1
        ));
    }
    y
}

/// A node that ACKs every update and reports the counts of the first (full)
/// one and then of what changed.
async fn bare_node(
    addr: std::net::SocketAddr,
    node: String,
    seen: tokio::sync::watch::Sender<(usize, usize, usize)>,
) {
    let mut client = DiscoveryClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::NodeMessage {
        kind: Some(pb::node_message::Kind::Hello(pb::Hello {
            node,
            version: 0,
        })),
    })
    .await
    .expect("hello");
    let mut inbound = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    while let Ok(Some(u)) = inbound.message().await {
        let counts = (u.workloads.len(), u.services.len(), u.policies.len());
        tx.send(pb::NodeMessage {
            kind: Some(pb::node_message::Kind::Ack(pb::Ack { version: u.version })),
        })
        .await
        .expect("ack");
        seen.send_replace(counts);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_services_and_ten_thousand_pods_are_indexed_and_streamed() {
    let yaml = world_yaml();
    let started = Instant::now();
    let docs = parse("scale.yaml", &yaml).expect("parses");
    let parsed = started.elapsed();
    let (store, world) = Store::default().applied(docs).expect("valid");
    let indexed = started.elapsed() - parsed;
    assert_eq!(world.workloads.len(), PODS);
    assert_eq!(world.services.len(), SERVICES);
    assert!(
        world
            .services
            .values()
            .all(|s| s.endpoints.len() == PODS / SERVICES)
    );

    let cp = ControlPlane::new(store, None).expect("control plane");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = cp.clone();
    tokio::spawn(async move { serve_on(served, listener, None, std::future::pending()).await });

    // node-1 runs the proxy's real config client (the test plays the
    // proxy's apply step and ACKs); the 99 other nodes are bare streams
    // that ACK what they get, so that the figure is the control plane's
    // fan-out and one proxy's client, not 100 clients sharing two cores.
    let connect = Instant::now();
    let mut acked = Vec::new();
    let mut clients = Vec::new();
    for n in 0..NODES {
        let node = format!("node-{n}");
        let (seen_tx, seen_rx) = tokio::sync::watch::channel((0usize, 0usize, 0usize));
        acked.push(seen_rx);
        if n == 1 {
            let (tx, mut rx) = mpsc::channel::<Update>(1);
            clients.push(tokio::spawn(follow(
                ControlPlaneClient::new(&format!("http://{addr}"), None).expect("client"),
                node,
                tx,
            )));
            clients.push(tokio::spawn(async move {
                let mut generation = 0;
                while let Some(update) = rx.recv().await {
                    let mesh = update.mesh().expect("a mesh");
                    let counts = (
                        mesh.workloads.len(),
                        mesh.services.len(),
                        mesh.policies.len(),
                    );
                    generation += 1;
                    update
                        .done
                        .expect("reply")
                        .send(Ok(generation))
                        .expect("ack");
                    seen_tx.send_replace(counts);
                }
            }));
        } else {
            clients.push(tokio::spawn(bare_node(addr, node, seen_tx)));
        }
    }
    let all_acked = |version: u64| {
        (0..NODES).all(|n| {
            cp.nodes()
                .get(&format!("node-{n}"))
                .is_some_and(|s| s.acked_version == version)
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while !all_acked(1) {
        tick.tick().await;
        assert!(
            connect.elapsed() < Duration::from_secs(300),
            "snapshots to every node"
        );
    }
    let snapshots = connect.elapsed();
    for (n, seen) in acked.iter().enumerate() {
        let (workloads, services, policies) = *seen.borrow();
        assert_eq!(
            workloads, PODS,
            "node-{n}: every pod is meshed, so every pod"
        );
        assert_eq!(services, SERVICES);
        assert_eq!(
            policies,
            SERVICES / NODES,
            "node-{n}: only the policies selecting its pods"
        );
    }

    // One change: a new pod behind service s7. Time from apply to every
    // node's ACK reaching the control plane.
    let change = "apiVersion: v1\nkind: Pod\nmetadata: {name: extra, namespace: scale, labels: {app: s7}}\n\
                  spec: {nodeName: node-1, containers: [{name: c}]}\nstatus: {podIP: 10.250.0.1}\n";
    let cp2: Arc<ControlPlane> = cp.clone();
    let applied_at = Instant::now();
    let version = tokio::task::spawn_blocking(move || {
        cp2.apply(
            &[("change.yaml".into(), change.into())],
            false,
            Check::Strict,
        )
    })
    .await
    .expect("task")
    .expect("applied")
    .0;
    let apply_took = applied_at.elapsed();
    while !all_acked(version) {
        tick.tick().await;
        assert!(
            applied_at.elapsed() < Duration::from_secs(300),
            "every node ACKs"
        );
    }
    let to_ack = applied_at.elapsed();
    assert_eq!(
        acked[1].borrow().0,
        PODS + 1,
        "node-1's proxy holds the new pod"
    );
    assert_eq!(
        acked[1].borrow().2,
        SERVICES / NODES + 1,
        "s7's policy now selects a node-1 pod"
    );
    assert_eq!(
        *acked[2].borrow(),
        (1, 1, 0),
        "node-2 gets the pod and s7's new endpoint, not s7's policy"
    );
    eprintln!(
        "scale ({PODS} pods, {SERVICES} services, {SERVICES} policies, {NODES} nodes): parse {:.0} ms, \
         validate+index {:.0} ms, full snapshots ACKed by all {NODES} nodes {:.0} ms; one change: \
         apply {:.0} ms, apply to ACK by all {NODES} nodes {:.0} ms",
        parsed.as_secs_f64() * 1e3,
        indexed.as_secs_f64() * 1e3,
        snapshots.as_secs_f64() * 1e3,
        apply_took.as_secs_f64() * 1e3,
        to_ack.as_secs_f64() * 1e3,
    );
    for c in clients {
        c.abort();
    }
}
