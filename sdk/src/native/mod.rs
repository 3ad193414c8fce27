//! The native client: tokio + QUIC over the I/O-free core.
//!
//! Architecture invariant: this layer holds no retry policy of its own. It reads the clock,
//! seeds the RNG from the OS, performs I/O, and hands every failure to
//! [`crate::core::retry::RetryState::decide`] inside the single retry loop
//! ([`exec`]).
//!
//! Both of its contacts with the outside world are injected, so the loop can run on
//! simulated time:
//! - [`transport::Transport`] sends one request to one address with a timeout. The client
//!   uses the QUIC `ConnectionPool`; tests use a scripted fake (`sim.rs`).
//! - [`clock::Timer`] gives the time and the backoff sleeps. Every deadline check, attempt
//!   timeout and backoff goes through it: `TokioClock` in production, the core's
//!   `ManualClock` in tests, where a sleep moves the clock and returns at once. (The wait
//!   for a PD lookup shared with other requests is the one tokio timer left: it races the
//!   lookup, which a simulated sleep cannot do; see [`pd`].)
//!
//! `sim_tests.rs` drives every failure classification through the public client methods and
//! the real retry loop on that simulated time, with no network and no real timer.

mod client;
mod clock;
mod config;
mod exec;
mod pd;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_tests;
mod transport;

pub use client::{CasOutcome, Client};
pub use config::ClientConfig;
