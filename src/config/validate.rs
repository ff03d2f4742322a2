//! Start-up validation: every problem found, one line each, before anything listens.

use super::Config;
use super::load::problem;
use crate::http::cors::AllowedOrigins;
use std::net::SocketAddr;
use std::time::Duration;

/// Paths the proxy serves itself, which the credentials route must not shadow.
const RESERVED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

pub(super) fn validate(config: &Config, dev: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |key: &str, result: Result<(), String>| {
        if let Err(message) = result {
            problems.push(problem(key, message));
        }
    };

    let server = &config.server;
    check("server.listen", socket_addr(&server.listen));
    check(
        "server.metrics_listen",
        metrics_listen(&server.metrics_listen, &server.listen),
    );
    check(
        "server.concurrency_limit",
        in_range(server.concurrency_limit, 1, 100_000),
    );
    check("server.workers", in_range(server.workers, 0, 1024));
    check(
        "server.credentials_path",
        credentials_path(&server.credentials_path),
    );
    check("server.request_timeout", positive(server.request_timeout));
    check(
        "server.header_read_timeout",
        positive(server.header_read_timeout),
    );
    check("server.shutdown_timeout", positive(server.shutdown_timeout));

    let orga = &config.orga;
    check("orga.base_url", base_url(&orga.base_url));
    check("orga.timeout", positive(orga.timeout));
    check(
        "orga.timeout",
        if orga.timeout >= config.server.request_timeout {
            Err(format!(
                "{} must be shorter than server.request_timeout ({}), or the request deadline always fires first and upstream timeouts never reach the circuit breaker",
                humantime::format_duration(orga.timeout),
                humantime::format_duration(config.server.request_timeout)
            ))
        } else {
            Ok(())
        },
    );
    check(
        "orga.circuit_breaker_threshold",
        in_range(orga.circuit_breaker_threshold as usize, 0, 1_000),
    );
    check(
        "orga.circuit_breaker_cooldown",
        positive(orga.circuit_breaker_cooldown),
    );
    if !dev {
        check(
            "orga.api_key",
            if orga.api_key.is_empty() {
                Err(
                    "required: the Orga API key (or run `orga-proxy dev` for the fake Orga Cloud)"
                        .into(),
                )
            } else {
                Ok(())
            },
        );
        check("orga.user_email", email(&orga.user_email));
    }
    check(
        "orga.api_key",
        if orga
            .api_key
            .expose()
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            Err("contains white space or control characters (not shown: it is a secret)".into())
        } else {
            Ok(())
        },
    );

    check(
        "cors.allowed_origins",
        AllowedOrigins::parse(&config.cors.allowed_origins, config.cors.allow_credentials)
            .map(|_| ()),
    );
    let pool = &config.pool;
    check("pool.size", within(pool.size, 1, 10_000));
    check(
        "pool.refill_concurrency",
        within(pool.refill_concurrency, 1, 64),
    );
    check("pool.max_age", positive(pool.max_age));
    for (key, message) in crate::ratelimit::config::validate(&config.rate_limit) {
        check(key, Err(message));
    }
    for (key, message) in crate::auth::config::validate(&config.auth) {
        check(key, Err(message));
    }
    check(
        "log.level",
        tracing_subscriber::EnvFilter::try_new(&config.log.level)
            .map(|_| ())
            .map_err(|e| format!("invalid filter {:?}: {e}", config.log.level)),
    );
    problems
}

fn socket_addr(value: &str) -> Result<(), String> {
    value
        .parse::<SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("{value:?} is not an IP:port address, e.g. \"0.0.0.0:8080\""))
}

/// `""` (off) or an address whose port differs from the public listener's.
fn metrics_listen(value: &str, listen: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let addr = value.parse::<SocketAddr>().map_err(|_| {
        format!("{value:?} is not an IP:port address, e.g. \"0.0.0.0:9090\", or \"\" to turn metrics off")
    })?;
    let public = listen.parse::<SocketAddr>().ok();
    if addr.port() != 0 && public.is_some_and(|p| p.port() == addr.port()) {
        return Err(format!(
            "{value:?} uses the public listener's port; metrics must never be served on the public port"
        ));
    }
    Ok(())
}

fn in_range(value: usize, min: usize, max: usize) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{value} is out of range; use {min} to {max}"))
    }
}

fn positive(value: Duration) -> Result<(), String> {
    if value.is_zero() {
        Err("must be longer than zero".into())
    } else {
        Ok(())
    }
}

fn within(value: usize, min: usize, max: usize) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{value} is outside {min}..={max}"))
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

fn base_url(value: &str) -> Result<(), String> {
    let url = url::Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{value:?} must be an http or https URL with a host"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "{value:?} must not carry a query, fragment or credentials"
        ));
    }
    if url.scheme() == "http" && !is_local_host(&url) {
        return Err(format!(
            "{value:?} would send the API key unencrypted; use https (plain http is accepted only for localhost, loopback addresses and single-label container hostnames such as http://mock-orga:8081)"
        ));
    }
    Ok(())
}

/// Hosts where plain http cannot cross a network boundary the operator does not own:
/// loopback, and single-label names (a compose or Kubernetes service on the same host
/// network, like the fake Orga Cloud).
fn is_local_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost" || !name.contains('.'),
        None => false,
    }
}

/// A syntactic check that catches typos and placeholders, not full RFC 5322.
pub fn email(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("required: the email of the Orga account the API key belongs to".into());
    }
    let bad = || Err(format!("{value:?} is not an email address"));
    let Some((local, domain)) = value.rsplit_once('@') else {
        return bad();
    };
    let valid_domain = domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if local.is_empty()
        || local.contains('@')
        || value.len() > 254
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
        || !valid_domain
    {
        return bad();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn plain_http_is_refused_for_remote_hosts_because_it_would_expose_the_api_key() {
        assert!(base_url("http://api.orga-ai.com").is_err());
        assert!(base_url("http://10.0.0.5:8081").is_err());
        for local in [
            "http://127.0.0.1:8081",
            "http://[::1]:8081",
            "http://localhost:8081",
            "http://mock-orga:8081",
            "https://api.orga-ai.com",
        ] {
            assert!(base_url(local).is_ok(), "{local}");
        }
    }

    #[test]
    fn emails_with_plus_and_subdomains_are_accepted() {
        assert!(email("dev+team@example.com").is_ok());
        assert!(email("a.b@mail.example.co.uk").is_ok());
    }

    #[test]
    fn placeholder_and_malformed_emails_are_refused() {
        for bad in [
            "",
            "you",
            "you@",
            "@example.com",
            "a@b",
            "a b@example.com",
            "a@-x.com",
        ] {
            assert!(email(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn every_problem_is_reported_with_key_and_env_var() {
        let mut config = Config::default();
        config.server.listen = "nowhere".into();
        config.orga.base_url = "ftp://x".into();
        let problems = validate(&config, false);
        let joined = problems.join("\n");
        assert!(
            joined.contains("server.listen (ORGA_PROXY_SERVER__LISTEN or PORT)"),
            "{joined}"
        );
        assert!(
            joined.contains("orga.base_url (ORGA_PROXY_ORGA__BASE_URL or ORGA_BASE_URL)"),
            "{joined}"
        );
        assert!(
            joined.contains("orga.api_key (ORGA_PROXY_ORGA__API_KEY"),
            "{joined}"
        );
        assert!(
            joined.contains("orga.user_email (ORGA_PROXY_ORGA__USER_EMAIL"),
            "{joined}"
        );
        assert_eq!(problems.len(), 4, "{joined}");
    }

    #[test]
    fn metrics_may_be_off_but_never_on_the_public_port() {
        assert!(metrics_listen("", "0.0.0.0:8080").is_ok());
        assert!(metrics_listen("127.0.0.1:9090", "0.0.0.0:8080").is_ok());
        assert!(metrics_listen("0.0.0.0:8080", "0.0.0.0:8080").is_err());
        assert!(metrics_listen("9090", "0.0.0.0:8080").is_err());
    }

    #[test]
    fn workers_default_to_the_cores_and_an_absurd_count_is_refused() {
        let mut config = Config::default();
        assert!(
            config.server.worker_threads() >= 1,
            "0 resolves to the cores"
        );
        config.server.workers = 3;
        assert_eq!(config.server.worker_threads(), 3);
        assert!(validate(&config, true).is_empty());
        config.server.workers = 5000;
        let problems = validate(&config, true).join("\n");
        assert!(
            problems.contains("server.workers (ORGA_PROXY_SERVER__WORKERS)"),
            "{problems}"
        );
    }

    #[test]
    fn a_zero_concurrency_limit_is_refused_with_its_key() {
        let mut config = Config::default();
        config.server.concurrency_limit = 0;
        let problems = validate(&config, true).join("\n");
        assert!(
            problems.contains("server.concurrency_limit (ORGA_PROXY_SERVER__CONCURRENCY_LIMIT)"),
            "{problems}"
        );
    }

    #[test]
    fn dev_mode_does_not_require_orga_credentials() {
        assert!(validate(&Config::default(), true).is_empty());
    }

    #[test]
    fn a_secret_with_white_space_is_refused_without_being_shown() {
        let mut config = Config::default();
        config.orga.api_key = Secret::new("sk_orga_ai_canary \n");
        config.orga.user_email = "a@example.com".into();
        let problems = validate(&config, false).join("\n");
        assert!(problems.contains("orga.api_key"));
        assert!(!problems.contains("canary"));
    }

    #[test]
    fn the_credentials_path_cannot_shadow_health_routes() {
        assert!(credentials_path("/healthz").is_err());
        assert!(credentials_path("/api/{x}").is_err());
        assert!(credentials_path("api").is_err());
        assert!(credentials_path("/api/orga/credentials").is_ok());
    }
}
