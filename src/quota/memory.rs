//! The in-memory quota counts: one table per keyed quota and a global count, for one
//! UTC day, under one lock (so a check across the three quotas is atomic), dropped
//! whole when the day ends.
//!
//! Bounded: each table tracks at most `rate_limit.max_tracked_clients` keys. A new key
//! that finds its table full makes room by forgetting, among a few sampled at random,
//! the key with the fewest credentials today ([`crate::evict`]): forgetting a count hands
//! that caller back exactly what it had spent, so this gives away the least. A spray of
//! addresses, one credential each, then evicts its own entries, and every newcomer gets a
//! count of its own; a caller who has spent much of its quota is the last to go, and only
//! to a spray that spends as much per address. (A shared overflow count would let such a
//! spray lock newcomers out until midnight.) `orga_proxy_quota_table_full_total` counts
//! the evictions, with a warning once a day.

use super::{Scope, Want};
use crate::evict::evict_cheapest;
use crate::metrics::QUOTA_TABLE_FULL;
use indexmap::IndexMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// The counts of one day.
pub struct MemoryCounts {
    /// The counts, replaced at each new day.
    state: Mutex<Counts>,
    /// Most keys per table.
    max_keys: usize,
    /// Keys where eviction starts sampling, so no client can aim it.
    hasher: RandomState,
}

/// One day's counts.
#[derive(Default)]
struct Counts {
    /// Days since 1970-01-01 (UTC).
    day: u64,
    /// Per subject.
    subjects: Table,
    /// Per client key.
    clients: Table,
    /// All credentials of the day (counted only with the global quota on).
    global: u32,
}

/// One keyed quota's counts.
#[derive(Default)]
struct Table {
    /// Credentials per key today.
    counts: IndexMap<String, u32>,
    /// Whether today's first eviction was logged.
    warned: bool,
}

/// Where one unit of a reservation was counted.
#[derive(Debug)]
enum Slot {
    /// The key's own count.
    Key(String),
    /// The global count.
    Global,
}

/// The units of one reservation, to give back.
#[derive(Debug)]
pub struct Held {
    /// The day they were counted in (a unit of a day that has ended is not given back:
    /// that day's counts are gone).
    day: u64,
    /// One slot per quota.
    slots: Vec<(Scope, Slot)>,
}

impl Held {
    /// The UTC day the units were counted in.
    pub fn day(&self) -> u64 {
        self.day
    }
}

impl MemoryCounts {
    /// Empty counts, each table bounded to `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        Self {
            state: Mutex::new(Counts::default()),
            max_keys: max_keys.max(1),
            hasher: RandomState::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one credential against every quota of `wants` on `day`, or none if one of
    /// them is used up (that one is returned). With the global quota on, also returns
    /// the global count after this one.
    pub(super) fn reserve(&self, day: u64, wants: &[Want]) -> Result<(Held, Option<u32>), Scope> {
        let mut counts = self.lock();
        // A wall clock stepped back across midnight does not bring back a spent day.
        if day > counts.day {
            *counts = Counts {
                day,
                ..Counts::default()
            };
        }
        let mut slots = Vec::with_capacity(wants.len());
        for want in wants {
            let (slot, used) = match want.scope {
                Scope::Global => (Slot::Global, counts.global),
                scope => {
                    let used = counts.table(scope).counts.get(&want.key).copied();
                    (Slot::Key(want.key.clone()), used.unwrap_or(0))
                }
            };
            if used >= want.limit {
                return Err(want.scope);
            }
            slots.push((want.scope, slot));
        }
        for (scope, slot) in &slots {
            if let Slot::Key(key) = slot {
                let seed = self.hasher.hash_one(key);
                counts
                    .table(*scope)
                    .make_room(*scope, key, seed, self.max_keys);
            }
            counts.count(*scope, slot);
        }
        let global = wants
            .iter()
            .any(|w| w.scope == Scope::Global)
            .then_some(counts.global);
        let day = counts.day;
        Ok((Held { day, slots }, global))
    }

    /// Gives back the units of `held`; returns the global count after it.
    pub(super) fn release(&self, held: &Held) -> Option<u32> {
        let mut counts = self.lock();
        if counts.day != held.day {
            return None;
        }
        let mut global = None;
        for (scope, slot) in &held.slots {
            match slot {
                Slot::Global => {
                    counts.global = counts.global.saturating_sub(1);
                    global = Some(counts.global);
                }
                Slot::Key(key) => {
                    let table = counts.table(*scope);
                    if let Some(used) = table.counts.get_mut(key) {
                        *used = used.saturating_sub(1);
                        if *used == 0 {
                            table.counts.swap_remove(key);
                        }
                    }
                }
            }
        }
        global
    }

    /// Keys tracked in the table of `scope` today.
    pub fn tracked(&self, scope: Scope) -> usize {
        self.lock().table(scope).counts.len()
    }
}

impl Counts {
    /// The table of a keyed quota (the global quota has none and never asks).
    fn table(&mut self, scope: Scope) -> &mut Table {
        match scope {
            Scope::Subject | Scope::Global => &mut self.subjects,
            Scope::Client => &mut self.clients,
        }
    }

    /// Counts one unit in `slot`.
    fn count(&mut self, scope: Scope, slot: &Slot) {
        match slot {
            Slot::Global => self.global += 1,
            Slot::Key(key) => *self.table(scope).counts.entry(key.clone()).or_insert(0) += 1,
        }
    }
}

impl Table {
    /// Before `key` is counted: if it is new and the table full, forgets the sampled key
    /// with the fewest credentials today (see the module documentation).
    fn make_room(&mut self, scope: Scope, key: &str, seed: u64, max_keys: usize) {
        if self.counts.contains_key(key) || self.counts.len() < max_keys {
            return;
        }
        if evict_cheapest(&mut self.counts, seed, |used| u64::from(*used)) {
            metrics::counter!(QUOTA_TABLE_FULL, "quota" => scope.label()).increment(1);
            if !std::mem::replace(&mut self.warned, true) {
                tracing::warn!(
                    quota = scope.label(),
                    max_tracked_clients = max_keys,
                    "quota table full: the callers with the fewest credentials today are forgotten to make room; raise rate_limit.max_tracked_clients if this is not an attack"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(scope: Scope, key: &str, limit: u32) -> Want {
        Want {
            scope,
            key: key.into(),
            limit,
        }
    }

    #[test]
    fn the_nth_credential_is_counted_and_the_next_refused() {
        let counts = MemoryCounts::new(10);
        let wants = [want(Scope::Client, "192.0.2.1", 3)];
        for _ in 0..3 {
            counts.reserve(7, &wants).unwrap();
        }
        assert_eq!(counts.reserve(7, &wants).unwrap_err(), Scope::Client);
        assert!(
            counts.reserve(8, &wants).is_ok(),
            "a new day starts at zero"
        );
    }

    #[test]
    fn released_units_come_back_but_not_across_midnight() {
        let counts = MemoryCounts::new(10);
        let wants = [want(Scope::Global, "", 1)];
        let (held, global) = counts.reserve(7, &wants).unwrap();
        assert_eq!(global, Some(1));
        assert_eq!(counts.release(&held), Some(0));
        let (yesterday, _) = counts.reserve(7, &wants).unwrap();
        counts.reserve(8, &wants).unwrap();
        counts.release(&yesterday);
        assert_eq!(counts.reserve(8, &wants).unwrap_err(), Scope::Global);
    }

    #[test]
    fn during_a_spray_every_newcomer_gets_its_own_count_and_the_table_never_grows() {
        let counts = MemoryCounts::new(64);
        let client = |key: &str| [want(Scope::Client, key, 3)];
        // A caller that has spent all but one of its quota, then a spray of addresses.
        for _ in 0..2 {
            counts.reserve(1, &client("spender")).unwrap();
        }
        for n in 0..5_000 {
            counts.reserve(1, &client(&format!("spray-{n}"))).unwrap();
            if n % 500 == 0 {
                // A newcomer mid-spray has its whole quota of its own.
                let newcomer = format!("newcomer-{n}");
                for _ in 0..3 {
                    counts.reserve(1, &client(&newcomer)).unwrap();
                }
                assert_eq!(
                    counts.reserve(1, &client(&newcomer)).unwrap_err(),
                    Scope::Client
                );
            }
            assert!(counts.tracked(Scope::Client) <= 64);
        }
        // The spender's count survived the spray: one credential left, not three.
        counts.reserve(1, &client("spender")).unwrap();
        assert_eq!(
            counts.reserve(1, &client("spender")).unwrap_err(),
            Scope::Client
        );
        // A new day empties the table.
        counts.reserve(2, &client("fresh")).unwrap();
        assert_eq!(counts.tracked(Scope::Client), 1);
    }

    #[test]
    fn a_clock_stepped_back_across_midnight_does_not_reset_the_day() {
        let counts = MemoryCounts::new(10);
        let wants = [want(Scope::Global, "", 1)];
        counts.reserve(8, &wants).unwrap();
        assert_eq!(counts.reserve(7, &wants).unwrap_err(), Scope::Global);
    }
}
