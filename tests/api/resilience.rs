//! Upstream resilience and overload: one safe retry, the circuit breaker, and load
//! shedding past `server.concurrency_limit`.

use crate::gated_upstream::{GatedUpstream, hold_a_request};
use crate::helpers::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn ice_config_is_retried_once_after_a_5xx() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(SECRET_PATH))
        .respond_with(token())
        .mount(&upstream)
        .await;
    first_answers(&upstream, ("GET", ICE_PATH), ResponseTemplate::new(503), 1).await;
    Mock::given(method("GET"))
        .and(path(ICE_PATH))
        .respond_with(ice())
        .mount(&upstream)
        .await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;

    let response = app.get_credentials().await;
    assert_eq!(response.status(), 200);
    assert_eq!(calls_to(&upstream, ICE_PATH).await, 2);
    assert_eq!(
        calls_to(&upstream, SECRET_PATH).await,
        1,
        "one token minted"
    );
}

#[tokio::test]
async fn ice_config_is_retried_only_once() {
    let upstream = scripted_upstream(token(), Some(ResponseTemplate::new(500))).await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;

    let response = app.get_credentials().await;
    assert_eq!(response.status(), 502);
    assert_eq!(error_code(response).await, "upstream_error");
    assert_eq!(calls_to(&upstream, ICE_PATH).await, 2);
}

#[tokio::test]
async fn client_secrets_is_not_retried_once_it_reached_orga() {
    let upstream = scripted_upstream(ResponseTemplate::new(500), None).await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;

    let response = app.get_credentials().await;
    assert_eq!(response.status(), 502);
    assert_eq!(
        calls_to(&upstream, SECRET_PATH).await,
        1,
        "a POST that arrived is never repeated"
    );
}

#[tokio::test]
async fn an_open_circuit_answers_503_with_retry_after_without_calling_orga() {
    let upstream = scripted_upstream(ResponseTemplate::new(500), None).await;
    let app = spawn_app_against(&upstream.uri(), |c| {
        c.orga.circuit_breaker_threshold = 2;
        c.orga.circuit_breaker_cooldown = std::time::Duration::from_secs(30);
    })
    .await;

    for _ in 0..2 {
        assert_eq!(app.get_credentials().await.status(), 502);
    }
    let refused = app.get_credentials().await;
    assert_eq!(refused.status(), 503);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(error_code(refused).await, "unavailable");
    assert_eq!(
        calls_to(&upstream, SECRET_PATH).await,
        2,
        "Orga not called while open"
    );

    let ready = app.get("/readyz").await;
    assert_eq!(
        ready.status(),
        200,
        "an open circuit does not pull the replica"
    );
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["upstream_circuit"], "open");
}

#[tokio::test]
async fn refused_api_keys_do_not_open_the_circuit() {
    let upstream = scripted_upstream(ResponseTemplate::new(401), None).await;
    let app = spawn_app_against(&upstream.uri(), |c| c.orga.circuit_breaker_threshold = 1).await;
    for _ in 0..3 {
        let response = app.get_credentials().await;
        assert_eq!(error_code(response).await, "upstream_auth_failed");
    }
    assert_eq!(calls_to(&upstream, SECRET_PATH).await, 3);
}

#[tokio::test]
async fn requests_past_the_concurrency_limit_are_shed_at_once_with_503() {
    let upstream = GatedUpstream::start().await;
    let app = spawn_app_against(&upstream.url, |c| c.server.concurrency_limit = 1).await;
    let first = hold_a_request(&app, &upstream).await;

    let shed = app.get_credentials().await;
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(error_code(shed).await, "unavailable");
    let probe = app.get("/healthz").await;
    assert_eq!(probe.status(), 200, "probes are never shed");

    upstream.release(2);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(
        app.get_credentials().await.status(),
        200,
        "the slot is free again"
    );
}
