//! The entry point: partition a history by key and search each key.

use std::collections::BTreeMap;

use crate::history::{History, OpId};
use crate::model::Op;
use crate::report::{Outcome, Report};
use crate::search::{search, KeyOp, SearchResult};

/// Limits on the search effort.
///
/// Every value is valid; there is nothing to validate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// Maximum number of configurations (linearized set, register value) explored for one key
    /// before that key's outcome is [`Outcome::Timeout`]. Memory grows with it: each failed
    /// configuration keeps two small bitsets (one bit per operation on the key) in a hash map.
    pub max_states_per_key: usize,
}

impl Default for CheckConfig {
    /// One million configurations per key: enough for thousands of operations per key at the
    /// concurrency of a test cluster, and tens to hundreds of megabytes at worst.
    fn default() -> Self {
        CheckConfig { max_states_per_key: 1_000_000 }
    }
}

/// Checks every key of `history` for linearizability with [`CheckConfig::default`].
pub fn check(history: &History) -> Report {
    check_with(history, &CheckConfig::default())
}

/// Checks every key of `history` for linearizability.
///
/// Keys are independent registers, so each is searched separately; the history is
/// linearizable iff every key is (linearizability is compositional, Herlihy & Wing 1990).
pub fn check_with(history: &History, config: &CheckConfig) -> Report {
    let mut by_key: BTreeMap<&[u8], Vec<KeyOp<'_>>> = BTreeMap::new();
    for (i, entry) in history.entries().iter().enumerate() {
        let ops = by_key.entry(&entry.key).or_default();
        // A read whose outcome is unknown observed nothing and changed nothing.
        if entry.op == Op::Get && entry.output().is_none() {
            continue;
        }
        ops.push(KeyOp { id: OpId(i), entry });
    }
    let outcomes = by_key
        .into_iter()
        .map(|(key, ops)| {
            let outcome = match search(ops, config.max_states_per_key) {
                SearchResult::Linearizable => Outcome::Linearizable,
                SearchResult::NotLinearizable(explanation) => {
                    Outcome::NotLinearizable { key: key.to_vec(), explanation }
                }
                SearchResult::Timeout => Outcome::Timeout,
            };
            (key.to_vec(), outcome)
        })
        .collect();
    Report::new(outcomes)
}
