//! A per-key linearizability checker for histories of a key-value store.
//!
//! Tests record what concurrent clients did (which operation, on which key, when it was
//! invoked, when it returned and what it returned) in a [`History`]; [`check`] decides whether
//! some sequential order of those operations, consistent with their real-time order, explains
//! every result. If none exists the store is not linearizable, and the [`Report`] says which
//! key failed and which operations cannot be explained.
//!
//! # Model
//!
//! Every key is an independent register holding `Option<Vec<u8>>` (`None`: absent), initially
//! absent. Operations ([`Op`]) and what they return ([`Output`]):
//!
//! | operation | effect | output |
//! |---|---|---|
//! | `Get` | none | the value observed |
//! | `Put(v)` | value := `v` | acknowledgement |
//! | `Delete` | value := absent | whether the key existed (optional) |
//! | `Append(b)` | value := value ++ `b` (absent counts as empty) | the new length (optional) |
//! | `Cas { expected, new }` | if value == `expected` then value := `new` | whether it swapped |
//!
//! An operation either completed with an output, or has an *unknown* outcome
//! ([`History::unknown`]): a write whose fate the client cannot determine may take effect at
//! any point after its invocation, or never, so its completion is treated as +infinity.
//! Operations that definitely failed without taking effect must be left out of the history;
//! unknown reads are ignored. Operation A precedes B iff A completed strictly before B was
//! invoked.
//!
//! # Algorithm
//!
//! Linearizability is compositional (Herlihy & Wing 1990), so each key is checked alone. For
//! each key the checker runs the backtracking search of Wing & Gong ("Testing and verifying
//! concurrent objects", JPDC 1993): repeatedly pick an operation that is *minimal* among those
//! not yet linearized (no remaining operation completed before it was invoked), apply it to
//! the register if its output is consistent, and backtrack when nothing fits. Following Lowe
//! ("Testing for linearizability", CCPE 2017), every configuration (set of linearized
//! operations as a bitset, register value) is memoized, and a configuration seen before is not
//! explored again. Two more reductions keep the search small:
//!
//! - Unknown operations are candidates like the others but need not be linearized: the search
//!   succeeds once every *completed* operation is. An unknown write is only tried right before
//!   an operation that looks at the value, and a configuration with more unknown operations
//!   linearized than one that already failed is not explored, so pending unknown writes do
//!   not multiply the search space.
//! - A completed operation that never changes the register (a read, a failed CAS, a delete
//!   that reports the key absent) is linearized as soon as it is minimal and consistent,
//!   without trying alternatives: moving it earlier cannot invalidate a linearization.
//!
//! The search is exponential in the worst case; [`CheckConfig::max_states_per_key`] bounds it
//! and an exhausted key reports [`Outcome::Timeout`] instead of hanging. With a handful of
//! concurrent clients, thousands of operations per key check in milliseconds.
//!
//! # Example
//!
//! ```
//! use tessera_lincheck::{check, ClientId, History, Op, Outcome, Output};
//!
//! let mut h = History::new();
//! let (alice, bob) = (ClientId(1), ClientId(2));
//! // Alice writes "a" during [0, 10]; Bob reads "a" during [5, 15], concurrently: fine.
//! let put = h.invoke(alice, "k", Op::put("a"), 0);
//! let get = h.invoke(bob, "k", Op::Get, 5);
//! h.complete(put, Output::Put, 10).unwrap();
//! h.complete(get, Output::value("a"), 15).unwrap();
//! // Alice's write of "b" timed out: it may or may not have happened.
//! let lost = h.invoke(alice, "k", Op::put("b"), 20);
//! h.unknown(lost).unwrap();
//! // Later Bob reads "a" again: the lost write has not taken effect (yet). Still fine.
//! h.record(bob, "k", Op::Get, Output::value("a"), 30, 40).unwrap();
//! assert!(check(&h).is_linearizable());
//!
//! // But reading "a" after a read returned "b" cannot be explained.
//! h.record(bob, "k", Op::Get, Output::value("b"), 50, 60).unwrap();
//! h.record(alice, "k", Op::Get, Output::value("a"), 70, 80).unwrap();
//! let report = check(&h);
//! assert!(!report.is_linearizable());
//! assert!(matches!(report.outcome(b"k"), Some(Outcome::NotLinearizable { .. })));
//! println!("{report}");
//! ```

mod check;
mod history;
mod model;
mod report;
mod search;

pub use check::{check, check_with, CheckConfig};
pub use history::{ClientId, History, HistoryError, OpId};
pub use model::{Op, Output};
pub use report::{Outcome, Report};
