//! Merging concurrent PD lookups.
//!
//! When many requests miss the routing cache at once (typically right after a region was
//! invalidated), only the first should ask PD; the others wait for its answer and then read
//! the cache again. This table decides who leads. It is generic over the waiter handle `W`
//! (the native layer stores a shared future), so the decision stays free of I/O.

use std::collections::HashMap;

use tessera_wire::RegionId;

/// What concurrent misses share.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LookupKey {
    /// Keys last known to lie in this (since invalidated) region.
    Region(RegionId),
    /// A key with no better hint.
    Key(Vec<u8>),
}

/// The caller's part in a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<W> {
    /// No lookup was in flight: the caller performs it (through `W`) and calls
    /// [`PendingLookups::finish`] when done.
    Lead(W),
    /// A lookup is in flight: wait on `W`, then read the cache again.
    Join(W),
}

impl<W> Lookup<W> {
    /// The handle, whatever the role.
    pub fn into_handle(self) -> W {
        match self {
            Lookup::Lead(w) | Lookup::Join(w) => w,
        }
    }
}

/// Lookups in flight, keyed by what they resolve.
#[derive(Debug, Clone)]
pub struct PendingLookups<W> {
    inflight: HashMap<LookupKey, W>,
}

impl<W> Default for PendingLookups<W> {
    fn default() -> Self {
        PendingLookups { inflight: HashMap::new() }
    }
}

impl<W: Clone> PendingLookups<W> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins the lookup in flight for `key`, or registers a new one made by `start`.
    pub fn begin(&mut self, key: LookupKey, start: impl FnOnce() -> W) -> Lookup<W> {
        if let Some(w) = self.inflight.get(&key) {
            return Lookup::Join(w.clone());
        }
        let w = start();
        self.inflight.insert(key, w.clone());
        Lookup::Lead(w)
    }

    /// Ends the lookup for `key`: later misses start a new one. Call it after the result
    /// is in the cache, so that a miss never races past a finished lookup.
    pub fn finish(&mut self, key: &LookupKey) -> Option<W> {
        self.inflight.remove(key)
    }

    /// Lookups in flight.
    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    /// True when no lookup is in flight.
    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_misses_for_one_region_share_one_lookup() {
        let mut t: PendingLookups<u32> = PendingLookups::new();
        let mut started = 0;
        let mut begin = |t: &mut PendingLookups<u32>| {
            t.begin(LookupKey::Region(RegionId(7)), || {
                started += 1;
                started
            })
        };
        assert_eq!(begin(&mut t), Lookup::Lead(1));
        assert_eq!(begin(&mut t), Lookup::Join(1));
        assert_eq!(begin(&mut t), Lookup::Join(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.finish(&LookupKey::Region(RegionId(7))), Some(1));
        assert_eq!(begin(&mut t), Lookup::Lead(2), "a miss after finish starts a new lookup");
    }

    #[test]
    fn different_keys_do_not_merge() {
        let mut t: PendingLookups<u8> = PendingLookups::new();
        assert!(matches!(t.begin(LookupKey::Key(b"a".to_vec()), || 1), Lookup::Lead(1)));
        assert!(matches!(t.begin(LookupKey::Key(b"b".to_vec()), || 2), Lookup::Lead(2)));
        assert!(matches!(t.begin(LookupKey::Region(RegionId(1)), || 3), Lookup::Lead(3)));
        assert_eq!(t.len(), 3);
    }
}
