//! Signals on the binary: SIGHUP reloads what can change live (a rotated key file, the
//! allowed origins...) and keeps the running configuration when the new one is invalid;
//! SIGUSR1 and SIGUSR2 are ignored; SIGQUIT drains like SIGTERM. In process: what
//! `AppState::reload` changes (API keys, origins, rate-limit numbers).

use crate::binary::{Proxy, command, serving_test_config_against};
use crate::gated_upstream::{GatedUpstream, binary_against, hold_a_request_to};
use crate::helpers::*;
use orga_proxy::config::RateLimitConfig;
use orga_proxy::orga::mock::MockOptions;
use orga_proxy::secret::Secret;
use std::path::{Path, PathBuf};

const OLD_KEY: &str = "sk_orga_ai_old_canary_key";
const NEW_KEY: &str = "sk_orga_ai_new_canary_key";

/// A fresh directory for one test's files.
fn scratch() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "orga-proxy-reload-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces `path` in one step, as a Kubernetes Secret volume (or an editor) does.
fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// The value of one sample on the proxy's `/metrics`.
pub(crate) async fn sample(proxy: &Proxy, series: &str) -> Option<f64> {
    let addr = proxy.metrics_addr.as_ref().expect("metrics listener on");
    let body = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

const RELOADS_OK: &str = r#"orga_proxy_config_reloads_total{outcome="ok"}"#;
const RELOADS_INVALID: &str = r#"orga_proxy_config_reloads_total{outcome="invalid"}"#;

/// Runs a blocking step of the binary's harness off the runtime.
async fn blocking<T: Send + 'static>(step: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(step).await.unwrap()
}

#[tokio::test]
async fn sighup_after_the_key_file_is_rotated_uses_the_new_key_without_a_restart() {
    let upstream = spawn_mock_upstream(MockOptions {
        api_key: Some(Secret::new(NEW_KEY)),
        ..MockOptions::default()
    })
    .await;
    let key_file = scratch().join("orga-api-key");
    std::fs::write(&key_file, format!("{OLD_KEY}\n")).unwrap();
    let mut proxy = Proxy::start(
        command(&["serve"])
            .env("ORGA_API_KEY_FILE", &key_file)
            .env("ORGA_USER_EMAIL", TEST_EMAIL)
            .env("ORGA_BASE_URL", &upstream)
            .env("ORGA_PROXY_SERVER__LISTEN", "127.0.0.1:0"),
    );
    let url = proxy.credentials_url();
    let before = client().get(&url).send().await.unwrap();
    assert_eq!(before.status(), 502, "Orga refuses the old key");
    assert_eq!(error_code(before).await, "upstream_auth_failed");

    replace(&key_file, &format!("{NEW_KEY}\n"));
    proxy.signal("HUP");
    let logs = proxy.wait_for_log("configuration reloaded", 1);
    assert!(
        logs.contains("orga.api_key"),
        "the change is named:\n{logs}"
    );

    let after = client().get(&url).send().await.unwrap();
    assert_eq!(after.status(), 200, "the new key is used");
    assert!(proxy.is_running());
    assert_eq!(sample(&proxy, RELOADS_OK).await, Some(1.0));
    let (status, logs) = blocking(move || proxy.stop()).await;
    assert_eq!(status, Some(0), "{logs}");
    for key in [OLD_KEY, NEW_KEY] {
        assert!(!logs.contains(key), "a key reached the logs:\n{logs}");
    }
}

/// `[cors]` allowing `origin`, and a request timeout, as a config file.
fn config_file(origins: &str, request_timeout: &str) -> String {
    format!(
        "[server]\nrequest_timeout = \"{request_timeout}\"\n\n[cors]\nallowed_origins = [{origins}]\n"
    )
}

async fn allows(proxy: &Proxy, origin: &str) -> bool {
    let response = client()
        .get(proxy.credentials_url())
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get("access-control-allow-origin")
        .is_some_and(|allowed| allowed == origin)
}

#[tokio::test]
async fn an_invalid_configuration_on_sighup_is_refused_and_the_running_one_kept() {
    const OLD: &str = "https://old.example";
    const NEW: &str = "https://new.example";
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    let file = scratch().join("orga-proxy.toml");
    std::fs::write(&file, config_file(&format!("{OLD:?}"), "15s")).unwrap();
    let mut proxy = Proxy::start(
        serving_test_config_against(&upstream).args(["--config", file.to_str().unwrap()]),
    );
    assert!(allows(&proxy, OLD).await);

    replace(
        &file,
        &config_file("\"https://*.example\"", "not a duration"),
    );
    proxy.signal("HUP");
    let logs = proxy.wait_for_log("configuration reload refused", 2);
    for key in ["cors.allowed_origins", "server.request_timeout"] {
        assert!(logs.contains(key), "{key} is named:\n{logs}");
    }
    assert!(proxy.is_running(), "an invalid reload is not fatal");
    assert!(allows(&proxy, OLD).await, "the running origins are kept");
    assert_eq!(sample(&proxy, RELOADS_INVALID).await, Some(1.0));

    replace(&file, &config_file(&format!("{NEW:?}"), "20s"));
    proxy.signal("HUP");
    let logs = proxy.wait_for_log("configuration reloaded", 1);
    let line = logs
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["changed"], "cors.allowed_origins", "{line}");
    assert_eq!(line["needs_restart"], "server.request_timeout", "{line}");
    assert!(
        allows(&proxy, NEW).await,
        "the new origin is allowed at once"
    );
    assert!(!allows(&proxy, OLD).await, "and the old one no longer");
    assert_eq!(sample(&proxy, RELOADS_OK).await, Some(1.0));
    let (status, logs) = blocking(move || proxy.stop()).await;
    assert_eq!(status, Some(0), "{logs}");
}

#[tokio::test]
async fn sigusr1_and_sigusr2_are_ignored_and_sigquit_drains_like_sigterm() {
    let upstream = GatedUpstream::start().await;
    let mut proxy = binary_against(&upstream);
    proxy.signal("USR1");
    proxy.wait_for_log("SIGUSR1 ignored", 1);
    proxy.signal("USR2");
    proxy.wait_for_log("SIGUSR2 ignored", 1);
    let health = format!("http://{}/healthz", proxy.addr);
    assert_eq!(client().get(&health).send().await.unwrap().status(), 200);
    assert!(proxy.is_running());

    let in_flight = hold_a_request_to(proxy.credentials_url(), &upstream).await;
    proxy.signal("QUIT");
    proxy.wait_for_log("draining in-flight requests", 1);
    assert!(proxy.is_running(), "the request in flight is waited for");
    upstream.release(1);
    let answered = in_flight.await.unwrap().expect("answered, not cut");
    assert_eq!(answered.status(), 200);
    let (status, logs) = blocking(move || proxy.wait()).await;
    assert_eq!(status, Some(0), "{logs}");
    assert!(logs.contains(r#""signal":"SIGQUIT""#), "{logs}");
}

#[tokio::test]
async fn a_reload_swaps_api_keys_origins_and_rate_limit_numbers_in_the_running_app() {
    const OLD: &str = "https://old.example";
    const NEW: &str = "https://new.example";
    let app = spawn_app_with(|c| {
        c.auth.mode = orga_proxy::config::AuthMode::ApiKey;
        c.auth.api_keys = api_keys(&["web:old-key-0123456789abcdef"]);
        c.cors.allowed_origins = origins(&[OLD]);
        c.rate_limit = RateLimitConfig {
            burst: 1,
            requests_per_minute: 1,
            ..RateLimitConfig::default()
        };
    })
    .await;
    let get = |key: &'static str, origin: &'static str| {
        app.client
            .get(app.url(&app.credentials_path))
            .bearer_auth(key)
            .header("origin", origin)
            .send()
    };
    let first = get("old-key-0123456789abcdef", OLD).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["access-control-allow-origin"], OLD);
    let spent = get("old-key-0123456789abcdef", OLD).await.unwrap();
    assert_eq!(spent.status(), 429, "a burst of 1");

    let mut next = (*app.state.config).clone();
    next.auth.api_keys = api_keys(&["web:new-key-0123456789abcdef"]);
    next.cors.allowed_origins = origins(&[NEW]);
    next.rate_limit.burst = 3;
    app.state.reload(&next).unwrap();

    let old_key = get("old-key-0123456789abcdef", NEW).await.unwrap();
    assert_eq!(old_key.status(), 401, "the old key is gone");
    let new_key = get("new-key-0123456789abcdef", NEW).await.unwrap();
    assert_eq!(new_key.status(), 200, "a fresh budget, and the new key");
    assert_eq!(new_key.headers()["access-control-allow-origin"], NEW);
    assert_eq!(new_key.headers()["ratelimit-limit"], "3");
    let old_origin = get("new-key-0123456789abcdef", OLD).await.unwrap();
    assert!(
        !old_origin
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test]
async fn a_reload_changes_the_daily_quota_keeping_todays_count() {
    let app = spawn_app_with(|c| c.quota.global_per_day = 1).await;
    assert_eq!(app.get_credentials().await.status(), 200);
    let spent = app.get_credentials().await;
    assert_eq!(spent.status(), 429);
    assert_eq!(error_code(spent).await, "quota_exceeded");

    let mut next = (*app.state.config).clone();
    next.quota.global_per_day = 2;
    app.state.reload(&next).unwrap();
    assert_eq!(
        app.get_credentials().await.status(),
        200,
        "one more today: the count of 1 is kept"
    );
    assert_eq!(app.get_credentials().await.status(), 429);
}

#[tokio::test]
async fn a_reload_is_refused_when_its_live_keys_and_the_running_rest_would_not_start_together() {
    use orga_proxy::config::{AuthMode, Mode};
    use orga_proxy::reload::{Outcome, Reloader};
    const SECRET: &str = "reload-test-shared-secret-0123456789abcdef";
    let app = spawn_app_with(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt.secret = Secret::new(SECRET);
        c.auth.jwt.cookie = Some("session".parse().unwrap());
        c.cors.allowed_origins = origins(&["https://app.example"]);
    })
    .await;
    // Valid on its own, having no cookie. But the cookie needs a restart, so what would
    // run is "*" origins beside the running cookie: a cookie token from any site.
    let file = scratch().join("orga-proxy.toml");
    std::fs::write(
        &file,
        format!(
            "[auth]\nmode = \"jwt\"\n\n[auth.jwt]\nsecret = \"{SECRET}\"\n\n[cors]\nallowed_origins = [\"*\"]\n"
        ),
    )
    .unwrap();
    let mut reloader = Reloader::new(
        Some(file),
        Mode::Dev,
        app.state.config.clone(),
        Box::new(|_| {}),
    );
    let Outcome::Invalid(problems) = reloader.reload(&app.state) else {
        panic!("the reload was applied");
    };
    assert!(
        problems.iter().any(|p| p.contains("auth.jwt.cookie")),
        "{problems:?}"
    );
    assert!(
        !app.state.cors.load().allowed_origins.allows_any(),
        "the running origins are kept"
    );
}
