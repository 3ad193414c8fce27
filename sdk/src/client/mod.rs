//! The client over the I/O-free core: the retry loop, batching, scans and sessions. It has
//! no runtime of its own: the transport and the timer are injected ([`platform`]). With
//! feature `native`, [`Client::connect`] injects QUIC and tokio; the wasm SDK injects
//! WebSocket or WebTransport and JavaScript timers.
//!
//! Architecture invariant: this layer holds no retry policy of its own. It reads the clock,
//! performs I/O through the injected transport, and hands every failure to
//! [`crate::core::retry::RetryState::decide`] inside the single retry loop
//! ([`exec`]).
//!
//! Both of its contacts with the outside world are injected, so the loop can run on
//! simulated time:
//! - [`transport::Transport`] sends one request to one address with a timeout. The client
//!   uses the QUIC `ConnectionPool`; tests use a scripted fake (`sim.rs`).
//! - [`clock::Timer`] gives the time and the backoff sleeps. Every deadline check, attempt
//!   timeout and backoff goes through it: `TokioClock` natively, JS timers in wasm, the
//!   core's `ManualClock` in tests, where a sleep moves the clock and returns at once. (The
//!   wait for a PD lookup shared with other requests races the lookup against
//!   [`clock::Timer::race_timer`], which a simulated clock never fires; see [`pd`].)
//!
//! `sim_tests.rs` drives every failure classification through the public client methods and
//! the real retry loop on that simulated time, with no network and no real timer.

mod api;
mod clock;
mod config;
mod exec;
mod pd;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_tests;
mod transport;

pub use api::{CasOutcome, Client};
pub use config::ClientConfig;

/// What a platform provides the client: a transport and a timer. The native client uses
/// QUIC and tokio; the wasm SDK implements these over WebSocket/WebTransport and JS timers.
pub mod platform {
    pub use super::clock::Timer;
    pub use super::transport::Transport;
    pub use crate::core::time::{Clock, Timestamp};
    pub use tessera_wire::TransportError;
}
