//! SIGHUP: reload what can change while serving. The configuration is loaded again from
//! where it came from at start (the same `--config` file, the environment, a rotated
//! `ORGA_API_KEY_FILE`) and validated first; if it is invalid, every problem is logged
//! and the running configuration stays. So is the configuration that would then run:
//! the live keys ([`LIVE_KEYS`]) of the new one over the rest of the running one, which
//! two valid files can still make invalid (new `"*"` origins beside the running JWT
//! cookie). Otherwise the live keys take effect at once, and every other key that
//! differs from the running configuration is logged as needing a restart. Each outcome
//! is counted in `orga_proxy_config_reloads_total{outcome="ok|invalid"}`.

use crate::config::{self, Config, Mode};
use crate::metrics::CONFIG_RELOADS;
use crate::state::AppState;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The daily quota numbers, live when some quota was on at start (its stage is then in
/// the gate); turning quotas on from none needs a restart.
pub const QUOTA_KEYS: &[&str] = &[
    "quota.per_subject_per_day",
    "quota.per_client_per_day",
    "quota.global_per_day",
];

/// The keys a reload applies without a restart; [`AppState::reload`] applies them.
pub const LIVE_KEYS: &[&str] = &[
    "orga.api_key",
    "auth.api_keys",
    "cors.allowed_origins",
    "cors.allow_credentials",
    "rate_limit.requests_per_minute",
    "rate_limit.burst",
    "rate_limit.per_subject.requests_per_minute",
    "rate_limit.per_subject.burst",
];

impl AppState {
    /// Applies the live keys of a validated `config` (see [`LIVE_KEYS`]). A component
    /// that can change live joins with one line here, its keys in [`LIVE_KEYS`], and
    /// their values in `with_live_keys`.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        // The one step that can fail goes first, so a refusal changes nothing.
        self.orga.set_api_key(&config.orga.api_key)?;
        self.authenticator.reload_api_keys(&config.auth.api_keys);
        self.cors.store(Arc::new(config.cors.clone()));
        self.rate_limit.reload(&config.rate_limit);
        self.quotas.reload(&config.quota);
        Ok(())
    }
}

/// What a configuration goes through after loading, before it is used (`dev` points it
/// at the embedded fake Orga Cloud); the same at start and on every reload.
pub type Prepare = Box<dyn Fn(&mut Config) + Send + Sync>;

/// Reloads the configuration of a running server, from where it was loaded at start.
pub struct Reloader {
    /// `--config`, as given at start.
    path: Option<PathBuf>,
    /// How it was loaded at start.
    mode: Mode,
    /// Applied to every configuration loaded.
    prepare: Prepare,
    /// The configuration the process started with (what the restart-only keys still are).
    started: Arc<Config>,
    /// The configuration of the last reload applied (what the live keys are now).
    applied: Config,
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied: the live keys that changed, and the other keys that differ from the
    /// running configuration (they need a restart).
    Applied {
        /// Live keys that took a new value.
        changed: Vec<String>,
        /// Keys that differ but keep their running value until a restart.
        needs_restart: Vec<String>,
    },
    /// Refused: the problems, one line each; the running configuration stays.
    Invalid(Vec<String>),
}

impl Reloader {
    /// A reloader for a server started with `started`, loaded from `path` in `mode`.
    pub fn new(path: Option<PathBuf>, mode: Mode, started: Arc<Config>, prepare: Prepare) -> Self {
        let applied = (*started).clone();
        Self {
            path,
            mode,
            prepare,
            started,
            applied,
        }
    }

    /// Loads, validates and applies the configuration to `state`; logs and counts the
    /// outcome.
    pub fn reload(&mut self, state: &AppState) -> Outcome {
        let outcome = match config::load(self.path.as_deref(), self.mode) {
            Err(error) => Outcome::Invalid(error.problems),
            Ok((mut loaded, _)) => {
                (self.prepare)(&mut loaded);
                let quotas_live = state.quotas.is_enabled();
                let running = with_live_keys(&self.started, &loaded, quotas_live);
                let problems = running.problems();
                if !problems.is_empty() {
                    Outcome::Invalid(
                        problems
                            .into_iter()
                            .map(|problem| format!("{problem} (with the running values of the keys that need a restart)"))
                            .collect(),
                    )
                } else {
                    match state.reload(&running) {
                        Err(problem) => Outcome::Invalid(vec![problem]),
                        Ok(()) => {
                            let live = |key: &String| {
                                LIVE_KEYS.contains(&key.as_str())
                                    || (quotas_live && QUOTA_KEYS.contains(&key.as_str()))
                            };
                            let changed = differing_keys(&self.applied, &running);
                            let needs_restart = differing_keys(&self.started, &loaded)
                                .into_iter()
                                .filter(|key| !live(key))
                                .collect();
                            self.applied = running;
                            Outcome::Applied {
                                changed,
                                needs_restart,
                            }
                        }
                    }
                }
            }
        };
        report(&outcome);
        outcome
    }
}

/// The configuration that runs once `loaded` is applied: `started` with the live keys of
/// `loaded` ([`LIVE_KEYS`], and [`QUOTA_KEYS`] when `quotas_live`). The one place that
/// says which values a reload takes; [`AppState::reload`] applies exactly these.
fn with_live_keys(started: &Config, loaded: &Config, quotas_live: bool) -> Config {
    let mut running = started.clone();
    running.orga.api_key = loaded.orga.api_key.clone();
    running.auth.api_keys = loaded.auth.api_keys.clone();
    running.cors = loaded.cors.clone();
    running.rate_limit.take_live_numbers(&loaded.rate_limit);
    if quotas_live {
        running.quota = loaded.quota.clone();
    }
    running
}

fn report(outcome: &Outcome) {
    match outcome {
        Outcome::Invalid(problems) => {
            for problem in problems {
                tracing::error!(%problem, "configuration reload refused: keeping the running configuration");
            }
            metrics::counter!(CONFIG_RELOADS, "outcome" => "invalid").increment(1);
        }
        Outcome::Applied {
            changed,
            needs_restart,
        } => {
            let listed = |keys: &[String]| match keys {
                [] => "none".to_owned(),
                keys => keys.join(", "),
            };
            let (changed, needs_restart) = (listed(changed), listed(needs_restart));
            if needs_restart == "none" {
                tracing::info!(%changed, "configuration reloaded");
            } else {
                tracing::warn!(%changed, %needs_restart, "configuration reloaded; the keys in needs_restart keep their running values until a restart");
            }
            metrics::counter!(CONFIG_RELOADS, "outcome" => "ok").increment(1);
        }
    }
}

/// The keys whose values differ between `a` and `b`, sorted, secrets included (by
/// comparison: no value is ever shown).
fn differing_keys(a: &Config, b: &Config) -> Vec<String> {
    let (a_values, b_values) = (values(a), values(b));
    let mut keys: Vec<String> = a_values
        .keys()
        .chain(b_values.keys())
        .filter(|key| a_values.get(*key) != b_values.get(*key))
        .cloned()
        .collect();
    // Secrets render redacted, so a changed secret looks the same: compare them.
    for (key, differs) in [
        ("orga.api_key", a.orga.api_key != b.orga.api_key),
        ("auth.api_keys", a.auth.api_keys != b.auth.api_keys),
        ("auth.jwt.secret", a.auth.jwt.secret != b.auth.jwt.secret),
        ("redis.url", a.redis.url != b.redis.url),
    ] {
        if differs {
            keys.push(key.to_owned());
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Every key of `config` and its value as `check-config` renders it.
fn values(config: &Config) -> BTreeMap<String, toml::Value> {
    fn flatten(table: toml::Table, prefix: &str, out: &mut BTreeMap<String, toml::Value>) {
        for (key, value) in table {
            let path = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => flatten(inner, &format!("{path}."), out),
                value => {
                    out.insert(path, value);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(table) = toml::from_str(&config.to_redacted_toml()) {
        flatten(table, "", &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AllowedOrigins, ApiKeyList};
    use crate::secret::Secret;

    #[test]
    fn differing_keys_are_named_secrets_included_values_never() {
        let a = Config::default();
        let mut b = Config::default();
        assert!(differing_keys(&a, &b).is_empty());
        b.server.request_timeout = std::time::Duration::from_secs(20);
        b.rate_limit.per_subject.burst = 7;
        b.cors.allowed_origins =
            AllowedOrigins::try_from(vec!["https://app.example.com".to_owned()]).unwrap();
        b.orga.api_key = Secret::new("sk_orga_ai_one");
        assert_eq!(
            differing_keys(&a, &b),
            [
                "cors.allowed_origins",
                "orga.api_key",
                "rate_limit.per_subject.burst",
                "server.request_timeout"
            ]
        );
        // Two different secrets render the same; they still differ.
        let mut c = b.clone();
        c.orga.api_key = Secret::new("sk_orga_ai_two");
        c.auth.api_keys = ApiKeyList::try_from(vec!["web:0123456789abcdef".to_owned()]).unwrap();
        let mut d = c.clone();
        d.auth.api_keys = ApiKeyList::try_from(vec!["web:fedcba9876543210".to_owned()]).unwrap();
        assert_eq!(differing_keys(&b, &c), ["auth.api_keys", "orga.api_key"]);
        assert_eq!(differing_keys(&c, &d), ["auth.api_keys"]);
    }

    #[test]
    fn a_reload_takes_exactly_the_live_keys_and_nothing_else() {
        let started = Config::default();
        let mut loaded = Config::default();
        loaded.orga.api_key = Secret::new("sk_orga_ai_new");
        loaded.auth.api_keys =
            ApiKeyList::try_from(vec!["web:0123456789abcdef".to_owned()]).unwrap();
        loaded.cors.allowed_origins =
            AllowedOrigins::try_from(vec!["https://app.example.com".to_owned()]).unwrap();
        loaded.cors.allow_credentials = true;
        loaded.rate_limit.requests_per_minute = 7;
        loaded.rate_limit.burst = 8;
        loaded.rate_limit.per_subject.requests_per_minute = 9;
        loaded.rate_limit.per_subject.burst = 10;
        loaded.quota.global_per_day = 11;
        // ...and restart-only keys, which must keep their running values.
        loaded.server.request_timeout = std::time::Duration::from_secs(20);
        loaded.rate_limit.enabled = false;
        loaded.auth.mode = crate::config::AuthMode::ApiKey;

        let mut live: Vec<&str> = LIVE_KEYS.to_vec();
        live.sort_unstable();
        assert_eq!(
            differing_keys(&started, &with_live_keys(&started, &loaded, false)),
            live
        );
        live.extend(["quota.global_per_day"]);
        live.sort_unstable();
        assert_eq!(
            differing_keys(&started, &with_live_keys(&started, &loaded, true)),
            live
        );
    }

    #[test]
    fn every_live_key_is_a_key() {
        let keys = values(&Config::default());
        for key in LIVE_KEYS {
            assert!(keys.contains_key(*key), "{key} is not a configuration key");
        }
    }
}
