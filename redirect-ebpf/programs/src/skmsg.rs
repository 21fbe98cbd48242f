//! sk_msg (attached to the fast path's socket map): each `sendmsg` of a
//! socket in the map goes straight into its peer socket's receive queue.
//!
//! A direction's bytes must all take one way, or the receiver could read
//! them out of order (it reads redirected bytes before TCP ones). So when a
//! socket sends and its peer is not in the map yet, that socket's sends go
//! over TCP for good ([`MAP_TCP_ONLY`](weft_redirect_abi::MAP_TCP_ONLY)).
//! The other direction may still take the fast path: switching once from
//! redirected to TCP bytes keeps their order; the reverse would not.

use aya_ebpf::bindings::{BPF_ANY, BPF_F_INGRESS, sk_action};
use aya_ebpf::macros::sk_msg;
use aya_ebpf::programs::SkMsgContext;
use weft_redirect_abi::{Counter, SockKey};

use crate::{SOCKS, TCP_ONLY, count};

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
    let peer = me.peer();
    if SOCKS.redirect_msg(&ctx, peer, u64::from(BPF_F_INGRESS)) == i64::from(sk_action::SK_PASS) {
        count(Counter::MsgRedirected);
    } else {
        let _ = TCP_ONLY.insert(me, 1, u64::from(BPF_ANY));
        count(Counter::MsgPassed);
    }
    sk_action::SK_PASS
}
