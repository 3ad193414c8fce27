//! Request planning: splitting multi-key requests by region, and paging scans across
//! regions with a resumable cursor.

use std::collections::BTreeMap;

use tessera_wire::{KvOp, ReadConsistency, RegionDescriptor};

use super::route::{CachedRegion, RegionCache};
use crate::Error;

/// Keys of a batch that one region serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGroup {
    /// The region, as cached when planning.
    pub region: CachedRegion,
    /// Positions of its keys in the caller's batch, ascending.
    pub indices: Vec<usize>,
}

/// A batch split by region.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPlan {
    /// Groups in key order of their regions.
    pub groups: Vec<KeyGroup>,
    /// Positions of keys no cached region covers (look them up, then plan again).
    pub missing: Vec<usize>,
}

/// Splits `keys` (any order, duplicates allowed) among the cached regions.
pub fn group_by_region<K: AsRef<[u8]>>(cache: &RegionCache, keys: &[K]) -> KeyPlan {
    let mut by_start: BTreeMap<Vec<u8>, KeyGroup> = BTreeMap::new();
    let mut missing = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        match cache.get(k.as_ref()) {
            Some(r) => by_start
                .entry(r.descriptor.start_key.clone())
                .or_insert_with(|| KeyGroup { region: r.clone(), indices: Vec::new() })
                .indices
                .push(i),
            None => missing.push(i),
        }
    }
    KeyPlan { groups: by_start.into_values().collect(), missing }
}

/// Cuts `indices` (one region's part of a batch) into chunks of at most `max_keys` entries
/// and at most `max_bytes` bytes, where `size(i)` is the size of entry `i`. Every chunk
/// holds at least one entry, so an entry larger than `max_bytes` is alone in its chunk (the
/// server then refuses it with a clear error).
pub fn chunk_by_size(
    indices: &[usize],
    max_keys: usize,
    max_bytes: usize,
    size: impl Fn(usize) -> usize,
) -> Vec<Vec<usize>> {
    let max_keys = max_keys.max(1);
    let mut chunks = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0;
    for &i in indices {
        let n = size(i);
        if !current.is_empty() && (current.len() == max_keys || bytes + n > max_bytes) {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += n;
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// True when every key lies in `region` (a group still fits after the cache changed).
pub fn all_in_region<K: AsRef<[u8]>>(region: &RegionDescriptor, keys: &[K]) -> bool {
    keys.iter().all(|k| region.contains(k.as_ref()))
}

/// Options of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOptions {
    /// Most pairs returned in total (`None`: no limit).
    pub limit: Option<u64>,
    /// Largest key first.
    pub reverse: bool,
    /// Read consistency of every page.
    pub consistency: ReadConsistency,
    /// Pairs requested per round trip.
    pub page_size: u32,
}

impl Default for ScanOptions {
    /// Unlimited, forward, linearizable, 256 pairs per page.
    fn default() -> Self {
        ScanOptions { limit: None, reverse: false, consistency: ReadConsistency::Linearizable, page_size: 256 }
    }
}

/// Where a scan continues. Serializable by the caller (all fields public) to resume later.
///
/// Forward: the remaining range is `[next_key, end)`. Reverse: it is `[end, next_key)`,
/// scanned downwards, so `end` is the scan's inclusive lower bound. An empty `end` (forward)
/// or `next_key` (reverse) stands for the top of the key space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor {
    /// Where the next page starts (forward: inclusive; reverse: exclusive upper bound).
    pub next_key: Vec<u8>,
    /// The far end in scan direction (forward: exclusive; reverse: inclusive).
    pub end: Vec<u8>,
    /// Scan direction.
    pub reverse: bool,
    /// Pairs still allowed (`None`: unlimited).
    pub remaining: Option<u64>,
    /// Pairs per page.
    pub page_size: u32,
    /// Read consistency.
    pub consistency: ReadConsistency,
}

/// Which region serves the next page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanPosition<'a> {
    /// The region containing this key (forward scans).
    At(&'a [u8]),
    /// The region containing the keys just below this one; empty: the last region.
    Before(&'a [u8]),
}

fn min_end<'a>(a: &'a [u8], b: &'a [u8]) -> &'a [u8] {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b,
        (_, true) => a,
        _ => a.min(b),
    }
}

impl ScanCursor {
    /// The cursor for scanning `[start, end)` (empty `end`: to the end of the key space).
    /// `Ok(None)` when there is nothing to scan.
    pub fn new(start: &[u8], end: &[u8], opts: &ScanOptions) -> Result<Option<ScanCursor>, Error> {
        if !end.is_empty() && start > end {
            return Err(Error::InvalidArgument { reason: "scan start is after its end".into() });
        }
        if opts.page_size == 0 {
            return Err(Error::InvalidArgument { reason: "scan page_size must be positive".into() });
        }
        if (!end.is_empty() && start == end) || opts.limit == Some(0) {
            return Ok(None);
        }
        let (next_key, far) = if opts.reverse { (end, start) } else { (start, end) };
        Ok(Some(ScanCursor {
            next_key: next_key.to_vec(),
            end: far.to_vec(),
            reverse: opts.reverse,
            remaining: opts.limit,
            page_size: opts.page_size,
            consistency: opts.consistency,
        }))
    }

    /// The region to route the next page to.
    pub fn position(&self) -> ScanPosition<'_> {
        if self.reverse {
            ScanPosition::Before(&self.next_key)
        } else {
            ScanPosition::At(&self.next_key)
        }
    }

    /// The cached region serving the next page, if cached.
    pub fn region_in<'c>(&self, cache: &'c RegionCache) -> Option<&'c CachedRegion> {
        match self.position() {
            ScanPosition::At(k) => cache.get(k),
            ScanPosition::Before(k) => cache.get_before(k),
        }
    }

    /// True when `region` serves the next page.
    pub fn is_served_by(&self, region: &RegionDescriptor) -> bool {
        match self.position() {
            ScanPosition::At(k) => region.contains(k),
            ScanPosition::Before([]) => region.end_key.is_empty(),
            ScanPosition::Before(k) => {
                region.start_key.as_slice() < k && (region.end_key.is_empty() || k <= region.end_key.as_slice())
            }
        }
    }

    /// The request for the next page, clipped to `region`.
    pub fn page_request(&self, region: &RegionDescriptor) -> KvOp {
        let limit = match self.remaining {
            Some(r) => u32::try_from(r).unwrap_or(u32::MAX).min(self.page_size),
            None => self.page_size,
        };
        let (start, end) = if self.reverse {
            (self.end.as_slice().max(region.start_key.as_slice()), min_end(&self.next_key, &region.end_key))
        } else {
            (self.next_key.as_slice().max(region.start_key.as_slice()), min_end(&self.end, &region.end_key))
        };
        KvOp::Scan { start: start.to_vec(), end: end.to_vec(), limit, reverse: self.reverse }
    }

    /// The cursor after a page of `returned` pairs from `region` that ended with
    /// `resume_key` (the server's continuation inside the region). `None`: the scan is done.
    pub fn advance(
        &self,
        region: &RegionDescriptor,
        returned: usize,
        resume_key: Option<Vec<u8>>,
    ) -> Result<Option<ScanCursor>, Error> {
        let remaining = self.remaining.map(|r| r.saturating_sub(returned as u64));
        if remaining == Some(0) {
            return Ok(None);
        }
        let next = if self.reverse {
            let next = match resume_key {
                Some(k) => {
                    if !self.next_key.is_empty() && k >= self.next_key {
                        return Err(Error::Protocol { reason: "reverse scan resume key did not move down".into() });
                    }
                    k
                }
                None if region.start_key.is_empty() => return Ok(None),
                None => region.start_key.clone(),
            };
            if next.is_empty() || next <= self.end {
                return Ok(None);
            }
            next
        } else {
            let next = match resume_key {
                Some(k) => {
                    if k <= self.next_key {
                        return Err(Error::Protocol { reason: "scan resume key did not move forward".into() });
                    }
                    k
                }
                None if region.end_key.is_empty() => return Ok(None),
                None => region.end_key.clone(),
            };
            if !self.end.is_empty() && next >= self.end {
                return Ok(None);
            }
            next
        };
        Ok(Some(ScanCursor { next_key: next, remaining, ..self.clone() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::route::tests::{cached, desc};

    fn three_regions() -> RegionCache {
        let mut c = RegionCache::new();
        c.insert(cached(desc(1, b"", b"g", 1, 1)));
        c.insert(cached(desc(2, b"g", b"p", 1, 1)));
        c.insert(cached(desc(3, b"p", b"", 1, 1)));
        c
    }

    fn scan_bounds(op: &KvOp) -> (&[u8], &[u8], u32, bool) {
        match op {
            KvOp::Scan { start, end, limit, reverse } => (start, end, *limit, *reverse),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batch_keys_split_by_region_keep_caller_positions() {
        let c = three_regions();
        let keys: Vec<&[u8]> = vec![b"z", b"a", b"h", b"b", b"q"];
        let plan = group_by_region(&c, &keys);
        let got: Vec<(u64, Vec<usize>)> = plan.groups.iter().map(|g| (g.region.id().0, g.indices.clone())).collect();
        assert_eq!(got, vec![(1, vec![1, 3]), (2, vec![2]), (3, vec![0, 4])]);
        assert!(plan.missing.is_empty());
    }

    #[test]
    fn chunks_respect_count_and_bytes_and_keep_order() {
        let sizes = [5usize, 5, 5, 20, 1, 1, 1];
        let idx: Vec<usize> = (0..sizes.len()).collect();
        let chunks = chunk_by_size(&idx, 2, 10, |i| sizes[i]);
        assert_eq!(chunks, vec![vec![0, 1], vec![2], vec![3], vec![4, 5], vec![6]]);
        assert_eq!(chunks.concat(), idx, "every entry once, in order");
        for c in &chunks {
            assert!(c.len() <= 2);
            assert!(c.len() == 1 || c.iter().map(|&i| sizes[i]).sum::<usize>() <= 10);
        }
        assert!(chunk_by_size(&[], 2, 10, |_| 1).is_empty());
    }

    #[test]
    fn batch_keys_outside_cache_are_reported_missing() {
        let mut c = RegionCache::new();
        c.insert(cached(desc(1, b"", b"g", 1, 1)));
        let plan = group_by_region(&c, &[b"a".as_slice(), b"x", b"y"]);
        assert_eq!(plan.groups.len(), 1);
        assert_eq!(plan.missing, vec![1, 2]);
        assert!(all_in_region(&plan.groups[0].region.descriptor, &[b"a", b"b"]));
        assert!(!all_in_region(&plan.groups[0].region.descriptor, &[b"a", b"x"]));
    }

    /// Walks a scan over `cache` assuming each region returns no pairs; returns the
    /// requested (start, end) per page.
    fn walk(cache: &RegionCache, start: &[u8], end: &[u8], reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
        let opts = ScanOptions { reverse, ..ScanOptions::default() };
        let mut cur = ScanCursor::new(start, end, &opts).unwrap();
        let mut pages = Vec::new();
        while let Some(c) = cur {
            let r = c.region_in(cache).unwrap().descriptor.clone();
            assert!(c.is_served_by(&r));
            let op = c.page_request(&r);
            let (s, e, _, rev) = scan_bounds(&op);
            assert_eq!(rev, reverse);
            pages.push((s.to_vec(), e.to_vec()));
            cur = c.advance(&r, 0, None).unwrap();
            assert!(pages.len() < 10, "scan does not terminate");
        }
        pages
    }

    #[test]
    fn forward_scan_visits_regions_in_order_clipped_to_range() {
        let c = three_regions();
        let pages = walk(&c, b"c", b"r", false);
        assert_eq!(
            pages,
            vec![(b"c".to_vec(), b"g".to_vec()), (b"g".to_vec(), b"p".to_vec()), (b"p".to_vec(), b"r".to_vec())]
        );
        let pages = walk(&c, b"", b"", false);
        assert_eq!(pages.len(), 3);
        assert_eq!(pages[2], (b"p".to_vec(), vec![]));
    }

    #[test]
    fn reverse_scan_visits_regions_backwards_clipped_to_range() {
        let c = three_regions();
        let pages = walk(&c, b"c", b"r", true);
        assert_eq!(
            pages,
            vec![(b"p".to_vec(), b"r".to_vec()), (b"g".to_vec(), b"p".to_vec()), (b"c".to_vec(), b"g".to_vec())]
        );
        let pages = walk(&c, b"", b"", true);
        assert_eq!(pages, vec![(b"p".to_vec(), vec![]), (b"g".to_vec(), b"p".to_vec()), (vec![], b"g".to_vec())]);
    }

    #[test]
    fn reverse_scan_ending_on_region_boundary_skips_region_below() {
        let c = three_regions();
        assert_eq!(walk(&c, b"g", b"h", true), vec![(b"g".to_vec(), b"h".to_vec())]);
        assert_eq!(walk(&c, b"a", b"g", false), vec![(b"a".to_vec(), b"g".to_vec())]);
    }

    #[test]
    fn resume_key_continues_inside_the_region() {
        let c = three_regions();
        let cur = ScanCursor::new(b"a", b"", &ScanOptions::default()).unwrap().unwrap();
        let r = cur.region_in(&c).unwrap().descriptor.clone();
        let next = cur.advance(&r, 256, Some(b"d".to_vec())).unwrap().unwrap();
        assert_eq!(next.next_key, b"d");
        assert_eq!(scan_bounds(&next.page_request(&r)).0, b"d");
        let rev =
            ScanCursor::new(b"a", b"", &ScanOptions { reverse: true, ..ScanOptions::default() }).unwrap().unwrap();
        let last = c.get_before(b"").unwrap().descriptor.clone();
        let next = rev.advance(&last, 10, Some(b"s".to_vec())).unwrap().unwrap();
        assert_eq!(scan_bounds(&next.page_request(&last)).1, b"s");
    }

    #[test]
    fn resume_key_that_does_not_progress_is_a_protocol_error() {
        let cur = ScanCursor::new(b"d", b"", &ScanOptions::default()).unwrap().unwrap();
        let r = desc(1, b"", b"", 1, 1);
        assert!(matches!(cur.advance(&r, 0, Some(b"d".to_vec())), Err(Error::Protocol { .. })));
    }

    #[test]
    fn limit_caps_page_size_and_ends_the_scan() {
        let opts = ScanOptions { limit: Some(10), page_size: 8, ..ScanOptions::default() };
        let cur = ScanCursor::new(b"", b"", &opts).unwrap().unwrap();
        let r = desc(1, b"", b"", 1, 1);
        assert_eq!(scan_bounds(&cur.page_request(&r)).2, 8);
        let next = cur.advance(&r, 8, Some(b"k".to_vec())).unwrap().unwrap();
        assert_eq!(next.remaining, Some(2));
        assert_eq!(scan_bounds(&next.page_request(&r)).2, 2);
        assert_eq!(next.advance(&r, 2, Some(b"m".to_vec())).unwrap(), None);
    }

    #[test]
    fn empty_or_inverted_ranges() {
        let o = ScanOptions::default();
        assert_eq!(ScanCursor::new(b"k", b"k", &o).unwrap(), None);
        assert!(matches!(ScanCursor::new(b"z", b"a", &o), Err(Error::InvalidArgument { .. })));
        assert_eq!(ScanCursor::new(b"a", b"z", &ScanOptions { limit: Some(0), ..o }).unwrap(), None);
    }
}
