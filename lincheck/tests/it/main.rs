//! Integration tests for `tessera-lincheck`: one binary, one module per theme.

mod generated;
mod handmade;
mod oracle;
mod perf;
mod sim;
