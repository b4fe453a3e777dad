//! Free 127.0.0.1 ports that do not collide within one process.
//!
//! Ports are picked at random below the kernel's ephemeral range (so that outgoing
//! connections never grab a port a stopped service wants back on restart), checked
//! by binding them, and remembered in a process-wide set so that tests running in
//! parallel threads never get the same port.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Result, TestkitError};

/// The lowest port handed out.
const LOW: u16 = 12_000;
/// Ports handed out at random are below this when the ephemeral range allows it.
const DEFAULT_HIGH: u16 = 32_000;

struct State {
    used: HashSet<u16>,
    rng: u64,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x2545_F491_4F6C_DD1D;
        Mutex::new(State {
            used: HashSet::new(),
            rng: seed | 1,
        })
    })
}

fn next_random(rng: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Upper bound (exclusive) of the random range: the start of the ephemeral range.
fn high_bound() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u16>().ok())
        });
    match ephemeral_low {
        Some(low) if low > LOW + 1_000 => low.min(DEFAULT_HIGH),
        _ => DEFAULT_HIGH,
    }
}

fn tcp_free(port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn pick(need_udp: bool) -> Result<u16> {
    let high = high_bound();
    let mut st = state()
        .lock()
        .map_err(|_| TestkitError::InvalidArgument("port registry mutex poisoned".into()))?;
    for _ in 0..1_000 {
        let r = next_random(&mut st.rng);
        let port = LOW + (r % u64::from(high - LOW)) as u16;
        if st.used.contains(&port) {
            continue;
        }
        if tcp_free(port) && (!need_udp || udp_free(port)) {
            st.used.insert(port);
            return Ok(port);
        }
    }
    // Fall back to letting the kernel choose.
    for _ in 0..100 {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| TestkitError::io("binding 127.0.0.1:0 to find a free port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| TestkitError::io("reading the local address of a listener", e))?
            .port();
        drop(listener);
        if !st.used.contains(&port) && (!need_udp || udp_free(port)) {
            st.used.insert(port);
            return Ok(port);
        }
    }
    Err(TestkitError::InvalidArgument(
        "could not find a free port on 127.0.0.1".into(),
    ))
}

/// Returns a TCP port on 127.0.0.1 that is free right now and that no other caller
/// in this process has been given.
pub fn free_port() -> Result<u16> {
    pick(false)
}

/// Like [`free_port`], but the port is free for both TCP and UDP (for DNS servers).
pub fn free_tcp_udp_port() -> Result<u16> {
    pick(true)
}
