//! The contract between weft's eBPF programs and userspace.
//!
//! Map names, key and value layouts (`#[repr(C)]`), and the meaning of every
//! number the kernel side writes. The programs crate and the loader both
//! depend on this crate, so a change here is a change on both sides.
//!
//! Byte order: IPv4 addresses in map keys are stored as the four bytes of
//! the address in network order, read as a native `u32` (what the kernel
//! hands a program); use [`ip_key`] to build one from an address.
#![no_std]

/// Map: [`Config`] at index 0.
pub const MAP_CONFIG: &str = "WEFT_CONFIG";
/// Map: interface index (`u32`) to [`Role`] (`u32`).
pub const MAP_IFACES: &str = "WEFT_IFACES";
/// Map: IPv4 [`ip_key`] of a meshed pod on this node to its flags
/// ([`POD_MESHED`], [`POD_FAST_PATH`]).
pub const MAP_MESHED: &str = "WEFT_MESHED";
/// Flag of [`MAP_MESHED`]: the pod is meshed (always set).
pub const POD_MESHED: u32 = 1;
/// Flag of [`MAP_MESHED`]: the pod's sockets may take the fast path.
pub const POD_FAST_PATH: u32 = 2;
/// Map: IPv4 [`ip_key`] of a node-local address (never captured) to `1`.
pub const MAP_LOCAL: &str = "WEFT_LOCAL";
/// Map: per-CPU `u64` counters indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "WEFT_COUNTERS";
/// Map: the fast path's sockets, [`SockKey`] to socket.
pub const MAP_SOCKS: &str = "WEFT_SOCKS";
/// Map (LRU): [`SockKey`] of a socket whose sends go over TCP for good,
/// because it sent before its peer joined the fast path.
pub const MAP_TCP_ONLY: &str = "WEFT_TCP_ONLY";
/// Map (LRU): [`SockKey`] of a socket in [`MAP_SOCKS`] to its kernel
/// address, so the sk_msg program can read its receiver's buffer state.
pub const MAP_SOCK_ADDRS: &str = "WEFT_SOCK_ADDRS";
/// The tc ingress program.
pub const PROG_TC_INGRESS: &str = "weft_tc_ingress";
/// The sock_ops program (node cgroup): adds sockets to [`MAP_SOCKS`].
pub const PROG_SOCKOPS: &str = "weft_sockops";
/// The sk_msg program (on [`MAP_SOCKS`]): sends to the peer socket.
pub const PROG_SK_MSG: &str = "weft_sk_msg";
/// Most sockets in the fast path.
pub const MAX_SOCKS: u32 = 65536;

/// Most interfaces one node enrolls.
pub const MAX_IFACES: u32 = 4096;
/// Most meshed pods on one node.
pub const MAX_MESHED: u32 = 16384;
/// Most node-local addresses.
pub const MAX_LOCAL: u32 = 64;

/// A TCP/IPv4 socket as the fast path names it: its own address and port,
/// then its peer's. A socket's peer has the mirrored key. Addresses as
/// [`ip_key`], ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// This socket's address.
    pub local_ip: u32,
    /// The peer's address.
    pub remote_ip: u32,
    /// This socket's port.
    pub local_port: u32,
    /// The peer's port.
    pub remote_port: u32,
}

impl SockKey {
    /// The key of the peer socket.
    pub const fn peer(&self) -> SockKey {
        SockKey {
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// What the proxy is listening on, and what to do when it is not.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The transparent outbound listener (pods' connections to anywhere).
    pub outbound_port: u16,
    /// The transparent inbound plaintext listener.
    pub inbound_port: u16,
    /// The tunnel (HBONE) port: connections to a meshed pod on this port go
    /// to the listener of the same port.
    pub tunnel_port: u16,
    /// [`FAIL_CLOSED`] or [`FAIL_OPEN`].
    pub fail_mode: u16,
    /// The mark set on captured packets; a policy route delivers marked
    /// packets locally (`ip rule fwmark MARK lookup TABLE`,
    /// `ip route add local 0.0.0.0/0 dev lo table TABLE`).
    pub mark: u32,
    /// `SO_MARK` of the proxy's own sockets: the fast path pairs a meshed
    /// pod's socket only with a socket carrying this mark.
    pub proxy_socket_mark: u32,
    /// 1: sock_ops adds sockets to the fast path; 0: it adds none.
    pub fast_path: u32,
    /// Byte offset of `sk_backlog.rmem_alloc` in the kernel's `struct sock`
    /// (from the kernel's BTF). The sk_msg program reads a receiver's queued
    /// bytes there: redirected messages are not flow-controlled by the
    /// kernel, so the program does it. 0: unknown, no redirects.
    pub sk_rmem_alloc_offset: u32,
    /// Byte offset of `sk_rcvbuf` in `struct sock`. 0: unknown.
    pub sk_rcvbuf_offset: u32,
    /// Bytes a receiver may have queued before a direction leaves the fast
    /// path, when its `sk_rcvbuf` is smaller (a socket fed only by
    /// redirects keeps its initial, small buffer: TCP never autotuned it).
    pub fast_path_window: u32,
}

/// No proxy listener: mark the packet anyway, so the local stack finds no
/// socket and answers with a reset. The connection fails at once.
pub const FAIL_CLOSED: u16 = 0;
/// No proxy listener: let the packet go on unproxied.
pub const FAIL_OPEN: u16 = 1;

/// What an enrolled interface is.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The host side of a meshed pod's veth: its new TCP connections go to
    /// the outbound listener.
    MeshedPod = 1,
    /// Any other way into the node (the underlay, unmeshed pods' veths):
    /// new TCP connections to a meshed pod go to the inbound listeners.
    Entry = 2,
}

impl Role {
    /// From the value stored in [`MAP_IFACES`].
    pub const fn from_u32(v: u32) -> Option<Role> {
        match v {
            1 => Some(Role::MeshedPod),
            2 => Some(Role::Entry),
            _ => None,
        }
    }
}

/// Indices into [`MAP_COUNTERS`]: one per decision.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A new connection from a meshed pod, given to the outbound listener.
    CapturedOutbound = 0,
    /// A new connection to a meshed pod, given to the inbound listener.
    CapturedInbound = 1,
    /// A new connection to a meshed pod's tunnel port, given to the tunnel
    /// listener.
    CapturedTunnel = 2,
    /// A packet of a flow that has a socket here, given to that socket.
    Established = 3,
    /// A packet left alone (not TCP/IPv4, not new, or not for the mesh).
    Passed = 4,
    /// A new connection with no proxy listener, refused (fail closed).
    RefusedNoListener = 5,
    /// A new connection with no proxy listener, let through (fail open).
    PassedNoListener = 6,
    /// `bpf_sk_assign` failed; the packet went on unchanged.
    AssignFailed = 7,
    /// A socket joined the fast path.
    SockAdded = 8,
    /// A message went socket to socket.
    MsgRedirected = 9,
    /// A message went over TCP: its peer was not in the fast path (yet).
    MsgPassed = 10,
    /// A direction left the fast path for TCP because its receiver had a
    /// full receive buffer (TCP's flow control takes over).
    MsgBackpressure = 11,
}

/// How many counters there are.
pub const COUNTER_COUNT: u32 = 12;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::CapturedOutbound,
        Counter::CapturedInbound,
        Counter::CapturedTunnel,
        Counter::Established,
        Counter::Passed,
        Counter::RefusedNoListener,
        Counter::PassedNoListener,
        Counter::AssignFailed,
        Counter::SockAdded,
        Counter::MsgRedirected,
        Counter::MsgPassed,
        Counter::MsgBackpressure,
    ];

    /// The metric label for this decision.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::CapturedOutbound => "captured_outbound",
            Counter::CapturedInbound => "captured_inbound",
            Counter::CapturedTunnel => "captured_tunnel",
            Counter::Established => "established",
            Counter::Passed => "passed",
            Counter::RefusedNoListener => "refused_no_listener",
            Counter::PassedNoListener => "passed_no_listener",
            Counter::AssignFailed => "assign_failed",
            Counter::SockAdded => "sock_added",
            Counter::MsgRedirected => "msg_redirected",
            Counter::MsgPassed => "msg_passed",
            Counter::MsgBackpressure => "msg_backpressure",
        }
    }
}

/// The map key of an IPv4 address (its octets in network order).
pub const fn ip_key(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

#[cfg(feature = "user")]
mod user {
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: Config is repr(C), Copy, has no padding (4 x u16 + 6 x u32)
    // and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Config {}
    #[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    // SAFETY: SockKey is repr(C), Copy, four u32 without padding.
    unsafe impl aya::Pod for super::SockKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_no_padding_so_kernel_and_userspace_agree_on_its_bytes() {
        assert_eq!(size_of::<Config>(), 32);
        assert_eq!(size_of::<SockKey>(), 16);
    }

    #[test]
    fn counters_are_indexed_in_order_and_named_uniquely() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert!(Counter::ALL[..i].iter().all(|o| o.name() != c.name()));
        }
    }

    #[test]
    fn ip_keys_keep_network_byte_order() {
        assert_eq!(ip_key([198, 18, 1, 2]).to_ne_bytes(), [198, 18, 1, 2]);
    }
}
