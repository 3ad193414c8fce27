//! Ports for test servers that come back on the same address after a restart.

use std::collections::BTreeSet;
use std::sync::Mutex;

use rand::Rng;

/// Ports below the kernel's ephemeral range (32768–60999 by default on Linux).
const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// Ports this test process handed out: a server that is down leaves its port free to bind,
/// and must still get it back.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A free port on 127.0.0.1 (UDP for QUIC and TCP for the WebSocket listener) for a server
/// that must come back on it after a restart.
///
/// A port from `bind(0)` is not safe for that: the kernel hands out the ephemeral range,
/// where every client socket of every test running in parallel also draws, so while a node
/// is down another test's socket can take its port (seen in CI as `Address already in use`
/// on a restart). This picks a random port below that range, where only ports picked the
/// same way can collide, never one it handed out before, and checks that it is free now.
pub fn restartable_port() -> u16 {
    let mut rng = rand::rng();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1_000 {
        let port = rng.random_range(RANGE);
        if handed_out.contains(&port) {
            continue;
        }
        let free = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port in {RANGE:?}");
}
