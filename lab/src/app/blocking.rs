//! A blocking-I/O client, as an unmodified application would be written:
//! blocking `connect`, `write`, `shutdown(SHUT_WR)`, then blocking `read`s
//! until the end of the reply. It exists to show that the mesh changes
//! nothing such an application sees.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One exchange's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The whole payload came back intact.
    Ok,
    /// A read or write failed; `WouldBlock` on a blocking socket is the
    /// symptom this client exists to catch.
    Failed {
        /// Which call.
        step: &'static str,
        /// The error kind.
        kind: io::ErrorKind,
        /// Bytes received before the failure.
        received: usize,
    },
    /// The reply differed from what was sent.
    Corrupt {
        /// Bytes received.
        received: usize,
    },
}

/// Runs `runs` exchanges of `size` bytes with an echo server.
pub fn run(addr: SocketAddr, size: usize, runs: u32, timeout: Duration) -> Vec<Outcome> {
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    (0..runs)
        .map(|_| exchange(addr, &payload, timeout))
        .collect()
}

fn exchange(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Outcome {
    let fail = |step, e: io::Error, received| Outcome::Failed {
        step,
        kind: e.kind(),
        received,
    };
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return fail("connect", e, 0),
    };
    // A read timeout guards the run against a hang; it does not make reads
    // non-blocking, so WouldBlock before it expires is the kernel's doing.
    if let Err(e) = stream.set_read_timeout(Some(timeout)) {
        return fail("set timeout", e, 0);
    }
    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => return fail("clone", e, 0),
    };
    // A reply that fits in socket buffers is read after the half-close, in
    // this thread; a larger one concurrently, as it must be.
    let expected = payload.len();
    if expected <= SEQUENTIAL_MAX {
        if let Err(e) = stream.write_all(payload) {
            return fail("write", e, 0);
        }
        if let Err(e) = stream.shutdown(Shutdown::Write) {
            return fail("shutdown", e, 0);
        }
        return match read_all(reader, expected) {
            Ok(got) if got == payload => Outcome::Ok,
            Ok(got) => Outcome::Corrupt {
                received: got.len(),
            },
            Err((e, received, waited)) => read_failure(&e, received, waited, timeout),
        };
    }
    let handle = std::thread::spawn(move || read_all(reader, expected));
    if let Err(e) = stream.write_all(payload) {
        return fail("write", e, 0);
    }
    if let Err(e) = stream.shutdown(Shutdown::Write) {
        return fail("shutdown", e, 0);
    }
    match handle.join() {
        Ok(Ok(got)) if got == payload => Outcome::Ok,
        Ok(Ok(got)) => Outcome::Corrupt {
            received: got.len(),
        },
        Ok(Err((e, received, waited))) => read_failure(&e, received, waited, timeout),
        Err(_) => Outcome::Failed {
            step: "read",
            kind: io::ErrorKind::Other,
            received: 0,
        },
    }
}

/// Replies up to this size are read after the half-close, in one thread.
const SEQUENTIAL_MAX: usize = 64 * 1024;

/// A real timeout waited the whole timeout; an early `WouldBlock` did not.
fn read_failure(e: &io::Error, received: usize, waited: Duration, timeout: Duration) -> Outcome {
    let kind = if e.kind() == io::ErrorKind::WouldBlock && waited >= timeout {
        io::ErrorKind::TimedOut
    } else {
        e.kind()
    };
    Outcome::Failed {
        step: "read",
        kind,
        received,
    }
}

type ReadError = (io::Error, usize, Duration);

fn read_all(mut reader: TcpStream, expected: usize) -> Result<Vec<u8>, ReadError> {
    let mut got = Vec::with_capacity(expected);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let started = Instant::now();
        match reader.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err((e, got.len(), started.elapsed())),
        }
    }
}
