//! [`MaybeSet`]: a counting Bloom filter over strings, which answers "surely
//! absent" or "maybe present" in a few dozen instructions and a fixed amount
//! of memory.
//!
//! The sled store puts every revoked token id in one, so that the token check
//! (every protected request) skips the database lookup for the tokens that
//! were never revoked, which is nearly all of them. A "maybe" still asks the
//! database, so false positives cost only the lookup we would have made
//! anyway. Correctness rests on one ordering, kept by the caller: an id is
//! added before it is written to the database, and removed only after it has
//! been deleted from it.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU8, Ordering};

/// Counters per filter: 512 KiB, touched lazily. At 100,000 revoked tokens,
/// about 2% of never-revoked ones still get a "maybe".
pub const COUNTERS: usize = 1 << 19;

/// Counters per item.
const PROBES: u64 = 3;

/// A counter that reached this stays there: an item may then be "maybe"
/// forever, never wrongly absent.
const SATURATED: u8 = u8::MAX;

pub struct MaybeSet {
    counters: Box<[AtomicU8]>,
    hasher: RandomState,
}

impl MaybeSet {
    pub fn new(counters: usize) -> MaybeSet {
        let counters = counters.max(1);
        MaybeSet {
            counters: (0..counters).map(|_| AtomicU8::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }

    /// False only if `item` was never added (or added and removed as often).
    pub fn may_contain(&self, item: &str) -> bool {
        self.slots(item)
            .all(|slot| self.counters[slot].load(Ordering::SeqCst) > 0)
    }

    pub fn add(&self, item: &str) {
        for slot in self.slots(item) {
            let _ = self.counters[slot].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < SATURATED).then(|| n + 1)
            });
        }
    }

    /// Undoes one [`MaybeSet::add`] of `item`.
    pub fn remove(&self, item: &str) {
        for slot in self.slots(item) {
            let _ = self.counters[slot].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 0 && n < SATURATED).then(|| n - 1)
            });
        }
    }

    /// `PROBES` counter indexes from one 64-bit hash (double hashing).
    fn slots(&self, item: &str) -> impl Iterator<Item = usize> + '_ {
        let hash = self.hasher.hash_one(item);
        let (h1, h2) = (hash, (hash >> 32) | 1);
        let len = self.counters.len() as u64;
        (0..PROBES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % len) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_items_are_always_maybe_and_removed_ones_go_away() {
        let set = MaybeSet::new(1 << 12);
        let ids: Vec<String> = (0..300).map(|i| format!("jti-{i}")).collect();
        for id in &ids {
            set.add(id);
        }
        assert!(
            ids.iter().all(|id| set.may_contain(id)),
            "no false negative"
        );
        for id in &ids[..150] {
            set.remove(id);
        }
        assert!(ids[150..].iter().all(|id| set.may_contain(id)));
        let false_positives = ids[..150].iter().filter(|id| set.may_contain(id)).count();
        assert!(false_positives < 15, "{false_positives} of 150 still maybe");
        assert!(!set.may_contain("never-added"));
    }

    #[test]
    fn a_tiny_filter_saturates_into_maybe_never_into_absent() {
        let set = MaybeSet::new(1);
        for i in 0..300 {
            set.add(&format!("jti-{i}"));
        }
        for i in 0..300 {
            set.remove(&format!("jti-{i}"));
        }
        // Its one counter saturated at 255: everything is "maybe" for good.
        assert!(set.may_contain("jti-0"));
        assert!(set.may_contain("anything"));
    }
}
