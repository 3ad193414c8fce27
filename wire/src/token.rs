//! Scoped access tokens: what a browser or edge client may do, since it cannot present a
//! client certificate.
//!
//! A token is `tst1.<claims>.<signature>`, both parts unpadded base64url: the postcard
//! encoding of [`TokenClaims`] and an Ed25519 signature over [`SIGNING_CONTEXT`] followed
//! by those claim bytes, made with the cluster's signing key (`tessera token create`).
//! Signing and verification live in `tessera-certs`; this module holds the claims and the
//! pure rules nodes enforce on every request ([`TokenClaims::check`]).
//!
//! A token grants key-value operations on the keys that start with its prefix, until it
//! expires or is revoked through PD. It never grants Raft, node-to-node or PD-admin
//! requests.

use crate::{Error, KvOp};

/// Prefix of every token string, naming the format version.
pub const TOKEN_PREFIX: &str = "tst1.";

/// Signed before the claims, so a signature over claims can never be mistaken for a
/// signature made for another purpose with the same key.
pub const SIGNING_CONTEXT: &[u8] = b"tessera token v1\0";

/// Longest token string accepted in a `Hello`.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Operations a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ops {
    /// Gets, batch gets and scans.
    pub read: bool,
    /// Puts, deletes, appends, compare-and-swaps and batch puts.
    pub write: bool,
}

impl Ops {
    /// Parses `read`, `write` or `read,write`.
    pub fn parse(text: &str) -> Result<Ops, String> {
        let mut ops = Ops { read: false, write: false };
        for part in text.split(',').map(str::trim) {
            match part {
                "read" => ops.read = true,
                "write" => ops.write = true,
                other => return Err(format!("unknown operation {other:?} (expected read, write or read,write)")),
            }
        }
        Ok(ops)
    }
}

impl std::fmt::Display for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.read, self.write) {
            (true, true) => f.write_str("read,write"),
            (true, false) => f.write_str("read"),
            (false, true) => f.write_str("write"),
            (false, false) => f.write_str("none"),
        }
    }
}

/// What a token grants. Part of the protocol: its postcard encoding is what is signed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenClaims {
    /// Random id, used to revoke the token.
    pub id: u64,
    /// Free-form label for operators (`--name`).
    pub name: String,
    /// Every key the token may touch starts with these bytes (empty: every key).
    #[serde(with = "serde_bytes")]
    pub prefix: Vec<u8>,
    /// Allowed operations.
    pub ops: Ops,
    /// Issue time, seconds since the Unix epoch.
    pub issued_at: u64,
    /// Expiry, seconds since the Unix epoch: the token is refused from this second on.
    pub expires_at: u64,
}

fn denied(reason: String) -> Error {
    Error::PermissionDenied { reason }
}

impl TokenClaims {
    /// True when `key` starts with the token's prefix.
    pub fn covers(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix)
    }

    /// The first key after every key with the prefix (`None`: no such key, the prefix is
    /// empty or all `0xff`).
    pub fn prefix_end(&self) -> Option<Vec<u8>> {
        let mut end = self.prefix.clone();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return Some(end);
            }
        }
        None
    }

    /// Refuses an expired token (`now`: seconds since the Unix epoch).
    pub fn check_time(&self, now: u64) -> Result<(), Error> {
        if now >= self.expires_at {
            return Err(Error::Unauthenticated { reason: format!("token {:016x} expired", self.id) });
        }
        Ok(())
    }

    /// Checks `op` against the token at `now`, and clips a scan to the prefix. Returns the
    /// operation to run (a scan narrowed to the prefix; `None` when the scan's range holds
    /// no key of the prefix, which answers an empty page), or the typed refusal.
    pub fn check(&self, op: KvOp, now: u64) -> Result<Option<KvOp>, Error> {
        self.check_time(now)?;
        let need = |allowed: bool, what: &str| {
            if allowed {
                Ok(())
            } else {
                Err(denied(format!("token {:016x} ({}) does not allow {what}", self.id, self.ops)))
            }
        };
        let outside = |key: &[u8]| {
            denied(format!("key {} is outside the token's prefix {}", Escaped(key), Escaped(&self.prefix)))
        };
        match op {
            KvOp::Get { ref key } => {
                need(self.ops.read, "reads")?;
                if !self.covers(key) {
                    return Err(outside(key));
                }
                Ok(Some(op))
            }
            KvOp::BatchGet { ref keys } => {
                need(self.ops.read, "reads")?;
                if let Some(key) = keys.iter().find(|k| !self.covers(k)) {
                    return Err(outside(key));
                }
                Ok(Some(op))
            }
            KvOp::Write { ref command, .. } => {
                need(self.ops.write, "writes")?;
                if let Some(key) = command.keys().into_iter().find(|k| !self.covers(k)) {
                    return Err(outside(key));
                }
                Ok(Some(op))
            }
            KvOp::Scan { start, end, limit, reverse } => {
                need(self.ops.read, "reads")?;
                let start = if start.as_slice() < self.prefix.as_slice() { self.prefix.clone() } else { start };
                let end = match (self.prefix_end(), end.is_empty()) {
                    (None, _) => end,
                    (Some(pe), true) => pe,
                    (Some(pe), false) => std::cmp::min(pe, end),
                };
                if !end.is_empty() && start >= end {
                    return Ok(None);
                }
                Ok(Some(KvOp::Scan { start, end, limit, reverse }))
            }
        }
    }
}

/// Bytes for an error message: printable ASCII as is, the rest escaped.
struct Escaped<'a>(&'a [u8]);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"")?;
        for b in self.0.iter().take(64) {
            write!(f, "{}", std::ascii::escape_default(*b))?;
        }
        if self.0.len() > 64 {
            f.write_str("...")?;
        }
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SessionSeq, WriteCommand};

    fn claims(prefix: &[u8], read: bool, write: bool) -> TokenClaims {
        TokenClaims {
            id: 7,
            name: "t".into(),
            prefix: prefix.to_vec(),
            ops: Ops { read, write },
            issued_at: 100,
            expires_at: 200,
        }
    }

    fn put(key: &[u8]) -> KvOp {
        KvOp::Write {
            session: None::<SessionSeq>,
            command: WriteCommand::Put { key: key.to_vec(), value: b"v".to_vec() },
        }
    }

    fn scan(start: &[u8], end: &[u8]) -> KvOp {
        KvOp::Scan { start: start.to_vec(), end: end.to_vec(), limit: 10, reverse: false }
    }

    #[test]
    fn keys_inside_the_prefix_pass_and_outside_are_denied() {
        let c = claims(b"app/", true, true);
        assert!(c.check(KvOp::Get { key: b"app/x".to_vec() }, 150).unwrap().is_some());
        assert!(matches!(c.check(KvOp::Get { key: b"other".to_vec() }, 150), Err(Error::PermissionDenied { .. })));
        assert!(matches!(c.check(put(b"ap"), 150), Err(Error::PermissionDenied { .. })));
        let batch = KvOp::BatchGet { keys: vec![b"app/1".to_vec(), b"zzz".to_vec()] };
        assert!(matches!(c.check(batch, 150), Err(Error::PermissionDenied { .. })));
        let pairs = vec![(b"app/1".to_vec(), vec![]), (b"b".to_vec(), vec![])];
        let batch_put = KvOp::Write { session: None, command: WriteCommand::BatchPut { pairs } };
        assert!(matches!(c.check(batch_put, 150), Err(Error::PermissionDenied { .. })));
    }

    #[test]
    fn operations_are_limited_to_the_granted_ones() {
        let read_only = claims(b"", true, false);
        assert!(read_only.check(KvOp::Get { key: b"k".to_vec() }, 150).is_ok());
        assert!(matches!(read_only.check(put(b"k"), 150), Err(Error::PermissionDenied { .. })));
        let write_only = claims(b"", false, true);
        assert!(write_only.check(put(b"k"), 150).is_ok());
        assert!(matches!(write_only.check(scan(b"", b""), 150), Err(Error::PermissionDenied { .. })));
    }

    #[test]
    fn an_expired_token_is_refused_from_its_expiry_second() {
        let c = claims(b"", true, true);
        assert!(c.check(KvOp::Get { key: b"k".to_vec() }, 199).is_ok());
        assert!(matches!(c.check(KvOp::Get { key: b"k".to_vec() }, 200), Err(Error::Unauthenticated { .. })));
    }

    #[test]
    fn scans_are_clipped_to_the_prefix() {
        let c = claims(b"app/", true, false);
        assert_eq!(c.check(scan(b"", b""), 150).unwrap(), Some(scan(b"app/", b"app0")));
        assert_eq!(c.check(scan(b"app/m", b"zzz"), 150).unwrap(), Some(scan(b"app/m", b"app0")));
        assert_eq!(c.check(scan(b"a", b"app/c"), 150).unwrap(), Some(scan(b"app/", b"app/c")));
        assert_eq!(c.check(scan(b"b", b"c"), 150).unwrap(), None, "disjoint ranges scan nothing");
        assert_eq!(c.check(scan(b"a", b"ap"), 150).unwrap(), None);
        let everything = claims(b"", true, false);
        assert_eq!(everything.check(scan(b"x", b""), 150).unwrap(), Some(scan(b"x", b"")));
    }

    #[test]
    fn the_prefix_end_carries_past_0xff() {
        assert_eq!(claims(b"a\xff", true, true).prefix_end(), Some(b"b".to_vec()));
        assert_eq!(claims(b"\xff\xff", true, true).prefix_end(), None);
        assert_eq!(claims(b"", true, true).prefix_end(), None);
        let all_ff = claims(b"\xff", true, false);
        assert_eq!(all_ff.check(scan(b"", b""), 150).unwrap(), Some(scan(b"\xff", b"")));
    }

    #[test]
    fn ops_parse_and_print() {
        assert_eq!(Ops::parse("read,write").unwrap(), Ops { read: true, write: true });
        assert_eq!(Ops::parse("read").unwrap().to_string(), "read");
        assert!(Ops::parse("admin").is_err());
    }
}
