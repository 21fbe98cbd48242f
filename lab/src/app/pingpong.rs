//! TCP ping-pong against an echo server: one connection, a fixed-size
//! message written and read back, round trip times recorded.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Round-trip percentiles, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingPong {
    /// Measured round trips (after warm-up).
    pub count: usize,
    /// Message size in bytes.
    pub size: usize,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest.
    pub max_us: f64,
}

/// Runs `warmup` unmeasured and then `count` measured round trips.
pub fn run(addr: SocketAddr, size: usize, count: usize, warmup: usize) -> io::Result<PingPong> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let out = vec![0x5a_u8; size.max(1)];
    let mut back = vec![0u8; out.len()];
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let started = Instant::now();
        stream.write_all(&out)?;
        stream.read_exact(&mut back)?;
        if i >= warmup {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(idx).copied().unwrap_or(0.0)
    };
    Ok(PingPong {
        count: samples.len(),
        size: out.len(),
        p50_us: pick(0.50),
        p90_us: pick(0.90),
        p99_us: pick(0.99),
        max_us: samples.last().copied().unwrap_or(0.0),
    })
}
