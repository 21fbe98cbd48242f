//! The same-node fast path (sock_ops + sk_msg): used when a pod opts in,
//! correct for large transfers, invisible to applications that do not
//! opt in, and never pairing loopback sockets across pods.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::{LabGuard, labs, up_with};
use weft_lab::app::pingpong::PingPong;
use weft_lab::{LabName, in_netns};

/// Node 1: an echo server and a client that opted in to the fast path, and
/// a client that did not. Node 2: a sink behind two proxies (slower than a
/// socket-to-socket writer).
const TOPOLOGY: &str = r#"
nodes: [{name: node-1}, {name: node-2}]
namespaces: [{name: default, labels: {weft.io/mesh: enabled}}]
pods:
  - {name: plain, node: node-1}
  - {name: fast, node: node-1, labels: {weft.io/fast-path: enabled}}
  - {name: other, node: node-1, labels: {weft.io/fast-path: enabled}}
  - {name: echo, node: node-1, labels: {app: echo, weft.io/fast-path: enabled}, command: [weft, lab, app, echo]}
  - {name: far, node: node-2, labels: {app: far}, command: [weft, lab, app, echo]}
services:
  - {name: echo, selector: {app: echo}, ports: [{port: 7000}], clusterIP: 198.19.0.10}
  - {name: far, selector: {app: far}, ports: [{port: 7002}], clusterIP: 198.19.0.11}
"#;

fn up(tag: char) -> LabGuard {
    up_with(tag, TOPOLOGY)
}

fn decisions(lab: &LabName, decision: &str) -> u64 {
    support::proxy_metric(
        lab,
        "node-1",
        &format!("weft_capture_decisions_total{{decision=\"{decision}\"}}"),
    )
}

/// TCP segments a pod's netns has sent (`/proc/net/snmp`, Tcp OutSegs).
fn out_segs(lab: &LabName, pod: &str) -> u64 {
    let argv: Vec<String> = ["cat", "/proc/net/snmp"].map(str::to_owned).to_vec();
    let out = labs()
        .exec(lab, pod, &argv)
        .expect("exec")
        .output()
        .expect("cat");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (head, values) = (
        tcp.next().expect("Tcp header"),
        tcp.next().expect("Tcp values"),
    );
    let col = head
        .split_whitespace()
        .position(|c| c == "OutSegs")
        .expect("OutSegs column");
    values
        .split_whitespace()
        .nth(col)
        .and_then(|v| v.parse().ok())
        .expect("a number")
}

fn ping_pong(lab: &LabName, pod: &str, count: usize) -> PingPong {
    let out = labs()
        .exec(
            lab,
            pod,
            &[
                "weft",
                "lab",
                "app",
                "pingpong",
                "198.19.0.10:7000",
                "--count",
                &count.to_string(),
                "--warmup",
                "0",
            ]
            .map(str::to_owned),
        )
        .expect("exec")
        .output()
        .expect("pingpong");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a ping-pong result")
}

#[test]
fn a_ping_pong_over_the_fast_path_sends_no_tcp_segments_from_the_pod_and_about_one_per_round_trip_without()
 {
    let lab = up('s');
    const ROUNDS: u64 = 2000;
    for (pod, fast) in [("default/fast", true), ("default/plain", false)] {
        let redirected = decisions(&lab.name, "msg_redirected");
        let before = out_segs(&lab.name, pod);
        let result = ping_pong(&lab.name, pod, ROUNDS as usize);
        let sent = out_segs(&lab.name, pod) - before;
        let redirected = decisions(&lab.name, "msg_redirected") - redirected;
        eprintln!(
            "{pod}: {sent} TCP segments, {redirected} messages redirected for {ROUNDS} round trips; {result:?}"
        );
        if fast {
            // Handshake and teardown only: no segment per round trip.
            assert!(sent <= 8, "{pod} sent {sent} segments");
            // Both legs (pod <-> proxy <-> echo), both ways.
            assert!(redirected >= 4 * ROUNDS, "{redirected} redirected");
        } else {
            assert!(
                sent >= ROUNDS,
                "{pod} sent {sent} segments for {ROUNDS} round trips"
            );
        }
    }
}

#[test]
fn a_blocking_client_that_did_not_opt_in_passes_every_run_while_its_server_uses_the_fast_path() {
    let lab = up('b');
    let redirected = decisions(&lab.name, "msg_redirected");
    for (size, runs) in [("64", "1000"), ("104857600", "2")] {
        let argv: Vec<String> = [
            "weft",
            "lab",
            "app",
            "blocking",
            "198.19.0.10:7000",
            "--size",
            size,
            "--runs",
            runs,
            "--timeout",
            "30",
        ]
        .map(str::to_owned)
        .to_vec();
        let out = labs()
            .exec(&lab.name, "default/plain", &argv)
            .expect("exec")
            .output()
            .expect("blocking");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{size} bytes x {runs}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("{runs} of {runs} exchanges")),
            "{text}"
        );
    }
    // The proxy <-> echo leg took the fast path meanwhile.
    assert!(decisions(&lab.name, "msg_redirected") > redirected + 2000);
}

/// A reader like an event-driven application: `EAGAIN` means "wait".
/// Opted-in pods must read like this (docs/ARCHITECTURE.md, "The fast path").
fn read_to_end_retrying(mut s: TcpStream, mut each: impl FnMut(&[u8])) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => {
                each(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {total} bytes: {e}"),
        }
    }
}

#[test]
fn one_gib_over_the_fast_path_arrives_byte_identical_also_across_a_switch_to_tcp() {
    let lab = up('f');
    let redirected = decisions(&lab.name, "msg_redirected");
    echo_transfer(&lab.name, "default/fast", 1 << 30, None).unwrap_or_else(|e| panic!("{e}"));
    // Part of it went socket to socket; once a reader fell behind by the
    // window, that direction went on over TCP. The bytes stayed in order
    // across the switch.
    let redirected = decisions(&lab.name, "msg_redirected") - redirected;
    let switched = decisions(&lab.name, "msg_backpressure");
    eprintln!("1 GiB: {redirected} messages redirected, {switched} directions switched to TCP");
    assert!(
        redirected >= 16,
        "the transfer took the fast path ({redirected})"
    );
}

/// The stall of docs/ARCHITECTURE.md ("The fast path"): echo transfers in
/// bursts, the writer waiting for each burst's echo and the reader pausing
/// before each burst, so that the directions switch to TCP while their
/// receivers still hold redirected bytes and then the writer stops. Such a
/// socket returns its bytes one queue at a time; a reader that takes a
/// short read as "drained" (tokio's `poll_read`) waits for a wake-up that
/// never comes, since no more bytes are on their way.
#[test]
fn echo_bursts_whose_readers_pause_never_stall_across_the_switch_to_tcp() {
    let lab = up('t');
    const PARALLEL: usize = 2;
    let switched = decisions(&lab.name, "msg_backpressure");
    let transfers: Vec<_> = (0..PARALLEL)
        .map(|i| {
            let lab = lab.name.clone();
            let pod = ["default/fast", "default/other"][i % 2];
            let bursts = Bursts {
                size: 64 << 20,
                pause: Duration::from_millis(700),
            };
            std::thread::spawn(move || echo_transfer(&lab, pod, 8 * (64 << 20), Some(bursts)))
        })
        .collect();
    for (i, t) in transfers.into_iter().enumerate() {
        t.join()
            .expect("transfer thread")
            .unwrap_or_else(|e| panic!("transfer {i}: {e}"));
    }
    let switched = decisions(&lab.name, "msg_backpressure") - switched;
    assert!(
        switched >= 2,
        "the pauses switched directions to TCP ({switched} switches)"
    );
}

/// An echo transfer in bursts: the writer sends `size` bytes, then waits
/// until they are all read back; the reader pauses for `pause` before
/// each burst.
#[derive(Debug, Clone, Copy)]
struct Bursts {
    size: u64,
    pause: Duration,
}

/// Sends `total` bytes of a known pattern from `pod` to the echo service
/// and reads them back, checking each byte, at once or in `bursts`. A
/// transfer that goes [`STALL`] without a byte read back is cut and
/// reported as stalled.
fn echo_transfer(
    lab: &LabName,
    pod: &str,
    total: u64,
    bursts: Option<Bursts>,
) -> Result<(), String> {
    let netns = labs()
        .status(lab)
        .expect("status")
        .plan
        .find_pod(pod)
        .expect("pod")
        .netns
        .clone();
    let to: SocketAddr = "198.19.0.10:7000".parse().expect("addr");
    let stream = in_netns(&netns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5))
    })
    .expect("thread")
    .map_err(|e| format!("connect: {e}"))?;
    let reader = stream.try_clone().expect("clone");
    let progress = Arc::new(AtomicU64::new(0));
    let read_so_far = progress.clone();
    let check = std::thread::spawn(move || {
        let mut pos = 0u64;
        let mut bad = None;
        if let Some(b) = bursts {
            slow_reader(b.pause);
        }
        let got = read_to_end_retrying(reader, |chunk| {
            for (i, b) in chunk.iter().enumerate() {
                if bad.is_none() && *b != byte_at(pos + i as u64) {
                    bad = Some(pos + i as u64);
                }
            }
            pos += chunk.len() as u64;
            read_so_far.store(pos, Ordering::Relaxed);
            if let Some(b) = bursts
                && pos.is_multiple_of(b.size)
                && pos < total
            {
                slow_reader(b.pause);
            }
        });
        (got, bad)
    });
    // A transfer that stops moving fails instead of hanging: the watchdog
    // cuts the connection, and the write or the read fails.
    let stalled = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let stream = stream.try_clone().expect("clone");
        let progress = progress.clone();
        let stalled = stalled.clone();
        std::thread::spawn(move || {
            let mut seen = u64::MAX;
            while progress.load(Ordering::Relaxed) < total {
                let now = progress.load(Ordering::Relaxed);
                if now == seen {
                    stalled.store(true, Ordering::Relaxed);
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                seen = now;
                std::thread::park_timeout(STALL);
            }
        })
    };
    let mut writer = stream;
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < total {
        if let Some(b) = bursts
            && sent.is_multiple_of(b.size)
        {
            // The echo of the last burst comes back before the next one.
            while progress.load(Ordering::Relaxed) < sent && !stalled.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(2));
            }
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = byte_at(sent + i as u64);
        }
        if let Err(e) = writer.write_all(&buf) {
            return Err(format!(
                "write after {sent} bytes sent, {} read back: {e}{}",
                progress.load(Ordering::Relaxed),
                stall_note(&stalled)
            ));
        }
        sent += buf.len() as u64;
    }
    writer.shutdown(Shutdown::Write).expect("half-close");
    let joined = check.join();
    watchdog.thread().unpark();
    let (got, bad) = joined.map_err(|_| format!("the reader failed{}", stall_note(&stalled)))?;
    if stalled.load(Ordering::Relaxed) {
        return Err(format!(
            "after {got} bytes read back{}",
            stall_note(&stalled)
        ));
    }
    if let Some(at) = bad {
        return Err(format!("byte {at} differs"));
    }
    if got != total {
        return Err(format!("{got} bytes read back of {total}"));
    }
    Ok(())
}

/// The reader stops reading for `d`: the behaviour under test, not a
/// wait for a condition.
#[expect(
    clippy::disallowed_methods,
    reason = "a reader that pauses is what the test is made of"
)]
fn slow_reader(d: Duration) {
    std::thread::sleep(d);
}

/// How long a transfer may go without a byte read back.
const STALL: Duration = Duration::from_secs(60);

fn stall_note(stalled: &AtomicBool) -> String {
    if stalled.load(Ordering::Relaxed) {
        format!(
            " (the transfer stalled: nothing was read back for {} s, and the watchdog cut it)",
            STALL.as_secs()
        )
    } else {
        String::new()
    }
}

fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9) >> 11) as u8
}

#[test]
fn loopback_connections_inside_two_pods_with_identical_tuples_are_never_paired_across_pods() {
    let lab = up('l');
    let status = labs().status(&lab.name).expect("status");
    let added = decisions(&lab.name, "sock_added");
    let mut replies = Vec::new();
    for pod in ["default/fast", "default/other"] {
        let netns = status.plan.find_pod(pod).expect("pod").netns.clone();
        let tag = pod.to_owned();
        let reply = in_netns(&netns, move || -> std::io::Result<String> {
            // The same 4-tuple in both pods: 127.0.0.1:40123 -> 127.0.0.1:5555.
            let listener = TcpListener::bind("127.0.0.1:5555")?;
            let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            client.bind(
                &"127.0.0.1:40123"
                    .parse::<SocketAddr>()
                    .expect("addr")
                    .into(),
            )?;
            client.connect(&"127.0.0.1:5555".parse::<SocketAddr>().expect("addr").into())?;
            let mut client: TcpStream = client.into();
            let (mut server, _) = listener.accept()?;
            client.write_all(tag.as_bytes())?;
            client.shutdown(Shutdown::Write)?;
            let mut got = String::new();
            server.read_to_string(&mut got)?;
            Ok(got)
        })
        .expect("thread")
        .expect("loopback exchange");
        replies.push(reply);
    }
    assert_eq!(replies, ["default/fast", "default/other"]);
    assert_eq!(
        decisions(&lab.name, "sock_added"),
        added,
        "loopback sockets stay out of the map"
    );
}

#[test]
fn a_writer_faster_than_its_reader_is_held_back_instead_of_filling_kernel_memory() {
    // The kernel queues redirected bytes without looking at the receiver's
    // buffer: without weft's own flow control this transfer ends in ENOMEM
    // after the receiving proxy socket queued over a gigabyte.
    let lab = up('w');
    let argv: Vec<String> = [
        "weft",
        "lab",
        "app",
        "stream",
        "198.19.0.11:7002",
        "--bytes",
        "4294967296",
    ]
    .map(str::to_owned)
    .to_vec();
    let out = labs()
        .exec(&lab.name, "default/fast", &argv)
        .expect("exec")
        .output()
        .expect("stream");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(result["bytes"].as_u64(), Some(4_294_967_296));
    assert!(
        decisions(&lab.name, "msg_backpressure") >= 1,
        "the direction left the fast path when its receiver filled up"
    );
}
