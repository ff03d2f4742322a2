//! The typed configuration: built-in defaults, then a TOML file, then environment
//! variables (see [`load`]). Each section parses its text into typed values once
//! (addresses, URLs, origins, networks, durations), then [`validate`] checks ranges
//! and the rules across keys, so no other module parses a configured string.
//!
//! The sections live one per file; `config` depends on no feature module, and the
//! features read their section from here.

mod auth;
mod cors;
mod env;
mod load;
mod orga;
pub mod parse;
mod pool;
mod quota;
mod rate_limit;
mod redis;
mod relay;
mod server;
mod validate;

pub use auth::{
    Algorithms, ApiKeyEntry, ApiKeyList, AuthConfig, AuthMode, CookieName, JwksUrl, JwtConfig,
    algorithm_name,
};
pub use cors::{AllowedOrigins, CorsConfig};
pub use load::{ConfigError, ConfigSource, Mode, load, load_lenient};
pub use orga::{BaseUrl, Email, OrgaConfig};
pub use parse::duration::parse as parse_duration;
pub use pool::{PoolConfig, PoolSize};
pub use quota::{AuditConfig, AuditSink, QuotaConfig};
pub use rate_limit::{Backend, PerSubjectConfig, RateLimitConfig, RedisFailure, TrustedProxies};
pub use redis::{CaFile, RedisConfig, RedisUrl};
pub use relay::{
    Instructions, InstructionsFile, Modalities, Modality, OnViolation, PolicyConfig, RelayConfig,
    TemperatureRange,
};
pub use server::{LogConfig, LogFormat, ServerConfig};

use serde::{Deserialize, Serialize};
use validate::Problems;

/// The whole configuration. Every key has a default, so an empty file is valid
/// in dev mode; `orga.api_key` is required otherwise.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The public listener and request handling.
    pub server: ServerConfig,
    /// The upstream Orga Cloud account and client.
    pub orga: OrgaConfig,
    /// Which browser origins may read the credentials.
    pub cors: CorsConfig,
    /// Per-client (and optional per-subject) limits on the credentials route.
    pub rate_limit: RateLimitConfig,
    /// Who may call the credentials route.
    pub auth: AuthConfig,
    /// The Redis replicas share state through, if any.
    pub redis: RedisConfig,
    /// The opt-in prefetch pool.
    pub pool: PoolConfig,
    /// The opt-in relay of the SDK's call start, and its session policy.
    pub relay: RelayConfig,
    /// Credentials per UTC day.
    pub quota: QuotaConfig,
    /// The record of every credential issued.
    pub audit: AuditConfig,
    /// Log output.
    pub log: LogConfig,
}

impl Config {
    /// Renders the configuration as TOML with every secret redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Every problem with the parsed values, one line each (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Problems::default();
        self.server.check(&mut problems);
        self.orga.check(&mut problems);
        self.rate_limit.check(&mut problems);
        self.auth.check(&mut problems);
        self.redis.check(&mut problems);
        self.pool.check(&mut problems);
        self.relay.check(&mut problems);
        self.quota.check(&mut problems);
        self.audit.check(&mut problems);
        self.log.check(&mut problems);
        validate::across_sections(self, &mut problems);
        problems.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENTED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/orga-proxy.toml"
    ));

    fn keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => keys(inner, &format!("{path}."), out),
                _ => out.push(path),
            }
        }
    }

    #[test]
    fn the_documented_config_file_lists_every_key_with_its_default() {
        let documented: toml::Table =
            toml::from_str(DOCUMENTED).expect("config/orga-proxy.toml parses");
        let defaults: toml::Table = toml::from_str(&Config::default().to_redacted_toml()).unwrap();
        let (mut documented_keys, mut default_keys) = (Vec::new(), Vec::new());
        keys(&documented, "", &mut documented_keys);
        keys(&defaults, "", &mut default_keys);
        documented_keys.sort();
        default_keys.sort();
        assert_eq!(
            documented_keys, default_keys,
            "every key documented, no stale key"
        );
        // Compared as parsed values, so "24h" in the file equals the default's "1day".
        let parsed: Config = toml::from_str(DOCUMENTED).expect("config/orga-proxy.toml is valid");
        assert_eq!(
            parsed.to_redacted_toml(),
            Config::default().to_redacted_toml(),
            "each documented value is the default"
        );
    }

    #[test]
    fn the_defaults_are_valid_and_read_back_as_themselves() {
        assert!(Config::default().problems().is_empty());
        let text = Config::default().to_redacted_toml();
        let back: Config = toml::from_str(&text).expect("the rendered defaults parse");
        assert_eq!(back.to_redacted_toml(), text);
    }

    #[test]
    fn cross_section_rules_name_their_keys() {
        let mut config = Config::default();
        config.orga.timeout = config.server.request_timeout;
        config.server.metrics_listen = Some(config.server.listen);
        config.cors.allowed_origins = AllowedOrigins::try_from(vec!["*".to_owned()]).unwrap();
        config.auth.jwt.cookie = Some("session".parse().unwrap());
        let problems = config.problems().join("\n");
        assert!(
            problems.contains("orga.timeout (ORGA_PROXY_ORGA__TIMEOUT)"),
            "{problems}"
        );
        assert!(problems.contains("server.metrics_listen"), "{problems}");
        assert!(
            problems.contains("cannot be combined with auth.jwt.cookie"),
            "{problems}"
        );
    }
}
