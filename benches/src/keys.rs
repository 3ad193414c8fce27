//! Record keys, shared by every target so that Tessera and etcd store the same bytes.
//!
//! Record `i` is stored under `[b] "user" dddddddddddd`: `b` is the top byte of a hash of
//! `i` and the twelve digits are the hash modulo 10^12 (YCSB's hashed insert order). The
//! first byte matters for Tessera: its initial regions are split evenly over the first key
//! byte, so hashed first bytes spread every workload over every region.

/// FNV-1a over the eight little-endian bytes of `x` (YCSB's `fnvhash64`).
pub fn fnv1a64(x: u64) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in x.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

/// Key of record `i`.
pub fn record_key(i: u64) -> Vec<u8> {
    let h = fnv1a64(i);
    let mut key = Vec::with_capacity(17);
    key.push((h >> 56) as u8);
    key.extend_from_slice(b"user");
    key.extend_from_slice(format!("{:012}", h % 1_000_000_000_000).as_bytes());
    key
}

/// A key of the crash check: unique per (`nonce`, `writer`, `n`), its first byte spread
/// like record keys, and disjoint from them (`crash` instead of `user`).
pub fn crash_key(nonce: u64, writer: usize, n: u64) -> Vec<u8> {
    let h = fnv1a64(nonce ^ ((writer as u64) << 40) ^ n);
    let mut key = vec![(h >> 56) as u8];
    key.extend_from_slice(format!("crash-{nonce:x}-{writer}-{n}").as_bytes());
    key
}

/// Above every record key (whose second byte is `u`): the end of a scan whose bounded end
/// ([`scan_end`]) would pass the last record key.
pub const SCAN_END: &[u8] = &[0xff, 0xff];

/// How many times the rows asked for a scan's range holds on average ([`scan_end`]).
pub const SCAN_SPAN_MARGIN: u128 = 4;

/// The exclusive end of a scan of `limit` rows from the record key `start`, among about
/// `records` records: `start` plus [`SCAN_SPAN_MARGIN`] times the key span that holds
/// `limit` records on average (hashed keys spread evenly over the 256 × 10^12 key
/// numbers), or [`SCAN_END`] past the last key.
///
/// Both targets scan the same bounded range. A range to the end of the key space costs etcd
/// 3.4 time in proportion to every key after `start`, whatever the limit (its index counts
/// the whole range), which no user scanning a few rows would pay. With the margin, a scan
/// of one row finds none in about 2% of cases (a Poisson count of mean 4), and a scan of
/// ten or more falls short in well under one in a million.
pub fn scan_end(start: &[u8], limit: usize, records: u64) -> Vec<u8> {
    const DIGITS: u128 = 1_000_000_000_000;
    let number = match start {
        [first, b'u', b's', b'e', b'r', digits @ ..] if digits.len() == 12 => std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u128>().ok())
            .map(|d| u128::from(*first) * DIGITS + d),
        _ => None,
    };
    let Some(number) = number else { return SCAN_END.to_vec() };
    let span = (SCAN_SPAN_MARGIN * limit.max(1) as u128 * 256 * DIGITS).div_ceil(u128::from(records.max(1)));
    let end = number + span;
    if end >= 256 * DIGITS {
        return SCAN_END.to_vec();
    }
    let mut key = Vec::with_capacity(17);
    key.push((end / DIGITS) as u8);
    key.extend_from_slice(b"user");
    key.extend_from_slice(format!("{:012}", end % DIGITS).as_bytes());
    key
}

/// A value of `len` bytes, varying with `seed` (printable, so a dump stays readable).
pub fn value(len: usize, seed: u64) -> Vec<u8> {
    let mut x = fnv1a64(seed) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x % 26) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn record_keys_are_distinct_and_below_the_scan_end() {
        let keys: HashSet<Vec<u8>> = (0..100_000).map(record_key).collect();
        assert_eq!(keys.len(), 100_000);
        assert!(keys.iter().all(|k| k.as_slice() < SCAN_END && k.len() == 17 && &k[1..5] == b"user"));
    }

    #[test]
    fn a_bounded_scan_end_holds_about_the_margin_times_the_rows_asked_for() {
        let records = 100_000u64;
        let mut keys: Vec<Vec<u8>> = (0..records).map(record_key).collect();
        keys.sort();
        let (mut short, mut total) = (0usize, 0usize);
        for (n, start) in keys.iter().enumerate().step_by(997) {
            for limit in [1usize, 10, 100] {
                let end = scan_end(start, limit, records);
                assert!(end.as_slice() > start.as_slice() && end.as_slice() <= SCAN_END);
                let held = keys[n..].iter().take_while(|k| k.as_slice() < end.as_slice()).count();
                if held < limit {
                    short += 1;
                }
                if limit == 100 && end.as_slice() < SCAN_END {
                    // Four times 100 on average: far from the 100 asked for.
                    assert!((200..700).contains(&held), "{held} keys from {start:?} to {end:?}");
                }
                total += 1;
            }
        }
        // Only one-row scans fall short, in about 2% of cases.
        assert!(short * 100 <= total * 3, "{short} of {total} ranges held fewer rows than asked for");
        // The last keys' ranges run to the end of the key space; a key not of a record too.
        assert_eq!(scan_end(keys.last().unwrap(), 100, records), SCAN_END);
        assert_eq!(scan_end(b"other", 10, records), SCAN_END);
    }

    #[test]
    fn record_keys_spread_over_every_first_byte_quarter() {
        // Four initial regions split at first bytes 64, 128, 192: each gets about a quarter.
        let mut quarters = [0usize; 4];
        for i in 0..40_000 {
            quarters[record_key(i)[0] as usize / 64] += 1;
        }
        for q in quarters {
            assert!((9_000..11_000).contains(&q), "{quarters:?}");
        }
    }

    #[test]
    fn crash_keys_are_distinct_from_each_other_and_from_records() {
        let keys: HashSet<Vec<u8>> = (0..64).flat_map(|w| (0..100).map(move |n| crash_key(7, w, n))).collect();
        assert_eq!(keys.len(), 6400);
        assert!(keys.iter().all(|k| &k[1..6] == b"crash"));
    }

    #[test]
    fn values_have_the_requested_length_and_vary_with_the_seed() {
        assert_eq!(value(100, 1).len(), 100);
        assert_ne!(value(100, 1), value(100, 2));
        assert_eq!(value(100, 3), value(100, 3));
    }
}
