//! The in-memory quota counts: one table per keyed quota and a global count, for one
//! UTC day, under one lock (so a check across the three quotas is atomic), dropped
//! whole when the day ends.
//!
//! Bounded: each table tracks at most `rate_limit.max_tracked_clients` keys. A daily
//! count cannot be evicted the way an idle rate-limit budget can (forgetting it would
//! hand that caller a fresh quota), so once a table is full, callers it has not seen
//! today share one overflow count with the same limit until midnight: the spend stays
//! capped, known callers keep their own counts, and the metric
//! `orga_proxy_quota_table_full_total` and a warning (once a day) tell the operator.

use super::{Scope, Want};
use crate::metrics::QUOTA_TABLE_FULL;
use std::collections::HashMap;
use std::sync::Mutex;

/// The counts of one day.
pub struct MemoryCounts {
    /// The counts, replaced at each new day.
    state: Mutex<Counts>,
    /// Most keys per table.
    max_keys: usize,
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
    counts: HashMap<String, u32>,
    /// Credentials of the keys that found the table full.
    overflow: u32,
    /// Whether today's first overflow was logged.
    warned: bool,
}

/// Where one unit of a reservation was counted.
#[derive(Debug)]
enum Slot {
    /// The key's own count.
    Key(String),
    /// The table's overflow count.
    Overflow,
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

impl MemoryCounts {
    /// Empty counts, each table bounded to `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        Self {
            state: Mutex::new(Counts::default()),
            max_keys: max_keys.max(1),
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
                    let table = counts.table(scope);
                    match table.counts.get(&want.key) {
                        Some(&used) => (Slot::Key(want.key.clone()), used),
                        None if table.counts.len() >= self.max_keys => {
                            (Slot::Overflow, table.overflow)
                        }
                        None => (Slot::Key(want.key.clone()), 0),
                    }
                }
            };
            if used >= want.limit {
                return Err(want.scope);
            }
            slots.push((want.scope, slot));
        }
        for (scope, slot) in &slots {
            counts.count(*scope, slot, self.max_keys);
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
                Slot::Overflow => {
                    let table = counts.table(*scope);
                    table.overflow = table.overflow.saturating_sub(1);
                }
                Slot::Key(key) => {
                    let table = counts.table(*scope);
                    if let Some(used) = table.counts.get_mut(key) {
                        *used = used.saturating_sub(1);
                        if *used == 0 {
                            table.counts.remove(key);
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
    fn count(&mut self, scope: Scope, slot: &Slot, max_keys: usize) {
        match slot {
            Slot::Global => self.global += 1,
            Slot::Key(key) => *self.table(scope).counts.entry(key.clone()).or_insert(0) += 1,
            Slot::Overflow => {
                let table = self.table(scope);
                table.overflow += 1;
                metrics::counter!(QUOTA_TABLE_FULL, "quota" => scope.label()).increment(1);
                if !std::mem::replace(&mut table.warned, true) {
                    tracing::warn!(
                        quota = scope.label(),
                        max_tracked_clients = max_keys,
                        "quota table full: callers not seen today share one overflow quota until 00:00 UTC; raise rate_limit.max_tracked_clients if this is not an attack"
                    );
                }
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
    fn a_full_table_sends_newcomers_to_one_shared_count_and_never_grows() {
        let counts = MemoryCounts::new(2);
        for key in ["a", "b"] {
            counts.reserve(1, &[want(Scope::Subject, key, 2)]).unwrap();
        }
        // c and d share the overflow count of 2; e finds it spent.
        counts.reserve(1, &[want(Scope::Subject, "c", 2)]).unwrap();
        counts.reserve(1, &[want(Scope::Subject, "d", 2)]).unwrap();
        let refused = counts.reserve(1, &[want(Scope::Subject, "e", 2)]);
        assert_eq!(refused.unwrap_err(), Scope::Subject);
        assert_eq!(counts.tracked(Scope::Subject), 2);
        // Known keys keep their own count.
        assert!(counts.reserve(1, &[want(Scope::Subject, "a", 2)]).is_ok());
        // A new day empties the table.
        counts.reserve(2, &[want(Scope::Subject, "e", 2)]).unwrap();
        assert_eq!(counts.tracked(Scope::Subject), 1);
    }

    #[test]
    fn a_clock_stepped_back_across_midnight_does_not_reset_the_day() {
        let counts = MemoryCounts::new(10);
        let wants = [want(Scope::Global, "", 1)];
        counts.reserve(8, &wants).unwrap();
        assert_eq!(counts.reserve(7, &wants).unwrap_err(), Scope::Global);
    }
}
