//! Workload identity and mTLS in the lab: cross-node traffic is HBONE (TLS
//! 1.3 on 15008) on the underlay, the destination names the caller's SPIFFE
//! ID, impostors and policy-denied callers are refused, certificates rotate
//! under traffic, and connections share a few HTTP/2 connections.
//!
//! Impostors are played by this test from node-1's network namespace (as a
//! compromised node would): it holds certificates signed by the lab's own
//! CA, so only the check under test can refuse them.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use support::{LabGuard, labs, proxy_metric, success_stdout, up_with, weft};
use weft_lab::{LabName, in_netns};
use weft_proxy::identity::Certified;
use weft_proxy::identity::SpiffeId;

/// Two nodes; meshed `default`: a client (service account `default`) on
/// node-1, an echo pod (service account `echo`) on each node behind its own
/// service.
const TOPOLOGY: &str = r#"
nodes: [{name: node-1}, {name: node-2}]
namespaces:
  - {name: default, labels: {weft.io/mesh: enabled}}
pods:
  - {name: client, node: node-1}
  - {name: echo-1, node: node-1, serviceAccount: echo, labels: {app: echo, at: one}, command: [weft, lab, app, echo]}
  - {name: echo-2, node: node-2, serviceAccount: echo, labels: {app: echo, at: two}, command: [weft, lab, app, echo]}
services:
  - {name: same, selector: {at: one}, ports: [{port: 80, targetPort: 8080}, {port: 7000}], clusterIP: 198.19.0.11}
  - {name: other, selector: {at: two}, ports: [{port: 80, targetPort: 8080}, {port: 7000}], clusterIP: 198.19.0.12}
"#;

/// The raw TCP echo of the same-node and the other-node service.
const SAME: &str = "198.19.0.11:7000";
const OTHER: &str = "198.19.0.12:7000";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/default";
const ECHO_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";

fn up(tag: char) -> LabGuard {
    up_with(tag, TOPOLOGY)
}

fn netns_of_node(lab: &LabName, node: &str) -> String {
    labs()
        .status(lab)
        .expect("status")
        .plan
        .nodes
        .iter()
        .find(|n| n.name == node)
        .expect("the node")
        .netns
        .clone()
}

fn pod_ip(lab: &LabName, pod: &str) -> Ipv4Addr {
    labs()
        .status(lab)
        .expect("status")
        .plan
        .find_pod(pod)
        .expect("the pod")
        .ip
}

fn proxy_log(lab: &LabName, node: &str) -> String {
    let path = labs()
        .state_dir(lab)
        .join("logs")
        .join(format!("proxy-{node}.log"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Connects from inside a pod's netns.
fn connect_from(lab: &LabName, pod: &str, to: &str) -> std::io::Result<TcpStream> {
    let netns = labs()
        .status(lab)
        .expect("status")
        .plan
        .find_pod(pod)
        .expect("the pod")
        .netns
        .clone();
    let to: SocketAddr = to.parse().expect("address");
    in_netns(&netns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5))
    })
    .expect("a thread in the pod netns")
}

/// One echo exchange on a new connection from `pod`: what came back.
fn echo_once(lab: &LabName, pod: &str, to: &str, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = connect_from(lab, pod, to)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(message)?;
    s.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    Ok(back)
}

/// Waits until `check` holds, polling every 50 ms, for up to 10 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    assert!(
        weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            check().then_some(())
        })
        .is_some(),
        "timed out waiting until {what}"
    );
}

// ------------------------------------------------------------ the underlay

/// `tcpdump` on a node's underlay interface, writing a pcap file.
struct Tcpdump {
    child: Child,
    file: PathBuf,
}

impl Tcpdump {
    fn start(lab: &LabName, node: &str) -> Tcpdump {
        let file = std::env::temp_dir().join(format!("weft-test-{}-{node}.pcap", lab.as_str()));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &netns_of_node(lab, node), "tcpdump"])
            .args([
                "-i",
                "eth0",
                "--immediate-mode",
                "-U",
                "-n",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (installed by `cargo xtask test`)");
        // It prints "listening on eth0" once it captures; its stderr is
        // read to the end, so that nothing it writes there can block or
        // kill it.
        let mut stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 256];
            let mut told = false;
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if !told && String::from_utf8_lossy(&seen).contains("listening on") {
                    told = tx.send(Ok(())).is_ok();
                }
            }
            if !told {
                let _ = tx.send(Err(String::from_utf8_lossy(&seen).into_owned()));
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            other => panic!("tcpdump did not start: {other:?}"),
        }
        Tcpdump { child, file }
    }

    /// Stops it (SIGTERM, so it flushes) and returns the capture.
    fn finish(mut self) -> Vec<u8> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        #[expect(unsafe_code, reason = "kill(2) on the tcpdump this test started")]
        // SAFETY: kill only sends a signal to our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        self.child.wait().expect("tcpdump exits");
        std::fs::read(&self.file).expect("the capture file")
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A TCP segment's ports and payload.
struct Segment {
    sport: u16,
    dport: u16,
    payload: Vec<u8>,
}

/// The TCP/IPv4 segments of an Ethernet pcap file.
fn segments(pcap: &[u8]) -> Vec<Segment> {
    assert!(pcap.len() >= 24, "a pcap file has a 24-byte header");
    let le = match pcap[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file"),
    };
    let u32_at = |b: &[u8], i: usize| {
        let w: [u8; 4] = b[i..i + 4].try_into().expect("test set-up");
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    assert_eq!(u32_at(pcap, 20), 1, "Ethernet link type");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32_at(pcap, at + 8) as usize;
        let frame = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        at += 16 + len;
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ip[9] != 6 || ip.len() < ihl + 20 {
            continue;
        }
        let tcp = &ip[ihl..total.min(ip.len())];
        let off = usize::from(tcp[12] >> 4) * 4;
        out.push(Segment {
            sport: u16::from_be_bytes([tcp[0], tcp[1]]),
            dport: u16::from_be_bytes([tcp[2], tcp[3]]),
            payload: tcp[off.min(tcp.len())..].to_vec(),
        });
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn cross_node_traffic_is_tls13_to_15008_on_the_underlay_and_the_destination_names_the_source_spiffe_id()
 {
    let lab = up('u');
    let canary = format!("weft-plaintext-canary-{}", lab.arg()).repeat(40);
    let dump = Tcpdump::start(&lab.name, "node-2");
    let back = echo_once(&lab.name, "default/client", OTHER, canary.as_bytes()).unwrap();
    assert_eq!(back, canary.as_bytes(), "the echo pod on node-2 got it");
    // The access log is written when the stream ends.
    eventually("node-2 logs the closed connection", || {
        proxy_log(&lab.name, "node-2").contains("connection closed")
    });
    let pcap = dump.finish();
    let segs = segments(&pcap);
    assert!(
        !segs.is_empty(),
        "the capture saw the traffic ({} bytes of pcap)",
        pcap.len()
    );

    assert!(
        !contains(&pcap, canary.as_bytes()[..64].as_ref()),
        "not a byte of plaintext crosses the underlay"
    );
    assert!(
        segs.iter().all(|s| s.sport != 7000 && s.dport != 7000),
        "nothing goes to the application port in the clear"
    );
    let client_hello = segs.iter().any(|s| {
        s.dport == 15008 && s.payload.starts_with(&[0x16, 0x03]) && s.payload.get(5) == Some(&0x01)
    });
    assert!(client_hello, "a TLS ClientHello goes to 15008");
    // ServerHello with supported_versions = TLS 1.3 (0x002b, length 2, 0x0304).
    let tls13 = segs.iter().any(|s| {
        s.sport == 15008
            && s.payload.starts_with(&[0x16, 0x03, 0x03])
            && s.payload.get(5) == Some(&0x02)
            && contains(&s.payload, &[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04])
    });
    assert!(tls13, "the server chose TLS 1.3");

    // The destination's metrics and access log name the caller's identity.
    let series = format!(
        "weft_tcp_connections_opened_total{{direction=\"inbound\",source_workload=\"default/client\",source_principal=\"{CLIENT_ID}\",destination_workload=\"default/echo-2\",security=\"mutual_tls\"}}"
    );
    assert_eq!(proxy_metric(&lab.name, "node-2", &series), 1);
    let log = proxy_log(&lab.name, "node-2");
    let access = log
        .lines()
        .find(|l| l.contains("connection closed") && l.contains("weft::access"))
        .unwrap_or_else(|| panic!("no access log line in node-2's log:\n{log}"));
    assert!(
        access.contains(&format!("source_principal={CLIENT_ID}")),
        "{access}"
    );
    let sent = canary.len().to_string();
    assert!(access.contains(&format!("sent={sent}")), "{access}");
}

// ------------------------------------------------------------ impostors

/// What an HBONE attempt from outside the proxies came to.
#[derive(Debug)]
enum Attempt {
    /// The TLS handshake (or the TCP connection) failed.
    Refused(String),
    /// The CONNECT got this status.
    Status(http::StatusCode),
}

/// A certificate from the lab's CA for `account`, living `ttl`.
fn lab_certificate(lab: &LabName, account: (&str, &str), ttl: Duration) -> Certified {
    let ca = weft_control::ca::Ca::from_dir(
        &labs().state_dir(lab).join("ca"),
        "cluster.local",
        ttl,
        false,
    )
    .expect("the lab's CA");
    certificate_from(&ca, account)
}

/// A certificate signed by `ca` for `account`.
fn certificate_from(ca: &weft_control::ca::Ca, account: (&str, &str)) -> Certified {
    let key = rcgen::KeyPair::generate().expect("a key");
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("a CSR");
    let identity = SpiffeId {
        trust_domain: "cluster.local".into(),
        namespace: account.0.into(),
        service_account: account.1.into(),
    };
    let issued = ca.sign(&identity, csr.der()).expect("signing");
    Certified {
        spiffe_id: identity.to_string(),
        chain: issued.chain.into_iter().map(Into::into).collect(),
        key: rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        issued: SystemTime::now(),
        not_after: issued.not_after,
    }
}

fn lab_roots(lab: &LabName) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    let pem = std::fs::read(labs().state_dir(lab).join("ca").join("ca.pem")).expect("ca.pem");
    rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM")
}

/// From node-1's netns, as `cert`: TLS to `pod`:15008 expecting the echo
/// identity, then `CONNECT target` claiming to speak for `source`; on 200,
/// an echo exchange through the stream must work.
fn hbone_attempt(
    lab: &LabName,
    cert: Certified,
    pod: Ipv4Addr,
    target: SocketAddrV4,
    source: Ipv4Addr,
) -> Attempt {
    let roots = lab_roots(lab);
    let netns = netns_of_node(lab, "node-1");
    in_netns(&netns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test set-up");
        rt.block_on(async move {
            use http_body_util::Empty;
            use hyper_util::rt::{TokioExecutor, TokioIo};
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let config = weft_proxy::tls::client_config(
                &cert,
                &roots,
                SpiffeId::parse(ECHO_ID).expect("test set-up"),
            )
            .expect("test set-up");
            let tcp = match tokio::net::TcpStream::connect((pod, 15008)).await {
                Ok(t) => t,
                Err(e) => return Attempt::Refused(format!("TCP: {e}")),
            };
            let tls = match tokio_rustls::TlsConnector::from(config)
                .connect(weft_proxy::tls::server_name(pod), tcp)
                .await
            {
                Ok(t) => t,
                Err(e) => return Attempt::Refused(format!("TLS: {e}")),
            };
            let (mut send, conn) =
                match hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(tls))
                    .await
                {
                    Ok(x) => x,
                    // TLS 1.3 client certificates are checked after the client
                    // finishes: a refusal shows here.
                    Err(e) => return Attempt::Refused(format!("HTTP/2: {e}")),
                };
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri(target.to_string())
                .header("forwarded", format!("for={source}"))
                .body(Empty::new())
                .expect("a CONNECT request");
            let resp = match send.send_request(req).await {
                Ok(r) => r,
                Err(e) => return Attempt::Refused(format!("CONNECT: {e}")),
            };
            let status = resp.status();
            if status == http::StatusCode::OK {
                let mut io = TokioIo::new(hyper::upgrade::on(resp).await.expect("upgrade"));
                io.write_all(b"through the tunnel")
                    .await
                    .expect("test set-up");
                let mut back = [0u8; 18];
                io.read_exact(&mut back).await.expect("the echo answers");
                assert_eq!(&back, b"through the tunnel");
            }
            Attempt::Status(status)
        })
    })
    .expect("a thread in node-1's netns")
}

fn failures(lab: &LabName, node: &str, reason: &str) -> u64 {
    proxy_metric(
        lab,
        node,
        &format!("weft_tcp_connection_failures_total{{direction=\"inbound\",reason=\"{reason}\"}}"),
    )
}

#[test]
fn plaintext_to_the_tunnel_port_is_refused() {
    let lab = up('t');
    let echo2 = pod_ip(&lab.name, "default/echo-2");
    let before = failures(&lab.name, "node-2", "handshake");
    let netns = netns_of_node(&lab.name, "node-1");
    let answer = in_netns(&netns, move || -> std::io::Result<Vec<u8>> {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((echo2, 15008)), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n")?;
        let mut back = Vec::new();
        // A TLS alert, then the end (or a reset): never an HTTP answer.
        match s.read_to_end(&mut back) {
            Ok(_) => Ok(back),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(back),
            Err(e) => Err(e),
        }
    })
    .unwrap()
    .unwrap();
    assert!(
        !answer.starts_with(b"HTTP"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "at most a TLS alert comes back: {answer:?}"
    );
    eventually("node-2 counts a failed handshake", || {
        failures(&lab.name, "node-2", "handshake") > before
    });
    assert!(proxy_log(&lab.name, "node-2").contains("HBONE handshake refused"));
}

#[test]
fn a_lab_ca_certificate_works_for_the_right_identity_and_one_for_another_identity_is_refused() {
    let lab = up('i');
    let echo2 = pod_ip(&lab.name, "default/echo-2");
    let client = pod_ip(&lab.name, "default/client");
    let target = SocketAddrV4::new(echo2, 7000);
    let hour = Duration::from_secs(3600);

    // The harness itself works: the client's own identity gets through.
    let own = lab_certificate(&lab.name, ("default", "default"), hour);
    match hbone_attempt(&lab.name, own, echo2, target, client) {
        Attempt::Status(s) => assert_eq!(s, http::StatusCode::OK),
        other => panic!("the rightful identity was refused: {other:?}"),
    }

    // A valid certificate for another identity cannot speak for the client.
    let before = failures(&lab.name, "node-2", "bad_request");
    let intruder = lab_certificate(&lab.name, ("default", "intruder"), hour);
    match hbone_attempt(&lab.name, intruder, echo2, target, client) {
        Attempt::Status(s) => assert_eq!(s, http::StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {other:?}"),
    }
    assert_eq!(failures(&lab.name, "node-2", "bad_request"), before + 1);
    let log = proxy_log(&lab.name, "node-2");
    assert!(
        log.contains("the certificate does not match the source it speaks for")
            && log.contains("spiffe://cluster.local/ns/default/sa/intruder"),
        "{log}"
    );
}

#[test]
fn an_expired_certificate_is_refused_in_the_handshake() {
    let lab = up('x');
    let echo2 = pod_ip(&lab.name, "default/echo-2");
    let client = pod_ip(&lab.name, "default/client");
    let cert = lab_certificate(&lab.name, ("default", "default"), Duration::from_secs(1));
    let expired_at = cert.not_after + Duration::from_secs(1);
    assert!(
        weft_lab::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            (SystemTime::now() > expired_at).then_some(())
        })
        .is_some()
    );
    let before = failures(&lab.name, "node-2", "handshake");
    match hbone_attempt(
        &lab.name,
        cert,
        echo2,
        SocketAddrV4::new(echo2, 7000),
        client,
    ) {
        Attempt::Refused(why) => println!("the impostor saw: {why}"),
        other => panic!("an expired certificate got through: {other:?}"),
    }
    eventually("node-2 counts the refused handshake", || {
        failures(&lab.name, "node-2", "handshake") > before
    });
    let log = proxy_log(&lab.name, "node-2");
    assert!(
        log.lines()
            .any(|l| l.contains("HBONE handshake refused") && l.contains("certificate expired")),
        "{log}"
    );
}

// ------------------------------------------------------------ policy

fn apply_ok(lab: &LabGuard, name: &str, yaml: &str) {
    let path = std::env::temp_dir().join(format!("weft-test-{}-{name}", lab.arg()));
    std::fs::write(&path, yaml).expect("writing YAML");
    let file = path.to_str().expect("UTF-8").to_owned();
    let out = weft(&["apply", "--lab", lab.arg(), "-f", &file]);
    std::fs::remove_file(&path).expect("cleanup");
    success_stdout(&format!("weft apply -f {file}"), &out);
}

fn dump(lab: &LabName, node: &str) -> String {
    let (status, body) = labs()
        .proxy_admin(lab, node, "/config_dump")
        .expect("config dump");
    assert_eq!(status, 200);
    body
}

#[test]
fn a_deny_policy_refuses_matching_connections_on_both_nodes_and_leaves_the_rest() {
    let lab = up('d');
    let hello = b"hello".as_slice();
    assert_eq!(
        echo_once(&lab.name, "default/client", OTHER, hello).unwrap(),
        hello
    );
    apply_ok(
        &lab,
        "deny.yaml",
        r#"
apiVersion: weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-raw-echo-for-client, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
    - from: [{principals: ["spiffe://cluster.local/ns/default/sa/default"]}]
      to: [{ports: [7000]}]
"#,
    );
    eventually("both proxies have the policy", || {
        dump(&lab.name, "node-1").contains("no-raw-echo-for-client")
            && dump(&lab.name, "node-2").contains("no-raw-echo-for-client")
    });
    for (to, node, direction) in [(OTHER, "node-2", "inbound"), (SAME, "node-1", "outbound")] {
        let back = echo_once(&lab.name, "default/client", to, hello);
        assert!(
            back.as_deref().map_or(true, |b| b.is_empty()),
            "{to}: the denied connection carried data: {back:?}"
        );
        let denied = format!(
            "weft_authz_decisions_total{{direction=\"{direction}\",decision=\"deny\",policy=\"default/no-raw-echo-for-client\"}}"
        );
        assert_eq!(proxy_metric(&lab.name, node, &denied), 1, "{to}");
        assert!(
            proxy_log(&lab.name, node).contains("connection denied by authorization policy"),
            "{node}"
        );
    }
    // Another port of the same pods is not matched.
    let out = labs()
        .client(&lab.name, "default/client", "http://198.19.0.12/", &[])
        .expect("HTTP to port 8080 is still allowed");
    assert!(String::from_utf8_lossy(&out).contains("echo-2"));
}

// ------------------------------------------------------------ pooling, rotation

#[test]
fn two_hundred_concurrent_connections_between_one_identity_pair_ride_a_handful_of_http2_connections()
 {
    let lab = up('h');
    let mut open = Vec::new();
    for i in 0..200 {
        let mut s = connect_from(&lab.name, "default/client", OTHER).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let msg = format!("connection {i:03}");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
        open.push(s);
    }
    let active = |node: &str, d: &str| {
        proxy_metric(
            &lab.name,
            node,
            &format!("weft_hbone_connections_active{{direction=\"{d}\"}}"),
        )
    };
    let tunnels = active("node-1", "outbound");
    println!("200 connections over {tunnels} HBONE connections");
    assert!((1..=4).contains(&tunnels), "{tunnels} HTTP/2 connections");
    assert_eq!(active("node-2", "inbound"), tunnels);
    assert_eq!(
        proxy_metric(
            &lab.name,
            "node-1",
            "weft_hbone_streams_total{direction=\"outbound\"}"
        ),
        200
    );
    drop(open);
}

#[test]
fn with_thirty_second_certificates_two_minutes_of_traffic_see_rotations_and_not_one_failure() {
    let topology = format!("{TOPOLOGY}identity: {{certificateTtlSeconds: 30}}\n");
    let lab = up_with('r', &topology);
    let issued =
        |node: &str| proxy_metric(&lab.name, node, "weft_identity_certificates_issued_total");
    let dialled = || {
        proxy_metric(
            &lab.name,
            "node-1",
            "weft_hbone_connections_opened_total{direction=\"outbound\"}",
        )
    };
    // One connection lives through every rotation.
    let mut long = connect_from(&lab.name, "default/client", OTHER).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (issued_1, issued_2) = (issued("node-1"), issued("node-2"));
    let started = Instant::now();
    let mut requests = 0u64;
    let mut failed = Vec::new();
    while started.elapsed() < Duration::from_secs(120) {
        // Steady: 20 new connections a second.
        let next = started + Duration::from_millis(50) * u32::try_from(requests).unwrap();
        weft_lab::wait_until(Duration::from_secs(1), Duration::from_millis(5), || {
            (Instant::now() >= next).then_some(())
        });
        let msg = format!("request {requests}");
        match echo_once(&lab.name, "default/client", OTHER, msg.as_bytes()) {
            Ok(back) if back == msg.as_bytes() => {}
            other => failed.push(format!("{msg}: {other:?}")),
        }
        requests += 1;
        let tick = format!("tick {requests}");
        long.write_all(tick.as_bytes()).unwrap();
        let mut back = vec![0u8; tick.len()];
        long.read_exact(&mut back)
            .expect("the long connection survives rotation");
        assert_eq!(back, tick.as_bytes());
    }
    let rotations_1 = issued("node-1") - issued_1;
    let rotations_2 = issued("node-2") - issued_2;
    println!(
        "{requests} requests in 120 s; certificates issued meanwhile: node-1 {rotations_1}, node-2 {rotations_2}; HBONE connections dialled by node-1: {}",
        dialled()
    );
    assert!(
        failed.is_empty(),
        "{} of {requests} failed: {failed:?}",
        failed.len()
    );
    // node-1 holds 2 identities (default, echo), node-2 one (echo).
    assert!(rotations_1 >= 4, "node-1 renewed {rotations_1} times");
    assert!(rotations_2 >= 2, "node-2 renewed {rotations_2} times");
    assert!(
        dialled() >= 3,
        "renewed certificates start new HBONE connections"
    );
}

/// Whether every certificate `node` holds was issued at least a second
/// after `since` (`notAfter` has whole seconds: a certificate issued in the
/// same second as `since`, before it, could otherwise pass).
fn certificates_issued_after(lab: &LabName, node: &str, since: SystemTime, ttl: u64) -> bool {
    let dump: serde_json::Value = serde_json::from_str(&dump(lab, node)).expect("JSON dump");
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let certs = dump["certificates"].as_array().cloned().unwrap_or_default();
    !certs.is_empty()
        && certs
            .iter()
            .all(|c| c["notAfter"].as_u64().is_some_and(|t| t >= since + 1 + ttl))
}

/// Restarts the lab's control plane with `write` applied to its CA
/// directory meanwhile, and waits until both proxies hold only
/// certificates issued after the restart.
fn restart_ca(lab: &LabName, ttl: u64, write: impl FnOnce(&std::path::Path)) {
    let labs = labs();
    labs.stop_control(lab).expect("stopping the control plane");
    write(&labs.state_dir(lab).join("ca"));
    let restarted = SystemTime::now();
    labs.start_control_again(lab)
        .expect("starting the control plane");
    for node in ["node-1", "node-2"] {
        assert!(
            weft_lab::wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
                certificates_issued_after(lab, node, restarted, ttl).then_some(())
            })
            .is_some(),
            "{node} renewed its certificates after the CA restart:\n{}",
            dump(lab, node)
        );
    }
}

fn write_key(path: &std::path::Path, pem: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).expect("writing the key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn a_root_rotation_in_three_steps_keeps_cross_node_traffic_flowing() {
    const TTL: u64 = 8;
    let topology = format!("{TOPOLOGY}identity: {{certificateTtlSeconds: {TTL}}}\n");
    let lab = up_with('o', &topology);
    let ca_dir = labs().state_dir(&lab.name).join("ca");
    let old_root = std::fs::read_to_string(ca_dir.join("ca.pem")).expect("ca.pem");
    let old_key = std::fs::read_to_string(ca_dir.join("ca-key.pem")).expect("ca-key.pem");
    // The new root, made the way the control plane makes one.
    let new_dir = std::env::temp_dir().join(format!("weft-test-{}-newroot", lab.arg()));
    let _ = std::fs::remove_dir_all(&new_dir);
    weft_control::ca::Ca::from_dir(&new_dir, "cluster.local", Duration::from_secs(TTL), true)
        .expect("a new root");
    let new_root = std::fs::read_to_string(new_dir.join("ca.pem")).expect("new ca.pem");
    let new_key = std::fs::read_to_string(new_dir.join("ca-key.pem")).expect("new key");
    std::fs::remove_dir_all(&new_dir).expect("cleanup");

    // Steady cross-node traffic through all three steps.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let name = lab.name.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let msg = format!("request {ok}");
                match echo_once(&name, "default/client", OTHER, msg.as_bytes()) {
                    Ok(b) if b == msg.as_bytes() => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                let next = Instant::now() + Duration::from_millis(50);
                weft_lab::wait_until(Duration::from_secs(1), Duration::from_millis(5), || {
                    (Instant::now() >= next).then_some(())
                });
            }
            (ok, failed)
        })
    };

    // 1. The old CA announces the new root as trusted.
    restart_ca(&lab.name, TTL, |dir| {
        std::fs::write(dir.join("trusted-roots.pem"), &new_root).expect("trusted-roots.pem");
    });
    // 2. The new root signs; the old one is still trusted.
    restart_ca(&lab.name, TTL, |dir| {
        std::fs::write(dir.join("ca.pem"), &new_root).expect("ca.pem");
        write_key(&dir.join("ca-key.pem"), &new_key);
        std::fs::write(dir.join("trusted-roots.pem"), &old_root).expect("trusted-roots.pem");
    });
    // 3. The old root is gone.
    restart_ca(&lab.name, TTL, |dir| {
        std::fs::remove_file(dir.join("trusted-roots.pem")).expect("trusted-roots.pem");
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.join().expect("the traffic thread");
    println!("{ok} requests across the rotation, {} failed", failed.len());
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 0);

    // A certificate of the new root gets through; one of the old root no
    // longer does.
    let echo2 = pod_ip(&lab.name, "default/echo-2");
    let client = pod_ip(&lab.name, "default/client");
    let target = SocketAddrV4::new(echo2, 7000);
    let hour = Duration::from_secs(3600);
    let fresh = lab_certificate(&lab.name, ("default", "default"), hour);
    assert!(matches!(
        hbone_attempt(&lab.name, fresh, echo2, target, client),
        Attempt::Status(http::StatusCode::OK)
    ));
    let labs = labs();
    let ca_dir_now = labs.state_dir(&lab.name).join("ca");
    let old_dir = std::env::temp_dir().join(format!("weft-test-{}-oldroot", lab.arg()));
    std::fs::create_dir_all(&old_dir).expect("old root dir");
    std::fs::write(old_dir.join("ca.pem"), &old_root).expect("old ca.pem");
    write_key(&old_dir.join("ca-key.pem"), &old_key);
    let old_ca = weft_control::ca::Ca::from_dir(&old_dir, "cluster.local", hour, false)
        .expect("the old root");
    std::fs::remove_dir_all(&old_dir).expect("cleanup");
    let stale = certificate_from(&old_ca, ("default", "default"));
    match hbone_attempt(&lab.name, stale, echo2, target, client) {
        Attempt::Refused(why) => println!("a certificate of the retired root: {why}"),
        other => panic!("a certificate of the retired root got through: {other:?}"),
    }
    assert!(ca_dir_now.join("ca.pem").exists());
}

/// How a test client reaches the lab's control plane.
#[derive(Debug, Clone)]
enum Reach {
    /// Plain gRPC (the port speaks TLS: this must fail).
    Plaintext,
    /// TLS, trusting the roots in this PEM file.
    Tls(PathBuf),
}

/// From `node`'s netns, with `node`'s own token: one certificate request
/// per (way to reach the control plane, service account of `default`);
/// the SPIFFE IDs issued, or the errors.
fn ask_certificates(
    lab: &LabName,
    node: &str,
    asks: Vec<(Reach, &'static str)>,
) -> Vec<Result<String, String>> {
    let dump: serde_json::Value = serde_json::from_str(&dump(lab, node)).expect("JSON dump");
    let url = dump["config"]["controlPlane"]
        .as_str()
        .expect("the proxy's control plane")
        .to_owned();
    assert!(url.starts_with("https://"), "{url}");
    let token = std::fs::read_to_string(labs().state_dir(lab).join(format!("proxy-{node}.token")))
        .expect("the node's token");
    in_netns(&netns_of_node(lab, node), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            use weft_proxy::discovery::client::ControlPlaneClient;
            let mut answers = Vec::new();
            for (reach, sa) in asks {
                let client = match &reach {
                    Reach::Plaintext => {
                        ControlPlaneClient::new(&url.replace("https://", "http://"), Some(&token))
                    }
                    Reach::Tls(ca) => ControlPlaneClient::with_tls(&url, Some(&token), ca),
                }
                .expect("a client");
                let key = rcgen::KeyPair::generate().expect("a key");
                let csr = rcgen::CertificateParams::default()
                    .serialize_request(&key)
                    .expect("a CSR");
                answers.push(
                    client
                        .certificate(weft_control_api::discovery::CertificateRequest {
                            namespace: "default".into(),
                            service_account: sa.into(),
                            csr: csr.der().to_vec(),
                        })
                        .await
                        .map(|c| c.spiffe_id),
                );
            }
            answers
        })
    })
    .expect("a thread in the node's netns")
}

#[test]
fn a_node_asking_for_a_service_account_with_no_pod_on_it_gets_no_certificate() {
    let lab = up('a');
    let ca = Reach::Tls(labs().state_dir(&lab.name).join("ca").join("ca.pem"));
    // node-2 (echo-2 runs as `echo`) asks, with its own credential, for
    // `default` (only on node-1), for one nobody runs as, and for its own.
    let answers = ask_certificates(
        &lab.name,
        "node-2",
        vec![(ca.clone(), "default"), (ca.clone(), "ghost"), (ca, "echo")],
    );
    for (answer, sa) in answers.iter().zip(["default", "ghost"]) {
        let e = answer.as_ref().expect_err("refused");
        assert!(
            e.contains(&format!(
                "node node-2 has no pod with service account default/{sa}"
            )),
            "{e}"
        );
    }
    assert_eq!(answers[2].as_deref(), Ok(ECHO_ID));
}

#[test]
fn the_control_plane_port_speaks_only_tls_with_a_certificate_of_the_lab_root() {
    let lab = up('c');
    // A root of some other CA.
    let stranger = std::env::temp_dir().join(format!("weft-test-{}-stranger", lab.arg()));
    let _ = std::fs::remove_dir_all(&stranger);
    weft_control::ca::Ca::from_dir(&stranger, "cluster.local", Duration::from_secs(60), true)
        .expect("another root");
    let answers = ask_certificates(
        &lab.name,
        "node-1",
        vec![
            (Reach::Plaintext, "default"),
            (Reach::Tls(stranger.join("ca.pem")), "default"),
            (
                Reach::Tls(labs().state_dir(&lab.name).join("ca").join("ca.pem")),
                "default",
            ),
        ],
    );
    std::fs::remove_dir_all(&stranger).expect("cleanup");
    println!(
        "plaintext: {:?}\nanother root: {:?}",
        answers[0], answers[1]
    );
    assert!(answers[0].is_err(), "plaintext gRPC got an answer");
    let wrong = answers[1].as_ref().expect_err("another root was accepted");
    assert!(wrong.contains("TLS to the control plane"), "{wrong}");
    assert_eq!(answers[2].as_deref(), Ok(CLIENT_ID));
}
