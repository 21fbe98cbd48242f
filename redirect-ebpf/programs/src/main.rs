//! weft's eBPF programs. Built with the image's nightly for
//! `bpfel-unknown-none`; the loader embeds the object.
//!
//! - [`tc`]: `tc` ingress on the node side of pod veths and on the
//!   underlay. New TCP connections from meshed pods go to the proxy's
//!   transparent outbound listener, new connections to meshed pods go to its
//!   inbound listeners, and packets of flows the proxy owns go to their own
//!   socket, all by `bpf_sk_assign`: no NAT, no conntrack, no iptables.
//!
//! - [`sockops`] and [`skmsg`]: the same-node fast path. Sockets of meshed
//!   pod ↔ proxy pairs go into a socket map, and each `sendmsg` lands in the
//!   peer socket's receive queue without crossing the TCP/IP stack.
//!
//! Maps are described in `weft-redirect-abi`, the contract with userspace.
#![no_std]
#![no_main]

mod skmsg;
mod sockops;
mod tc;

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash};
use weft_redirect_abi::{
    COUNTER_COUNT, Config, Counter, MAX_IFACES, MAX_LOCAL, MAX_MESHED, MAX_SOCKS, SockKey,
};

#[map(name = "WEFT_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "WEFT_IFACES")]
static IFACES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IFACES, 0);

#[map(name = "WEFT_MESHED")]
static MESHED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_MESHED, 0);

#[map(name = "WEFT_LOCAL")]
static LOCAL: HashMap<u32, u32> = HashMap::with_max_entries(MAX_LOCAL, 0);

#[map(name = "WEFT_SOCKS")]
static SOCKS: SockHash<SockKey> = SockHash::with_max_entries(MAX_SOCKS, 0);

#[map(name = "WEFT_TCP_ONLY")]
static TCP_ONLY: LruHashMap<SockKey, u8> = LruHashMap::with_max_entries(MAX_SOCKS, 0);

#[map(name = "WEFT_SOCK_ADDRS")]
static SOCK_ADDRS: LruHashMap<SockKey, u64> = LruHashMap::with_max_entries(MAX_SOCKS, 0);

#[map(name = "WEFT_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Adds one to a per-CPU counter (no atomics needed: the slot is this CPU's).
#[inline(always)]
fn count(c: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(c as u32) {
        #[expect(unsafe_code, reason = "a per-CPU map slot is only touched by this CPU")]
        // SAFETY: the pointer comes from a successful map lookup and the
        // value is plain u64; per-CPU storage has no concurrent writer.
        unsafe {
            *slot += 1;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[expect(unsafe_code, reason = "the kernel reads the license from this section")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
