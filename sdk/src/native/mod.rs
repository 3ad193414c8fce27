//! The native client: tokio + QUIC over the I/O-free core.
//!
//! Architecture invariant: this layer holds no retry policy of its own. It reads the clock
//! ([`clock`]), seeds the RNG from the OS, performs I/O, and hands every failure to
//! [`crate::core::retry::RetryState::decide`] inside the single retry loop
//! ([`exec`]).

mod client;
mod clock;
mod config;
mod exec;
mod pd;

pub use client::{CasOutcome, Client};
pub use config::ClientConfig;
