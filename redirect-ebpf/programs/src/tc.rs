//! tc ingress: steer TCP into the node proxy with `bpf_sk_assign`.
//!
//! ```text
//! packet ──► TCP/IPv4? ──no──► pass
//!              │yes
//!   socket for this exact 4-tuple here (not a listener)? ──yes──► assign to it
//!              │no
//!   new connection (SYN without ACK)? ──no──► pass (a flow we never took)
//!              │yes
//!   to a node-local address? ──yes──► pass
//!              │no
//!   interface role: meshed pod ──► outbound listener
//!                   entry      ──► meshed pod destination? tunnel port ──► tunnel listener
//!                                                          other port  ──► inbound listener
//!                                  not meshed ──► pass
//!   listener missing ──► fail closed: mark, so the local stack resets it
//!                        fail open:   pass
//! ```
//!
//! Assigned packets are also marked: a policy route delivers marked packets
//! locally even though their destination address is not the node's.

use aya_ebpf::bindings::{BPF_F_CURRENT_NETNS, TC_ACT_OK, TC_ACT_SHOT, bpf_sock, bpf_sock_tuple};
use aya_ebpf::helpers::{
    bpf_redirect, bpf_sk_assign, bpf_sk_release, bpf_skb_change_tail, bpf_skc_lookup_tcp,
};
use aya_ebpf::macros::classifier;
use aya_ebpf::programs::TcContext;
use weft_redirect_abi::{Config, Counter, FAIL_CLOSED, Role};

use crate::{CONFIG, IFACES, LOCAL, MESHED, count};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const TCP_LISTEN: u32 = 10;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
const PASS: i32 = TC_ACT_OK;
const DROP: i32 = TC_ACT_SHOT;
const TCP_FLAG_RST: u8 = 0x04;
const IPV4_HLEN: usize = 20;
const TCP_HLEN: usize = 20;

#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature the classifier macro expects"
)]
pub(crate) fn weft_tc_ingress(ctx: TcContext) -> i32 {
    // Any parse error means "not ours": the packet goes on untouched.
    try_ingress(&ctx).unwrap_or(PASS)
}

/// The parts of a TCP/IPv4 packet the decision needs (addresses and ports in
/// network byte order, as in `bpf_sock_tuple`).
struct Flow {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    syn_only: bool,
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Flow>, i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    if ethertype != ETH_P_IP {
        return Ok(None);
    }
    let ver_ihl: u8 = ctx.load(ETH_HLEN)?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return Ok(None);
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9)?;
    // A non-first fragment carries no TCP header.
    let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6)?) & 0x1fff;
    if proto != IPPROTO_TCP || frag != 0 {
        return Ok(None);
    }
    let l4 = ETH_HLEN + ihl;
    let flags: u8 = ctx.load(l4 + 13)?;
    Ok(Some(Flow {
        saddr: ctx.load(ETH_HLEN + 12)?,
        daddr: ctx.load(ETH_HLEN + 16)?,
        sport: ctx.load(l4)?,
        dport: ctx.load(l4 + 2)?,
        syn_only: flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAG_ACK == 0,
    }))
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Result<i32, i64> {
    // SAFETY of field reads below: `skb` points at the context the kernel
    // passed in, valid for the program's run.
    #[expect(unsafe_code, reason = "reading ifindex from the skb context")]
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(role) = IFACES.get_ptr(ifindex).and_then(|r| {
        #[expect(unsafe_code, reason = "a map value pointer from a successful lookup")]
        // SAFETY: non-null pointer to a u32 map value.
        Role::from_u32(unsafe { *r })
    }) else {
        return Ok(PASS);
    };
    let Some(flow) = parse(ctx)? else {
        count(Counter::Passed);
        return Ok(PASS);
    };
    let Some(config) = CONFIG.get(0).copied() else {
        return Ok(PASS);
    };

    // A flow that already has a socket here (the proxy's accepted or
    // connecting socket) gets that socket.
    match lookup(ctx, &flow, flow.dport) {
        Some(sk) if state(sk) != TCP_LISTEN => {
            return Ok(assign(ctx, sk, &config, Counter::Established));
        }
        Some(sk) => release(sk),
        None => {}
    }
    if !flow.syn_only || LOCAL.get_ptr(flow.daddr).is_some() {
        count(Counter::Passed);
        return Ok(PASS);
    }

    let (port, counter) = match role {
        Role::MeshedPod => (config.outbound_port, Counter::CapturedOutbound),
        Role::Entry => {
            if MESHED.get_ptr(flow.daddr).is_none() {
                count(Counter::Passed);
                return Ok(PASS);
            }
            if u16::from_be(flow.dport) == config.tunnel_port {
                (config.tunnel_port, Counter::CapturedTunnel)
            } else {
                (config.inbound_port, Counter::CapturedInbound)
            }
        }
    };
    match lookup(ctx, &flow, port.to_be()) {
        Some(sk) if state(sk) == TCP_LISTEN => Ok(assign(ctx, sk, &config, counter)),
        other => {
            if let Some(sk) = other {
                release(sk);
            }
            if config.fail_mode == FAIL_CLOSED {
                count(Counter::RefusedNoListener);
                // A reset back to the client, so its connect fails at once.
                // The local stack cannot answer for us: its reset would come
                // from an address that is not local, and is never sent.
                Ok(refuse(ctx, ifindex).unwrap_or(DROP))
            } else {
                count(Counter::PassedNoListener);
                Ok(PASS)
            }
        }
    }
}

/// Looks up a socket in this netns for the flow's addresses and source port
/// and the given destination port (network order).
#[inline(always)]
fn lookup(ctx: &TcContext, flow: &Flow, dport: u16) -> Option<*mut bpf_sock> {
    #[expect(unsafe_code, reason = "bpf_sock_tuple is a C union")]
    // SAFETY: a zeroed tuple is valid; only the ipv4 member is written and
    // its size is what the helper is told.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4.saddr = flow.saddr;
    tuple.__bindgen_anon_1.ipv4.daddr = flow.daddr;
    tuple.__bindgen_anon_1.ipv4.sport = flow.sport;
    tuple.__bindgen_anon_1.ipv4.dport = dport;
    #[expect(unsafe_code, reason = "calling a BPF helper")]
    // SAFETY: ctx is the program's context, the tuple lives on the stack
    // for the call; the returned reference is released by the caller.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.skb.skb.cast(),
            &mut tuple,
            size_of::<u32>() as u32 * 2 + size_of::<u16>() as u32 * 2,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() { None } else { Some(sk) }
}

#[inline(always)]
fn state(sk: *mut bpf_sock) -> u32 {
    #[expect(unsafe_code, reason = "reading a field of a socket reference")]
    // SAFETY: sk is a non-null reference from bpf_skc_lookup_tcp.
    unsafe {
        (*sk).state
    }
}

#[inline(always)]
fn release(sk: *mut bpf_sock) {
    #[expect(unsafe_code, reason = "calling a BPF helper")]
    // SAFETY: sk is a reference from bpf_skc_lookup_tcp, released once.
    unsafe {
        bpf_sk_release(sk.cast());
    }
}

/// Gives the packet to `sk`, releases the reference, marks and counts.
#[inline(always)]
fn assign(ctx: &TcContext, sk: *mut bpf_sock, config: &Config, counter: Counter) -> i32 {
    #[expect(unsafe_code, reason = "calling a BPF helper")]
    // SAFETY: ctx is the program's context and sk a live socket reference.
    let rc = unsafe { bpf_sk_assign(ctx.skb.skb.cast(), sk.cast(), 0) };
    release(sk);
    if rc == 0 {
        ctx.set_mark(config.mark);
        count(counter);
    } else {
        count(Counter::AssignFailed);
    }
    PASS
}

/// Turns a SYN into the RST+ACK its sender expects from a closed port and
/// sends it back out of the interface it came in on: Ethernet and IP
/// addresses and ports swapped, `ack = seq + 1`, options and payload cut.
/// Only plain 20-byte IPv4 headers (anything else is dropped by the caller).
#[inline(always)]
fn refuse(ctx: &TcContext, ifindex: u32) -> Result<i32, i64> {
    let ver_ihl: u8 = ctx.load(ETH_HLEN)?;
    if ver_ihl != 0x45 {
        return Err(-1);
    }
    let macs: [u8; 12] = ctx.load(0)?;
    let saddr: u32 = ctx.load(ETH_HLEN + 12)?;
    let daddr: u32 = ctx.load(ETH_HLEN + 16)?;
    let l4 = ETH_HLEN + IPV4_HLEN;
    let sport: u16 = ctx.load(l4)?;
    let dport: u16 = ctx.load(l4 + 2)?;
    let seq = u32::from_be(ctx.load::<u32>(l4 + 4)?);

    let new_len = (ETH_HLEN + IPV4_HLEN + TCP_HLEN) as u32;
    #[expect(unsafe_code, reason = "calling a BPF helper")]
    // SAFETY: the program's own context; shrinking to 54 bytes keeps the
    // headers read above, which were copied out first.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, new_len, 0) } != 0 {
        return Err(-1);
    }

    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &eth, 0)?;

    // The reply goes from the original destination to the client.
    let (src, dst) = (daddr.to_ne_bytes(), saddr.to_ne_bytes());
    let total = ((IPV4_HLEN + TCP_HLEN) as u16).to_be_bytes();
    let mut ip = [
        0x45,
        0,
        total[0],
        total[1],
        0,
        0,
        0x40,
        0,
        64,
        IPPROTO_TCP,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let ip_csum = fold(sum_words(&ip, 0)).to_be_bytes();
    ip[10] = ip_csum[0];
    ip[11] = ip_csum[1];
    ctx.store(ETH_HLEN, &ip, 0)?;

    let (sp, dp) = (dport.to_ne_bytes(), sport.to_ne_bytes());
    let ack = seq.wrapping_add(1).to_be_bytes();
    let mut tcp = [
        sp[0],
        sp[1],
        dp[0],
        dp[1],
        0,
        0,
        0,
        0,
        ack[0],
        ack[1],
        ack[2],
        ack[3],
        (TCP_HLEN as u8 / 4) << 4,
        TCP_FLAG_RST | TCP_FLAG_ACK,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    // Pseudo-header: source, destination, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = IPPROTO_TCP;
    pseudo[11] = TCP_HLEN as u8;
    let tcp_csum = fold(sum_words(&tcp, sum_words(&pseudo, 0))).to_be_bytes();
    tcp[16] = tcp_csum[0];
    tcp[17] = tcp_csum[1];
    ctx.store(l4, &tcp, 0)?;

    #[expect(unsafe_code, reason = "calling a BPF helper")]
    // SAFETY: redirecting to the egress of the interface the packet came from.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    Ok(action as i32)
}

/// Adds big-endian 16-bit words to a one's-complement running sum.
#[inline(always)]
fn sum_words<const N: usize>(bytes: &[u8; N], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// Folds a running sum into the Internet checksum.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
