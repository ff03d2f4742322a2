//! Per-client rate limiting: router-level tests (`oneshot` with the peer address put in
//! the request as the server would, and a fake clock), plus the real server.

use crate::helpers::api_keys;
use crate::helpers::{self, error_code, spawn_app_with};
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use orga_proxy::clock::Clock;
use orga_proxy::config::{AuthMode, Config, RateLimitConfig, RedisFailure};
use orga_proxy::orga::mock::MockOptions;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tower::ServiceExt;

const PATH: &str = "/api/orga/credentials";

/// The app on a fake clock, against the embedded fake Orga Cloud.
struct Limited {
    router: Router,
    clock: Clock,
}

impl Limited {
    async fn new(customize: impl FnOnce(&mut Config)) -> Self {
        let upstream = helpers::spawn_mock_upstream(MockOptions::default()).await;
        let mut config = helpers::test_config(&upstream);
        config.rate_limit.enabled = true;
        config.rate_limit.requests_per_minute = 30;
        config.rate_limit.burst = 3;
        customize(&mut config);
        let clock = Clock::manual(SystemTime::now());
        let (router, _state) = orga_proxy::app_with_clock(Arc::new(config), clock.clone()).unwrap();
        Self { router, clock }
    }

    /// `GET` the credentials route from TCP peer `peer` with extra `headers`.
    async fn send(&self, peer: &str, headers: &[(&str, &str)]) -> Response<Body> {
        let peer: IpAddr = peer.parse().unwrap();
        let mut request = Request::get(PATH)
            .header("host", "proxy.test")
            .body(Body::empty())
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(peer, 40_000)));
        self.router.clone().oneshot(request).await.unwrap()
    }

    /// Sends until refused; returns how many were admitted (at most 100).
    async fn drain(&self, peer: &str, headers: &[(&str, &str)]) -> usize {
        for admitted in 0..100 {
            let response = self.send(peer, headers).await;
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                return admitted;
            }
            assert_eq!(response.status(), StatusCode::OK);
        }
        panic!("never rate limited");
    }
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn behind_proxy(config: &mut Config) {
    config.rate_limit.trusted_proxies = vec!["10.0.0.0/8".to_owned()].try_into().unwrap();
}

#[tokio::test]
async fn a_burst_is_admitted_with_headers_then_429_with_retry_after() {
    let app = Limited::new(|_| {}).await;
    for remaining in ["2", "1", "0"] {
        let response = app.send("203.0.113.9", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit-limit"), "3");
        assert_eq!(header(&response, "ratelimit-remaining"), remaining);
    }
    let refused = app.send("203.0.113.9", &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // 30 per minute: one request back every 2 s; the full burst of 3 after 6 s.
    assert_eq!(header(&refused, "retry-after"), "2");
    assert_eq!(header(&refused, "ratelimit-limit"), "3");
    assert_eq!(header(&refused, "ratelimit-remaining"), "0");
    assert_eq!(header(&refused, "ratelimit-reset"), "6");
    assert_eq!(header(&refused, "cache-control"), "no-store");
    let body = axum::body::to_bytes(refused.into_body(), 4096)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");

    // Retry-After is whole seconds rounded up, never 0.
    app.clock.advance(Duration::from_millis(1_999));
    let almost = app.send("203.0.113.9", &[]).await;
    assert_eq!(header(&almost, "retry-after"), "1");
    app.clock.advance(Duration::from_millis(1));
    assert_eq!(app.send("203.0.113.9", &[]).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn spoofed_forwarded_headers_from_an_untrusted_peer_change_nothing() {
    let app = Limited::new(behind_proxy).await;
    for i in 0..3 {
        let spoof = format!("198.51.100.{i}");
        let response = app
            .send(
                "203.0.113.9",
                &[
                    ("x-forwarded-for", &spoof),
                    ("x-real-ip", &spoof),
                    ("forwarded", &format!("for={spoof}")),
                ],
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let refused = app
        .send("203.0.113.9", &[("x-forwarded-for", "198.51.100.99")])
        .await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn forwarded_headers_are_ignored_when_no_proxy_is_trusted() {
    let app = Limited::new(|_| {}).await;
    assert_eq!(
        app.drain("10.0.0.1", &[("x-forwarded-for", "1.1.1.1")])
            .await,
        3
    );
    let other = app
        .send("10.0.0.1", &[("x-forwarded-for", "2.2.2.2")])
        .await;
    assert_eq!(other.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_trusted_chain_is_keyed_by_the_rightmost_untrusted_hop() {
    let app = Limited::new(behind_proxy).await;
    let chain = [("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.5")];
    assert_eq!(app.drain("10.0.0.1", &chain).await, 3);
    // The same hop arriving through another trusted proxy is the same client.
    let again = app
        .send("10.9.9.9", &[("x-forwarded-for", "198.51.100.7")])
        .await;
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn changing_the_leftmost_entry_does_not_reset_the_budget() {
    let app = Limited::new(behind_proxy).await;
    for i in 0..3 {
        let xff = format!("192.0.2.{i}, 198.51.100.7");
        let response = app.send("10.0.0.1", &[("x-forwarded-for", &xff)]).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let refused = app
        .send(
            "10.0.0.1",
            &[("x-forwarded-for", "192.0.2.200, 198.51.100.7")],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn two_clients_behind_one_proxy_have_separate_budgets() {
    let app = Limited::new(behind_proxy).await;
    assert_eq!(
        app.drain("10.0.0.1", &[("x-forwarded-for", "198.51.100.7")])
            .await,
        3
    );
    let neighbour = app
        .send("10.0.0.1", &[("x-forwarded-for", "198.51.100.8")])
        .await;
    assert_eq!(neighbour.status(), StatusCode::OK);
    assert_eq!(header(&neighbour, "ratelimit-remaining"), "2");
}

/// Issue 17: a spray of forwarded addresses filled the table, and from then on every
/// newcomer shared one overflow budget and was refused. A full table now makes room.
#[tokio::test]
async fn newcomers_behind_a_trusted_proxy_keep_their_own_budget_during_a_spray() {
    let app = Limited::new(|config| {
        behind_proxy(config);
        config.rate_limit.max_tracked_clients = 64;
    })
    .await;
    for round in 0..4u8 {
        for host in 0..64u8 {
            let sprayed = format!("198.18.{round}.{host}");
            let response = app.send("10.0.0.1", &[("x-forwarded-for", &sprayed)]).await;
            assert_eq!(response.status(), StatusCode::OK, "{sprayed}");
            app.clock.advance(Duration::from_millis(10));
        }
        let newcomer = format!("203.0.113.{round}");
        let admitted = app
            .drain("10.0.0.1", &[("x-forwarded-for", &newcomer)])
            .await;
        assert_eq!(admitted, 3, "{newcomer} gets the whole burst, its own");
    }
    // 256 sprayed and 4 newcomers through 64 places: at least 196 evicted, counted.
    let metrics = orga_proxy::metrics::install().render();
    assert!(metrics.contains("# HELP orga_proxy_ratelimit_evictions_total"));
    let evictions = metrics
        .lines()
        .find_map(|line| line.strip_prefix("orga_proxy_ratelimit_evictions_total "))
        .and_then(|value| value.parse::<f64>().ok());
    assert!(evictions.is_some_and(|n| n >= 196.0), "{evictions:?}");
}

#[tokio::test]
async fn one_ipv6_64_shares_a_budget_and_another_64_does_not() {
    let app = Limited::new(|_| {}).await;
    assert_eq!(
        app.send("2001:db8:1:2::a", &[]).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.send("2001:db8:1:2::b", &[]).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.send("2001:db8:1:2:ffff:ffff:ffff:ffff", &[])
            .await
            .status(),
        StatusCode::OK
    );
    let rotated = app.send("2001:db8:1:2:1234::1", &[]).await;
    assert_eq!(rotated.status(), StatusCode::TOO_MANY_REQUESTS);
    let other_net = app.send("2001:db8:1:3::a", &[]).await;
    assert_eq!(other_net.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_ipv4_mapped_ipv6_peer_is_the_same_client_as_its_ipv4_address() {
    let app = Limited::new(|_| {}).await;
    assert_eq!(app.drain("203.0.113.9", &[]).await, 3);
    let mapped = app.send("::ffff:203.0.113.9", &[]).await;
    assert_eq!(mapped.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn garbage_forwarded_headers_are_harmless() {
    let app = Limited::new(behind_proxy).await;
    let garbage = [
        "",
        ",,,",
        "unknown",
        "999.999.999.999",
        "[::1",
        "1.2.3.4:99999",
        "for=1.2.3.4;proto=https",
        "198.51.100.7 198.51.100.8",
        "\t",
    ];
    for (i, value) in garbage.iter().enumerate() {
        let response = app
            .send(
                "10.0.0.1",
                &[("x-forwarded-for", value), ("x-real-ip", value)],
            )
            .await;
        // Unparsable chains fall back to the proxy itself: one shared budget.
        let expected = if i < 3 {
            StatusCode::OK
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(response.status(), expected, "{value:?}");
    }
    // Non-UTF-8 bytes too.
    let mut request = Request::get(PATH)
        .header("host", "proxy.test")
        .body(Body::empty())
        .unwrap();
    request.headers_mut().insert(
        "x-forwarded-for",
        HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.9").unwrap(),
    );
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 2], 1))));
    let response = app.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn four_times_the_allowed_rate_for_a_simulated_minute_admits_burst_plus_rate() {
    let (rpm, burst) = (30u32, 10u32);
    let app = Limited::new(|c| {
        c.rate_limit.requests_per_minute = rpm;
        c.rate_limit.burst = burst;
    })
    .await;
    let attempts = 4 * rpm;
    let step = Duration::from_secs(60) / attempts;
    let mut admitted = 0u32;
    for _ in 0..attempts {
        match app.send("203.0.113.9", &[]).await.status() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
        app.clock.advance(step);
    }
    let expected = burst + rpm;
    assert!(
        admitted.abs_diff(expected) <= 1,
        "admitted {admitted}, expected {expected} ± 1"
    );
}

#[tokio::test]
async fn a_disabled_limiter_sends_no_headers_and_never_refuses() {
    let app = Limited::new(|c| c.rate_limit.enabled = false).await;
    for _ in 0..10 {
        let response = app.send("203.0.113.9", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("ratelimit-limit").is_none());
    }
}

#[tokio::test]
async fn health_probes_and_unknown_routes_are_not_rate_limited() {
    let app = Limited::new(|c| c.rate_limit.burst = 1).await;
    assert_eq!(app.drain("203.0.113.9", &[]).await, 1);
    for path in ["/healthz", "/readyz", "/nope"] {
        let mut request = Request::get(path)
            .header("host", "proxy.test")
            .body(Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([203, 0, 113, 9], 1))));
        let response = app.router.clone().oneshot(request).await.unwrap();
        assert_ne!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert!(
            response.headers().get("ratelimit-limit").is_none(),
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_real_server_limits_its_peer_and_answers_the_contract_429() {
    let app = spawn_app_with(|c| {
        c.rate_limit.enabled = true;
        c.rate_limit.requests_per_minute = 1;
        c.rate_limit.burst = 2;
    })
    .await;
    for remaining in ["1", "0"] {
        let response = app.get_credentials().await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["ratelimit-remaining"], remaining);
    }
    let refused = app.get_credentials().await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(refused.headers().contains_key("x-request-id"));
    assert_eq!(error_code(refused).await, "rate_limited");
}

#[tokio::test]
async fn the_per_subject_limit_gives_each_subject_its_own_budget() {
    let app = Limited::new(|config| keys_with_a_subject_budget_of_two(config, 100)).await;
    let web = [("x-api-key", WEB_KEY)];
    for remaining in ["1", "0"] {
        let response = app.send("203.0.113.9", &web).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit-remaining"), remaining);
    }
    let refused = app.send("203.0.113.9", &web).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "10");
    let ios = app.send("203.0.113.9", &[("x-api-key", IOS_KEY)]).await;
    assert_eq!(
        ios.status(),
        StatusCode::OK,
        "another subject, its own budget"
    );
    app.clock.advance(Duration::from_secs(10));
    assert_eq!(app.send("203.0.113.9", &web).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_a_subject_the_per_subject_limit_does_not_apply() {
    let app = Limited::new(|config| {
        config.rate_limit.burst = 100;
        config.rate_limit.per_subject.enabled = true;
        config.rate_limit.per_subject.burst = 2;
    })
    .await;
    for _ in 0..5 {
        let anonymous = app.send("203.0.113.9", &[]).await;
        assert_eq!(anonymous.status(), StatusCode::OK);
        assert_eq!(
            header(&anonymous, "ratelimit-limit"),
            "100",
            "the client's budget only"
        );
    }
}

#[tokio::test]
async fn the_per_subject_limit_is_off_by_default() {
    assert!(!RateLimitConfig::default().per_subject.enabled);
    let app = Limited::new(with_api_keys).await;
    for peer in [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ] {
        let response = app.send(peer, &[("x-api-key", WEB_KEY)]).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "one key from many addresses"
        );
    }
}

#[tokio::test]
async fn the_headers_describe_the_budget_closest_to_running_out() {
    // Per client: burst 3; per subject: burst 2. Both on the one route.
    let app = Limited::new(|config| {
        with_api_keys(config);
        config.rate_limit.per_subject.enabled = true;
        config.rate_limit.per_subject.burst = 2;
    })
    .await;
    let web = [("x-api-key", WEB_KEY)];
    let first = app.send("203.0.113.9", &web).await;
    assert_eq!(header(&first, "ratelimit-limit"), "2");
    assert_eq!(header(&first, "ratelimit-remaining"), "1");
    app.send("203.0.113.9", &web).await;
    let refused = app.send("203.0.113.9", &web).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "ratelimit-limit"), "2");
}

#[test]
fn redis_failure_defaults_to_the_local_fallback() {
    assert_eq!(
        RateLimitConfig::default().redis_failure,
        RedisFailure::Local
    );
}

#[tokio::test]
async fn without_a_peer_address_every_client_shares_one_budget_rather_than_none() {
    let app = Limited::new(|_| {}).await;
    let send = || {
        let request = Request::get(PATH)
            .header("host", "proxy.test")
            .body(Body::empty())
            .unwrap();
        app.router.clone().oneshot(request)
    };
    for _ in 0..3 {
        assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

const WEB_KEY: &str = "web-key-0123456789abcdef";
const IOS_KEY: &str = "ios-key-0123456789abcdef";

/// API keys as subjects, each with a budget of 2 (and 6 a minute), the client's burst
/// set to `client_burst`.
fn keys_with_a_subject_budget_of_two(config: &mut Config, client_burst: u32) {
    with_api_keys(config);
    config.rate_limit.burst = client_burst;
    config.rate_limit.per_subject.enabled = true;
    config.rate_limit.per_subject.requests_per_minute = 6;
    config.rate_limit.per_subject.burst = 2;
}

fn with_api_keys(config: &mut Config) {
    config.auth.mode = AuthMode::ApiKey;
    config.auth.api_keys = api_keys(&[&format!("web:{WEB_KEY}"), &format!("ios:{IOS_KEY}")]);
}

#[tokio::test]
async fn the_client_limit_runs_before_auth_so_failed_attempts_spend_the_budget() {
    let app = Limited::new(with_api_keys).await;
    for _ in 0..3 {
        let response = app.send("203.0.113.9", &[("x-api-key", "wrong-key")]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(header(&response, "ratelimit-remaining").len(), 1);
    }
    let refused = app.send("203.0.113.9", &[("x-api-key", WEB_KEY)]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_per_subject_limit_follows_the_key_across_addresses() {
    let app = Limited::new(|config| keys_with_a_subject_budget_of_two(config, 10)).await;
    // One key from three addresses: two requests, then the key's budget is spent.
    let from = ["198.51.100.1", "198.51.100.2", "198.51.100.3"];
    for (peer, remaining) in from.iter().zip(["1", "0"]) {
        let response = app.send(peer, &[("x-api-key", WEB_KEY)]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit-limit"), "2");
        assert_eq!(header(&response, "ratelimit-remaining"), remaining);
    }
    let refused = app.send(from[2], &[("x-api-key", WEB_KEY)]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "10");
    // Another key from the same address has its own budget.
    let other = app.send(from[2], &[("x-api-key", IOS_KEY)]).await;
    assert_eq!(other.status(), StatusCode::OK);
}
