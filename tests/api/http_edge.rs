//! The rest of the HTTP edge: probes, JSON 404/405, preflights, request ids, request
//! limits (target, head, `Host`), and what the parser refuses before a request exists.

use crate::binary::{Proxy, serving_test_config_against};
use crate::helpers::*;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
    let ready = app.get("/readyz").await;
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
    app.stops_within(Duration::from_secs(10), "run returns after the drain")
        .await;
}

#[tokio::test]
async fn unknown_paths_are_json_404() {
    let app = spawn_app().await;
    let response = app.get("/nope").await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_code(response).await, "not_found");
}

#[tokio::test]
async fn wrong_methods_are_json_405_allowing_exactly_get_and_post() {
    let app = spawn_app().await;
    let url = app.url(&app.credentials_path);
    for method in [reqwest::Method::DELETE, reqwest::Method::PUT] {
        let response = app
            .client
            .request(method.clone(), &url)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        // HEAD is refused too (it would mint a token), so it is not advertised.
        assert_eq!(response.headers()["allow"], "GET, POST", "{method}");
        assert_eq!(error_code(response).await, "method_not_allowed");
    }
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
async fn head_is_refused_before_the_gate_spends_a_budget_or_asks_for_a_key() {
    let app = spawn_app_with(|c| {
        c.auth.mode = orga_proxy::config::AuthMode::ApiKey;
        c.auth.api_keys = api_keys(&["web:0123456789abcdef0123"]);
        c.rate_limit.enabled = true;
        c.rate_limit.burst = 1;
        c.rate_limit.requests_per_minute = 1;
    })
    .await;
    let url = app.url(&app.credentials_path);
    for _ in 0..3 {
        let response = app.client.head(&url).send().await.unwrap();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()["allow"], "GET, POST");
    }
    let response = app
        .client
        .get(&url)
        .bearer_auth("0123456789abcdef0123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the HEADs spent no budget");
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
    let health = app.get("/healthz").await;
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
    let generated = app.get("/nope").await;
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

#[tokio::test]
async fn a_preflight_is_answered_only_on_the_services_own_routes() {
    const ORIGIN: &str = "https://app.example.com";
    let app = spawn_app_with(|c| c.cors.allowed_origins = origins(&[ORIGIN])).await;
    let preflight = |path: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url(path))
            .header("origin", ORIGIN)
            .header("access-control-request-method", "GET")
            .send()
    };
    let own = preflight(&app.credentials_path).await.unwrap();
    assert_eq!(own.status(), 204);
    assert_eq!(own.headers()["access-control-allow-origin"], ORIGIN);

    for (path, status, code) in [
        ("/nope", 404, "not_found"),
        ("/healthz", 405, "method_not_allowed"),
    ] {
        let response = preflight(path).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        if status == 405 {
            assert_eq!(response.headers()["allow"], "GET, HEAD", "{path}");
        }
        let cors = cors_headers(&response);
        assert!(cors.is_empty(), "{path} answered CORS headers {cors:?}");
        assert_eq!(error_code(response).await, code, "{path}");
    }
}

/// Sends `request` as raw bytes and reads the answer until the server closes or 5 s pass.
async fn raw(app: &TestApp, request: &[u8]) -> String {
    let mut connection = TcpStream::connect(app.addr).await.unwrap();
    connection.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_http_1_1_request_without_host_or_with_two_is_a_json_400() {
    let app = spawn_app().await;
    for request in [
        "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(&app, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{request:?}: {answer}");
        // Refused by the edge, not by hyper (which takes either): the contract's body.
        assert!(answer.contains(r#""code":"bad_request""#), "{answer}");
    }
    // HTTP/1.0 has no Host requirement, and one Host is fine.
    for request in [
        "GET /healthz HTTP/1.0\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(&app, request.as_bytes()).await;
        assert!(answer.contains(" 200 OK"), "{request:?}: {answer}");
    }
}

#[tokio::test]
async fn a_request_target_over_8_kib_is_a_json_414() {
    let app = spawn_app().await;
    let long = app
        .get(&format!("/healthz?q={}", "a".repeat(8 * 1024)))
        .await;
    assert_eq!(long.status(), 414);
    assert_eq!(error_code(long).await, "uri_too_long");
    let short = app
        .get(&format!("/healthz?q={}", "a".repeat(4 * 1024)))
        .await;
    assert_eq!(short.status(), 200);
}

#[tokio::test]
async fn a_request_the_parser_refuses_gets_its_bare_400() {
    // As the contract says: no request exists yet, so there is no JSON body. This is
    // what docs/http.md shows for a non-numeric Content-Length.
    let app = spawn_app().await;
    let answer = raw(
        &app,
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            app.credentials_path
        )
        .as_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(!answer.contains("bad_request"), "{answer}");
}

#[tokio::test]
async fn a_long_unknown_path_is_not_logged_whole() {
    let upstream = spawn_mock_upstream(Default::default()).await;
    let mut proxy = Proxy::start(&mut serving_test_config_against(&upstream));
    let path = format!("/{}", "x".repeat(60 * 1024));
    let response = client()
        .get(format!("http://{}{path}", proxy.addr))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
    let logs = proxy.wait_for_log("request finished", 1);
    let line = logs
        .lines()
        .find(|l| l.contains("request finished"))
        .unwrap();
    let logged: Value = serde_json::from_str(line).unwrap();
    let logged_path = logged["span"]["path"]
        .as_str()
        .or_else(|| logged["path"].as_str())
        .unwrap_or_else(|| panic!("no path in {line:.300}"));
    assert!(logged_path.starts_with("/xxx"), "{logged_path:.300}");
    assert!(
        logged_path.len() <= 300,
        "a path of {} bytes was logged",
        logged_path.len()
    );
    assert!(
        logs.len() < 16 * 1024,
        "{} bytes of logs for one request",
        logs.len()
    );
    let (status, _) = proxy.stop();
    assert_eq!(status, Some(0));
}
