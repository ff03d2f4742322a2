//! Token binding (`relay.bind_tokens`): the credentials route records each ephemeral
//! token it hands out, and the relay accepts a token only if it finds that record,
//! unexpired and unused, marking it used in the same step, so two racing call starts
//! with one token cannot both reach Orga.
//!
//! - A record is a SHA-256 fingerprint of the token (never the token), the subject the
//!   caller authenticated as, and an expiry: Orga's `expires_at` when its answer carries
//!   one (capped at [`MAX_LIFETIME`]), else `relay.token_ttl`.
//! - In memory (one process): a table bounded by `relay.max_bound_tokens`. Expired
//!   records are swept out; used ones stay until their expiry so a replay is told
//!   "already used" rather than "unknown", but make way when the table is full (a replay
//!   is refused either way). When the table is full of unused records, the credentials
//!   route refuses to issue (503, `orga_proxy_relay_binding_full_total`) instead of
//!   evicting: an eviction would break a call start a user has already been promised,
//!   silently, and a flood of minted tokens could evict every honest user's.
//! - In Redis (with `[redis]` configured): one key per record with a `PX` expiry, so
//!   Redis's clock retires it and any replica can relay a token another issued. The
//!   check-and-mark is one Lua script. A Redis failure refuses (503) on both routes: a
//!   token that cannot be recorded would be refused at the relay anyway, and a relay
//!   that cannot check binding must not call Orga. `rate_limit.redis_failure` does not
//!   apply here: it trades limits for availability, and binding is not a limit.

use crate::clock::Clock;
use crate::config::{RedisConfig, RelayConfig};
use crate::metrics::{RELAY_BINDING_FULL, RELAY_BOUND_TOKENS};
use crate::orga::{EphemeralToken, Expiry, Fingerprint};
use crate::store::RedisConnection;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest a record lives, whatever expiry Orga states: call starts follow the
/// credentials within seconds, and a far expiry (or one in milliseconds read as
/// seconds) must not pin memory.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3_600);
/// How often the memory table is swept of expired records, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// While the memory table stays full, how often the warning is repeated: every refused
/// credential is counted, but a flood of them must not become a flood of log lines.
const FULL_WARN_EVERY: Duration = Duration::from_secs(60);

/// Check-and-mark. KEYS[1]: the record. Returns {0} unknown or expired, {2} already
/// used, {1, subject} accepted (and now marked used, keeping its expiry).
/// The value is "0" or "1" (used), then ":" and the subject when there is one.
const REDEEM_LUA: &str = r"
local value = redis.call('GET', KEYS[1])
if not value then return {0, ''} end
if string.sub(value, 1, 1) == '1' then return {2, ''} end
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return {0, ''} end
redis.call('SET', KEYS[1], '1' .. string.sub(value, 2), 'PX', ttl)
return {1, string.sub(value, 3)}
";

static REDEEM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(REDEEM_LUA));

/// What the relay learns about a token it is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// Recorded, unexpired and unused: now marked used. The subject who got it, if any.
    Accepted(Option<String>),
    /// Not recorded by this service, or expired.
    Unknown,
    /// Recorded, and already used for a call.
    AlreadyUsed,
}

/// Why a token could not be recorded or checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingError {
    /// The memory table is at `relay.max_bound_tokens`.
    Full,
    /// Redis failed; the reason, without the URL.
    Store(String),
}

/// Where records live.
pub enum TokenBindings {
    /// This process only.
    Memory(MemoryBindings),
    /// Shared by every replica through `[redis]`.
    Redis {
        /// The shared connection.
        connection: Arc<RedisConnection>,
        /// `redis.key_prefix` plus `relay:`.
        prefix: String,
        /// For the records' lifetimes.
        clock: Clock,
        /// `relay.token_ttl`.
        ttl: Duration,
    },
}

impl TokenBindings {
    /// Records in Redis when `redis` is given, else in memory.
    pub fn new(
        relay: &RelayConfig,
        redis: Option<Arc<RedisConnection>>,
        redis_config: &RedisConfig,
        clock: Clock,
    ) -> Self {
        match redis {
            Some(connection) => Self::Redis {
                connection,
                prefix: format!("{}relay:", redis_config.key_prefix),
                clock,
                ttl: relay.token_ttl,
            },
            None => Self::Memory(MemoryBindings::new(
                relay.max_bound_tokens,
                relay.token_ttl,
                clock,
            )),
        }
    }

    /// Whether a token could be recorded now; asked before one is minted, so a full
    /// table or a Redis known to be failing does not cost an Orga token.
    pub fn has_room(&self) -> Result<(), BindingError> {
        match self {
            Self::Memory(memory) => memory.has_room(),
            Self::Redis { connection, .. } if !connection.is_healthy() => Err(BindingError::Store(
                "Redis failed its last call; not minting until it answers".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Records `token`, issued to `subject`, expiring at Orga's `expires_at` if given.
    pub async fn bind(
        &self,
        token: &EphemeralToken,
        subject: Option<&str>,
        expires_at: Option<&Expiry>,
    ) -> Result<(), BindingError> {
        let fingerprint = Fingerprint::of(token);
        match self {
            Self::Memory(memory) => memory.bind(fingerprint, subject, expires_at),
            Self::Redis {
                connection,
                prefix,
                clock,
                ttl,
            } => {
                let lifetime = lifetime(expires_at, clock.wall(), *ttl);
                if lifetime.is_zero() {
                    return Ok(()); // already expired by Orga's word: nothing to record
                }
                let key = format!("{prefix}{}", fingerprint.hex(64));
                let value = match subject {
                    Some(subject) => format!("0:{subject}"),
                    None => "0".to_owned(),
                };
                let millis = u64::try_from(lifetime.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                connection
                    .query(|mut conn| async move {
                        // NX: a record is never reset, so a used token cannot become unused.
                        redis::cmd("SET")
                            .arg(&key)
                            .arg(value)
                            .arg("PX")
                            .arg(millis)
                            .arg("NX")
                            .query_async::<Option<String>>(&mut conn)
                            .await
                    })
                    .await
                    .map(|_| ())
                    .map_err(BindingError::Store)
            }
        }
    }

    /// Checks `token` and, when it is accepted, marks it used, atomically.
    pub async fn redeem(&self, token: &EphemeralToken) -> Result<Redeemed, BindingError> {
        let fingerprint = Fingerprint::of(token);
        match self {
            Self::Memory(memory) => Ok(memory.redeem(fingerprint)),
            Self::Redis {
                connection, prefix, ..
            } => {
                let key = format!("{prefix}{}", fingerprint.hex(64));
                let (state, subject) = connection
                    .query(|mut conn| async move {
                        REDEEM
                            .key(&key)
                            .invoke_async::<(i64, String)>(&mut conn)
                            .await
                    })
                    .await
                    .map_err(BindingError::Store)?;
                Ok(match state {
                    1 => Redeemed::Accepted((!subject.is_empty()).then_some(subject)),
                    2 => Redeemed::AlreadyUsed,
                    _ => Redeemed::Unknown,
                })
            }
        }
    }
}

/// How long a record issued `now` lives: until Orga's stated expiry, capped at
/// [`MAX_LIFETIME`]; `ttl` when Orga stated none (or one that cannot be read).
pub fn lifetime(expires_at: Option<&Expiry>, now: SystemTime, ttl: Duration) -> Duration {
    let at = match expires_at {
        Some(Expiry::Unix(secs)) => UNIX_EPOCH.checked_add(Duration::from_secs(*secs)),
        Some(Expiry::Text(text)) => humantime::parse_rfc3339_weak(text).ok(),
        None => None,
    };
    match at {
        Some(at) => at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_LIFETIME),
        None => ttl,
    }
}

/// The in-memory table (see the module documentation).
pub struct MemoryBindings {
    /// The records and the next sweep.
    table: Mutex<Table>,
    /// `relay.max_bound_tokens`.
    capacity: usize,
    /// `relay.token_ttl`.
    ttl: Duration,
    /// Wall time, for expiry.
    clock: Clock,
}

/// The memory table's state, behind its lock.
struct Table {
    /// One record per issued token, by fingerprint.
    records: HashMap<Fingerprint, Record>,
    /// When expired records are next swept out.
    next_sweep: SystemTime,
    /// When a refusal for a full table was last logged.
    full_warned_at: Option<SystemTime>,
}

/// One issued token's binding.
struct Record {
    /// Who the token was issued to, when auth identified them.
    subject: Option<Arc<str>>,
    /// When the record dies.
    expires_at: SystemTime,
    /// Whether a call was started with it.
    used: bool,
}

impl MemoryBindings {
    /// An empty table of at most `capacity` records.
    pub fn new(capacity: usize, ttl: Duration, clock: Clock) -> Self {
        Self {
            table: Mutex::new(Table {
                records: HashMap::new(),
                next_sweep: clock.wall() + SWEEP_EVERY,
                full_warned_at: None,
            }),
            capacity,
            ttl,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records in the table now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().records.len()
    }

    fn has_room(&self) -> Result<(), BindingError> {
        let mut table = self.lock();
        if table.records.len() >= self.capacity {
            self.make_room(&mut table);
        }
        if table.records.len() < self.capacity {
            Ok(())
        } else {
            Err(self.full(&mut table))
        }
    }

    /// The refusal for a full table: counted every time, logged now and then.
    fn full(&self, table: &mut Table) -> BindingError {
        metrics::counter!(RELAY_BINDING_FULL).increment(1);
        let now = self.clock.wall();
        let due = table.full_warned_at.is_none_or(|at| {
            now.duration_since(at)
                .map_or(true, |since| since >= FULL_WARN_EVERY)
        });
        if due {
            table.full_warned_at = Some(now);
            tracing::warn!(
                max_bound_tokens = self.capacity,
                "relay token binding table full (relay.max_bound_tokens): refusing to issue until records expire or are used"
            );
        }
        BindingError::Full
    }

    fn bind(
        &self,
        fingerprint: Fingerprint,
        subject: Option<&str>,
        expires_at: Option<&Expiry>,
    ) -> Result<(), BindingError> {
        let now = self.clock.wall();
        let lifetime = lifetime(expires_at, now, self.ttl);
        if lifetime.is_zero() {
            return Ok(()); // already expired by Orga's word: nothing to record
        }
        let mut table = self.lock();
        self.sweep(&mut table, false);
        if table.records.len() >= self.capacity {
            self.make_room(&mut table);
        }
        if table.records.len() >= self.capacity && !table.records.contains_key(&fingerprint) {
            return Err(self.full(&mut table));
        }
        table.records.entry(fingerprint).or_insert(Record {
            subject: subject.map(Arc::from),
            expires_at: now + lifetime,
            used: false,
        });
        metrics::gauge!(RELAY_BOUND_TOKENS).set(table.records.len() as f64);
        Ok(())
    }

    fn redeem(&self, fingerprint: Fingerprint) -> Redeemed {
        let now = self.clock.wall();
        let mut table = self.lock();
        let Some(record) = table.records.get_mut(&fingerprint) else {
            return Redeemed::Unknown;
        };
        if record.expires_at <= now {
            table.records.remove(&fingerprint);
            metrics::gauge!(RELAY_BOUND_TOKENS).set(table.records.len() as f64);
            return Redeemed::Unknown;
        }
        if record.used {
            return Redeemed::AlreadyUsed;
        }
        record.used = true;
        Redeemed::Accepted(record.subject.as_deref().map(str::to_owned))
    }

    /// Drops expired records and, if that is not enough, used ones.
    fn make_room(&self, table: &mut Table) {
        self.sweep(table, true);
        if table.records.len() >= self.capacity {
            table.records.retain(|_, record| !record.used);
            metrics::gauge!(RELAY_BOUND_TOKENS).set(table.records.len() as f64);
        }
    }

    /// Drops expired records, when a sweep is due or `now_anyway`.
    fn sweep(&self, table: &mut Table, now_anyway: bool) {
        let now = self.clock.wall();
        if !now_anyway && now < table.next_sweep {
            return;
        }
        table.records.retain(|_, record| record.expires_at > now);
        table.next_sweep = now + SWEEP_EVERY;
        metrics::gauge!(RELAY_BOUND_TOKENS).set(table.records.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    fn table(capacity: usize) -> (MemoryBindings, Clock) {
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        (MemoryBindings::new(capacity, TTL, clock.clone()), clock)
    }

    fn fingerprint(token: &str) -> Fingerprint {
        Fingerprint::of(&EphemeralToken::new(token))
    }

    #[test]
    fn a_recorded_token_is_accepted_once_with_its_subject() {
        let (bindings, _) = table(10);
        bindings
            .bind(fingerprint("ek_a"), Some("user-1"), None)
            .unwrap();
        assert_eq!(
            bindings.redeem(fingerprint("ek_a")),
            Redeemed::Accepted(Some("user-1".into()))
        );
        assert_eq!(bindings.redeem(fingerprint("ek_a")), Redeemed::AlreadyUsed);
        assert_eq!(bindings.redeem(fingerprint("ek_b")), Redeemed::Unknown);
    }

    #[test]
    fn a_record_dies_at_orgas_expiry_or_the_ttl() {
        let (bindings, clock) = table(10);
        let now = clock.wall().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let soon = Expiry::Unix(now + 60);
        bindings
            .bind(fingerprint("ek_soon"), None, Some(&soon))
            .unwrap();
        bindings.bind(fingerprint("ek_ttl"), None, None).unwrap();
        clock.advance(Duration::from_secs(61));
        assert_eq!(bindings.redeem(fingerprint("ek_soon")), Redeemed::Unknown);
        assert_eq!(
            bindings.redeem(fingerprint("ek_ttl")),
            Redeemed::Accepted(None)
        );
        bindings.bind(fingerprint("ek_ttl2"), None, None).unwrap();
        clock.advance(TTL);
        assert_eq!(bindings.redeem(fingerprint("ek_ttl2")), Redeemed::Unknown);
    }

    #[test]
    fn a_full_table_refuses_new_records_until_old_ones_expire() {
        let (bindings, clock) = table(2);
        bindings.bind(fingerprint("ek_1"), None, None).unwrap();
        bindings.bind(fingerprint("ek_2"), None, None).unwrap();
        assert_eq!(bindings.has_room(), Err(BindingError::Full));
        assert_eq!(
            bindings.bind(fingerprint("ek_3"), None, None),
            Err(BindingError::Full)
        );
        assert_eq!(
            bindings.redeem(fingerprint("ek_2")),
            Redeemed::Accepted(None),
            "nothing promised was evicted"
        );
        assert_eq!(bindings.has_room(), Ok(()), "a used record makes way");
        bindings.bind(fingerprint("ek_3"), None, None).unwrap();
        assert_eq!(bindings.redeem(fingerprint("ek_2")), Redeemed::Unknown);
        assert_eq!(bindings.has_room(), Err(BindingError::Full));
        clock.advance(TTL);
        assert_eq!(bindings.has_room(), Ok(()), "expired records are swept");
        bindings.bind(fingerprint("ek_4"), None, None).unwrap();
        assert_eq!(bindings.len(), 1);
    }

    #[test]
    fn lifetimes_follow_orgas_expiry_capped_and_the_ttl_otherwise() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let unix = |s: u64| Expiry::Unix(1_700_000_000 + s);
        assert_eq!(lifetime(Some(&unix(90)), now, TTL), Duration::from_secs(90));
        assert_eq!(lifetime(Some(&unix(86_400)), now, TTL), MAX_LIFETIME);
        assert_eq!(lifetime(Some(&Expiry::Unix(5)), now, TTL), Duration::ZERO);
        let text =
            Expiry::Text(humantime::format_rfc3339(now + Duration::from_secs(120)).to_string());
        assert_eq!(lifetime(Some(&text), now, TTL), Duration::from_secs(120));
        assert_eq!(lifetime(Some(&Expiry::Text("soon".into())), now, TTL), TTL);
        assert_eq!(lifetime(None, now, TTL), TTL);
    }
}
