//! Recording a history: invocations, completions and undetermined outcomes.

use std::error::Error;
use std::fmt;

use crate::model::{output_matches, Bytes, Op, Output};

/// Identifies the client (a sequential thread of operations) that invoked an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}", self.0)
    }
}

/// Identifies one operation in a [`History`]; returned by [`History::invoke`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub(crate) usize);

impl OpId {
    /// Position of the operation in the order of invocation calls, starting at 0.
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Neither completed nor declared unknown yet; checked as [`Status::Unknown`].
    Pending,
    /// Completed at `time` with `output`.
    Completed { output: Output, time: u64 },
    /// The client cannot tell whether the operation took effect.
    Unknown,
}

/// One recorded operation.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) client: ClientId,
    pub(crate) key: Vec<u8>,
    pub(crate) op: Op,
    pub(crate) invoke: u64,
    pub(crate) status: Status,
}

impl Entry {
    /// The completed output, or `None` when the outcome is unknown or pending.
    pub(crate) fn output(&self) -> Option<&Output> {
        match &self.status {
            Status::Completed { output, .. } => Some(output),
            Status::Pending | Status::Unknown => None,
        }
    }

    /// Completion time; `u64::MAX` stands for "never", for unknown and pending operations.
    pub(crate) fn complete_time(&self) -> u64 {
        match &self.status {
            Status::Completed { time, .. } => *time,
            Status::Pending | Status::Unknown => u64::MAX,
        }
    }
}

/// A concurrent history of operations on a key-value store, the input to [`check`](crate::check).
///
/// Times are `u64` readings of one clock shared by all clients (nanoseconds or any monotonic
/// counter). Operation A precedes B in real time iff A completed strictly before B was
/// invoked; equal timestamps count as concurrent, so a coarse clock can only make the checker
/// more permissive, never produce a false violation.
///
/// What to record:
/// - An operation that completed with a result: [`History::invoke`] then [`History::complete`]
///   (or [`History::record`] in one call).
/// - A write whose fate is undetermined (timeout, lost connection, an SDK `Undetermined`):
///   [`History::invoke`] then [`History::unknown`]. It may take effect at any point after its
///   invocation, or never. Operations still pending when the history is checked are treated
///   the same way. A read with an unknown outcome constrains nothing and is ignored.
/// - An operation that definitely failed without taking effect (for example, rejected before
///   being proposed): omit it. Recording it as completed would claim it took effect.
#[derive(Clone, Debug, Default)]
pub struct History {
    entries: Vec<Entry>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Records that `client` invoked `op` on `key` at `time`. The operation stays pending until
    /// [`complete`](History::complete) or [`unknown`](History::unknown) is called for it.
    pub fn invoke(&mut self, client: ClientId, key: impl Into<Vec<u8>>, op: Op, time: u64) -> OpId {
        let id = OpId(self.entries.len());
        self.entries.push(Entry { client, key: key.into(), op, invoke: time, status: Status::Pending });
        id
    }

    /// Records that operation `id` completed at `time` and returned `output`.
    pub fn complete(&mut self, id: OpId, output: Output, time: u64) -> Result<(), HistoryError> {
        let entry = self.pending_mut(id)?;
        if time < entry.invoke {
            return Err(HistoryError::CompletedBeforeInvoked { id, invoke: entry.invoke, complete: time });
        }
        if !output_matches(&entry.op, &output) {
            return Err(HistoryError::OutputMismatch { id, op: entry.op.name(), output: output.name() });
        }
        entry.status = Status::Completed { output, time };
        Ok(())
    }

    /// Records that the fate of operation `id` is undetermined: it may have taken effect at any
    /// point after its invocation, or never.
    pub fn unknown(&mut self, id: OpId) -> Result<(), HistoryError> {
        self.pending_mut(id)?.status = Status::Unknown;
        Ok(())
    }

    /// Records a completed operation in one call: [`invoke`](History::invoke) at `invoke`, then
    /// [`complete`](History::complete) at `complete`.
    pub fn record(
        &mut self,
        client: ClientId,
        key: impl Into<Vec<u8>>,
        op: Op,
        output: Output,
        invoke: u64,
        complete: u64,
    ) -> Result<OpId, HistoryError> {
        let id = self.invoke(client, key, op, invoke);
        match self.complete(id, output, complete) {
            Ok(()) => Ok(id),
            Err(e) => {
                // Leave no half-recorded operation behind.
                self.entries.pop();
                Err(e)
            }
        }
    }

    /// Number of recorded operations, in any state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn pending_mut(&mut self, id: OpId) -> Result<&mut Entry, HistoryError> {
        let entry = self.entries.get_mut(id.0).ok_or(HistoryError::NoSuchOp { id })?;
        if entry.status != Status::Pending {
            return Err(HistoryError::AlreadyResolved { id });
        }
        Ok(entry)
    }
}

/// A misuse of the [`History`] recording API; the history is left unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HistoryError {
    /// The id was not returned by this history's `invoke`.
    NoSuchOp {
        /// The offending id.
        id: OpId,
    },
    /// The operation was already completed or declared unknown.
    AlreadyResolved {
        /// The offending id.
        id: OpId,
    },
    /// The completion time is earlier than the invocation time.
    CompletedBeforeInvoked {
        /// The offending id.
        id: OpId,
        /// When the operation was invoked.
        invoke: u64,
        /// The completion time that was refused.
        complete: u64,
    },
    /// The output's variant does not belong to the operation (e.g. a put completed with a
    /// read value).
    OutputMismatch {
        /// The offending id.
        id: OpId,
        /// Name of the invoked operation.
        op: &'static str,
        /// Name of the operation the output belongs to.
        output: &'static str,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::NoSuchOp { id } => write!(f, "operation {id} is not in this history"),
            HistoryError::AlreadyResolved { id } => {
                write!(f, "operation {id} was already completed or declared unknown")
            }
            HistoryError::CompletedBeforeInvoked { id, invoke, complete } => {
                write!(f, "operation {id} completed at {complete}, before its invocation at {invoke}")
            }
            HistoryError::OutputMismatch { id, op, output } => {
                write!(f, "operation {id} is a {op} but completed with a {output} output")
            }
        }
    }
}

impl Error for HistoryError {}

/// Formats one entry for explanations: `#3 client 1 get -> "a" [10, 20]`.
pub(crate) struct EntryFmt<'a>(pub OpId, pub &'a Entry);

impl fmt::Display for EntryFmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let EntryFmt(id, e) = self;
        write!(f, "{id} {} {}", e.client, e.op)?;
        match &e.status {
            Status::Completed { output, time } => {
                write!(f, " -> {output} [{}, {time}]", e.invoke)
            }
            Status::Pending | Status::Unknown => write!(f, " -> unknown [{}, -]", e.invoke),
        }
    }
}

/// Formats a key for reports.
pub(crate) fn key_fmt(key: &[u8]) -> Bytes<'_> {
    Bytes(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_refuses_a_second_resolution() {
        let mut h = History::new();
        let id = h.invoke(ClientId(1), "k", Op::Get, 5);
        h.complete(id, Output::absent(), 6).unwrap();
        assert_eq!(h.complete(id, Output::absent(), 7), Err(HistoryError::AlreadyResolved { id }));
        assert_eq!(h.unknown(id), Err(HistoryError::AlreadyResolved { id }));
    }

    #[test]
    fn complete_refuses_time_travel_and_mismatched_outputs() {
        let mut h = History::new();
        let id = h.invoke(ClientId(1), "k", Op::put("v"), 5);
        assert!(matches!(h.complete(id, Output::Put, 4), Err(HistoryError::CompletedBeforeInvoked { .. })));
        assert!(matches!(
            h.complete(id, Output::absent(), 6),
            Err(HistoryError::OutputMismatch { op: "put", output: "get", .. })
        ));
        h.complete(id, Output::Put, 6).unwrap();
    }

    #[test]
    fn foreign_ids_are_refused() {
        let mut other = History::new();
        other.invoke(ClientId(0), "k", Op::Get, 0);
        let foreign = other.invoke(ClientId(0), "k", Op::Get, 0);
        let mut h = History::new();
        assert_eq!(h.unknown(foreign), Err(HistoryError::NoSuchOp { id: foreign }));
    }

    #[test]
    fn failed_record_leaves_no_entry() {
        let mut h = History::new();
        assert!(h.record(ClientId(0), "k", Op::Get, Output::Put, 0, 1).is_err());
        assert!(h.is_empty());
    }
}
