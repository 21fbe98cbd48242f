//! The control plane at scale: 1,000 services over 10,000 pods on 100
//! nodes, read, validated and streamed to a proxy's config client. Reports
//! timings (a measurement, not a timed assertion) and checks the results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weft_control::index::Store;
use weft_control::server::{ControlPlane, serve_on};
use weft_control::source::file::parse;
use weft_proxy::discovery::client::follow;

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
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{s}, namespace: scale}}\n\
             spec: {{clusterIP: 10.200.{}.{}, selector: {{app: s{s}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n",
            s / 250,
            s % 250 + 1
        ));
    }
    y
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
    tokio::spawn(async move { serve_on(served, listener, std::future::pending()).await });

    let (tx, mut rx) = mpsc::channel(1);
    let connect = Instant::now();
    let client = tokio::spawn(follow(format!("http://{addr}"), "node-1".into(), tx));
    let first = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a snapshot")
        .expect("running");
    let snapshot = connect.elapsed();
    assert_eq!(first.mesh().expect("a mesh").workloads.len(), PODS);
    assert_eq!(first.mesh().expect("a mesh").services.len(), SERVICES);
    first.done.expect("reply").send(Ok(1)).expect("ack");

    // One change: a new pod behind service s7. Time from apply to the
    // proxy's ACK reaching the control plane.
    let change = "apiVersion: v1\nkind: Pod\nmetadata: {name: extra, namespace: scale, labels: {app: s7}}\n\
                  spec: {nodeName: node-1, containers: [{name: c}]}\nstatus: {podIP: 10.250.0.1}\n";
    let cp2: Arc<ControlPlane> = cp.clone();
    let applied_at = Instant::now();
    let version = tokio::task::spawn_blocking(move || {
        cp2.apply(&[("change.yaml".into(), change.into())], false)
    })
    .await
    .expect("task")
    .expect("applied");
    let apply_took = applied_at.elapsed();
    let update = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("an update")
        .expect("running");
    assert_eq!(update.mesh().expect("a mesh").workloads.len(), PODS + 1);
    update.done.expect("reply").send(Ok(2)).expect("ack");
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    loop {
        tick.tick().await;
        if cp
            .nodes()
            .get("node-1")
            .is_some_and(|s| s.acked_version == version)
        {
            break;
        }
    }
    let to_ack = applied_at.elapsed();
    eprintln!(
        "scale ({PODS} pods, {SERVICES} services, {NODES} nodes): parse {:.0} ms, validate+index {:.0} ms, \
         first snapshot to a proxy {:.0} ms; one change: apply {:.0} ms, apply to ACK {:.0} ms",
        parsed.as_secs_f64() * 1e3,
        indexed.as_secs_f64() * 1e3,
        snapshot.as_secs_f64() * 1e3,
        apply_took.as_secs_f64() * 1e3,
        to_ack.as_secs_f64() * 1e3,
    );
    client.abort();
}
