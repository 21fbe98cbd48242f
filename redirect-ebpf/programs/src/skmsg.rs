//! sk_msg (attached to the fast path's socket map): each `sendmsg` of a
//! socket in the map goes straight into its peer socket's receive queue.
//!
//! Two rules keep this invisible to applications:
//!
//! - **Order.** A direction's bytes must all take one way, or the receiver
//!   could read them out of order: it reads redirected bytes before TCP
//!   ones. So a direction may switch once from redirect to TCP (bytes
//!   already redirected are read first, then TCP's), never back. It switches
//!   when its peer is not in the map at its first send.
//! - **Flow control.** The kernel queues redirected bytes at the receiver
//!   without looking at its receive buffer, so a slow reader would let a
//!   fast writer fill memory until `sendmsg` fails with `ENOMEM`. Before
//!   each redirect the program reads the receiver's queued bytes
//!   (`sk_rmem_alloc`) and buffer size (`sk_rcvbuf`, or the configured
//!   window if larger), at offsets the loader took from the kernel's BTF; a
//!   direction whose receiver is full switches to TCP, whose window then
//!   holds the writer back.
//!
//! A direction that switched is remembered in
//! [`MAP_TCP_ONLY`](weft_redirect_abi::MAP_TCP_ONLY).

use aya_ebpf::bindings::{BPF_ANY, BPF_F_INGRESS, sk_action};
use aya_ebpf::helpers::bpf_probe_read_kernel;
use aya_ebpf::macros::sk_msg;
use aya_ebpf::programs::SkMsgContext;
use weft_redirect_abi::{Config, Counter, SockKey};

use crate::{CONFIG, SOCK_ADDRS, SOCKS, TCP_ONLY, count};

#[sk_msg]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature the sk_msg macro expects"
)]
pub(crate) fn weft_sk_msg(ctx: SkMsgContext) -> u32 {
    #[expect(unsafe_code, reason = "reading the context the kernel passed in")]
    // SAFETY: msg points at this program's live sk_msg_md.
    let md = unsafe { &*ctx.msg };
    let me = SockKey {
        local_ip: md.local_ip4,
        remote_ip: md.remote_ip4,
        local_port: md.local_port,
        remote_port: u32::from(u16::from_be((md.remote_port >> 16) as u16)),
    };
    if TCP_ONLY.get_ptr(me).is_some() {
        count(Counter::MsgPassed);
        return sk_action::SK_PASS;
    }
    let Some(config) = CONFIG.get(0) else {
        return sk_action::SK_PASS;
    };
    let peer = me.peer();
    match receiver_room(config, &peer, md.size) {
        Room::Yes => {}
        Room::Missing => return tcp_for_good(me, Counter::MsgPassed),
        Room::Full => return tcp_for_good(me, Counter::MsgBackpressure),
    }
    if SOCKS.redirect_msg(&ctx, peer, u64::from(BPF_F_INGRESS)) == i64::from(sk_action::SK_PASS) {
        count(Counter::MsgRedirected);
        sk_action::SK_PASS
    } else {
        tcp_for_good(me, Counter::MsgPassed)
    }
}

fn tcp_for_good(me: SockKey, why: Counter) -> u32 {
    let _ = TCP_ONLY.insert(me, 1, u64::from(BPF_ANY));
    count(why);
    sk_action::SK_PASS
}

enum Room {
    Yes,
    Missing,
    Full,
}

/// Whether the peer socket is in the map and has room for `size` more
/// bytes in its receive buffer.
#[inline(always)]
fn receiver_room(config: &Config, peer: &SockKey, size: u32) -> Room {
    if config.sk_rmem_alloc_offset == 0 || config.sk_rcvbuf_offset == 0 {
        return Room::Missing;
    }
    // The receiver's kernel address, recorded by sock_ops when it joined.
    // (A socket map lookup from sk_msg would return a reference that this
    // program type cannot release.)
    let Some(addr) = SOCK_ADDRS.get_ptr(*peer) else {
        return Room::Missing;
    };
    #[expect(unsafe_code, reason = "reading kernel memory at BTF offsets")]
    // SAFETY: addr is a non-null map value pointer. bpf_probe_read_kernel
    // copies safely from any address (a bad one, say of a socket that just
    // closed, yields an error or a stale number, never a fault); the offsets
    // come from this kernel's BTF for struct sock.
    let (rmem, rcvbuf) = unsafe {
        let addr = *addr;
        (
            bpf_probe_read_kernel((addr + u64::from(config.sk_rmem_alloc_offset)) as *const i32),
            bpf_probe_read_kernel((addr + u64::from(config.sk_rcvbuf_offset)) as *const i32),
        )
    };
    match (rmem, rcvbuf) {
        (Ok(rmem), Ok(rcvbuf))
            if i64::from(rmem) + i64::from(size)
                <= i64::from(rcvbuf).max(i64::from(config.fast_path_window)) =>
        {
            Room::Yes
        }
        (Ok(_), Ok(_)) => Room::Full,
        _ => Room::Missing,
    }
}
