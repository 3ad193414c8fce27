//! Size limits shared by clients and servers, and how they fit inside one frame.
//!
//! Every message must fit in one frame ([`crate::frame::DEFAULT_MAX_FRAME_LEN`], 4 MiB), so
//! the limits are derived from it rather than chosen separately:
//!
//! * a single value (1 MiB) plus its key (8 KiB) fits in a batch ([`Limits::max_batch_bytes`],
//!   2 MiB), so every legal single-key write is also a legal batch of one;
//! * a whole batch, with the per-pair encoding overhead of [`Limits::max_batch_keys`] pairs
//!   and the request header, fits in a frame ([`Limits::max_request_bytes`]);
//! * a scan page or a batch-get answer stops adding pairs once it holds
//!   [`Limits::max_response_bytes`] (2 MiB), so it is at most that plus one more pair plus
//!   overhead: it fits in a frame too;
//! * a Raft log entry is one write command, so it also fits in a frame alone; the node's
//!   replication caps each `AppendEntries` message by bytes (see `tessera-node`).
//!
//! [`Limits::validate`] checks these relationships for any configured values.

use crate::Error;

/// Bytes of postcard framing a pair may add inside a batch or page: two length varints
/// (at most 5 bytes each for lengths below 4 GiB) and slack for enum tags.
pub const PAIR_OVERHEAD: usize = 16;
/// Bytes of a request or response outside its keys and values (header, tags, ids).
pub const MESSAGE_OVERHEAD: usize = 1024;

/// Request size limits. Servers enforce them; clients check them early to fail fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes.
    pub max_key_len: usize,
    /// Longest value, in bytes. Also the longest value an `append` may produce.
    pub max_value_len: usize,
    /// Most keys in one batch request (`batch_get`, or one region's part of a `batch_put`).
    pub max_batch_keys: usize,
    /// Most key and value bytes in one `batch_put` request. Clients split larger batches.
    pub max_batch_bytes: usize,
    /// Most pairs a scan returns in one page.
    pub max_scan_limit: u32,
    /// A scan page or a batch-get answer stops adding pairs once its keys and values reach
    /// this many bytes (it always holds at least one pair); the client asks for the rest.
    pub max_response_bytes: usize,
}

impl Limits {
    /// Defaults: 8 KiB keys, 1 MiB values, 1,024 keys and 2 MiB per batch, 10,000 pairs and
    /// 2 MiB per scan page or batch-get answer. They fit the default 4 MiB frame.
    pub const DEFAULT: Limits = Limits {
        max_key_len: 8 * 1024,
        max_value_len: 1024 * 1024,
        max_batch_keys: 1024,
        max_batch_bytes: 2 * 1024 * 1024,
        max_scan_limit: 10_000,
        max_response_bytes: 2 * 1024 * 1024,
    };

    /// Largest encoded request these limits allow: a full batch with its overhead.
    pub fn max_request_bytes(&self) -> usize {
        self.max_batch_bytes + self.max_batch_keys * PAIR_OVERHEAD + MESSAGE_OVERHEAD
    }

    /// Largest encoded response these limits allow: a page just under
    /// `max_response_bytes` plus one largest pair, with overhead for the most pairs a page
    /// may hold.
    pub fn max_answer_bytes(&self) -> usize {
        let pairs = (self.max_scan_limit as usize).max(self.max_batch_keys);
        self.max_response_bytes + self.max_key_len + self.max_value_len + pairs * PAIR_OVERHEAD + MESSAGE_OVERHEAD
    }

    /// Checks that the limits fit together and inside frames of `max_frame_len` bytes.
    pub fn validate(&self, max_frame_len: u32) -> Result<(), String> {
        let frame = max_frame_len as usize;
        if self.max_key_len == 0 || self.max_batch_keys == 0 || self.max_scan_limit == 0 {
            return Err("key length, batch keys and scan limit must be positive".into());
        }
        if self.max_key_len + self.max_value_len > self.max_batch_bytes {
            return Err(format!(
                "max_batch_bytes ({}) must hold one largest pair ({} + {})",
                self.max_batch_bytes, self.max_key_len, self.max_value_len
            ));
        }
        if self.max_request_bytes() > frame {
            return Err(format!(
                "a full batch ({} bytes with overhead) does not fit a {frame}-byte frame",
                self.max_request_bytes()
            ));
        }
        if self.max_answer_bytes() > frame {
            return Err(format!(
                "a full scan page ({} bytes with overhead) does not fit a {frame}-byte frame",
                self.max_answer_bytes()
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Checks a key against `limits`: non-empty and not too long.
pub fn validate_key(key: &[u8], limits: &Limits) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidRequest { reason: "empty key".into() });
    }
    if key.len() > limits.max_key_len {
        return Err(Error::KeyTooLarge { len: key.len() as u64, max: limits.max_key_len as u64 });
    }
    Ok(())
}

/// Checks a value's length against `limits`.
pub fn validate_value(value: &[u8], limits: &Limits) -> Result<(), Error> {
    if value.len() > limits.max_value_len {
        return Err(Error::ValueTooLarge { len: value.len() as u64, max: limits.max_value_len as u64 });
    }
    Ok(())
}

/// Checks a batch of pairs against the count and byte limits.
pub fn validate_batch<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)], limits: &Limits) -> Result<(), Error> {
    if pairs.len() > limits.max_batch_keys {
        return Err(Error::BatchTooLarge { len: pairs.len() as u64, max: limits.max_batch_keys as u64 });
    }
    let bytes: usize = pairs.iter().map(|(k, v)| k.as_ref().len() + v.as_ref().len()).sum();
    if bytes > limits.max_batch_bytes {
        return Err(Error::BatchBytesTooLarge { bytes: bytes as u64, max: limits.max_batch_bytes as u64 });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode, DEFAULT_MAX_FRAME_LEN};
    use crate::{
        Frame, KvOp, KvRequest, KvResponse, ReadConsistency, RegionEpoch, RegionId, Request, RequestHeader,
        ResponseBody, SessionId, SessionSeq, WriteCommand,
    };

    #[test]
    fn default_limits_fit_the_default_frame() {
        Limits::DEFAULT.validate(DEFAULT_MAX_FRAME_LEN).unwrap();
    }

    #[test]
    fn limits_that_do_not_fit_are_refused() {
        let big_values = Limits { max_value_len: 3 * 1024 * 1024, ..Limits::DEFAULT };
        assert!(big_values.validate(DEFAULT_MAX_FRAME_LEN).is_err(), "a value larger than a batch");
        let big_batch = Limits { max_batch_bytes: 4 * 1024 * 1024, ..Limits::DEFAULT };
        assert!(big_batch.validate(DEFAULT_MAX_FRAME_LEN).is_err(), "a batch larger than a frame");
        let big_pages = Limits { max_response_bytes: 3 * 1024 * 1024, ..Limits::DEFAULT };
        assert!(big_pages.validate(DEFAULT_MAX_FRAME_LEN).is_err(), "a page larger than a frame");
    }

    fn header() -> RequestHeader {
        RequestHeader {
            region_id: RegionId(u64::MAX),
            epoch: RegionEpoch { conf_ver: u64::MAX, version: u64::MAX },
            timeout_ms: u32::MAX,
            consistency: ReadConsistency::Linearizable,
        }
    }

    /// The largest batch the limits allow, encoded as a real frame, fits the frame limit.
    #[test]
    fn the_largest_legal_batch_put_encodes_within_a_frame() {
        let l = Limits::DEFAULT;
        // Many tiny pairs (most overhead) and a few huge ones (most bytes).
        let per_pair = l.max_batch_bytes / l.max_batch_keys;
        let many: Vec<(Vec<u8>, Vec<u8>)> =
            (0..l.max_batch_keys).map(|i| (vec![i as u8; 8], vec![7u8; per_pair - 8])).collect();
        let huge = vec![(vec![1u8; l.max_key_len], vec![2u8; l.max_value_len]); 1];
        for pairs in [many, huge] {
            validate_batch(&pairs, &l).unwrap();
            let op = KvOp::Write {
                session: Some(SessionSeq { session: SessionId(u64::MAX), seq: u64::MAX, first_pending: u64::MAX }),
                command: WriteCommand::BatchPut { pairs },
            };
            let frame = Frame::request(u64::MAX, Request::Kv(KvRequest { header: header(), op }));
            let bytes = encode(&frame).unwrap();
            assert!(bytes.len() <= l.max_request_bytes(), "{} > {}", bytes.len(), l.max_request_bytes());
        }
    }

    /// A page that stopped just under `max_response_bytes` plus one largest pair, with the
    /// most pairs a page may hold, fits the frame.
    #[test]
    fn the_largest_legal_scan_page_encodes_within_a_frame() {
        let l = Limits::DEFAULT;
        let small = (l.max_response_bytes - 1) / (l.max_scan_limit as usize - 1);
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> =
            (0..l.max_scan_limit as usize - 1).map(|_| (vec![1u8; 4], vec![2u8; small - 4])).collect();
        pairs.push((vec![3u8; l.max_key_len], vec![4u8; l.max_value_len]));
        let resume_key = Some(vec![5u8; l.max_key_len + 1]);
        let frame = Frame::response(u64::MAX, Ok(ResponseBody::Kv(KvResponse::Scan { pairs, resume_key })));
        let bytes = encode(&frame).unwrap();
        assert!(bytes.len() <= l.max_answer_bytes());
        assert!(bytes.len() <= DEFAULT_MAX_FRAME_LEN as usize);
    }

    #[test]
    fn batches_are_checked_by_count_and_bytes() {
        let l = Limits { max_batch_keys: 2, max_batch_bytes: 10, max_key_len: 2, max_value_len: 8, ..Limits::DEFAULT };
        let pair = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
        assert!(validate_batch(&[pair("a", "12345678")], &l).is_ok());
        assert_eq!(
            validate_batch(&[pair("a", "1"), pair("b", "2"), pair("c", "3")], &l),
            Err(Error::BatchTooLarge { len: 3, max: 2 })
        );
        assert_eq!(
            validate_batch(&[pair("a", "12345678"), pair("b", "2")], &l),
            Err(Error::BatchBytesTooLarge { bytes: 11, max: 10 })
        );
    }
}
