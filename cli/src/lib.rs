//! Library half of the `tessera` binary: the in-process development cluster, reused by the
//! load harness (`benches/`).

pub mod dev;
pub mod layout;
pub mod placement;
pub mod web_page;
