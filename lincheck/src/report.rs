//! The result of a check, per key.

use std::fmt;

use crate::history::key_fmt;

/// The verdict for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A linearization of the key's operations exists.
    Linearizable,
    /// No linearization exists: the store violated linearizability on this key.
    NotLinearizable {
        /// The key.
        key: Vec<u8>,
        /// A short human-readable account: how far the longest linearizable prefix gets, the
        /// register value it leaves, and the operations that cannot take effect next.
        explanation: String,
    },
    /// The search hit [`CheckConfig::max_states_per_key`](crate::CheckConfig) before deciding.
    Timeout,
}

/// Per-key outcomes of [`check`](crate::check), in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Report {
    outcomes: Vec<(Vec<u8>, Outcome)>,
}

impl Report {
    pub(crate) fn new(outcomes: Vec<(Vec<u8>, Outcome)>) -> Report {
        Report { outcomes }
    }

    /// Whether every key is linearizable. A timed-out key makes this `false`: it was not
    /// shown to be linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.outcomes.iter().all(|(_, o)| *o == Outcome::Linearizable)
    }

    /// Every key that appears in the history with its outcome, in key order.
    pub fn outcomes(&self) -> impl Iterator<Item = (&[u8], &Outcome)> {
        self.outcomes.iter().map(|(k, o)| (k.as_slice(), o))
    }

    /// The outcome for `key`, or `None` if the history has no operation on it.
    pub fn outcome(&self, key: &[u8]) -> Option<&Outcome> {
        self.outcomes.iter().find(|(k, _)| k == key).map(|(_, o)| o)
    }

    /// The keys found not linearizable, with their outcomes.
    pub fn violations(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().map(|(_, o)| o).filter(|o| matches!(o, Outcome::NotLinearizable { .. }))
    }

    /// The keys whose search timed out.
    pub fn timed_out(&self) -> impl Iterator<Item = &[u8]> {
        self.outcomes.iter().filter(|(_, o)| *o == Outcome::Timeout).map(|(k, _)| k.as_slice())
    }
}

/// One line for the summary, then one line per key that is not linearizable or timed out.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bad = self.outcomes.iter().filter(|(_, o)| *o != Outcome::Linearizable).count();
        write!(f, "{} of {} keys linearizable", self.outcomes.len() - bad, self.outcomes.len())?;
        for (key, outcome) in &self.outcomes {
            match outcome {
                Outcome::Linearizable => {}
                Outcome::NotLinearizable { explanation, .. } => {
                    write!(f, "\nkey {}: not linearizable: {explanation}", key_fmt(key))?
                }
                Outcome::Timeout => write!(f, "\nkey {}: search timed out", key_fmt(key))?,
            }
        }
        Ok(())
    }
}
