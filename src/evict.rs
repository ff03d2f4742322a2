//! Sampled eviction for the bounded in-memory tables (rate-limit budgets, daily quota
//! counts): when a table is full, the entry that costs least to forget among a few
//! picked at random goes, as Redis approximates LRU. O(1) per new key, whatever the
//! table's size; `IndexMap` gives the access by position that sampling needs.

use indexmap::IndexMap;
use std::hash::Hash;

/// Entries sampled to choose the one to evict: Redis samples 5; 8 hit the cheapest
/// eighth of a table two times in three, for eight reads per new key while full.
pub const SAMPLES: usize = 8;

/// Removes the sampled entry with the lowest `cost` (what forgetting it gives away).
/// `seed` (the new key's hash under a random key, so no client can aim it) says where
/// the evenly spaced samples start. Returns false only for an empty table.
pub fn evict_cheapest<K: Hash + Eq, V>(
    table: &mut IndexMap<K, V>,
    seed: u64,
    cost: impl Fn(&V) -> u64,
) -> bool {
    let len = table.len();
    if len == 0 {
        return false;
    }
    let samples = len.min(SAMPLES);
    // Evenly spaced from a random start: distinct entries, from the whole table.
    let stride = len / samples;
    let start = usize::try_from(seed >> 32).unwrap_or(0) % len;
    let victim = (0..samples)
        .map(|i| (start + i * stride) % len)
        .min_by_key(|&i| table.get_index(i).map_or(u64::MAX, |(_, v)| cost(v)));
    victim.and_then(|i| table.swap_remove_index(i)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheapest_sampled_entry_goes_and_an_empty_table_has_none() {
        // Eight entries: every one is sampled, so the cheapest must go.
        let mut table: IndexMap<u32, u64> = (0..7).map(|k| (k, 10)).collect();
        table.insert(100, 1);
        assert!(evict_cheapest(&mut table, 0, |v| *v));
        assert!(!table.contains_key(&100), "{table:?}");
        assert_eq!(table.len(), 7);
        let mut empty: IndexMap<u32, u64> = IndexMap::new();
        assert!(!evict_cheapest(&mut empty, 0, |v| *v));
    }
}
