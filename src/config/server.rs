//! `[server]` and `[log]`: the listeners, request handling, shutdown, and log output.

use super::parse;
use super::validate::{Problems, duration_within, within};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// Paths the proxy serves itself, which the credentials route must not shadow.
const RESERVED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/v1/realtime/calls"];

/// `[server]`: the public listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the public listener binds. `PORT` replaces only the port.
    #[serde(with = "parse::text")]
    pub listen: SocketAddr,
    /// Address of the separate Prometheus `/metrics` listener; `""` (`None`) turns it
    /// off. Never served on the public listener.
    #[serde(with = "parse::optional_text")]
    pub metrics_listen: Option<SocketAddr>,
    /// Path of the credentials route (GET and POST).
    #[serde(deserialize_with = "parse::lenient_string")]
    pub credentials_path: String,
    /// Deadline for a whole request, upstream calls included; past it the client gets
    /// 504 `upstream_timeout`.
    #[serde(with = "parse::duration")]
    pub request_timeout: Duration,
    /// How long a connection may take to send a request's headers, and how long an
    /// idle connection is kept; past it the connection is closed, so slow or silent
    /// clients cannot pile up connections.
    #[serde(with = "parse::duration")]
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish once draining starts before they
    /// are answered 503 and the process exits. Below Docker's 10 s stop timeout.
    #[serde(with = "parse::duration")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long `/readyz` answers 503 while new requests are still served,
    /// so a load balancer stops routing here before the listener closes.
    #[serde(with = "parse::duration")]
    pub shutdown_delay: Duration,
    /// Also serve HTTP/2 with prior knowledge (h2c), for load balancers that speak it
    /// to their backends. Off: the public port speaks HTTP/1.1 only.
    pub http2: bool,
    /// Requests to the credentials (and relay) routes handled at once; past it new ones
    /// are refused at once with 503 `unavailable` and `Retry-After` instead of queueing.
    pub concurrency_limit: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            metrics_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            credentials_path: "/api/orga/credentials".into(),
            request_timeout: Duration::from_secs(15),
            header_read_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(8),
            shutdown_delay: Duration::ZERO,
            http2: false,
            concurrency_limit: 1024,
        }
    }
}

impl ServerConfig {
    pub(super) fn check(&self, problems: &mut Problems) {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        problems.check(
            "server.credentials_path",
            credentials_path(&self.credentials_path),
        );
        problems.check(
            "server.request_timeout",
            duration_within(self.request_timeout, ms(100), s(300)),
        );
        problems.check(
            "server.header_read_timeout",
            duration_within(self.header_read_timeout, ms(100), s(300)),
        );
        problems.check(
            "server.shutdown_timeout",
            duration_within(self.shutdown_timeout, ms(100), s(600)),
        );
        problems.check(
            "server.shutdown_delay",
            duration_within(self.shutdown_delay, Duration::ZERO, s(300)),
        );
        problems.check(
            "server.concurrency_limit",
            within(self.concurrency_limit, 1, 100_000),
        );
    }
}

fn credentials_path(path: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-._~".contains(c);
    if !path.starts_with('/') || path.len() < 2 || !path.chars().all(plain) {
        return Err(format!(
            "{path:?} must be an absolute path of letters, digits and / - . _ ~, e.g. \"/api/orga/credentials\""
        ));
    }
    if path.contains("//") || path.ends_with('/') {
        return Err(format!(
            "{path:?} must not contain empty segments or end with /"
        ));
    }
    if RESERVED_PATHS.contains(&path) {
        return Err(format!(
            "{path:?} is reserved for the proxy's own endpoints"
        ));
    }
    Ok(())
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

impl LogConfig {
    pub(super) fn check(&self, problems: &mut Problems) {
        problems.check(
            "log.level",
            tracing_subscriber::EnvFilter::try_new(&self.level)
                .map(|_| ())
                .map_err(|e| format!("invalid filter {:?}: {e}", self.level)),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credentials_path_cannot_shadow_the_proxys_own_routes() {
        assert!(credentials_path("/healthz").is_err());
        assert!(credentials_path("/v1/realtime/calls").is_err());
        assert!(credentials_path("/api/{x}").is_err());
        assert!(credentials_path("api").is_err());
        assert!(credentials_path("/api/orga/credentials").is_ok());
    }

    #[test]
    fn durations_past_their_bounds_are_refused_with_their_key() {
        let mut problems = Problems::default();
        let config = ServerConfig {
            request_timeout: Duration::from_secs(86_400),
            header_read_timeout: Duration::ZERO,
            ..ServerConfig::default()
        };
        config.check(&mut problems);
        let text = problems.0.join("\n");
        assert!(text.contains("server.request_timeout"), "{text}");
        assert!(text.contains("server.header_read_timeout"), "{text}");
        assert_eq!(problems.0.len(), 2, "{text}");
    }
}
