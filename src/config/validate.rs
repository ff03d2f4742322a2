//! Start-up validation after the sections are parsed: ranges, requirements and the
//! rules that involve several keys. Every problem found, one line each, before anything
//! listens.

use super::Config;
use super::auth::AuthMode;
use super::cors::AllowedOrigins;
use super::load::problem;
use super::rate_limit::Backend;
use std::fmt::Display;
use std::time::Duration;

/// The problems found so far, each already formatted as `key (ENV_VAR): message`.
#[derive(Debug, Default)]
pub struct Problems(pub(super) Vec<String>);

impl Problems {
    /// Records a problem with `key`.
    pub fn add(&mut self, key: &str, message: impl Display) {
        self.0.push(problem(key, message));
    }

    /// Records the problem `result` describes, if any.
    pub fn check(&mut self, key: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.add(key, message);
        }
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `value` within `min..=max`.
pub fn within<T: PartialOrd + Display>(value: T, min: T, max: T) -> Result<(), String> {
    if value < min || value > max {
        Err(format!("{value} is out of range: use {min} to {max}"))
    } else {
        Ok(())
    }
}

/// A duration within `min..=max`, both written the way the key is.
pub fn duration_within(value: Duration, min: Duration, max: Duration) -> Result<(), String> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if value < min || value > max {
        Err(format!(
            "{} is out of range: use {} to {}",
            show(value),
            show(min),
            show(max)
        ))
    } else {
        Ok(())
    }
}

/// The rules across sections, after each section checked its own keys.
pub(super) fn across_sections(config: &Config, problems: &mut Problems) {
    let (server, orga) = (&config.server, &config.orga);
    if orga.timeout >= server.request_timeout {
        problems.add(
            "orga.timeout",
            format!(
                "{} must be shorter than server.request_timeout ({}), or the request deadline always fires first and upstream timeouts never reach the circuit breaker",
                humantime::format_duration(orga.timeout),
                humantime::format_duration(server.request_timeout)
            ),
        );
    }
    if let Some(metrics) = server.metrics_listen {
        if metrics.port() != 0 && metrics.port() == server.listen.port() {
            problems.add(
                "server.metrics_listen",
                format!(
                    "{metrics} uses the public listener's port; metrics must never be served on the public port"
                ),
            );
        }
    }
    let rate_limit = &config.rate_limit;
    if rate_limit.enabled && rate_limit.backend == Backend::Redis && config.redis.url.is_none() {
        problems.add(
            "redis.url",
            "required with rate_limit.backend = \"redis\", e.g. \"redis://redis:6379/0\"",
        );
    }
    quota_and_audit(config, problems);
    if rate_limit.enabled
        && rate_limit.per_subject.enabled
        && config.auth.mode == super::auth::AuthMode::None
    {
        problems.add(
            "rate_limit.per_subject.enabled",
            "needs a subject, but auth.mode is \"none\": the limit would never apply; set auth.mode or turn the per-subject limit off",
        );
    }
    let origins: &AllowedOrigins = &config.cors.allowed_origins;
    if origins.allows_any() && config.cors.allow_credentials {
        problems.add(
            "cors.allowed_origins",
            "\"*\" cannot be combined with cors.allow_credentials = true; list the origins",
        );
    }
    if origins.allows_any() && config.auth.jwt.cookie.is_some() {
        problems.add(
            "cors.allowed_origins",
            "\"*\" cannot be combined with auth.jwt.cookie: a cookie token would then be accepted from any site; list the origins",
        );
    }
}

/// A per-subject quota needs a subject, and JWT claims need JWTs.
fn quota_and_audit(config: &Config, problems: &mut Problems) {
    let mode = config.auth.mode;
    if config.quota.per_subject_per_day > 0 && mode == AuthMode::None {
        problems.add(
            "quota.per_subject_per_day",
            "needs an authenticated subject, but auth.mode is \"none\": set auth.mode, or use quota.per_client_per_day",
        );
    }
    if !config.audit.claims.is_empty() && mode != AuthMode::Jwt {
        problems.add(
            "audit.claims",
            "copies JWT claims into audit records, but auth.mode is not \"jwt\"; remove the claims or set auth.mode = \"jwt\"",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_quota_without_auth_and_claims_without_jwt_are_refused_by_name() {
        let mut config = Config::default();
        config.quota.per_subject_per_day = 10;
        config.audit.claims = vec!["org_id".into()];
        let problems = config.problems().join("\n");
        assert!(
            problems.contains("quota.per_subject_per_day (ORGA_PROXY_QUOTA__PER_SUBJECT_PER_DAY): needs an authenticated subject"),
            "{problems}"
        );
        assert!(
            problems.contains("audit.claims (ORGA_PROXY_AUDIT__CLAIMS)"),
            "{problems}"
        );
        config.auth.mode = AuthMode::ApiKey;
        config.auth.api_keys = vec!["k".repeat(32)].try_into().unwrap();
        let problems = config.problems().join("\n");
        assert!(
            !problems.contains("quota.per_subject_per_day"),
            "{problems}"
        );
        assert!(problems.contains("audit.claims"), "{problems}");
    }

    #[test]
    fn ranges_name_their_bounds() {
        assert!(within(5, 1, 10).is_ok());
        assert_eq!(
            within(0, 1, 10).unwrap_err(),
            "0 is out of range: use 1 to 10"
        );
        let err = duration_within(
            Duration::from_secs(600),
            Duration::from_secs(1),
            Duration::from_secs(300),
        )
        .unwrap_err();
        assert_eq!(err, "10m is out of range: use 1s to 5m");
    }
}
