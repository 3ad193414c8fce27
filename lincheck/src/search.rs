//! The per-key search: Wing & Gong's backtracking with Lowe's memoization.
//!
//! A *configuration* is the set of operations linearized so far (a bitset) plus the register
//! value they leave. From a configuration, an operation may be linearized next iff it is not
//! yet linearized, it is minimal in the real-time order among the remaining operations (no
//! remaining operation completed before it was invoked), and its output is consistent with the
//! value. The search is a depth-first walk over configurations that stops as soon as every
//! completed operation is linearized; a configuration already known to fail is never explored
//! again, because its outcome depends only on the configuration, not on the path to it.
//!
//! Operations with an unknown outcome are what make the search blow up: each pending one may
//! or may not be linearized, at any later point. Three reductions keep that in check, each
//! justified where it is implemented:
//! - an unknown operation that would not change the value is never linearized;
//! - an unknown operation is never immediately followed by a blind write (which would erase
//!   its effect unobserved), so unknown writes are only placed right before an operation that
//!   looks at the value;
//! - failed configurations are matched by subsumption ([`FailedConfigs`]), so having linearized
//!   *more* unknown operations than a configuration that failed cannot help.
//!
//! Invariant: each reduction only removes linearizations that can be rewritten into one the
//! search still explores, so "no linearization found" stays exact. `tests/it/oracle.rs` checks
//! this against brute force.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};

use crate::history::{Entry, EntryFmt, OpId};
use crate::model::{is_blind, is_pure, step, Step, Value, ValueFmt};

/// One operation of the key being checked.
#[derive(Debug)]
pub(crate) struct KeyOp<'a> {
    pub(crate) id: OpId,
    pub(crate) entry: &'a Entry,
}

impl KeyOp<'_> {
    fn completed(&self) -> bool {
        self.entry.output().is_some()
    }
}

/// The result of searching one key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SearchResult {
    Linearizable,
    NotLinearizable(String),
    Timeout,
}

/// Searches for a linearization of `ops` (all on one key). Unknown reads must already be
/// removed. Gives up with [`SearchResult::Timeout`] after `max_states` configurations.
pub(crate) fn search(mut ops: Vec<KeyOp<'_>>, max_states: usize) -> SearchResult {
    ops.sort_by_key(|o| (o.entry.invoke, o.id));
    Search::new(&ops).run(max_states)
}

/// A depth-first stack frame: the configuration reached by linearizing `via`.
/// A hash map with the fast non-cryptographic hasher.
type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Debug)]
struct Frame {
    /// The operation linearized to reach this configuration (`None` at the root).
    via: Option<usize>,
    state: u32,
    /// Whether `via` is an operation with an unknown outcome.
    after_unknown: bool,
    /// Index of the first completed operation not yet linearized.
    frontier: usize,
    /// Operations to try next from here, and how many were tried.
    cands: Vec<usize>,
    tried: usize,
}

/// The deepest configuration reached, kept to explain a failure.
#[derive(Debug)]
struct Deepest {
    done: usize,
    bits: Vec<u64>,
    state: u32,
    path: Vec<usize>,
}

struct Search<'a, 'h> {
    ops: &'a [KeyOp<'h>],
    /// Indices (into `ops`) of operations with an unknown outcome, ascending.
    unknown: Vec<usize>,
    n_completed: usize,
    states: States,
}

impl<'a, 'h> Search<'a, 'h> {
    fn new(ops: &'a [KeyOp<'h>]) -> Self {
        let unknown = (0..ops.len()).filter(|&i| !ops[i].completed()).collect();
        let n_completed = ops.iter().filter(|o| o.completed()).count();
        Search { ops, unknown, n_completed, states: States::default() }
    }

    fn run(mut self, max_states: usize) -> SearchResult {
        if self.n_completed == 0 {
            return SearchResult::Linearizable;
        }
        let n = self.ops.len();
        // `lin`: every linearized operation, for choosing candidates. The memoization key is
        // split in two: `ckey` holds the linearized *completed* operations followed by one word
        // with the state id, `ukey` the linearized unknown operations (by rank in `unknown`).
        let mut lin = vec![0u64; n.div_ceil(64)];
        let cwords = n.div_ceil(64);
        let mut ckey = vec![0u64; cwords + 1];
        let mut ukey = vec![0u64; self.unknown.len().div_ceil(64)];
        let mut urank = vec![usize::MAX; n];
        for (rank, &i) in self.unknown.iter().enumerate() {
            urank[i] = rank;
        }
        let mut failed = FailedConfigs::default();
        let mut explored = 0usize;

        let root_state = self.states.intern(None);
        let frontier = self.advance(&lin, 0);
        let mut stack = vec![Frame {
            via: None,
            state: root_state,
            after_unknown: false,
            frontier,
            cands: self.candidates(&lin, frontier, root_state, false, true),
            tried: 0,
        }];
        let mut done = 0usize;
        let mut deepest = Deepest { done: 0, bits: lin.clone(), state: root_state, path: vec![] };

        while let Some(top) = stack.last_mut() {
            if top.tried == top.cands.len() {
                // Every continuation from this configuration failed: remember it, then undo.
                let frame = stack.pop().expect("stack is non-empty");
                let Some(op) = frame.via else { break };
                ckey[cwords] = state_word(frame.state, frame.after_unknown);
                failed.insert(&ckey, &ukey);
                clear(&mut lin, op);
                if self.ops[op].completed() {
                    clear(&mut ckey, op);
                    done -= 1;
                } else {
                    clear(&mut ukey, urank[op]);
                }
                continue;
            }
            let c = top.cands[top.tried];
            top.tried += 1;
            let (state, frontier) = (top.state, top.frontier);
            let op = &self.ops[c];
            let completed = op.completed();
            let next_state = match step(self.states.get(state), &op.entry.op, op.entry.output()) {
                Step::Reject => continue,
                // An unknown operation without effect is the same as one never linearized.
                Step::Keep if !completed => continue,
                Step::Keep => state,
                Step::Set(v) => self.states.intern(v),
            };
            if completed {
                set(&mut ckey, c);
            } else {
                set(&mut ukey, urank[c]);
            }
            // A failed configuration reached after a completed operation had no restriction on
            // its first step, so it also dominates the restricted one reached after an unknown.
            ckey[cwords] = state_word(next_state, false);
            let mut dominated = failed.dominates(&ckey, &ukey);
            if !completed && !dominated {
                ckey[cwords] = state_word(next_state, true);
                dominated = failed.dominates(&ckey, &ukey);
            }
            if dominated {
                if completed {
                    clear(&mut ckey, c);
                } else {
                    clear(&mut ukey, urank[c]);
                }
                continue;
            }
            explored += 1;
            if explored > max_states {
                return SearchResult::Timeout;
            }
            set(&mut lin, c);
            if completed {
                done += 1;
                if done == self.n_completed {
                    return SearchResult::Linearizable;
                }
            }
            let frontier = if c == frontier { self.advance(&lin, frontier) } else { frontier };
            if done > deepest.done {
                let mut path: Vec<usize> = stack.iter().filter_map(|f| f.via).collect();
                path.push(c);
                deepest = Deepest { done, bits: lin.clone(), state: next_state, path };
            }
            let after_unknown = !completed;
            let cands = self.candidates(&lin, frontier, next_state, after_unknown, true);
            stack.push(Frame { via: Some(c), state: next_state, after_unknown, frontier, cands, tried: 0 });
        }
        SearchResult::NotLinearizable(self.explain(&deepest))
    }

    /// The first completed, not yet linearized operation at or after `from`.
    fn advance(&self, bits: &[u64], from: usize) -> usize {
        let mut i = from;
        while i < self.ops.len() && (get(bits, i) || !self.ops[i].completed()) {
            i += 1;
        }
        i
    }

    /// The operations that may be linearized next: completed ones first, then unknown ones,
    /// each in invocation order. With `after_unknown`, blind writes are left out (they would
    /// erase the unknown operation's effect unobserved). With `greedy`, a consistent pure
    /// operation is returned alone.
    fn candidates(&self, bits: &[u64], frontier: usize, state: u32, after_unknown: bool, greedy: bool) -> Vec<usize> {
        let mut completed = Vec::new();
        let mut unknown: Vec<usize> =
            self.unknown.iter().copied().take_while(|&i| i < frontier).filter(|&i| !get(bits, i)).collect();
        // Operations are sorted by invocation, so once one is invoked after the earliest
        // completion among the remaining ones, so are all later ones. The earliest completion
        // can only shrink to a time >= the current invocation, which keeps every operation
        // already collected minimal.
        let mut min_complete = u64::MAX;
        for i in frontier..self.ops.len() {
            let e = self.ops[i].entry;
            if e.invoke > min_complete {
                break;
            }
            if get(bits, i) {
                continue;
            }
            if self.ops[i].completed() {
                min_complete = min_complete.min(e.complete_time());
                completed.push(i);
            } else {
                unknown.push(i);
            }
        }
        if greedy {
            let value = self.states.get(state);
            for &i in &completed {
                let e = self.ops[i].entry;
                let output = e.output().expect("completed");
                if is_pure(&e.op, output) && step(value, &e.op, Some(output)) != Step::Reject {
                    return vec![i];
                }
            }
        }
        completed.extend(unknown);
        if after_unknown {
            completed.retain(|&i| !is_blind(&self.ops[i].entry.op, self.ops[i].entry.output()));
        }
        completed
    }

    fn explain(&self, deepest: &Deepest) -> String {
        let value = self.states.get(deepest.state);
        let mut s = format!("at most {} of {} completed operations can be linearized", deepest.done, self.n_completed);
        if !deepest.path.is_empty() {
            const SHOWN: usize = 3;
            let skip = deepest.path.len().saturating_sub(SHOWN);
            s.push_str("; the longest linearizable prefix ends with ");
            for (n, &i) in deepest.path.iter().skip(skip).enumerate() {
                if n > 0 {
                    s.push_str(", ");
                }
                let _ = write!(s, "{}", self.fmt_op(i));
            }
        }
        let _ = write!(s, "; the register then holds {}", ValueFmt(value));
        let frontier = self.advance(&deepest.bits, 0);
        let cands = self.candidates(&deepest.bits, frontier, deepest.state, false, false);
        s.push_str("; no operation that may take effect next leads to a linearization:");
        const MAX_LISTED: usize = 8;
        let (done_cands, unknown_cands): (Vec<usize>, Vec<usize>) =
            cands.iter().partition(|&&i| self.ops[i].completed());
        for &i in done_cands.iter().take(MAX_LISTED) {
            let e = self.ops[i].entry;
            let why = match step(value, &e.op, e.output()) {
                Step::Reject => "inconsistent with that value",
                Step::Keep | Step::Set(_) => "consistent, but every continuation fails",
            };
            let _ = write!(s, " {} ({why});", self.fmt_op(i));
        }
        if done_cands.len() > MAX_LISTED {
            let _ = write!(s, " and {} more;", done_cands.len() - MAX_LISTED);
        }
        if !unknown_cands.is_empty() {
            let _ = write!(
                s,
                " none of the {} pending operations with an unknown outcome helps by taking \
                 effect first;",
                unknown_cands.len()
            );
        }
        s.pop();
        s
    }

    fn fmt_op(&self, i: usize) -> EntryFmt<'h> {
        EntryFmt(self.ops[i].id, self.ops[i].entry)
    }
}

/// Configurations known to have no successful continuation.
///
/// Lowe's memoization, extended with subsumption for unknown operations: a configuration is
/// keyed by its linearized completed operations and register value, and records which sets of
/// unknown operations were linearized. If configuration A failed and B has the same completed
/// set and value but a superset of A's unknown operations, B fails too: every continuation of
/// B is a continuation of A, since the extra unknown operations never block anything and need
/// not be linearized. Without this, each pending unknown write would double the search space.
#[derive(Debug, Default)]
struct FailedConfigs {
    /// (completed bitset ++ state id) -> minimal failed sets of linearized unknown operations.
    by_key: FxMap<Box<[u64]>, Vec<Box<[u64]>>>,
}

impl FailedConfigs {
    fn dominates(&self, ckey: &[u64], ukey: &[u64]) -> bool {
        self.by_key.get(ckey).is_some_and(|sets| sets.iter().any(|failed| is_subset(failed, ukey)))
    }

    fn insert(&mut self, ckey: &[u64], ukey: &[u64]) {
        match self.by_key.get_mut(ckey) {
            Some(sets) => {
                // Keep only minimal sets: a superset of the new one is now redundant.
                sets.retain(|known| !is_subset(ukey, known));
                sets.push(ukey.into());
            }
            None => {
                self.by_key.insert(ckey.into(), vec![ukey.into()]);
            }
        }
    }
}

fn is_subset(small: &[u64], big: &[u64]) -> bool {
    small.iter().zip(big).all(|(s, b)| s & !b == 0)
}

/// Interns register values so configurations store a `u32` instead of the bytes.
#[derive(Debug, Default)]
struct States {
    ids: HashMap<Value, u32>,
    values: Vec<Value>,
}

impl States {
    fn intern(&mut self, value: Value) -> u32 {
        if let Some(&id) = self.ids.get(&value) {
            return id;
        }
        let id = u32::try_from(self.values.len()).expect("fewer than 2^32 distinct values");
        self.values.push(value.clone());
        self.ids.insert(value, id);
        id
    }

    fn get(&self, id: u32) -> &Value {
        &self.values[id as usize]
    }
}

/// The last word of a memoization key: the state id and whether the configuration was reached
/// by an unknown operation (which restricts its first step).
fn state_word(state: u32, after_unknown: bool) -> u64 {
    u64::from(state) << 1 | u64::from(after_unknown)
}

fn get(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

fn set(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn clear(bits: &mut [u64], i: usize) {
    bits[i / 64] &= !(1 << (i % 64));
}

/// A small, fast, non-cryptographic hasher for the configuration cache (the Fx hash of rustc,
/// with a final mix so the low bits used for bucket selection depend on every input bit).
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // MurmurHash3's 64-bit finalizer.
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{ClientId, History};
    use crate::model::{Op, Output};

    fn run(h: &History, max_states: usize) -> SearchResult {
        let ops = h.entries().iter().enumerate().map(|(i, entry)| KeyOp { id: OpId(i), entry }).collect();
        search(ops, max_states)
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(run(&History::new(), 10), SearchResult::Linearizable);
    }

    #[test]
    fn sequential_put_then_get_is_linearizable() {
        let mut h = History::new();
        h.record(ClientId(0), "k", Op::put("a"), Output::Put, 0, 1).unwrap();
        h.record(ClientId(0), "k", Op::Get, Output::value("a"), 2, 3).unwrap();
        assert_eq!(run(&h, 100), SearchResult::Linearizable);
    }

    #[test]
    fn explanation_names_the_stale_read() {
        let mut h = History::new();
        h.record(ClientId(0), "k", Op::put("a"), Output::Put, 0, 1).unwrap();
        h.record(ClientId(0), "k", Op::put("b"), Output::Put, 2, 3).unwrap();
        h.record(ClientId(1), "k", Op::Get, Output::value("a"), 4, 5).unwrap();
        let SearchResult::NotLinearizable(why) = run(&h, 100) else { panic!("accepted") };
        assert!(why.contains("at most 2 of 3"), "{why}");
        assert!(why.contains("holds \"b\""), "{why}");
        assert!(why.contains("#2 client 1 get -> \"a\" [4, 5] (inconsistent"), "{why}");
    }

    #[test]
    fn search_gives_up_after_max_states() {
        let mut h = History::new();
        // Many concurrent writes and a read nobody wrote: the search must explore every
        // ordering of the writes before concluding.
        for c in 0..12u64 {
            h.record(ClientId(c), "k", Op::put(vec![c as u8]), Output::Put, 0, 100).unwrap();
        }
        h.record(ClientId(99), "k", Op::Get, Output::value("zz"), 0, 100).unwrap();
        assert_eq!(run(&h, 50), SearchResult::Timeout);
    }

    #[test]
    fn bit_helpers_address_every_word() {
        let mut bits = vec![0u64; 3];
        set(&mut bits, 0);
        set(&mut bits, 64);
        set(&mut bits, 191);
        assert!(get(&bits, 0) && get(&bits, 64) && get(&bits, 191) && !get(&bits, 1));
        clear(&mut bits, 64);
        assert!(!get(&bits, 64));
    }
}
