//! Every way Orga can fail, and the contract's answer to each. The upstream body is
//! never echoed and half a credential is never handed out.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Put in upstream error bodies; must never reach the client.
const UPSTREAM_DETAIL: &str = "internal-upstream-detail-xyz";

/// Calls the proxy and returns (status, code, raw body).
async fn outcome(app: &TestApp) -> (u16, String, String) {
    let response = app.get_credentials().await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).expect("JSON error body");
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
        text,
    )
}

#[tokio::test]
async fn upstream_401_is_502_upstream_auth_failed_and_ice_is_never_called() {
    let body = json!({"error": {"message": UPSTREAM_DETAIL, "type": "invalid_request_error", "param": null, "code": null}});
    let upstream = scripted_upstream(ResponseTemplate::new(401).set_body_json(body), None).await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    let (status, code, text) = outcome(&app).await;
    assert_eq!((status, code.as_str()), (502, "upstream_auth_failed"));
    assert!(!text.contains(UPSTREAM_DETAIL));
    let requests = upstream.received_requests().await.unwrap();
    assert!(requests.iter().all(|r| r.url.path() != ICE_PATH));
}

#[tokio::test]
async fn upstream_500_is_502_upstream_error_without_echoing_the_body() {
    let upstream = scripted_upstream(
        ResponseTemplate::new(500).set_body_string(UPSTREAM_DETAIL),
        None,
    )
    .await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    let (status, code, text) = outcome(&app).await;
    assert_eq!((status, code.as_str()), (502, "upstream_error"));
    assert!(!text.contains(UPSTREAM_DETAIL));
}

#[tokio::test]
async fn upstream_422_is_502_upstream_error() {
    let body = json!({"detail": [{"loc": ["query", "email"], "msg": UPSTREAM_DETAIL}]});
    let upstream = scripted_upstream(ResponseTemplate::new(422).set_body_json(body), None).await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    let (status, code, text) = outcome(&app).await;
    assert_eq!((status, code.as_str()), (502, "upstream_error"));
    assert!(!text.contains(UPSTREAM_DETAIL));
}

#[tokio::test]
async fn malformed_json_is_502_upstream_error() {
    let upstream = scripted_upstream(
        ResponseTemplate::new(200).set_body_string("{not json"),
        None,
    )
    .await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    let (status, code, _) = outcome(&app).await;
    assert_eq!((status, code.as_str()), (502, "upstream_error"));
}

#[tokio::test]
async fn a_token_missing_from_the_answer_is_502_upstream_error() {
    let upstream = scripted_upstream(
        ResponseTemplate::new(200).set_body_json(json!({"token": "x"})),
        None,
    )
    .await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    assert_eq!(outcome(&app).await.1, "upstream_error");
}

#[tokio::test]
async fn an_oversized_answer_is_refused() {
    let huge = json!({"ephemeral_token": "x".repeat(200 * 1024)});
    let upstream = scripted_upstream(ResponseTemplate::new(200).set_body_json(huge), None).await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    assert_eq!(outcome(&app).await.1, "upstream_error");
}

#[tokio::test]
async fn a_failing_ice_call_fails_the_request_with_no_half_credential() {
    let upstream = scripted_upstream(token(), Some(ResponseTemplate::new(503))).await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    let (status, code, text) = outcome(&app).await;
    assert_eq!((status, code.as_str()), (502, "upstream_error"));
    assert!(
        !text.contains("ek_ok"),
        "the minted token must not leak out: {text}"
    );
}

#[tokio::test]
async fn malformed_ice_servers_are_refused() {
    let bad =
        ResponseTemplate::new(200).set_body_json(json!({"iceServers": [{"urls": "http://evil"}]}));
    let upstream = scripted_upstream(token(), Some(bad)).await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    assert_eq!(outcome(&app).await.1, "upstream_error");
}

#[tokio::test]
async fn an_upstream_hanging_past_the_timeout_is_504_upstream_timeout() {
    let slow = token().set_delay(Duration::from_secs(5));
    let upstream = scripted_upstream(slow, None).await;
    let app = spawn_app_against(&upstream.uri(), |c| {
        c.orga.timeout = Duration::from_millis(300)
    })
    .await;
    let started = std::time::Instant::now();
    let (status, code, _) = outcome(&app).await;
    assert_eq!((status, code.as_str()), (504, "upstream_timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the timeout cut the call short"
    );
}

#[tokio::test]
async fn the_whole_request_deadline_is_504_too() {
    let slow = token().set_delay(Duration::from_secs(5));
    let upstream = scripted_upstream(slow, None).await;
    let app = spawn_app_against(&upstream.uri(), |c| {
        c.server.request_timeout = Duration::from_millis(300);
    })
    .await;
    let (status, code, _) = outcome(&app).await;
    assert_eq!((status, code.as_str()), (504, "upstream_timeout"));
}

#[tokio::test]
async fn a_refused_connection_is_502_upstream_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let app = spawn_app_against(&format!("http://{addr}"), |_| {}).await;
    let (status, code, _) = outcome(&app).await;
    assert_eq!((status, code.as_str()), (502, "upstream_error"));
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let upstream = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(SECRET_PATH))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{}{SECRET_PATH}", elsewhere.uri())),
        )
        .mount(&upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(token())
        .expect(0)
        .mount(&elsewhere)
        .await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    let (status, code, _) = outcome(&app).await;
    assert_eq!((status, code.as_str()), (502, "upstream_error"));
}
