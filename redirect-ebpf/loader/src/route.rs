//! The policy route that delivers captured packets locally.
//!
//! A packet the tc program assigns to a proxy socket keeps its original
//! destination address, which is not the node's. The program marks it, and
//! `fwmark MARK lookup TABLE` + `local 0.0.0.0/0 dev lo table TABLE` make the
//! routing decision "local" for marked packets, so the stack hands them to
//! the assigned socket instead of forwarding them. Both commands act on the
//! network namespace of the calling thread.

use crate::CaptureError;
use crate::net::ip;

/// The `ip rule` priority of the capture rule (before the main table's 32766).
const RULE_PREF: &str = "100";

/// Adds the rule and the local route, unless they are there already.
pub fn install_policy_route(mark: u32, table: u32) -> Result<(), CaptureError> {
    let mark = format!("{mark:#x}");
    let table = table.to_string();
    let rules = ip(&["rule", "show", "pref", RULE_PREF])?;
    if !rules.contains(&format!("fwmark {mark} lookup {table}")) {
        ip(&[
            "rule", "add", "pref", RULE_PREF, "fwmark", &mark, "lookup", &table,
        ])?;
    }
    ip(&[
        "route",
        "replace",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        &table,
    ])?;
    Ok(())
}

/// Removes the rule and the local route; missing ones are fine.
pub fn remove_policy_route(mark: u32, table: u32) -> Result<(), CaptureError> {
    let mark = format!("{mark:#x}");
    let table = table.to_string();
    let rules = ip(&["rule", "show", "pref", RULE_PREF])?;
    if rules.contains(&format!("fwmark {mark} lookup {table}")) {
        ip(&[
            "rule", "del", "pref", RULE_PREF, "fwmark", &mark, "lookup", &table,
        ])?;
    }
    let routes = ip(&["route", "show", "table", &table])?;
    if !routes.trim().is_empty() {
        ip(&["route", "flush", "table", &table])?;
    }
    Ok(())
}
