//! The I/O-free core: routing cache, lookup merging, backoff, retry decisions and request
//! planning. Nothing here reads a clock, draws OS randomness or touches the network, so
//! it runs unchanged on wasm32 and under deterministic simulation.
//!
//! Architecture invariant: this module must not know about tokio, quinn or the native
//! client. Time arrives as [`time::Timestamp`] parameters and randomness as a
//! [`rng::RandomSource`].

pub mod backoff;
pub mod lookup;
pub mod plan;
pub mod retry;
pub mod rng;
pub mod route;
pub mod session;
pub mod suspect;
pub mod time;
