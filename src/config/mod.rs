//! The typed configuration: built-in defaults, then a TOML file, then environment
//! variables (see [`load`]), validated once at start-up (see [`validate`]).

mod env;
mod load;
pub(crate) mod parse;
mod secret;
mod validate;

pub use load::{ConfigError, ConfigSource, load, load_lenient};
pub use parse::duration::parse as parse_duration;
pub use secret::Secret;
pub use validate::email as validate_email;

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The whole configuration. Every key has a default, so an empty file is valid
/// in dev mode; `orga.api_key` and `orga.user_email` are required otherwise.
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
    pub rate_limit: crate::ratelimit::RateLimitConfig,
    /// Who may call the credentials route.
    pub auth: crate::auth::AuthConfig,
    /// Log output.
    pub log: LogConfig,
    /// The opt-in prefetch pool.
    pub pool: PoolConfig,
}

/// `[server]`: the public listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the public listener binds, `host:port`. `PORT` overrides only the port.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub listen: String,
    /// Address of the separate Prometheus `/metrics` listener, `host:port`; `""` turns
    /// it off. Never served on the public listener.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub metrics_listen: String,
    /// Path of the credentials route (GET and POST).
    #[serde(deserialize_with = "parse::lenient_string")]
    pub credentials_path: String,
    /// Deadline for a whole request, both upstream calls included; past it the
    /// client gets 504 `upstream_timeout`.
    #[serde(with = "parse::duration")]
    pub request_timeout: Duration,
    /// How long a connection may take to send a request's headers, and how long an
    /// idle keep-alive connection is kept; past it the connection is closed, so slow or
    /// silent clients cannot pile up connections.
    #[serde(with = "parse::duration")]
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM/Ctrl-C before
    /// the process exits anyway. Below Docker's 10 s stop timeout.
    #[serde(with = "parse::duration")]
    pub shutdown_timeout: Duration,
    /// Credentials requests handled at once; past it new ones are refused at once with
    /// 503 `unavailable` and `Retry-After` instead of queueing.
    pub concurrency_limit: usize,
    /// Threads serving connections, each with its own single-threaded runtime and
    /// upstream connection pool; `0` means one per CPU core available to the process.
    pub workers: usize,
}

impl ServerConfig {
    /// `workers`, with `0` resolved to the cores available (cgroup quotas included).
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            metrics_listen: "0.0.0.0:9090".into(),
            credentials_path: "/api/orga/credentials".into(),
            request_timeout: Duration::from_secs(15),
            header_read_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(8),
            concurrency_limit: 1024,
            workers: 0,
        }
    }
}

/// `[orga]`: the upstream account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrgaConfig {
    /// Orga Cloud API root; the client appends `/v1/realtime/...`.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub base_url: String,
    /// The long-lived Orga API key; sent only as the Bearer of the client-secrets call.
    pub api_key: Secret,
    /// The Orga account email sent as the `email` query parameter.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub user_email: String,
    /// Total deadline of each upstream call (connecting included).
    #[serde(with = "parse::duration")]
    pub timeout: Duration,
    /// Consecutive failed credential requests (Orga unreachable, timing out, 5xx, 429 or
    /// malformed) that open the circuit breaker; `0` turns the breaker off.
    pub circuit_breaker_threshold: u32,
    /// How long an open circuit answers 503 without calling Orga before one probe
    /// request is let through.
    #[serde(with = "parse::duration")]
    pub circuit_breaker_cooldown: Duration,
}

impl Default for OrgaConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.orga-ai.com".into(),
            api_key: Secret::default(),
            user_email: String::new(),
            timeout: Duration::from_secs(10),
            circuit_breaker_threshold: 5,
            circuit_breaker_cooldown: Duration::from_secs(10),
        }
    }
}

/// `[cors]`: browser access. CORS is a browser policy, not authentication.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`scheme://host[:port]`) allowed to read responses. An entry may
    /// use `*` as its port (`http://localhost:*`), and `"*"` alone allows every origin;
    /// there is no prefix, suffix or regex matching.
    #[serde(deserialize_with = "parse::string_list")]
    pub allowed_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` so browsers may attach cookies.
    /// Refused together with the `"*"` wildcard.
    pub allow_credentials: bool,
}

/// `[pool]`: credentials minted ahead of demand (off by default). Each is handed out
/// once; the cost is tokens minted and never used (see the README).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Turn the pool on.
    pub enabled: bool,
    /// How many credentials to keep ready.
    pub size: usize,
    /// Credentials older than this are discarded, never handed out; keep it well under
    /// the token lifetime so a client has time to open its call.
    #[serde(with = "parse::duration")]
    pub max_age: Duration,
    /// Upstream mints the refill task runs at once, at most.
    pub refill_concurrency: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            size: 8,
            max_age: Duration::from_secs(30),
            refill_concurrency: 2,
        }
    }
}

/// `[log]`: log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `json` (one object per line) or `text`.
    pub format: LogFormat,
    /// Default filter, e.g. `info` or `orga_proxy=debug,info`; `RUST_LOG` wins when set.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

impl Config {
    /// Renders the configuration as TOML with every secret redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
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
        assert_eq!(documented, defaults, "each documented value is the default");
    }
}
