//! What the calling thread's network namespace holds: interfaces, addresses,
//! routes. Read with iproute2 (`ip -o`); a netlink client can replace it
//! without changing callers.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::CaptureError;

/// Runs `ip <args>` and returns its stdout.
pub(crate) fn ip(args: &[&str]) -> Result<String, CaptureError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CaptureError::Net(format!("running `ip {}`: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CaptureError::Net(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Every IPv4 address of this netns.
pub fn local_addresses() -> Result<BTreeSet<Ipv4Addr>, CaptureError> {
    let text = ip(&["-o", "-4", "addr", "show"])?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

/// Interface names of this netns.
pub fn interface_names() -> Result<Vec<String>, CaptureError> {
    let text = ip(&["-o", "link", "show"])?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_owned())
        })
        .collect())
}

/// The interface this netns routes `addr` through.
pub fn route_dev(addr: Ipv4Addr) -> Result<String, CaptureError> {
    let text = ip(&["-o", "-4", "route", "get", &addr.to_string()])?;
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "dev")
        .and_then(|_| words.next())
        .map(str::to_owned)
        .ok_or_else(|| CaptureError::Net(format!("no route to {addr}: {}", text.trim())))
}
