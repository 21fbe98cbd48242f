//! W3C Trace Context (`traceparent`, `tracestate`): read from a request,
//! written onto the request sent on.

use http::HeaderValue;

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header.
pub const TRACESTATE: &str = "tracestate";

/// The span a request's `traceparent` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// Its trace (never 0).
    pub trace_id: u128,
    /// The caller's span (never 0).
    pub span_id: u64,
    /// The caller's sampling decision.
    pub sampled: bool,
}

/// Reads a `traceparent` value as the W3C recommendation says: version
/// `00` exactly 55 characters; a later version at least that, with the
/// four known fields first; `ff` is invalid; lowercase hex only; a trace
/// or parent id of zeros is invalid. `None`: absent or invalid (the
/// request starts a new trace).
pub fn parse(value: &[u8]) -> Option<Parent> {
    if value.len() < 55 {
        return None;
    }
    let version = hex(&value[0..2])? as u8;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex(&value[3..35])?;
    let span_id = hex(&value[36..52])? as u64;
    let flags = hex(&value[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Lowercase hex digits as a number (at most 32 of them).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(v))
    })
}

/// The `traceparent` (version 00) of span `span_id` in trace `trace_id`.
pub fn format(trace_id: u128, span_id: u64, sampled: bool) -> HeaderValue {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 55];
    out[0] = b'0';
    out[1] = b'0';
    out[2] = b'-';
    for i in 0..32 {
        out[3 + i] = DIGITS[(trace_id >> (124 - 4 * i) & 0xf) as usize];
    }
    out[35] = b'-';
    for i in 0..16 {
        out[36 + i] = DIGITS[(span_id >> (60 - 4 * i) & 0xf) as usize];
    }
    out[52] = b'-';
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    // Every byte is a visible ASCII character.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_is_read_and_written_back_the_same() {
        let p = parse(EXAMPLE).unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert!(p.sampled);
        assert_eq!(format(p.trace_id, p.span_id, true).as_bytes(), EXAMPLE);
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse(unsampled).unwrap().sampled);
    }

    #[test]
    fn invalid_traceparents_are_refused_and_later_versions_read_their_known_fields() {
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"[..],
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            b"",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let later = parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").unwrap();
        assert_eq!(later.span_id, 0x00f067aa0ba902b7);
    }
}
