//! Size limits shared by clients and servers.

use crate::Error;

/// Request size limits. Servers enforce them; clients check them early to fail fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes.
    pub max_key_len: usize,
    /// Longest value, in bytes.
    pub max_value_len: usize,
    /// Most keys in one batch request.
    pub max_batch_keys: usize,
    /// Most pairs a scan returns in one page.
    pub max_scan_limit: u32,
}

impl Limits {
    /// Defaults: 8 KiB keys, 1 MiB values, 1,024 keys per batch, 10,000 pairs per scan page.
    pub const DEFAULT: Limits =
        Limits { max_key_len: 8 * 1024, max_value_len: 1024 * 1024, max_batch_keys: 1024, max_scan_limit: 10_000 };
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
