//! The rest of the HTTP edge: probes, JSON 404/405, request ids, request limits.

use crate::helpers::*;
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn on_shutdown_in_flight_requests_finish_and_run_returns() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/realtime/client-secrets"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"ephemeral_token": "ek_slow"}))
                .set_delay(Duration::from_millis(500)),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/realtime/ice-config"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"iceServers": [{"urls": "stun:s:3478"}]})),
        )
        .mount(&upstream)
        .await;
    let mut app = spawn_app_against(&upstream.uri(), |_| {}).await;
    let in_flight = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url(&app.credentials_path));
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    // Shut down only once the request is provably inside the server (upstream reached).
    while upstream.received_requests().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.begin_shutdown();
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
    tokio::time::timeout(Duration::from_secs(10), &mut app.handle)
        .await
        .expect("run returns after the drain")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn unknown_paths_are_json_404() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");
}

#[tokio::test]
async fn wrong_methods_are_json_405_with_allow() {
    let app = spawn_app().await;
    let response = app
        .client
        .delete(app.url(&app.credentials_path))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert!(
        response.headers()["allow"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(error_code(response).await, "method_not_allowed");
}

#[tokio::test]
async fn head_on_the_credentials_route_is_405_and_mints_nothing() {
    let upstream = wiremock::MockServer::start().await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    let response = app
        .client
        .head(app.url(&app.credentials_path))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET, POST");
    let upstream_calls = upstream.received_requests().await.unwrap();
    assert!(
        upstream_calls.is_empty(),
        "HEAD reached Orga: {upstream_calls:?}"
    );
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the half-sent request still held its connection after 10 s"
    );
    // A connection that never sends a byte is closed too.
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut nothing = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut nothing)).await;
    assert!(
        closed.is_ok(),
        "a silent connection was still open after 10 s"
    );
    // The server keeps serving everyone else.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_sane_request_id_is_kept_and_a_hostile_one_replaced() {
    let app = spawn_app().await;
    let kept = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123");
    let hostile = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "x\"}{\"level\":\"ERROR\"")
        .send()
        .await
        .unwrap();
    let replaced = hostile.headers()["x-request-id"].to_str().unwrap();
    assert!(!replaced.contains('"') && !replaced.is_empty());
    let generated = app.client.get(app.url("/nope")).send().await.unwrap();
    assert!(
        generated.headers().contains_key("x-request-id"),
        "errors carry one too"
    );
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url(&app.credentials_path))
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(error_code(response).await, "payload_too_large");
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url(&app.credentials_path))
        .header("x-filler", "y".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(error_code(response).await, "headers_too_large");
}
