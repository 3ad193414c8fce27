//! Ports for test servers that come back on the same address after a restart.

use rand::Rng;

/// Ports below the kernel's ephemeral range (32768–60999 by default on Linux).
const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A free UDP port on 127.0.0.1 for a server that must come back on it after a restart.
///
/// A port from `bind(0)` is not safe for that: the kernel hands out the ephemeral range,
/// where every client socket of every test running in parallel also draws, so while a node
/// is down another test's socket can take its port (seen in CI as `Address already in use`
/// on a restart). This picks a random port below that range, where only ports picked the
/// same way can collide, and checks that it is free now.
pub fn restartable_port() -> u16 {
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let port = rng.random_range(RANGE);
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free UDP port in {RANGE:?}");
}
