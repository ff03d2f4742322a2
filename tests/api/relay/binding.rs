//! Token binding end to end: only tokens this service issued, unexpired, once each;
//! anything else is 401 and Orga never hears of it. In memory per process, and through
//! a real `redis-server` across replicas.

use super::*;
use crate::redis_server::{RedisServer, free_port, redis_server_binary};
use orga_proxy::clock::Clock;

async fn refused_as(response: reqwest::Response, says: &str) {
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{message}");
}

#[tokio::test]
async fn a_token_this_service_did_not_issue_is_401_and_orga_is_never_called() {
    let relay = relay_app(call_answer(), |_| {}).await;
    let before = counter(r#"orga_proxy_relay_token_refusals_total{reason="unknown"}"#);
    // A real-looking token from the same Orga, minted around the proxy.
    let response = relay.start("ek_recorded_999", &sdk_body(OFFER_SDP)).await;
    refused_as(response, "not issued by this service").await;
    assert!(relay.calls().await.is_empty());
    assert!(counter(r#"orga_proxy_relay_token_refusals_total{reason="unknown"}"#) >= before + 1.0);
}

#[tokio::test]
async fn a_token_starts_one_call_and_a_replay_is_401() {
    let relay = relay_app(call_answer(), |_| {}).await;
    let token = relay.token().await;
    assert_eq!(
        relay.start(&token, &sdk_body(OFFER_SDP)).await.status(),
        200
    );
    let replay = relay.start(&token, &sdk_body(OFFER_SDP)).await;
    refused_as(replay, "already started a call").await;
    assert_eq!(relay.calls().await.len(), 1);
}

#[tokio::test]
async fn racing_call_starts_with_one_token_reach_orga_once() {
    let relay = relay_app(call_answer(), |_| {}).await;
    let token = relay.token().await;
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, token) = (
                relay.app.client.clone(),
                relay.app.url(CALLS),
                token.clone(),
            );
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .json(&sdk_body(OFFER_SDP))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for racer in racers {
        statuses.push(racer.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401, 401, 401, 401, 401, 401, 401]);
    assert_eq!(relay.calls().await.len(), 1);
}

#[tokio::test]
async fn a_token_past_orgas_expiry_is_401_without_calling_orga() {
    let orga = recording_orga(call_answer(), Some(60)).await;
    let clock = Clock::manual(SystemTime::now());
    let app = spawn_app_with_clock(&orga.uri(), clock.clone(), |c| c.relay.enabled = true).await;
    let (fresh, stale) = (token_from(&app).await, token_from(&app).await);
    assert_eq!(
        start(&app, &fresh, &sdk_body(OFFER_SDP)).await.status(),
        200
    );
    clock.advance(Duration::from_secs(61));
    refused_as(
        start(&app, &stale, &sdk_body(OFFER_SDP)).await,
        "has expired",
    )
    .await;
    let calls = orga.received_requests().await.unwrap();
    assert_eq!(calls.iter().filter(|r| r.url.path() == CALLS).count(), 1);
}

#[tokio::test]
async fn without_an_expiry_from_orga_a_binding_lives_relay_token_ttl() {
    let orga = recording_orga(call_answer(), None).await;
    let clock = Clock::manual(SystemTime::now());
    let app = spawn_app_with_clock(&orga.uri(), clock.clone(), |c| {
        c.relay.enabled = true;
        c.relay.token_ttl = Duration::from_secs(120);
    })
    .await;
    let (early, late) = (token_from(&app).await, token_from(&app).await);
    clock.advance(Duration::from_secs(119));
    assert_eq!(
        start(&app, &early, &sdk_body(OFFER_SDP)).await.status(),
        200
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(start(&app, &late, &sdk_body(OFFER_SDP)).await.status(), 401);
}

#[tokio::test]
async fn a_pooled_credential_is_bound_like_a_minted_one() {
    let relay = relay_app(call_answer(), |c| {
        c.pool.enabled = true;
        c.pool.size = orga_proxy::config::PoolSize::Fixed(2);
    })
    .await;
    let pool = relay.app.state.pool.clone().expect("the pool is on");
    while pool.len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let token = relay.token().await;
    assert!(
        pool.stats().hits.load(Ordering::Relaxed) >= 1,
        "served from the pool"
    );
    assert_eq!(relay.start_twice(&token).await, (200, 401));
}

#[tokio::test]
async fn with_bind_tokens_off_any_bearer_is_relayed_for_orga_to_judge() {
    let relay = relay_app(call_answer(), |c| c.relay.bind_tokens = false).await;
    for _ in 0..2 {
        assert_eq!(
            relay
                .start("ek_from_elsewhere", &sdk_body(OFFER_SDP))
                .await
                .status(),
            200
        );
    }
    let calls = relay.calls().await;
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].0["authorization"], "Bearer ek_from_elsewhere");
}

#[tokio::test]
async fn a_full_binding_table_refuses_to_issue_rather_than_evict_and_mints_nothing() {
    let relay = relay_app(call_answer(), |c| c.relay.max_bound_tokens = 2).await;
    let (first, second) = (relay.token().await, relay.token().await);
    let refused_before = counter("orga_proxy_relay_binding_full_total");
    let full = relay.app.get_credentials().await;
    assert_eq!(full.status(), 503);
    assert!(
        counter("orga_proxy_relay_binding_full_total") >= refused_before + 1.0,
        "a credential refused before minting is counted"
    );
    assert!(full.headers().contains_key("retry-after"));
    assert_eq!(error_code(full).await, "unavailable");
    assert_eq!(
        calls_to(&relay.orga, SECRET_PATH).await,
        2,
        "no token minted to be thrown away"
    );
    assert_eq!(
        relay.start(&first, &sdk_body(OFFER_SDP)).await.status(),
        200
    );
    assert_eq!(
        relay.start(&second, &sdk_body(OFFER_SDP)).await.status(),
        200,
        "nothing promised was evicted"
    );
    let third = relay.token().await;
    assert_eq!(
        relay.start(&third, &sdk_body(OFFER_SDP)).await.status(),
        200,
        "used records make way"
    );
}

/// Relay with token records in the Redis at `url`.
fn on_redis(url: &str) -> impl FnOnce(&mut Config) {
    let url = url.to_owned();
    move |c| {
        c.relay.enabled = true;
        c.redis.url = Some(url.parse().unwrap());
    }
}

#[tokio::test]
async fn a_token_issued_by_one_replica_is_relayed_by_another_through_redis_once() {
    let Some(redis) = RedisServer::start("a_token_issued_by_one_replica_is_relayed_by_another")
    else {
        return;
    };
    let orga = recording_orga(call_answer(), Some(90)).await;
    let a = spawn_app_against(&orga.uri(), on_redis(&redis.url())).await;
    let b = spawn_app_against(&orga.uri(), on_redis(&redis.url())).await;
    let token = token_from(&a).await;
    assert_eq!(start(&b, &token, &sdk_body(OFFER_SDP)).await.status(), 200);
    refused_as(
        start(&a, &token, &sdk_body(OFFER_SDP)).await,
        "already started a call",
    )
    .await;
    refused_as(
        start(&b, "ek_recorded_404", &sdk_body(OFFER_SDP)).await,
        "not issued",
    )
    .await;

    // The record is the token's fingerprint, never the token, and dies with the token.
    let keys = redis.keys_with_ttl().await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (key, ttl_ms) = &keys[0];
    assert!(key.starts_with("orga-proxy:relay:") && !key.contains(&token));
    assert_eq!(key.len(), "orga-proxy:relay:".len() + 64);
    assert!((80_000..=90_000).contains(ttl_ms), "{ttl_ms}");
    let value: String = redis.command("GET", &[key]).await;
    assert!(!value.contains(&token));
    let calls = orga.received_requests().await.unwrap();
    assert_eq!(calls.iter().filter(|r| r.url.path() == CALLS).count(), 1);
}

#[tokio::test]
async fn without_redis_a_token_is_bound_to_the_replica_that_issued_it() {
    let orga = recording_orga(call_answer(), Some(600)).await;
    let a = spawn_app_against(&orga.uri(), |c| c.relay.enabled = true).await;
    let b = spawn_app_against(&orga.uri(), |c| c.relay.enabled = true).await;
    let token = token_from(&a).await;
    assert_eq!(start(&b, &token, &sdk_body(OFFER_SDP)).await.status(), 401);
    assert_eq!(start(&a, &token, &sdk_body(OFFER_SDP)).await.status(), 200);
}

#[tokio::test]
async fn while_redis_is_down_both_routes_refuse_503_and_orga_is_never_called_with_a_token() {
    let Some(binary) = redis_server_binary("while_redis_is_down_both_routes_refuse_503") else {
        return;
    };
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let orga = recording_orga(call_answer(), Some(600)).await;
    let app = spawn_app_against(&orga.uri(), on_redis(&url)).await;
    let issue = app.get_credentials().await;
    assert_eq!(issue.status(), 503);
    assert_eq!(error_code(issue).await, "unavailable");

    let redis = RedisServer::start_on(&binary, port);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let token = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "Redis never came back"
        );
        let response = app.get_credentials().await;
        if response.status() == 200 {
            let body: Value = response.json().await.unwrap();
            break body["ephemeralToken"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(redis);
    let relayed = start(&app, &token, &sdk_body(OFFER_SDP)).await;
    assert_eq!(relayed.status(), 503);
    assert!(relayed.headers().contains_key("retry-after"));
    assert_eq!(error_code(relayed).await, "unavailable");
    let calls = orga.received_requests().await.unwrap();
    assert!(
        calls.iter().all(|r| r.url.path() != CALLS),
        "Orga was called unchecked"
    );
    let minted = calls_to(&orga, SECRET_PATH).await;
    assert_eq!(app.get_credentials().await.status(), 503);
    assert_eq!(
        calls_to(&orga, SECRET_PATH).await,
        minted,
        "no token minted while Redis is known to fail"
    );
    // Every credential is refused while Redis fails: the load balancer must know too.
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let reasons: Value = ready.json().await.unwrap();
    assert_eq!(
        reasons["reasons"],
        serde_json::json!(["redis"]),
        "{reasons}"
    );
}
