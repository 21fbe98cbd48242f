//! sock_ops (attached to the node's cgroup): when a TCP connection is
//! established, add its socket to the fast path if it is one end of a
//! meshed pod ↔ node proxy pair.
//!
//! - a meshed pod's own socket: its local address is a meshed pod of this
//!   node that opted in to the fast path (every TCP connection of a meshed
//!   pod goes to the proxy, by capture);
//! - a proxy socket (its `SO_MARK` is the proxy's) whose peer is such a pod.
//!
//! Opting in is per pod because of a kernel behaviour: a socket in a
//! socket map reads through `tcp_bpf_recvmsg`, which answers a *blocking*
//! read with `EAGAIN` when the reader is woken without data (after its own
//! half-close: its FIN being acknowledged; a shutdown from another thread;
//! send-buffer space). See docs/ARCHITECTURE.md, "The fast path".
//!
//! Loopback is never added: 127.0.0.1 exists in every pod, and the map is
//! shared by all of them.

use aya_ebpf::bindings::{
    BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
};
use aya_ebpf::macros::sock_ops;
use aya_ebpf::programs::SockOpsContext;
use weft_redirect_abi::{Counter, POD_FAST_PATH, SockKey};

use aya_ebpf::helpers::bpf_probe_read_kernel;

use crate::{CONFIG, MESHED, SOCK_ADDRS, SOCKS, count};

const AF_INET: u32 = 2;

#[sock_ops]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature the sock_ops macro expects"
)]
pub(crate) fn weft_sockops(ctx: SockOpsContext) -> u32 {
    established(&ctx);
    0
}

#[inline(always)]
fn established(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return;
    }
    if ctx.family() != AF_INET {
        return;
    }
    let Some(config) = CONFIG.get(0) else {
        return;
    };
    if config.fast_path == 0 {
        return;
    }
    let key = SockKey {
        local_ip: ctx.local_ip4(),
        remote_ip: ctx.remote_ip4(),
        local_port: ctx.local_port(),
        remote_port: u32::from(u16::from_be((ctx.remote_port() >> 16) as u16)),
    };
    if loopback(key.local_ip) || loopback(key.remote_ip) {
        return;
    }
    let mark = socket_mark(ctx);
    let pod_socket = mark != Some(config.proxy_socket_mark) && fast_path_pod(key.local_ip);
    let proxy_socket = mark == Some(config.proxy_socket_mark) && fast_path_pod(key.remote_ip);
    if !(pod_socket || proxy_socket) {
        return;
    }
    #[expect(unsafe_code, reason = "the context pointer the kernel passed in")]
    // SAFETY: ops points at this program's live bpf_sock_ops.
    let ops = unsafe { &mut *ctx.ops };
    if SOCKS.update(key, ops, u64::from(BPF_ANY)).is_ok() {
        if let Some(addr) = socket_address(ctx) {
            let _ = SOCK_ADDRS.insert(key, addr, u64::from(BPF_ANY));
        }
        count(Counter::SockAdded);
    }
}

/// Whether `ip` is a meshed pod of this node that opted in to the fast path.
#[inline(always)]
fn fast_path_pod(ip: u32) -> bool {
    MESHED.get_ptr(ip).is_some_and(|flags| {
        #[expect(unsafe_code, reason = "a map value pointer from a successful lookup")]
        // SAFETY: non-null pointer to a u32 map value.
        let flags = unsafe { *flags };
        flags & POD_FAST_PATH != 0
    })
}

/// The first octet of a key is the first byte of the address.
#[inline(always)]
fn loopback(ip: u32) -> bool {
    ip.to_ne_bytes()[0] == 127
}

/// The kernel address of the context's socket, as a number. The verifier
/// keeps socket pointers opaque; copying one out of a stack slot with
/// bpf_probe_read_kernel yields its value.
#[inline(always)]
fn socket_address(ctx: &SockOpsContext) -> Option<u64> {
    #[expect(unsafe_code, reason = "reading the socket pointer of the context")]
    // SAFETY: ops is this program's context; the read copies from this
    // program's stack.
    unsafe {
        let sk = (*ctx.ops).__bindgen_anon_2.sk;
        if sk.is_null() {
            return None;
        }
        bpf_probe_read_kernel(core::ptr::from_ref(&sk).cast::<u64>()).ok()
    }
}

#[inline(always)]
fn socket_mark(ctx: &SockOpsContext) -> Option<u32> {
    #[expect(unsafe_code, reason = "reading the socket pointer of the context")]
    // SAFETY: ops is this program's context; sk is checked for null below
    // and is a full socket in the established callbacks.
    unsafe {
        let sk = (*ctx.ops).__bindgen_anon_2.sk;
        if sk.is_null() { None } else { Some((*sk).mark) }
    }
}
