//! The load generator: open loop at a constant rate, with coordinated
//! omission corrected, or closed loop as fast as it goes.
//!
//! Each connection is a thread with a blocking socket that owns every
//! `connections`-th slot of the schedule (slot `k` is due at
//! `start + k / rate`), and sends every slot's request, late ones as soon
//! as it can. A request is timed from the moment it was due when the
//! connection was still busy with the previous one at that moment (the
//! delay the system under test caused counts, as in wrk2), and from the
//! moment it was sent otherwise (the generator's own timer slack is not the
//! system's).
//!
//! Protocols: HTTP/1.1 `POST /` with a body of `payload` bytes on a
//! keep-alive connection (the lab's echo server answers with the same
//! body), raw TCP ping-pong of `payload` bytes (the echo port), or gRPC
//! unary calls over HTTP/2 prior knowledge (h2c), one call at a time on
//! each connection, to the lab echo's
//! `gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo` with a
//! request message of `payload` bytes (an unknown field the server skips,
//! as protobuf requires).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 request/response.
    Http,
    /// Raw TCP ping-pong.
    Tcp,
    /// gRPC unary calls over h2c.
    Grpc,
}

/// One load run.
#[derive(Debug, Clone)]
pub struct Load {
    /// The server.
    pub target: SocketAddr,
    /// HTTP or TCP.
    pub protocol: Protocol,
    /// Requests a second in all; `None`: closed loop, as fast as it goes.
    pub rate: Option<f64>,
    /// How long to measure.
    pub duration: Duration,
    /// How long to run before measuring (connections warm, caches hot).
    pub warmup: Duration,
    /// Connections, each its own thread.
    pub connections: usize,
    /// Request (and response) body size.
    pub payload: usize,
}

/// What a run measured (latencies in microseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Requests answered in the measured window.
    pub requests: u64,
    /// Requests that failed (a connection that fails reconnects).
    pub errors: u64,
    /// Requests answered from the first one on, warmup included: every
    /// request the proxy served while the run's CPU time was counted.
    pub answered: u64,
    /// Seconds from the start of the measured window to its last answer.
    pub seconds: f64,
    /// Requests answered per second.
    pub achieved_rate: f64,
    /// Latency percentiles.
    pub p50_us: f64,
    /// 90th.
    pub p90_us: f64,
    /// 99th.
    pub p99_us: f64,
    /// 99.9th.
    pub p999_us: f64,
    /// The slowest.
    pub max_us: f64,
    /// (percentile, microseconds) from 0 to 99.99, for plots.
    pub curve: Vec<(f64, f64)>,
}

/// Runs `load` and measures it.
pub fn run(load: &Load) -> Result<Outcome> {
    if load.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if load.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number");
    }
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    let threads: Vec<_> = (0..load.connections)
        .map(|i| {
            let load = load.clone();
            std::thread::spawn(move || connection(&load, i, start, measure_from, end))
        })
        .collect();
    let mut all = new_histogram()?;
    let mut errors = 0;
    let mut answered = 0;
    let mut last = end;
    for t in threads {
        let (h, e, a, done) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        all.add(&h).context("merging histograms")?;
        errors += e;
        answered += a;
        last = last.max(done);
    }
    let seconds = last.duration_since(measure_from).as_secs_f64();
    let q = |p: f64| all.value_at_quantile(p) as f64;
    let mut curve = Vec::new();
    for p in [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99,
    ] {
        curve.push((p, q(p / 100.0)));
    }
    Ok(Outcome {
        requests: all.len(),
        errors,
        answered,
        seconds,
        achieved_rate: all.len() as f64 / seconds,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: all.max() as f64,
        curve,
    })
}

fn new_histogram() -> Result<Histogram<u64>> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).context("creating a histogram")
}

/// One connection's share of the schedule.
fn connection(
    load: &Load,
    index: usize,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> Result<(Histogram<u64>, u64, u64, Instant)> {
    let mut histogram = new_histogram()?;
    let mut errors = 0u64;
    let mut answered = 0u64;
    let mut client = Client::connect(load)?;
    // Slot k of this connection is slot index + k * connections overall.
    let period = load
        .rate
        .map(|r| Duration::from_secs_f64(load.connections as f64 / r));
    let offset = load
        .rate
        .map(|r| Duration::from_secs_f64(index as f64 / r))
        .unwrap_or_default();
    let mut k: u32 = 0;
    let mut free_at = start;
    loop {
        let due = match period {
            Some(p) => start + offset + p * k,
            None => Instant::now().max(start),
        };
        if due >= end {
            break;
        }
        wait_until(due);
        let sent = Instant::now();
        // Busy past its due time: the delay is the system's.
        let from = if free_at > due { due } else { sent };
        let outcome = client.exchange();
        let done = Instant::now();
        free_at = done;
        k += 1;
        match outcome {
            Ok(()) => {
                answered += 1;
                if due >= measure_from {
                    let us =
                        u64::try_from(done.duration_since(from).as_micros()).unwrap_or(u64::MAX);
                    histogram.saturating_record(us.max(1));
                }
            }
            Err(e) => {
                if due >= measure_from {
                    errors += 1;
                }
                if errors > 1000 {
                    bail!("connection {index}: over 1,000 errors, the last: {e}");
                }
                client = Client::connect(load)?;
            }
        }
    }
    Ok((histogram, errors, answered, free_at))
}

/// Sleeps until `t` with the kernel's absolute monotonic timer (tens of
/// microseconds of slack, not a millisecond tick).
fn wait_until(t: Instant) {
    let now = Instant::now();
    if t <= now {
        return;
    }
    let left = t - now;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[expect(
        unsafe_code,
        reason = "clock_gettime/clock_nanosleep have no safe wrapper"
    )]
    // SAFETY: `ts` is a valid timespec for both calls; CLOCK_MONOTONIC is
    // the clock `Instant` uses on Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        let total = i128::from(ts.tv_sec) * 1_000_000_000
            + i128::from(ts.tv_nsec)
            + i128::try_from(left.as_nanos()).unwrap_or(i128::MAX);
        ts.tv_sec = libc::time_t::try_from(total / 1_000_000_000).unwrap_or(libc::time_t::MAX);
        ts.tv_nsec = libc::c_long::try_from(total % 1_000_000_000).unwrap_or(0);
        while libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        ) == libc::EINTR
        {}
    }
}

/// A connection that makes one exchange at a time.
enum Client {
    /// HTTP/1.1 or TCP on a blocking socket.
    Stream(StreamClient),
    /// gRPC over HTTP/2.
    Grpc(GrpcClient),
}

impl Client {
    fn connect(load: &Load) -> Result<Client> {
        Ok(match load.protocol {
            Protocol::Grpc => Client::Grpc(GrpcClient::connect(load)?),
            Protocol::Http | Protocol::Tcp => Client::Stream(StreamClient::connect(load)?),
        })
    }

    fn exchange(&mut self) -> io::Result<()> {
        match self {
            Client::Stream(c) => c.exchange(),
            Client::Grpc(c) => c.exchange(),
        }
    }
}

/// A keep-alive connection that makes one exchange at a time.
struct StreamClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    request: Vec<u8>,
    protocol: Protocol,
    payload: usize,
    buffer: Vec<u8>,
}

impl StreamClient {
    fn connect(load: &Load) -> Result<StreamClient> {
        let stream = TcpStream::connect_timeout(&load.target, Duration::from_secs(5))
            .with_context(|| format!("connecting to {}", load.target))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let body = vec![b'w'; load.payload];
        let request = match load.protocol {
            Protocol::Http => {
                let mut r = format!(
                    "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                    load.target,
                    load.payload
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            }
            Protocol::Tcp | Protocol::Grpc => body,
        };
        Ok(StreamClient {
            reader: BufReader::with_capacity(64 * 1024, stream.try_clone()?),
            writer: stream,
            request,
            protocol: load.protocol,
            payload: load.payload,
            buffer: vec![0; load.payload.max(1)],
        })
    }

    fn exchange(&mut self) -> io::Result<()> {
        self.writer.write_all(&self.request)?;
        match self.protocol {
            Protocol::Tcp | Protocol::Grpc => {
                self.reader.read_exact(&mut self.buffer[..self.payload])
            }
            Protocol::Http => self.read_response(),
        }
    }

    /// Reads one HTTP/1.1 response with a Content-Length body.
    fn read_response(&mut self) -> io::Result<()> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status = line.split_whitespace().nth(1).unwrap_or_default();
        if status != "200" {
            return Err(bad(format!("status line `{}`", line.trim())));
        }
        let mut length = None;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let length = length.ok_or_else(|| bad("a response without Content-Length".into()))?;
        if self.buffer.len() < length {
            self.buffer.resize(length, 0);
        }
        self.reader.read_exact(&mut self.buffer[..length])
    }
}

/// The method the gRPC profile calls.
pub const GRPC_METHOD: &str = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo";

/// A gRPC request message of `size` bytes (at least 3; one more for the
/// few sizes no varint length fits exactly): field 15,
/// length-delimited, which `EchoRequest` (no fields) skips as unknown,
/// framed for gRPC (uncompressed flag and a 4-byte length).
fn grpc_message(size: usize) -> Vec<u8> {
    let varint = |mut n: usize| {
        let mut out = Vec::new();
        while n >= 0x80 {
            out.push(u8::try_from(n & 0x7f).unwrap_or(0) | 0x80);
            n >>= 7;
        }
        out.push(u8::try_from(n).unwrap_or(0));
        out
    };
    let size = size.max(3);
    // Tag, the content's length as a varint, the content: `size` in all.
    let (length, content) = (1..=5)
        .map(|v: usize| size - 1 - v.min(size - 1))
        .map(|content| (varint(content), content))
        .find(|(length, content)| 1 + length.len() + content == size)
        .unwrap_or_else(|| (varint(size - 2), size - 2));
    let message_len = 1 + length.len() + content;
    let mut framed = Vec::with_capacity(5 + message_len);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(message_len).unwrap_or(u32::MAX).to_be_bytes());
    framed.push((15 << 3) | 2);
    framed.extend_from_slice(&length);
    framed.resize(framed.len() + content, b'w');
    framed
}

/// One HTTP/2 connection driven by a runtime of its own on the
/// connection's thread: each exchange runs it until the answer's trailers.
struct GrpcClient {
    runtime: tokio::runtime::Runtime,
    sender: h2::client::SendRequest<bytes::Bytes>,
    uri: http::Uri,
    message: bytes::Bytes,
}

impl GrpcClient {
    fn connect(load: &Load) -> Result<GrpcClient> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the gRPC connection")?;
        let target = load.target;
        let sender = runtime.block_on(async move {
            let tcp = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(target),
            )
            .await
            .with_context(|| format!("connecting to {target}: timed out"))?
            .with_context(|| format!("connecting to {target}"))?;
            tcp.set_nodelay(true)?;
            let (sender, connection) = h2::client::handshake(tcp)
                .await
                .with_context(|| format!("the HTTP/2 handshake with {target}"))?;
            tokio::spawn(connection);
            anyhow::Ok(sender)
        })?;
        let uri = format!("http://{target}{GRPC_METHOD}")
            .parse()
            .context("the gRPC URI")?;
        Ok(GrpcClient {
            runtime,
            sender,
            uri,
            message: grpc_message(load.payload).into(),
        })
    }

    fn exchange(&mut self) -> io::Result<()> {
        let sender = self.sender.clone();
        let request = http::Request::post(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(io::Error::other)?;
        let message = self.message.clone();
        let call = async move {
            let mut sender = sender.ready().await.map_err(io::Error::other)?;
            let (answer, mut body) = sender
                .send_request(request, false)
                .map_err(io::Error::other)?;
            body.send_data(message, true).map_err(io::Error::other)?;
            let answer = answer.await.map_err(io::Error::other)?;
            let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
            if answer.status() != http::StatusCode::OK {
                return Err(bad(format!("HTTP status {}", answer.status())));
            }
            // Trailers-only answers carry the status in the headers.
            if let Some(status) = answer.headers().get("grpc-status") {
                return Err(bad(format!(
                    "a trailers-only answer, grpc-status {status:?}"
                )));
            }
            let mut body = answer.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.map_err(io::Error::other)?;
                body.flow_control()
                    .release_capacity(chunk.len())
                    .map_err(io::Error::other)?;
            }
            let trailers = body.trailers().await.map_err(io::Error::other)?;
            match trailers.as_ref().and_then(|t| t.get("grpc-status")) {
                Some(s) if s == "0" => Ok(()),
                other => Err(bad(format!("grpc-status {other:?}"))),
            }
        };
        self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in 10 s"))?
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A loopback server that answers each `payload`-byte message after
    /// `delay`, for `requests` messages (or forever).
    fn slow_echo(payload: usize, delay: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; payload];
                    while s.read_exact(&mut buf).is_ok() {
                        wait_until(Instant::now() + delay);
                        if s.write_all(&buf).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn an_open_loop_run_keeps_its_rate_and_measures_the_server_delay() {
        let target = slow_echo(64, Duration::from_millis(2));
        let out = run(&Load {
            target,
            protocol: Protocol::Tcp,
            rate: Some(200.0),
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(100),
            connections: 2,
            payload: 64,
        })
        .unwrap();
        assert_eq!(out.errors, 0);
        assert!((190..=210).contains(&out.requests), "{}", out.requests);
        // The 0.1 s warmup's 20 requests are answered but not measured.
        assert!(
            (out.requests + 15..=out.requests + 25).contains(&out.answered),
            "{} answered, {} measured",
            out.answered,
            out.requests
        );
        assert!(out.p50_us >= 2000.0, "{}", out.p50_us);
    }

    #[test]
    fn a_server_slower_than_the_schedule_is_charged_for_the_requests_it_held_back() {
        // One connection, 1,000 requests a second for 0.2 s, a server that
        // takes 5 ms: the 200 requests take about a second, each waiting
        // for the ones before it. Timed from when they were due, the median
        // waits about 0.4 s; timed from when they were sent, every one
        // would take 5 ms.
        let target = slow_echo(16, Duration::from_millis(5));
        let out = run(&Load {
            target,
            protocol: Protocol::Tcp,
            rate: Some(1000.0),
            duration: Duration::from_millis(200),
            warmup: Duration::ZERO,
            connections: 1,
            payload: 16,
        })
        .unwrap();
        assert_eq!(out.requests, 200, "every slot is sent, late or not");
        assert!(out.seconds > 0.9, "{} s", out.seconds);
        assert!(out.achieved_rate < 250.0, "{}", out.achieved_rate);
        assert!(
            out.p50_us > 300_000.0 && out.p99_us > 700_000.0,
            "coordinated omission corrected: p50 {} µs, p99 {} µs",
            out.p50_us,
            out.p99_us
        );
    }

    #[test]
    fn a_grpc_message_has_the_asked_size_and_a_field_the_echo_skips() {
        let framed = grpc_message(1024);
        assert_eq!(framed.len(), 5 + 1024);
        assert_eq!(&framed[..5], &[0, 0, 0, 4, 0]);
        // Field 15, length-delimited, 1,021 bytes (varint 0xfd 0x07).
        assert_eq!(&framed[5..8], &[0x7a, 0xfd, 0x07]);
        assert_eq!(grpc_message(3)[5..], [0x7a, 1, b'w']);
    }

    #[test]
    fn grpc_calls_to_the_lab_echo_are_answered_with_status_zero() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let service = weft_lab::app::grpc::Service::new(std::sync::Arc::new(
                    weft_lab::app::PodIdentity {
                        namespace: "bench".into(),
                        pod: "echo".into(),
                        node: "node-1".into(),
                    },
                ));
                loop {
                    let (s, _) = listener.accept().await.unwrap();
                    let service = service.clone();
                    tokio::spawn(async move { service.serve(s).await });
                }
            });
        });
        let out = run(&Load {
            target,
            protocol: Protocol::Grpc,
            rate: Some(400.0),
            duration: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            connections: 2,
            payload: 1024,
        })
        .unwrap();
        assert_eq!(out.errors, 0);
        assert!((190..=210).contains(&out.requests), "{}", out.requests);
    }

    #[test]
    fn http_requests_are_answered_by_content_length() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            loop {
                let mut line = String::new();
                let mut length = 0;
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap() == 0 {
                        return;
                    }
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                r.read_exact(&mut body).unwrap();
                let mut answer =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n").into_bytes();
                answer.extend_from_slice(&body);
                w.write_all(&answer).unwrap();
            }
        });
        let out = run(&Load {
            target,
            protocol: Protocol::Http,
            rate: None,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(50),
            connections: 1,
            payload: 1024,
        })
        .unwrap();
        assert_eq!(out.errors, 0);
        assert!(out.requests > 100, "{}", out.requests);
    }
}
