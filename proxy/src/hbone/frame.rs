//! HTTP/2 framing (RFC 9113 §4, §6) and the small part of HPACK (RFC 7541)
//! that HBONE's encoder needs: everything this side sends, and the frame
//! header of everything it receives.

/// What a client sends first, before any frame.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Every frame starts with a 9-byte header.
pub const HEAD: usize = 9;
/// The largest frame payload a peer may send before our SETTINGS reach it,
/// and the default of `SETTINGS_MAX_FRAME_SIZE`.
pub const DEFAULT_MAX_FRAME: usize = 16_384;
/// The window every stream and the connection start with.
pub const DEFAULT_WINDOW: i64 = 65_535;
/// No flow-control window may grow past this.
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Frame types.
pub mod kind {
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const PRIORITY: u8 = 2;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PUSH_PROMISE: u8 = 5;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Settings identifiers.
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 1;
    pub const ENABLE_PUSH: u16 = 2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 3;
    pub const INITIAL_WINDOW_SIZE: u16 = 4;
    pub const MAX_FRAME_SIZE: u16 = 5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 6;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    pub const NO_ERROR: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
    pub const FLOW_CONTROL_ERROR: u32 = 3;
    pub const STREAM_CLOSED: u32 = 5;
    pub const FRAME_SIZE_ERROR: u32 = 6;
    pub const REFUSED_STREAM: u32 = 7;
    pub const CANCEL: u32 = 8;
    pub const COMPRESSION_ERROR: u32 = 9;
    pub const ENHANCE_YOUR_CALM: u32 = 11;

    /// The name RFC 9113 gives a code.
    pub fn name(code: u32) -> &'static str {
        match code {
            NO_ERROR => "NO_ERROR",
            PROTOCOL_ERROR => "PROTOCOL_ERROR",
            INTERNAL_ERROR => "INTERNAL_ERROR",
            FLOW_CONTROL_ERROR => "FLOW_CONTROL_ERROR",
            4 => "SETTINGS_TIMEOUT",
            STREAM_CLOSED => "STREAM_CLOSED",
            FRAME_SIZE_ERROR => "FRAME_SIZE_ERROR",
            REFUSED_STREAM => "REFUSED_STREAM",
            CANCEL => "CANCEL",
            COMPRESSION_ERROR => "COMPRESSION_ERROR",
            10 => "CONNECT_ERROR",
            ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM",
            12 => "INADEQUATE_SECURITY",
            13 => "HTTP_1_1_REQUIRED",
            _ => "unknown error code",
        }
    }
}

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Payload length.
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    /// Stream identifier (the reserved bit cleared).
    pub stream: u32,
}

impl Head {
    /// Reads a frame header from the first [`HEAD`] bytes of `b`.
    pub fn parse(b: &[u8; HEAD]) -> Head {
        Head {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }
}

/// A frame header.
pub fn head(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; HEAD] {
    debug_assert!(len < 1 << 24, "frame payloads are 24-bit");
    let id = (stream & 0x7fff_ffff).to_be_bytes();
    [
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        kind,
        flags,
        id[0],
        id[1],
        id[2],
        id[3],
    ]
}

/// Appends a frame header.
pub fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&head(len, kind, flags, stream));
}

/// Appends a SETTINGS frame with these values.
pub fn put_settings(out: &mut Vec<u8>, values: &[(u16, u32)]) {
    put_head(out, values.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in values {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends a WINDOW_UPDATE frame.
pub fn put_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    put_head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&(increment & 0x7fff_ffff).to_be_bytes());
}

/// Appends a RST_STREAM frame.
pub fn put_rst(out: &mut Vec<u8>, stream: u32, error: u32) {
    put_head(out, 4, kind::RST_STREAM, 0, stream);
    out.extend_from_slice(&error.to_be_bytes());
}

/// Appends a GOAWAY frame.
pub fn put_goaway(out: &mut Vec<u8>, last_stream: u32, error: u32) {
    put_head(out, 8, kind::GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
}

/// Appends a PING frame.
pub fn put_ping(out: &mut Vec<u8>, ack: bool, payload: [u8; 8]) {
    put_head(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.extend_from_slice(&payload);
}

/// Appends a HEADERS frame (`END_HEADERS`, and `END_STREAM` when `end`)
/// carrying `fields`, HPACK-encoded as literals that are never indexed: the
/// encoder keeps no state, so nothing depends on the peer's table size.
/// HBONE's header blocks are far below any frame size limit.
pub fn put_headers(out: &mut Vec<u8>, stream: u32, end: bool, fields: &[(&str, &str)]) {
    let start = out.len();
    put_head(out, 0, kind::HEADERS, 0, stream);
    for (name, value) in fields {
        // Literal header field never indexed, new name (RFC 7541 §6.2.3).
        out.push(0x10);
        put_string(out, name.as_bytes());
        put_string(out, value.as_bytes());
    }
    let len = out.len() - start - HEAD;
    let flags = flag::END_HEADERS | if end { flag::END_STREAM } else { 0 };
    out[start..start + HEAD].copy_from_slice(&head(len, kind::HEADERS, flags, stream));
}

/// An HPACK string literal, not Huffman-coded.
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_integer(out, s.len(), 7, 0);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn put_integer(out: &mut Vec<u8>, mut value: usize, n: u8, first: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Strips the padding of a `PADDED` frame's payload (and the priority
/// fields of a HEADERS frame with `PRIORITY`).
pub fn unpad(flags: u8, kind: u8, payload: &[u8]) -> Result<&[u8], &'static str> {
    let mut body = payload;
    let mut pad = 0;
    if flags & flag::PADDED != 0 {
        let (&n, rest) = body
            .split_first()
            .ok_or("a padded frame without its pad length")?;
        pad = usize::from(n);
        body = rest;
    }
    if kind == kind::HEADERS && flags & flag::PRIORITY != 0 {
        body = body
            .get(5..)
            .ok_or("a HEADERS frame too short for its priority")?;
    }
    if pad > body.len() {
        return Err("padding longer than the frame");
    }
    Ok(&body[..body.len() - pad])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_header_round_trips_and_the_reserved_bit_is_ignored() {
        let mut out = Vec::new();
        put_head(&mut out, 0x12_3456, kind::DATA, flag::END_STREAM, 7);
        out[5] |= 0x80;
        let head = Head::parse(out[..HEAD].try_into().unwrap());
        assert_eq!(
            head,
            Head {
                len: 0x12_3456,
                kind: kind::DATA,
                flags: flag::END_STREAM,
                stream: 7
            }
        );
    }

    #[test]
    fn headers_this_side_encodes_decode_with_an_independent_hpack_decoder() {
        let long = "x".repeat(300);
        let mut out = Vec::new();
        put_headers(
            &mut out,
            3,
            true,
            &[
                (":method", "CONNECT"),
                (":authority", "10.1.0.5:8080"),
                ("forwarded", long.as_str()),
            ],
        );
        let head = Head::parse(out[..HEAD].try_into().unwrap());
        assert_eq!(head.kind, kind::HEADERS);
        assert_eq!(head.flags, flag::END_HEADERS | flag::END_STREAM);
        assert_eq!(head.len, out.len() - HEAD);
        let fields = loona_hpack::Decoder::new().decode(&out[HEAD..]).unwrap();
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(
            fields,
            vec![
                (":method".into(), "CONNECT".into()),
                (":authority".into(), "10.1.0.5:8080".into()),
                ("forwarded".into(), long),
            ]
        );
    }

    #[test]
    fn padding_and_priority_are_stripped_and_bad_padding_is_an_error() {
        let payload = [2u8, b'h', b'i', 0, 0];
        assert_eq!(
            unpad(flag::PADDED, kind::DATA, &payload).unwrap(),
            b"hi".as_slice()
        );
        let headers = [1u8, 0, 0, 0, 0, 16, b'a', 0];
        assert_eq!(
            unpad(flag::PADDED | flag::PRIORITY, kind::HEADERS, &headers).unwrap(),
            b"a".as_slice()
        );
        assert!(unpad(flag::PADDED, kind::DATA, &[9u8, 1]).is_err());
        assert!(unpad(flag::PADDED, kind::DATA, &[]).is_err());
    }
}
