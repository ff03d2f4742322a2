//! The Redis backend against a real `redis-server` that each test starts on a free
//! 127.0.0.1 port and kills when it ends. Without `redis-server` the tests print a
//! loud SKIPPED line, except in CI (`CI=true`), where they fail.

use crate::helpers::{TestApp, error_code, spawn_app_with};
use crate::redis_server::{RedisServer, free_port, redis_server_binary};
use orga_proxy::config::{Backend, Config, RedisFailure};
use std::time::{Duration, Instant};

pub(crate) fn redis_backend(url: &str, failure: RedisFailure) -> impl FnOnce(&mut Config) {
    let url = url.to_owned();
    move |config| {
        config.redis.url = Some(url.parse().expect("a redis:// URL"));
        let limit = &mut config.rate_limit;
        limit.enabled = true;
        limit.backend = Backend::Redis;
        limit.redis_failure = failure;
        // One request back a minute: nothing refills while a test runs.
        limit.requests_per_minute = 1;
        limit.burst = 4;
    }
}

pub(crate) async fn ready(app: &TestApp) -> (u16, serde_json::Value) {
    let response = app.get("/readyz").await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Polls `/readyz` until it answers `want` (the pinger runs every second while
/// Redis fails), for at most 15 s.
pub(crate) async fn wait_for_readiness(app: &TestApp, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = ready(app).await;
        if status == want {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn remaining(response: &reqwest::Response) -> &str {
    response.headers()["ratelimit-remaining"].to_str().unwrap()
}

#[tokio::test]
async fn two_proxy_instances_share_one_budget() {
    let Some(redis) = RedisServer::start("two_proxy_instances_share_one_budget") else {
        return;
    };
    let a = spawn_app_with(redis_backend(&redis.url(), RedisFailure::Closed)).await;
    let b = spawn_app_with(redis_backend(&redis.url(), RedisFailure::Closed)).await;
    wait_for_readiness(&a, 200).await;
    wait_for_readiness(&b, 200).await;
    for (app, left) in [(&a, "3"), (&b, "2"), (&a, "1"), (&b, "0")] {
        let response = app.get_credentials().await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-limit"], "4");
        assert_eq!(remaining(&response), left);
    }
    for app in [&a, &b] {
        let refused = app.get_credentials().await;
        assert_eq!(refused.status(), 429);
        let retry_after: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        let reset: u64 = refused.headers()["ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((retry_after..=240).contains(&reset), "{reset}");
        assert_eq!(error_code(refused).await, "rate_limited");
    }
}

#[tokio::test]
async fn budgets_in_redis_expire_once_they_are_full_again() {
    let Some(redis) = RedisServer::start("budgets_in_redis_expire_once_they_are_full_again") else {
        return;
    };
    let app = spawn_app_with(redis_backend(&redis.url(), RedisFailure::Closed)).await;
    wait_for_readiness(&app, 200).await;
    assert_eq!(app.get_credentials().await.status(), 200);
    let keys = redis.keys_with_ttl().await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (key, ttl_ms) = &keys[0];
    assert_eq!(key, "orga-proxy:rl:ip:127.0.0.1");
    // One request spent at 1/min: full again within a minute.
    assert!((1..=60_000).contains(ttl_ms), "{ttl_ms}");
}

#[tokio::test]
async fn fail_closed_answers_503_and_readiness_follows_redis() {
    let Some(binary) = redis_server_binary("fail_closed_answers_503_and_readiness_follows_redis")
    else {
        return;
    };
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let app = spawn_app_with(redis_backend(&url, RedisFailure::Closed)).await;
    let (status, body) = ready(&app).await;
    assert_eq!(status, 503);
    assert_eq!(body["reasons"], serde_json::json!(["redis"]));
    let refused = app.get_credentials().await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(error_code(refused).await, "unavailable");

    let redis = RedisServer::start_on(&binary, port);
    wait_for_readiness(&app, 200).await;
    let response = app.get_credentials().await;
    assert_eq!(response.status(), 200);
    assert_eq!(remaining(&response), "3");

    drop(redis);
    wait_for_readiness(&app, 503).await;
    assert_eq!(app.get_credentials().await.status(), 503);
}

#[tokio::test]
async fn with_the_local_fallback_each_replica_still_limits_while_redis_is_down() {
    let Some(_) = redis_server_binary(
        "with_the_local_fallback_each_replica_still_limits_while_redis_is_down",
    ) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let app = spawn_app_with(redis_backend(&url, RedisFailure::Local)).await;
    for left in ["3", "2", "1", "0"] {
        let response = app.get_credentials().await;
        assert_eq!(response.status(), 200);
        assert_eq!(remaining(&response), left);
    }
    assert_eq!(app.get_credentials().await.status(), 429);
    // Never connected: a wrong redis_url keeps a new replica out of the load balancer.
    assert_eq!(ready(&app).await.0, 503);
}

#[tokio::test]
async fn failing_open_admits_without_headers_while_redis_is_down() {
    let Some(_) = redis_server_binary("failing_open_admits_without_headers_while_redis_is_down")
    else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let app = spawn_app_with(redis_backend(&url, RedisFailure::Open)).await;
    for _ in 0..6 {
        let response = app.get_credentials().await;
        assert_eq!(response.status(), 200);
        assert!(!response.headers().contains_key("ratelimit-limit"));
    }
}

#[tokio::test]
async fn the_redis_url_password_never_reaches_debug_output_or_check_config() {
    let mut config = Config::default();
    redis_backend(
        "redis://:hunter2-canary@127.0.0.1:1/0",
        RedisFailure::Closed,
    )(&mut config);
    let rendered = format!("{config:?}\n{}", config.to_redacted_toml());
    assert!(!rendered.contains("hunter2-canary"), "{rendered}");
}
