//! The register model: what each operation does to one key, and which results it may return.

use std::fmt;

/// An operation on one key, as the client invoked it.
///
/// Each key is an independent register holding `Option<Vec<u8>>`, where `None` means the key
/// is absent. [`Output`] has one variant per operation carrying what the client observed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Read the register.
    Get,
    /// Set the register to the value.
    Put(Vec<u8>),
    /// Make the key absent.
    Delete,
    /// Concatenate bytes to the value; an absent key becomes exactly these bytes.
    Append(Vec<u8>),
    /// Compare-and-swap: if the register equals `expected` (`None` = absent), set it to `new`
    /// (`None` = delete); otherwise leave it unchanged.
    Cas {
        /// The value the register must hold for the swap to happen.
        expected: Option<Vec<u8>>,
        /// The value the register holds after a successful swap.
        new: Option<Vec<u8>>,
    },
}

impl Op {
    /// `Op::Put` with any byte-like value.
    pub fn put(value: impl Into<Vec<u8>>) -> Op {
        Op::Put(value.into())
    }

    /// `Op::Append` with any byte-like value.
    pub fn append(bytes: impl Into<Vec<u8>>) -> Op {
        Op::Append(bytes.into())
    }

    /// The operation's name, as used in explanations and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put(_) => "put",
            Op::Delete => "delete",
            Op::Append(_) => "append",
            Op::Cas { .. } => "cas",
        }
    }
}

/// What a completed operation returned. The variant must match the [`Op`] variant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Output {
    /// The value a [`Op::Get`] observed (`None` = absent).
    Get(Option<Vec<u8>>),
    /// A [`Op::Put`] was acknowledged.
    Put,
    /// A [`Op::Delete`] was acknowledged.
    Delete {
        /// Whether the key existed just before the delete; `None` if the store does not say.
        existed: Option<bool>,
    },
    /// An [`Op::Append`] was acknowledged.
    Append {
        /// Length of the value right after the append; `None` if the store does not say.
        new_len: Option<u64>,
    },
    /// A [`Op::Cas`] completed.
    Cas {
        /// Whether the swap happened.
        succeeded: bool,
    },
}

impl Output {
    /// `Output::Get(Some(..))` with any byte-like value.
    pub fn value(value: impl Into<Vec<u8>>) -> Output {
        Output::Get(Some(value.into()))
    }

    /// `Output::Get(None)`: the read found the key absent.
    pub fn absent() -> Output {
        Output::Get(None)
    }

    /// The name of the operation this output belongs to.
    pub fn name(&self) -> &'static str {
        match self {
            Output::Get(_) => "get",
            Output::Put => "put",
            Output::Delete { .. } => "delete",
            Output::Append { .. } => "append",
            Output::Cas { .. } => "cas",
        }
    }
}

/// The register's value: `None` means the key is absent.
pub(crate) type Value = Option<Vec<u8>>;

/// The effect of linearizing one operation at a given register value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The operation cannot take effect here: its output contradicts the value.
    Reject,
    /// The operation takes effect and leaves the value unchanged.
    Keep,
    /// The operation takes effect and sets the value.
    Set(Value),
}

/// Applies `op` to `state`. `output` is `None` for an operation whose outcome is unknown; it
/// is then assumed to have taken effect, since "did not take effect" is modelled by never
/// linearizing it.
pub(crate) fn step(state: &Value, op: &Op, output: Option<&Output>) -> Step {
    match (op, output) {
        (Op::Get, Some(Output::Get(seen))) => keep_if(seen == state),
        // An unknown read constrains nothing; the history drops these before searching.
        (Op::Get, None) => Step::Keep,
        (Op::Put(v), _) => Step::Set(Some(v.clone())),
        (Op::Delete, Some(Output::Delete { existed: Some(e) })) if *e != state.is_some() => Step::Reject,
        (Op::Delete, _) => match state {
            None => Step::Keep,
            Some(_) => Step::Set(None),
        },
        (Op::Append(bytes), out) => {
            let mut next = state.clone().unwrap_or_default();
            next.extend_from_slice(bytes);
            match out {
                Some(Output::Append { new_len: Some(n) }) if *n != next.len() as u64 => Step::Reject,
                _ => Step::Set(Some(next)),
            }
        }
        (Op::Cas { expected, new }, out) => {
            let matches = expected == state;
            // An unknown CAS that fails has no effect, which is the same as never linearizing
            // it, so only its successful branch is explored.
            let succeeded = match out {
                Some(Output::Cas { succeeded }) => *succeeded,
                _ => true,
            };
            match (succeeded, matches) {
                (true, true) if new == state => Step::Keep,
                (true, true) => Step::Set(new.clone()),
                (false, false) => Step::Keep,
                _ => Step::Reject,
            }
        }
        // Mismatched pairs are refused when the history is recorded.
        (_, Some(_)) => Step::Reject,
    }
}

fn keep_if(ok: bool) -> Step {
    if ok {
        Step::Keep
    } else {
        Step::Reject
    }
}

/// Whether the output belongs to the operation (same variant).
pub(crate) fn output_matches(op: &Op, output: &Output) -> bool {
    op.name() == output.name()
}

/// Whether a completed operation leaves the register unchanged in every state where its output
/// is consistent. Such an operation can be linearized as soon as it is minimal and consistent,
/// without exploring alternatives: moving it earlier never invalidates a linearization.
pub(crate) fn is_pure(op: &Op, output: &Output) -> bool {
    match (op, output) {
        (Op::Get, Output::Get(_)) => true,
        (Op::Delete, Output::Delete { existed: Some(false) }) => true,
        (Op::Cas { .. }, Output::Cas { succeeded: false }) => true,
        (Op::Cas { expected, new }, Output::Cas { succeeded: true }) => expected == new,
        _ => false,
    }
}

/// Whether the operation sets the register without looking at it: its resulting value and its
/// output's consistency do not depend on the value before. An unknown operation immediately
/// followed by a blind write has no observable effect, so the search never tries that order.
pub(crate) fn is_blind(op: &Op, output: Option<&Output>) -> bool {
    matches!((op, output), (Op::Put(_), _) | (Op::Delete, None | Some(Output::Delete { existed: None })))
}

/// Formats bytes for humans: a quoted string when printable ASCII, hex otherwise, truncated
/// when long.
pub(crate) struct Bytes<'a>(pub &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 32;
        let shown = &self.0[..self.0.len().min(MAX)];
        if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            f.write_str("\"")?;
            for &b in shown {
                if b == b'"' || b == b'\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{}", b as char)?;
            }
            f.write_str("\"")?;
        } else {
            f.write_str("0x")?;
            for b in shown {
                write!(f, "{b:02x}")?;
            }
        }
        if self.0.len() > MAX {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

/// Formats a register value: `absent` or the bytes.
pub(crate) struct ValueFmt<'a>(pub &'a Value);

impl fmt::Display for ValueFmt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("absent"),
            Some(v) => Bytes(v).fmt(f),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Get | Op::Delete => f.write_str(self.name()),
            Op::Put(v) | Op::Append(v) => write!(f, "{}({})", self.name(), Bytes(v)),
            Op::Cas { expected, new } => {
                write!(f, "cas({} -> {})", ValueFmt(expected), ValueFmt(new))
            }
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Get(v) => ValueFmt(v).fmt(f),
            Output::Put => f.write_str("ok"),
            Output::Delete { existed: None } | Output::Append { new_len: None } => f.write_str("ok"),
            Output::Delete { existed: Some(e) } => write!(f, "existed={e}"),
            Output::Append { new_len: Some(n) } => write!(f, "len={n}"),
            Output::Cas { succeeded } => write!(f, "succeeded={succeeded}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn get_accepts_only_the_current_value() {
        assert_eq!(step(&v("a"), &Op::Get, Some(&Output::value("a"))), Step::Keep);
        assert_eq!(step(&v("a"), &Op::Get, Some(&Output::absent())), Step::Reject);
        assert_eq!(step(&None, &Op::Get, Some(&Output::absent())), Step::Keep);
    }

    #[test]
    fn delete_checks_existed_when_reported() {
        let yes = Output::Delete { existed: Some(true) };
        let no = Output::Delete { existed: Some(false) };
        let unsure = Output::Delete { existed: None };
        assert_eq!(step(&v("a"), &Op::Delete, Some(&yes)), Step::Set(None));
        assert_eq!(step(&v("a"), &Op::Delete, Some(&no)), Step::Reject);
        assert_eq!(step(&None, &Op::Delete, Some(&yes)), Step::Reject);
        assert_eq!(step(&None, &Op::Delete, Some(&unsure)), Step::Keep);
    }

    #[test]
    fn append_creates_absent_key_and_checks_length() {
        let op = Op::append("xy");
        assert_eq!(step(&None, &op, None), Step::Set(v("xy")));
        let len3 = Output::Append { new_len: Some(3) };
        assert_eq!(step(&v("a"), &op, Some(&len3)), Step::Set(v("axy")));
        assert_eq!(step(&v("ab"), &op, Some(&len3)), Step::Reject);
    }

    #[test]
    fn cas_success_and_failure_depend_on_expected() {
        let op = Op::Cas { expected: v("a"), new: v("b") };
        let ok = Output::Cas { succeeded: true };
        let failed = Output::Cas { succeeded: false };
        assert_eq!(step(&v("a"), &op, Some(&ok)), Step::Set(v("b")));
        assert_eq!(step(&v("c"), &op, Some(&ok)), Step::Reject);
        assert_eq!(step(&v("c"), &op, Some(&failed)), Step::Keep);
        assert_eq!(step(&v("a"), &op, Some(&failed)), Step::Reject);
        // Unknown outcome: only the success branch is explored.
        assert_eq!(step(&v("a"), &op, None), Step::Set(v("b")));
        assert_eq!(step(&v("c"), &op, None), Step::Reject);
    }

    #[test]
    fn pure_ops_never_change_the_value() {
        assert!(is_pure(&Op::Get, &Output::absent()));
        assert!(is_pure(&Op::Delete, &Output::Delete { existed: Some(false) }));
        assert!(!is_pure(&Op::Delete, &Output::Delete { existed: None }));
        assert!(!is_pure(&Op::put("a"), &Output::Put));
    }

    #[test]
    fn blind_writes_ignore_the_previous_value() {
        assert!(is_blind(&Op::put("a"), None));
        assert!(is_blind(&Op::Delete, Some(&Output::Delete { existed: None })));
        assert!(!is_blind(&Op::Delete, Some(&Output::Delete { existed: Some(true) })));
        assert!(!is_blind(&Op::append("a"), None));
    }

    #[test]
    fn bytes_display_quotes_text_and_hexes_binary() {
        assert_eq!(Bytes(b"a\"b").to_string(), "\"a\\\"b\"");
        assert_eq!(Bytes(&[0, 255]).to_string(), "0x00ff");
        assert_eq!(Bytes(&[b'x'; 40]).to_string(), format!("\"{}\"...(40 bytes)", "x".repeat(32)));
    }
}
