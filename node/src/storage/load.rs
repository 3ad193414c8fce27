//! The node's write-load signal, shared by the Raft log writer and the state-machine engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether the node is under write load, as its Raft log writer sees it: set by a sync that
/// lingers to gather more jobs (see [`super::wal::GroupCommit`]), which with the default
/// settings happens only while writes queue up faster than one sync at a time drains them;
/// cleared by a sync that does not linger, or after the writer has had no work for 100 ms.
/// The state machine's engine follows it ([`super::Engine::follow_load`]): under load,
/// applies join the engine writer's group commit, where the applies of several regions
/// share one transaction, instead of each committing in place. Cheap to clone; clones
/// share the flag.
#[derive(Debug, Clone, Default)]
pub struct LoadSignal(Arc<AtomicBool>);

impl LoadSignal {
    /// Whether the node is under write load.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, on: bool) {
        // Written once per sync but read by every apply: store only on a change, so the
        // cache line stays shared while the value holds.
        if self.0.load(Ordering::Relaxed) != on {
            self.0.store(on, Ordering::Relaxed);
        }
    }
}
