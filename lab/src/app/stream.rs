//! Single-stream throughput: send a number of bytes to the echo server's
//! sink, half-close, and wait for its byte count.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One transfer's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    /// Bytes sent and confirmed by the sink.
    pub bytes: u64,
    /// Seconds from connect to the sink's count.
    pub seconds: f64,
    /// Gigabits per second.
    pub gbit_per_s: f64,
}

/// Sends `bytes` in 256 KiB writes and waits for the sink to confirm them.
pub fn run(addr: SocketAddr, bytes: u64) -> io::Result<Stream> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    let buf = vec![0xa5_u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        s.write_all(&buf[..n])?;
        sent += n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    // An opted-in pod may see EAGAIN on a blocking read (see the fast
    // path's caveat): retry like an event-driven reader.
    loop {
        match s.read_to_string(&mut reply) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let confirmed: u64 = reply.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sink answered {reply:?}"),
        )
    })?;
    if confirmed != bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sink got {confirmed} of {bytes} bytes"),
        ));
    }
    Ok(Stream {
        bytes,
        seconds,
        gbit_per_s: bytes as f64 * 8.0 / seconds / 1e9,
    })
}
