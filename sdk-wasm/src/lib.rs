//! Tessera's JavaScript SDK: the Rust client ([`tessera::Client`], its routing cache,
//! retries and exactly-once sessions) compiled to wasm, reaching the cluster over WebSocket
//! with a scoped token. Node.js, edge runtimes and browsers use it alike.
//!
//! - [`endpoint`] and [`mux`] are pure (tested natively): endpoint URLs, and the frames and
//!   waiting requests of one socket.
//! - `web` (wasm32 only) is the JavaScript platform: the WebSocket transport, JS timers
//!   and randomness, and the `WasmClient` class. The npm package's `js/index.js` wraps it
//!   in the public `Client` (strings or bytes, error classes, async-iterator scans).

pub mod endpoint;
pub mod mux;
#[cfg(target_arch = "wasm32")]
mod web;
