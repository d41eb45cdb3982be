//! A set of address offsets kept as disjoint, non-adjacent ranges.
//!
//! Lookups, inserts, removals and "first free at or after x" are O(log r), r being the
//! number of ranges, so the last address of a nearly full /16 (one big range) is found
//! as fast as the first, and an IPv6 /64 costs memory only for what is allocated.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AddressSet {
    /// start -> end, both inclusive.
    ranges: BTreeMap<u128, u128>,
    len: u128,
}

impl AddressSet {
    pub fn len(&self) -> u128 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn range_containing(&self, x: u128) -> Option<(u128, u128)> {
        self.ranges
            .range(..=x)
            .next_back()
            .filter(|&(_, &end)| end >= x)
            .map(|(&start, &end)| (start, end))
    }

    pub fn contains(&self, x: u128) -> bool {
        self.range_containing(x).is_some()
    }

    /// Adds `x`; false if it was already there.
    pub fn insert(&mut self, x: u128) -> bool {
        if self.contains(x) {
            return false;
        }
        let mut start = x;
        let mut end = x;
        if let Some(before) = x.checked_sub(1)
            && let Some((s, _)) = self.range_containing(before)
        {
            start = s;
        }
        if let Some(after) = x.checked_add(1)
            && let Some(e) = self.ranges.remove(&after)
        {
            end = e;
        }
        self.ranges.insert(start, end);
        self.len += 1;
        true
    }

    /// Removes `x`; false if it was not there.
    pub fn remove(&mut self, x: u128) -> bool {
        let Some((start, end)) = self.range_containing(x) else {
            return false;
        };
        self.ranges.remove(&start);
        if start < x {
            self.ranges.insert(start, x - 1);
        }
        if x < end {
            self.ranges.insert(x + 1, end);
        }
        self.len -= 1;
        true
    }

    /// The smallest offset in `from..=to` that is not in the set.
    pub fn first_free(&self, from: u128, to: u128) -> Option<u128> {
        if from > to {
            return None;
        }
        // Ranges never touch, so the offset right after the range holding `from` is free.
        let candidate = match self.range_containing(from) {
            Some((_, end)) => end.checked_add(1)?,
            None => from,
        };
        (candidate <= to).then_some(candidate)
    }

    /// The offsets of the set in `from..=to`, ascending.
    pub fn iter_in(&self, from: u128, to: u128) -> impl Iterator<Item = u128> + '_ {
        let before = self
            .range_containing(from)
            .filter(|_| from <= to)
            .map(|(_, end)| (from, end.min(to)));
        let after = (from < to)
            .then(|| self.ranges.range(from + 1..=to))
            .into_iter()
            .flatten()
            .map(move |(&s, &e)| (s, e.min(to)));
        before.into_iter().chain(after).flat_map(|(s, e)| s..=e)
    }

    pub fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.ranges.iter().flat_map(|(&s, &e)| s..=e)
    }

    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_merges_and_remove_splits() {
        let mut set = AddressSet::default();
        assert!(set.insert(5));
        assert!(set.insert(7));
        assert_eq!(set.range_count(), 2);
        assert!(set.insert(6));
        assert_eq!(set.range_count(), 1, "5..=7 is one range");
        assert!(!set.insert(6));
        assert_eq!(set.len(), 3);
        assert!(set.remove(6));
        assert_eq!(set.range_count(), 2);
        assert!(!set.remove(6));
        assert!(set.contains(5) && set.contains(7) && !set.contains(6));
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![5, 7]);
        assert!(set.remove(5) && set.remove(7));
        assert!(set.is_empty());
        assert_eq!(set.range_count(), 0);
    }

    #[test]
    fn first_free_skips_ranges() {
        let mut set = AddressSet::default();
        for x in 1..=10 {
            set.insert(x);
        }
        assert_eq!(set.first_free(0, 100), Some(0));
        assert_eq!(set.first_free(1, 100), Some(11));
        assert_eq!(set.first_free(4, 100), Some(11));
        assert_eq!(set.first_free(4, 10), None);
        assert_eq!(set.first_free(11, 10), None);
        assert_eq!(set.first_free(12, 100), Some(12));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut set = AddressSet::default();
        assert!(set.insert(u128::MAX));
        assert!(set.insert(0));
        assert_eq!(set.first_free(u128::MAX, u128::MAX), None);
        assert_eq!(set.first_free(0, 1), Some(1));
        assert!(set.remove(u128::MAX));
    }

    #[test]
    fn matches_a_naive_model() {
        // A small deterministic pseudo-random walk checked against a BTreeSet.
        let mut set = AddressSet::default();
        let mut model = std::collections::BTreeSet::new();
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let x = u128::from(seed % 200);
            if seed & (1 << 40) == 0 {
                assert_eq!(set.insert(x), model.insert(x));
            } else {
                assert_eq!(set.remove(x), model.remove(&x));
            }
            let from = u128::from((seed >> 20) % 200);
            let expect = (from..200).find(|v| !model.contains(v));
            assert_eq!(set.first_free(from, 199), expect);
            let to = from + u128::from((seed >> 30) % 20);
            assert_eq!(
                set.iter_in(from, to).collect::<Vec<_>>(),
                model.range(from..=to).copied().collect::<Vec<_>>()
            );
            assert_eq!(set.len(), model.len() as u128);
        }
    }
}
