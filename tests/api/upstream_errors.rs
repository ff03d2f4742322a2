//! Every way Orga can fail, and the contract's answer to each. The upstream body is
//! never echoed and half a credential is never handed out.

use crate::helpers::*;
use serde_json::json;
use std::time::{Duration, SystemTime};
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
async fn orga_refusing_the_token_it_just_minted_is_502_not_the_callers_401() {
    let body = json!({"error": {"message": UPSTREAM_DETAIL, "type": "invalid_request_error", "param": null, "code": null}});
    let upstream = scripted_upstream(
        token(),
        Some(ResponseTemplate::new(401).set_body_json(body)),
    )
    .await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    let (status, code, text) = outcome(&app).await;
    assert_eq!((status, code.as_str()), (502, "upstream_error"));
    assert!(!text.contains(UPSTREAM_DETAIL));
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

/// The proxy against an upstream whose client-secrets answers `answer` (ice-config
/// succeeds), with the breaker opening after two failures.
async fn app_with_client_secrets(answer: ResponseTemplate) -> (TestApp, MockServer) {
    let upstream = scripted_upstream(answer, None).await;
    let app = spawn_app_against(&upstream.uri(), |c| c.orga.circuit_breaker_threshold = 2).await;
    (app, upstream)
}

/// The status, code and `Retry-After` of one credentials request.
async fn limited(app: &TestApp) -> (u16, String, Option<u64>) {
    let response = app.get_credentials().await;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, error_code(response).await, retry_after)
}

#[tokio::test]
async fn orgas_429_is_503_upstream_rate_limited_with_orgas_retry_after() {
    let (app, _upstream) =
        app_with_client_secrets(ResponseTemplate::new(429).insert_header("retry-after", "7")).await;
    assert_eq!(
        limited(&app).await,
        (503, "upstream_rate_limited".into(), Some(7))
    );
}

#[tokio::test]
async fn orgas_429_with_an_http_date_is_passed_on_in_seconds() {
    let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
    let (app, _upstream) = app_with_client_secrets(
        ResponseTemplate::new(429).insert_header("retry-after", in_a_minute.as_str()),
    )
    .await;
    let (status, code, retry_after) = limited(&app).await;
    assert_eq!((status, code.as_str()), (503, "upstream_rate_limited"));
    let retry_after = retry_after.expect("Retry-After");
    assert!((55..=61).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn orgas_429_without_retry_after_means_5_seconds_and_absurd_waits_are_clamped() {
    let (app, _upstream) = app_with_client_secrets(ResponseTemplate::new(429)).await;
    assert_eq!(
        limited(&app).await,
        (503, "upstream_rate_limited".into(), Some(5))
    );
    let (app, _upstream) =
        app_with_client_secrets(ResponseTemplate::new(429).insert_header("retry-after", "86400"))
            .await;
    assert_eq!(limited(&app).await.2, Some(300));
}

#[tokio::test]
async fn orgas_429_on_ice_config_is_503_upstream_rate_limited_too() {
    let upstream = scripted_upstream(
        token(),
        Some(ResponseTemplate::new(429).insert_header("retry-after", "3")),
    )
    .await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;
    assert_eq!(
        limited(&app).await,
        (503, "upstream_rate_limited".into(), Some(3))
    );
    assert_eq!(
        calls_to(&upstream, ICE_PATH).await,
        1,
        "a 429 is not retried"
    );
}

#[tokio::test]
async fn many_429s_never_open_the_circuit_breaker() {
    // Orga limiting this account is a sane answer, not Orga failing: after ten of them
    // (the breaker opens after two failures here) requests still reach Orga.
    let upstream = scripted_upstream(token(), None).await;
    let limited_answer = ResponseTemplate::new(429).insert_header("retry-after", "1");
    first_answers(&upstream, ("POST", SECRET_PATH), limited_answer, 10).await;
    let app = spawn_app_against(&upstream.uri(), |c| c.orga.circuit_breaker_threshold = 2).await;
    for _ in 0..10 {
        assert_eq!(limited(&app).await.1, "upstream_rate_limited");
    }
    let ready = json_of(app.client.get(app.url("/readyz"))).await;
    assert_eq!(ready["upstream_circuit"], "closed");
    assert_eq!(app.get_credentials().await.status(), 200);
    assert_eq!(calls_to(&upstream, SECRET_PATH).await, 11);
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
async fn orgas_422_is_logged_at_error_naming_the_fields_never_the_values() {
    // A 422 means this proxy sent something Orga rejects: the operator must see which
    // fields, but the values (an email here) stay out of the logs.
    let body = json!({"detail": [
        {"type": "value_error", "loc": ["query", "email"], "msg": "not an email: leaked@value", "input": "leaked@value"},
        {"type": "missing", "loc": ["body", "scope"], "msg": "Field required", "input": null}
    ]});
    let upstream = scripted_upstream(ResponseTemplate::new(422).set_body_json(body), None).await;
    let proxy = crate::cli::Proxy::start(&mut crate::cli::serving_against(&upstream.uri()));
    let response = proxy.get_credentials().await;
    assert_eq!(response.status(), 502);
    assert_eq!(error_code(response).await, "upstream_error");
    let (_, logs) = proxy.stop();
    let line = logs
        .lines()
        .find(|l| l.contains("Orga rejected"))
        .unwrap_or_else(|| panic!("no 422 line in:\n{logs}"));
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["level"], "ERROR", "{line}");
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains("query.email") && error.contains("body.scope"),
        "{error}"
    );
    assert!(
        !logs.contains("leaked@value"),
        "a value reached the logs:\n{logs}"
    );
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
async fn a_connection_whose_answer_was_not_json_is_never_reused() {
    // Not JSON, or cut short: the connection each came on is closed. JSON of the wrong
    // shape says nothing about the connection, which is kept.
    for (answer, connections) in [
        (ResponseTemplate::new(200).set_body_string("<html>oops"), 3),
        (
            ResponseTemplate::new(200).set_body_string(r#"{"ephemeral_token": "ek_"#),
            3,
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({"ephemeral_token": ""})),
            1,
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({"token": "x"})),
            1,
        ),
    ] {
        let upstream = scripted_upstream(answer, None).await;
        let (relay, opened) = counting_relay(upstream.uri()).await;
        let app = spawn_app_against(&relay, |_| {}).await;
        for _ in 0..3 {
            assert_eq!(outcome(&app).await.1, "upstream_error");
        }
        assert_eq!(
            opened.load(std::sync::atomic::Ordering::SeqCst),
            connections,
            "connections opened for three such answers"
        );
    }
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

/// An Orga Cloud that answers client-secrets only after 5 s.
async fn hanging_upstream() -> MockServer {
    scripted_upstream(token().set_delay(Duration::from_secs(5)), None).await
}

/// Asserts that `app` answers 504 `upstream_timeout`, long before a hanging upstream
/// would have answered: `setting` is what cut the call short.
async fn times_out_early(app: &TestApp, setting: &str) {
    let started = std::time::Instant::now();
    let (status, code, _) = outcome(app).await;
    assert_eq!((status, code.as_str()), (504, "upstream_timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{setting} cut the call short"
    );
}

#[tokio::test]
async fn an_upstream_hanging_past_the_timeout_is_504_upstream_timeout() {
    let upstream = hanging_upstream().await;
    let app = spawn_app_against(&upstream.uri(), |c| {
        c.orga.timeout = Duration::from_millis(300)
    })
    .await;
    times_out_early(&app, "orga.timeout").await;
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_504_upstream_timeout_too() {
    // The head arrives at once, then the body stops after one byte: the call's timeout
    // covers the body, not only the head.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{";
                let _ = stream.write_all(head.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            });
        }
    });
    let app = spawn_app_against(&upstream, |c| c.orga.timeout = Duration::from_millis(300)).await;
    times_out_early(&app, "orga.timeout").await;
}

#[tokio::test]
async fn the_whole_request_deadline_is_504_too() {
    let upstream = hanging_upstream().await;
    let app = spawn_app_against(&upstream.uri(), |c| {
        c.server.request_timeout = Duration::from_millis(300);
    })
    .await;
    times_out_early(&app, "server.request_timeout").await;
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
