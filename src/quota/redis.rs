//! The quota counts in the shared Redis: one hash per subject, client and the service
//! (`{prefix}q:sub:<subject>`, `{prefix}q:ip:<client>`, `{prefix}q:all`) holding the day
//! and its count, checked and counted by one Lua script that reads the server's `TIME`,
//! so every replica shares one count and one midnight. Keys expire at the end of their
//! day. Every call has the `redis.timeout` deadline; a failure is reported to the
//! caller, which applies `rate_limit.redis_failure`.

use super::{Held, Outcome, Scope, Want};
use crate::config::RedisFailure;
use crate::store::RedisConnection;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Checks every quota in KEYS against its limit in ARGV (same order) for the server's
/// current UTC day, and counts one credential in all of them only if none is used up.
/// Returns {0, day, seconds until midnight, count after, ...} when admitted, or
/// {index of the quota used up (1-based), day, seconds until midnight} when not.
/// Nothing is written on a refusal, so there is nothing to roll back.
const RESERVE_LUA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local now = tonumber(redis.call('TIME')[1])
local day = math.floor(now / 86400)
local ends = (day + 1) * 86400
local counts = {}
for i, key in ipairs(KEYS) do
  local stored = redis.call('HMGET', key, 'day', 'n')
  local n = 0
  if tonumber(stored[1]) == day then n = tonumber(stored[2]) or 0 end
  if n >= tonumber(ARGV[i]) then
    return {i, day, ends - now}
  end
  counts[i] = n + 1
end
local reply = {0, day, ends - now}
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'day', day, 'n', counts[i])
  redis.call('EXPIREAT', key, ends)
  reply[#reply + 1] = counts[i]
end
return reply
";

/// Gives one credential back to every key in KEYS, if its count is still of the day
/// in ARGV[1] (a reservation of a day that has ended has nothing to give back).
const RELEASE_LUA: &str = r"
local day = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local stored = redis.call('HMGET', key, 'day', 'n')
  if tonumber(stored[1]) == day and (tonumber(stored[2]) or 0) > 0 then
    redis.call('HINCRBY', key, 'n', -1)
  end
end
return 0
";

static RESERVE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESERVE_LUA));
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE_LUA));

/// The quota counts in Redis.
pub(super) struct RedisCounts {
    /// The shared connection (see [`crate::store`]).
    connection: Arc<RedisConnection>,
    /// `redis.key_prefix` plus `q:`.
    prefix: String,
}

impl RedisCounts {
    pub(super) fn new(connection: Arc<RedisConnection>, key_prefix: &str) -> Self {
        Self {
            connection,
            prefix: format!("{key_prefix}q:"),
        }
    }

    /// `rate_limit.redis_failure`.
    pub(super) fn failure_policy(&self) -> RedisFailure {
        self.connection.failure_policy()
    }

    fn key(&self, want: &Want) -> String {
        match want.scope {
            Scope::Subject => format!("{}sub:{}", self.prefix, want.key),
            Scope::Client => format!("{}ip:{}", self.prefix, want.key),
            Scope::Global => format!("{}all", self.prefix),
        }
    }

    /// Runs the reserve script; `Err` when Redis failed (or is known to be failing:
    /// requests do not wait on it then, the connection's pinger brings it back).
    pub(super) async fn reserve(&self, wants: &[Want]) -> Result<Outcome, ()> {
        if !self.connection.is_healthy() {
            return Err(());
        }
        let keys: Vec<String> = wants.iter().map(|want| self.key(want)).collect();
        let mut invocation = RESERVE.prepare_invoke();
        for (key, want) in keys.iter().zip(wants) {
            invocation.key(key).arg(want.limit);
        }
        let reply = self
            .connection
            .query(|mut conn| async move { invocation.invoke_async::<Vec<i64>>(&mut conn).await })
            .await
            .map_err(|_| ())?;
        let Some((&[refused, day, until_midnight], counts)) = reply.split_first_chunk::<3>() else {
            return Err(());
        };
        let day = u64::try_from(day).map_err(|_| ())?;
        let until_midnight = Duration::from_secs(u64::try_from(until_midnight).unwrap_or(1));
        if refused > 0 {
            let index = usize::try_from(refused - 1).map_err(|_| ())?;
            let scope = wants.get(index).ok_or(())?.scope;
            return Ok(Err((scope, until_midnight)));
        }
        let global = wants
            .iter()
            .zip(counts)
            .find(|(want, _)| want.scope == Scope::Global)
            .map(|(_, &count)| u32::try_from(count).unwrap_or(u32::MAX));
        Ok(Ok((Held::Redis { day, keys }, global)))
    }

    /// Runs the release script; a failure leaves the units counted (the safe side of a
    /// spend cap), and the connection logs it.
    pub(super) async fn release(&self, day: u64, keys: Vec<String>) {
        let mut invocation = RELEASE.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        invocation.arg(day);
        let _ = self
            .connection
            .query(|mut conn| async move { invocation.invoke_async::<i64>(&mut conn).await })
            .await;
    }
}
