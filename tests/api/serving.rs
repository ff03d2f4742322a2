//! Serving many connections at once: each gets its own credential, the concurrency
//! limit is one budget, and a drain waits for the request in flight.

use crate::gated_upstream::{GatedUpstream, hold_a_request};
use crate::helpers::{client, error_code, spawn_app_against, spawn_mock_upstream};
use orga_proxy::orga::mock::MockOptions;
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test]
async fn concurrent_connections_each_get_a_fresh_credential() {
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    let app = spawn_app_against(&upstream, |_| {}).await;
    let url = app.url(&app.credentials_path);
    // A client each, so every request is a connection of its own.
    let requests = (0..30).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { client().get(url).send().await.unwrap() })
    });
    let mut tokens = HashSet::new();
    for request in requests {
        let response = request.await.unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        let token = body["ephemeralToken"].as_str().expect("a token").to_owned();
        assert!(tokens.insert(token), "no credential is handed out twice");
    }
    assert_eq!(tokens.len(), 30);
}

#[tokio::test]
async fn the_concurrency_limit_sheds_the_request_past_it() {
    let upstream = GatedUpstream::start().await;
    let app = spawn_app_against(&upstream.url, |c| c.server.concurrency_limit = 1).await;
    let held = hold_a_request(&app, &upstream).await;

    let shed = client()
        .get(app.url(&app.credentials_path))
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status(), 503, "the one slot is taken");
    assert_eq!(error_code(shed).await, "unavailable");

    upstream.release(1);
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn a_drain_finishes_the_request_in_flight_then_returns() {
    let upstream = GatedUpstream::start().await;
    let mut app = spawn_app_against(&upstream.url, |_| {}).await;
    let in_flight = hold_a_request(&app, &upstream).await;

    app.begin_shutdown();
    let ready = client().get(app.url("/readyz")).send().await;
    assert!(
        ready.is_err() || ready.unwrap().status() == 503,
        "a draining server is not ready, or no longer accepts"
    );
    assert!(
        !app.handle.is_finished(),
        "the server waits for the request"
    );

    upstream.release(1);
    let response = in_flight.await.unwrap().expect("the request is answered");
    assert_eq!(response.status(), 200);
    app.stops_within(Duration::from_secs(5), "the server returns once drained")
        .await;
}
