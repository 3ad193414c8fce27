//! Library half of the `tessera` binary: the in-process development cluster, reused by the
//! load harness (`benches/`).

pub mod dev;
pub mod layout;
pub mod placement;
pub mod web_page;

/// "N worker threads": the worker threads of the runtime this is called on (`tessera
/// --worker-threads`), for the servers' start lines. Outside a runtime: "no runtime".
pub fn worker_threads_note() -> String {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => match rt.metrics().num_workers() {
            1 => "1 worker thread".to_string(),
            n => format!("{n} worker threads"),
        },
        Err(_) => "no runtime".to_string(),
    }
}
