//! Daily quotas end to end: each quota at its boundary, concurrent requests at the
//! boundary, failed upstream calls, the UTC rollover on an injected clock, and the Redis
//! backend shared by two proxies and under each failure policy.

use crate::helpers::*;
use crate::redis_server::{RedisServer, free_port};
use orga_proxy::clock::Clock;
use orga_proxy::config::{AuthMode, Config, RedisFailure, TrustedProxies};
use orga_proxy::orga::mock::MockOptions;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wiremock::ResponseTemplate;

/// One hour before a UTC midnight.
const LATE_EVENING: &str = "2026-03-01T23:00:00Z";

/// A manual clock stopped at `rfc3339`.
fn at(rfc3339: &str) -> Clock {
    Clock::manual(humantime::parse_rfc3339(rfc3339).unwrap())
}

/// The test client connects from 127.0.0.1, trusted as a proxy here, so each
/// `X-Forwarded-For` address is a client of its own.
fn behind_proxy(config: &mut Config) {
    config.rate_limit.trusted_proxies = TrustedProxies::try_from(vec!["127.0.0.1".into()]).unwrap();
}

/// `GET` the credentials route as the client `ip`, with an API key if given.
async fn get_as(app: &TestApp, ip: &str, api_key: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .get(app.url(&app.credentials_path))
        .header("x-forwarded-for", ip);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("proxy answers")
}

/// Asserts `response` is a quota refusal; returns its `Retry-After` and message.
async fn quota_refusal(response: reqwest::Response) -> (u64, String) {
    assert_eq!(response.status(), 429);
    let retry_after = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    (
        retry_after,
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

async fn mock() -> String {
    spawn_mock_upstream(MockOptions::default()).await
}

#[tokio::test]
async fn the_nth_credential_of_a_client_is_issued_and_the_next_refused_until_utc_midnight() {
    let app = spawn_app_with_clock(&mock().await, at(LATE_EVENING), |c| {
        behind_proxy(c);
        c.quota.per_client_per_day = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(get_as(&app, "192.0.2.1", None).await.status(), 200);
    }
    let (retry_after, message) = quota_refusal(get_as(&app, "192.0.2.1", None).await).await;
    assert_eq!(retry_after, 3_600, "until 00:00 UTC");
    assert!(message.contains("for this client"), "{message}");
    // Names the quota, not its internals: no key, no limit.
    assert!(
        !message.contains("192.0.2.1") && !message.contains(" 3 "),
        "{message}"
    );
    assert_eq!(get_as(&app, "192.0.2.2", None).await.status(), 200);
    let metrics = orga_proxy::metrics::install().render();
    assert!(
        metrics.contains(r#"orga_proxy_quota_exceeded_total{quota="client"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_subject_has_its_quota_across_addresses_and_refused_callers_spend_none() {
    let (alice, bob) = (
        "alice-key-0123456789abcdef0123456789",
        "bob-key-0123456789abcdef0123456789ab",
    );
    let app = spawn_app_with_clock(&mock().await, at(LATE_EVENING), |c| {
        behind_proxy(c);
        c.auth.mode = AuthMode::ApiKey;
        c.auth.api_keys = api_keys(&[&format!("alice:{alice}"), &format!("bob:{bob}")]);
        c.quota.per_subject_per_day = 2;
    })
    .await;
    assert_eq!(get_as(&app, "192.0.2.1", Some("wrong")).await.status(), 401);
    assert_eq!(get_as(&app, "192.0.2.1", Some(alice)).await.status(), 200);
    assert_eq!(get_as(&app, "192.0.2.2", Some(alice)).await.status(), 200);
    let (retry_after, message) = quota_refusal(get_as(&app, "192.0.2.3", Some(alice)).await).await;
    assert_eq!(retry_after, 3_600);
    assert!(message.contains("for this caller"), "{message}");
    assert!(!message.contains("alice"), "{message}");
    assert_eq!(get_as(&app, "192.0.2.3", Some(bob)).await.status(), 200);
}

#[tokio::test]
async fn the_global_quota_caps_all_clients_together() {
    let app = spawn_app_with_clock(&mock().await, at(LATE_EVENING), |c| {
        behind_proxy(c);
        c.quota.global_per_day = 2;
        c.quota.per_client_per_day = 5;
    })
    .await;
    assert_eq!(get_as(&app, "192.0.2.1", None).await.status(), 200);
    assert_eq!(get_as(&app, "192.0.2.2", None).await.status(), 200);
    let (_, message) = quota_refusal(get_as(&app, "192.0.2.3", None).await).await;
    assert!(message.contains("for this service"), "{message}");
}

#[tokio::test]
async fn concurrent_requests_at_the_boundary_never_overshoot() {
    // Every call waits on the upstream, so all of them are in flight at once.
    let upstream = slow_mock_upstream(Duration::from_millis(300)).await;
    let app = spawn_app_against(&upstream, |c| c.quota.global_per_day = 5).await;
    let statuses = concurrently(&app, 25).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        app.get_credentials().await.status(),
        429,
        "the five stay spent"
    );
}

/// `n` credentials requests at once; their statuses.
async fn concurrently(app: &TestApp, n: usize) -> Vec<u16> {
    let url = app.url(&app.credentials_path);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, url) = (app.client.clone(), url.clone());
        calls.spawn(async move { client.get(url).send().await.unwrap().status().as_u16() });
    }
    calls.join_all().await
}

#[tokio::test]
async fn a_failed_upstream_call_does_not_consume_the_quota() {
    let upstream = scripted_upstream(token(), None).await;
    first_answers(
        &upstream,
        ("POST", SECRET_PATH),
        ResponseTemplate::new(500),
        2,
    )
    .await;
    let app = spawn_app_against(&upstream.uri(), |c| c.quota.global_per_day = 1).await;
    assert_eq!(app.get_credentials().await.status(), 502);
    assert_eq!(app.get_credentials().await.status(), 502);
    assert_eq!(app.get_credentials().await.status(), 200);
    quota_refusal(app.get_credentials().await).await;
}

#[tokio::test]
async fn the_quota_starts_again_at_utc_midnight_on_the_injected_clock() {
    let clock = at("2026-03-01T23:59:59.500Z");
    let app = spawn_app_with_clock(&mock().await, clock.clone(), |c| {
        c.quota.per_client_per_day = 1;
    })
    .await;
    assert_eq!(app.get_credentials().await.status(), 200);
    let (retry_after, _) = quota_refusal(app.get_credentials().await).await;
    assert_eq!(retry_after, 1, "half a second, rounded up");
    clock.advance(Duration::from_millis(500));
    assert_eq!(app.get_credentials().await.status(), 200, "a new UTC day");
    let (retry_after, _) = quota_refusal(app.get_credentials().await).await;
    assert_eq!(retry_after, 86_400);
}

/// The quotas in the Redis at `url`, failing as `failure` says.
fn shared(url: &str, failure: RedisFailure, global: u32) -> impl FnOnce(&mut Config) {
    let url = url.to_owned();
    move |config| {
        config.redis.url = Some(url.parse().unwrap());
        config.rate_limit.redis_failure = failure;
        config.quota.global_per_day = global;
    }
}

/// Seconds until the next UTC midnight, by this machine's clock.
fn until_midnight() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    86_400 - now % 86_400
}

#[tokio::test]
async fn two_proxies_share_one_quota_through_redis_and_its_keys_expire_at_midnight() {
    let Some(redis) = RedisServer::start(
        "two_proxies_share_one_quota_through_redis_and_its_keys_expire_at_midnight",
    ) else {
        return;
    };
    let upstream = mock().await;
    let a = spawn_app_against(&upstream, shared(&redis.url(), RedisFailure::Closed, 3)).await;
    let b = spawn_app_against(&upstream, shared(&redis.url(), RedisFailure::Closed, 3)).await;
    for app in [&a, &b, &a] {
        assert_eq!(app.get_credentials().await.status(), 200);
    }
    for app in [&b, &a] {
        let (retry_after, _) = quota_refusal(app.get_credentials().await).await;
        assert!(retry_after.abs_diff(until_midnight()) <= 5, "{retry_after}");
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let count: u32 = redis::cmd("HGET")
        .arg("orga-proxy:q:all")
        .arg("n")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 3, "refusals are not counted");
    let ttl: i64 = redis::cmd("TTL")
        .arg("orga-proxy:q:all")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl.unsigned_abs().abs_diff(until_midnight()) <= 5,
        "{ttl}"
    );
}

#[tokio::test]
async fn with_redis_down_the_quota_follows_the_redis_failure_policy() {
    let down = format!("redis://127.0.0.1:{}/0", free_port());
    let upstream = mock().await;

    let closed = spawn_app_against(&upstream, shared(&down, RedisFailure::Closed, 1)).await;
    let refused = closed.get_credentials().await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(error_code(refused).await, "unavailable");

    let open = spawn_app_against(&upstream, shared(&down, RedisFailure::Open, 1)).await;
    for _ in 0..3 {
        assert_eq!(
            open.get_credentials().await.status(),
            200,
            "failing open admits"
        );
    }

    let local = spawn_app_against(&upstream, shared(&down, RedisFailure::Local, 1)).await;
    assert_eq!(local.get_credentials().await.status(), 200);
    quota_refusal(local.get_credentials().await).await;
}

#[tokio::test]
async fn the_prefetch_pool_mints_nothing_once_the_global_quota_is_used_up() {
    let upstream = scripted_upstream(token(), None).await;
    let app = spawn_app_against(&upstream.uri(), |c| {
        c.quota.global_per_day = 2;
        c.pool.enabled = true;
        c.pool.size = orga_proxy::config::PoolSize::Fixed(2);
        c.pool.max_age = Duration::from_secs(1);
    })
    .await;
    let mints = || calls_to(&upstream, SECRET_PATH);
    for _ in 0..2 {
        assert_eq!(app.get_credentials().await.status(), 200);
    }
    quota_refusal(app.get_credentials().await).await;
    let after_the_cap = mints().await;
    // Without the hold, the pool would discard its two credentials at max_age and mint
    // two more every second: spend past the cap that no caller can take.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(mints().await, after_the_cap);
}
