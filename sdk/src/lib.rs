//! Tessera client SDK.
//!
//! Tessera is a range-sharded, Raft-replicated key-value store. This crate is how
//! applications talk to it.
//!
//! - [`core`]: the I/O-free heart of the client: the routing cache ([`core::route`]),
//!   merging of concurrent PD lookups ([`core::lookup`]), jittered [`Backoff`], the single
//!   retry decision ([`core::retry`]) and request planning ([`core::plan`]). It has no
//!   clock, no OS randomness and no network; it builds for `wasm32-unknown-unknown`
//!   (`--no-default-features`).
//! - `Client` (feature `client`): the retry loop, batching, scans and sessions over the
//!   core, with the transport and the timer injected ([`platform`]); it runs on wasm32 too.
//! - Feature `native` (on by default): `Client::connect`, over tokio and QUIC.
//!
//! Every write carries the client's session id and a fresh sequence number, and is resent
//! with that *same* number on retry, so it is applied at most once. If its fate cannot be
//! learned before the request deadline the call fails with [`Error::Undetermined`]; every
//! other error means the write was not applied.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "native")]
//! # async fn example() -> Result<(), tessera::Error> {
//! use std::path::Path;
//! use tessera::{Client, ClientConfig, ScanOptions, TlsFiles};
//! use futures::StreamExt;
//!
//! let tls = TlsFiles::client(Path::new("certs"), "dev");
//! let client = Client::connect(ClientConfig::new(vec!["127.0.0.1:2379".into()], Some(tls))).await?;
//!
//! client.put(b"greeting", b"hello").await?;
//! assert_eq!(client.get(b"greeting").await?, Some(b"hello".to_vec()));
//! let len = client.append(b"greeting", b", world").await?;
//! assert_eq!(len, 12);
//!
//! let swapped = client.compare_and_swap(b"greeting", Some(&b"hello, world"[..]), Some(&b"bye"[..])).await?;
//! assert!(swapped.succeeded);
//!
//! let mut rows = client.scan(b"a", b"z", ScanOptions::default());
//! while let Some(row) = rows.next().await {
//!     let (key, value) = row?;
//!     println!("{key:?} = {value:?}");
//! }
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "client")]
mod client;
pub mod core;
mod error;

pub use crate::core::backoff::{Backoff, Jitter};
pub use crate::core::plan::{ScanCursor, ScanOptions};
#[cfg(feature = "client")]
pub use client::{platform, CasOutcome, Client, ClientConfig};
pub use error::Error;
#[cfg(feature = "native")]
pub use tessera_certs::TlsFiles;
pub use tessera_wire::{
    NodeId, NodeInfo, NodeState, Peer, PeerId, ReadConsistency, RegionDescriptor, RegionEpoch, RegionId, RegionRoute,
    SessionId,
};
