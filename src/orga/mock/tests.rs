//! The fake's handlers through its router, as the proxy and the SDK call them.

use super::*;
use axum::body::Body;
use axum::http::Request;
use std::time::SystemTime;
use tower::ServiceExt;

fn state() -> MockState {
    MockState::new(MockOptions::default(), Clock::system())
}

#[test]
fn only_minted_unexpired_tokens_verify() {
    let state = state();
    let token = state.mint_token(state.now_unix() + 60);
    assert!(state.token_is_valid(&token));
    assert!(!state.token_is_valid(&format!("{token}0")));
    assert!(!state.token_is_valid(&token.replacen("ek_", "ek_0", 1)));
    let expired = state.mint_token(state.now_unix() - 1);
    assert!(!state.token_is_valid(&expired));
    assert!(!state.token_is_valid("garbage"));
    assert!(!state.token_is_valid(&token.replace('_', "")));
    assert!(
        !self::state().token_is_valid(&token),
        "another process's key differs"
    );
}

#[test]
fn tokens_expire_by_the_injected_clock() {
    let clock = Clock::manual(SystemTime::now());
    let state = MockState::new(MockOptions::default(), clock.clone());
    let token = state.mint_token(state.now_unix() + TOKEN_TTL.as_secs());
    clock.advance(TOKEN_TTL - Duration::from_secs(1));
    assert!(state.token_is_valid(&token));
    clock.advance(Duration::from_secs(1));
    assert!(!state.token_is_valid(&token));
}

fn post_secrets(query: &str) -> Request<Body> {
    Request::post(format!("/v1/realtime/client-secrets{query}"))
        .header("authorization", "Bearer sk_orga_ai_test")
        .body(Body::empty())
        .expect("a valid request")
}

/// Sends `request` to `fake`; the status and the body as JSON.
async fn send(fake: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = fake.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .expect("a body");
    (status, serde_json::from_slice(&bytes).expect("JSON"))
}

async fn mint(query: &str) -> (StatusCode, Value) {
    send(&router(MockOptions::default()), post_secrets(query)).await
}

#[tokio::test]
async fn client_secrets_mints_a_token_without_an_email() {
    let (status, body) = mint("").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["ephemeral_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("ek_"))
    );
}

#[tokio::test]
async fn client_secrets_mints_a_token_with_a_valid_email() {
    let (status, _) = mint("?email=dev%2Bteam%40example.com").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn client_secrets_refuses_an_email_that_is_not_one() {
    for query in ["?email=not-an-email", "?email="] {
        let (status, body) = mint(query).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert_eq!(body["detail"][0]["loc"], json!(["query", "email"]));
        assert_eq!(body["detail"][0]["type"], "value_error");
    }
}

// ---- POST /v1/realtime/calls ----

const CHROMIUM_OFFER: &str = include_str!("testdata/chromium-156-offer.sdp");

/// The body `@orga-ai/core` sends, with its defaults.
fn sdk_body() -> Value {
    json!({
        "offer": {
            "sdp": CHROMIUM_OFFER,
            "type": "offer",
            "candidates": [{"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host", "sdpMid": "0", "sdpMLineIndex": 0}],
        },
        "params": {
            "voice": "Sofía", "model": "orga-1-beta", "temperature": 0.5,
            "return_transcription": false, "instructions": null,
            "modalities": ["audio", "video"], "history": true,
        },
    })
}

/// A router and a token it minted.
async fn fake_with_token() -> (Router, String) {
    let fake = router(MockOptions::default());
    let (status, body) = send(&fake, post_secrets("")).await;
    assert_eq!(status, StatusCode::OK);
    let token = body["ephemeral_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    (fake, token)
}

fn call(token: Option<&str>, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post("/v1/realtime/calls").header("origin", "http://localhost:5173");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(body.into()).expect("a valid request")
}

fn json_call(token: &str, body: &Value) -> Request<Body> {
    call(Some(token), Some("application/json"), body.to_string())
}

/// Sends `request`; the status, the CORS origin header and the body as JSON.
async fn send_cors(fake: &Router, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = fake.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let origin = response
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("a body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, origin, body)
}

/// The `loc`s of a 422's `detail`, each as a JSON array.
fn locs(body: &Value) -> Vec<Value> {
    body["detail"]
        .as_array()
        .map(|d| d.iter().map(|e| e["loc"].clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_call_with_a_minted_token_and_the_sdks_body_gets_an_answer_and_a_conversation() {
    let (fake, token) = fake_with_token().await;
    let (status, origin, body) = send_cors(&fake, json_call(&token, &sdk_body())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(origin.as_deref(), Some("*"));
    assert_eq!(body["answer"]["type"], "answer");
    let sdp = body["answer"]["sdp"].as_str().expect("an SDP");
    let m_lines: Vec<&str> = sdp.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(m_lines.len(), 3, "{sdp}");
    assert!(sdp.contains("a=group:BUNDLE 0 1 2"));
    let id = body["conversation_id"].as_str().expect("an id");
    let hex = id.strip_prefix("conv_").expect("conv_ prefix");
    assert_eq!(hex.len(), 32);
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
}

#[tokio::test]
async fn every_call_is_a_new_conversation_with_new_credentials() {
    let (fake, token) = fake_with_token().await;
    let (_, _, one) = send_cors(&fake, json_call(&token, &sdk_body())).await;
    let (_, _, two) = send_cors(&fake, json_call(&token, &sdk_body())).await;
    assert_ne!(one["conversation_id"], two["conversation_id"]);
    assert_ne!(one["answer"]["sdp"], two["answer"]["sdp"]);
}

#[tokio::test]
async fn only_the_offer_is_required() {
    let (fake, token) = fake_with_token().await;
    let body = json!({"offer": {"sdp": CHROMIUM_OFFER, "type": "offer"}});
    let (status, _, _) = send_cors(&fake, json_call(&token, &body)).await;
    assert_eq!(status, StatusCode::OK);
    let body = json!({"offer": {"sdp": CHROMIUM_OFFER, "type": "offer", "candidates": null}, "params": null});
    let (status, _, _) = send_cors(&fake, json_call(&token, &body)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_call_without_a_token_the_fake_minted_is_401_with_orgas_body() {
    let (fake, token) = fake_with_token().await;
    let other_fake_token = fake_with_token().await.1;
    let body = sdk_body().to_string();
    for bearer in [
        None,
        Some("sk_orga_ai_an_api_key"),
        Some(&format!("{token}0")),
        Some(other_fake_token.as_str()),
    ] {
        let (status, origin, answer) =
            send_cors(&fake, call(bearer, Some("application/json"), body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bearer:?}");
        assert_eq!(origin.as_deref(), Some("*"), "readable by the page");
        assert_eq!(
            answer,
            json!({"error": {"message": "Invalid ephemeral token", "type": "invalid_request_error", "param": null, "code": null}})
        );
    }
}

#[tokio::test]
async fn a_token_past_its_expiry_cannot_start_a_call() {
    let clock = Clock::manual(SystemTime::now());
    let fake = router_with_clock(MockOptions::default(), clock.clone());
    let (_, minted) = send(&fake, post_secrets("")).await;
    let token = minted["ephemeral_token"].as_str().expect("a token");
    let (status, _, _) = send_cors(&fake, json_call(token, &sdk_body())).await;
    assert_eq!(status, StatusCode::OK);
    clock.advance(TOKEN_TTL);
    let (status, _, _) = send_cors(&fake, json_call(token, &sdk_body())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_body_over_the_cap_is_413() {
    let (fake, token) = fake_with_token().await;
    let huge = json!({"offer": {"sdp": "v".repeat(calls::MAX_BODY), "type": "offer"}});
    let (status, origin, _) = send_cors(&fake, json_call(&token, &huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(origin.as_deref(), Some("*"));
}

#[tokio::test]
async fn a_missing_or_malformed_offer_is_422_naming_each_field() {
    let (fake, token) = fake_with_token().await;
    let cases = [
        (json!({}), vec![json!(["body", "offer"])], "missing"),
        (
            json!({"offer": "v=0"}),
            vec![json!(["body", "offer"])],
            "model_attributes_type",
        ),
        (
            json!({"offer": {}}),
            vec![
                json!(["body", "offer", "sdp"]),
                json!(["body", "offer", "type"]),
            ],
            "missing",
        ),
        (
            json!({"offer": {"sdp": "", "type": "offer"}}),
            vec![json!(["body", "offer", "sdp"])],
            "string_too_short",
        ),
        (
            json!({"offer": {"sdp": 7, "type": "offer"}}),
            vec![json!(["body", "offer", "sdp"])],
            "string_type",
        ),
        (
            json!({"offer": {"sdp": CHROMIUM_OFFER, "type": "answer"}}),
            vec![json!(["body", "offer", "type"])],
            "literal_error",
        ),
        (
            json!({"offer": {"sdp": CHROMIUM_OFFER, "type": "offer", "candidates": {}}}),
            vec![json!(["body", "offer", "candidates"])],
            "list_type",
        ),
        (
            json!({"offer": {"sdp": CHROMIUM_OFFER, "type": "offer", "candidates": [{"sdpMLineIndex": "0"}]}}),
            vec![json!(["body", "offer", "candidates", 0, "sdpMLineIndex"])],
            "int_type",
        ),
        (
            json!([1, 2]),
            vec![json!(["body"])],
            "model_attributes_type",
        ),
    ];
    for (body, expected_locs, kind) in cases {
        let (status, origin, answer) = send_cors(&fake, json_call(&token, &body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(origin.as_deref(), Some("*"));
        assert_eq!(locs(&answer), expected_locs, "{body}: {answer}");
        assert_eq!(answer["detail"][0]["type"], kind, "{body}: {answer}");
        assert!(answer["detail"][0]["input"].is_null(), "nothing is echoed");
    }
}

#[tokio::test]
async fn an_sdp_that_is_not_an_offer_is_422_at_the_sdp() {
    let (fake, token) = fake_with_token().await;
    for sdp in ["hello", "v=0\r\ns=-\r\n", "v=0\r\nm=audio\r\n"] {
        let body = json!({"offer": {"sdp": sdp, "type": "offer"}});
        let (status, _, answer) = send_cors(&fake, json_call(&token, &body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{sdp:?}");
        assert_eq!(locs(&answer), [json!(["body", "offer", "sdp"])]);
        assert_eq!(answer["detail"][0]["type"], "value_error");
        assert!(
            answer["detail"][0]["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("Value error, ")),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn params_of_the_wrong_type_are_422_naming_each_one() {
    let (fake, token) = fake_with_token().await;
    let mut body = sdk_body();
    body["params"] = json!({
        "voice": 1, "model": null, "temperature": "0.5", "return_transcription": "no",
        "instructions": 3, "modalities": ["audio", 2], "history": 1,
    });
    let (status, _, answer) = send_cors(&fake, json_call(&token, &body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut found = locs(&answer);
    found.sort_by_key(Value::to_string);
    let mut expected = vec![
        json!(["body", "params", "voice"]),
        json!(["body", "params", "model"]),
        json!(["body", "params", "temperature"]),
        json!(["body", "params", "return_transcription"]),
        json!(["body", "params", "instructions"]),
        json!(["body", "params", "modalities", 1]),
        json!(["body", "params", "history"]),
    ];
    expected.sort_by_key(Value::to_string);
    assert_eq!(found, expected, "{answer}");

    body["params"] = json!(["audio"]);
    let (status, _, answer) = send_cors(&fake, json_call(&token, &body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(locs(&answer), [json!(["body", "params"])]);
    body["params"] = json!({"modalities": "audio"});
    let (_, _, answer) = send_cors(&fake, json_call(&token, &body)).await;
    assert_eq!(locs(&answer), [json!(["body", "params", "modalities"])]);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_422_like_fastapi() {
    let (fake, token) = fake_with_token().await;
    let (status, _, answer) = send_cors(
        &fake,
        call(Some(&token), Some("application/json"), "{\"offer\": nope}"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["detail"][0]["type"], "json_invalid");
    assert_eq!(answer["detail"][0]["loc"][0], "body");
    // Python points at the value's start (10), serde_json where it gave up (11).
    let position = answer["detail"][0]["loc"][1].as_u64();
    assert!(position.is_some_and(|p| (10..=11).contains(&p)), "{answer}");

    let (status, _, answer) =
        send_cors(&fake, call(Some(&token), Some("application/json"), "")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["detail"][0]["type"], "missing");
    assert_eq!(answer["detail"][0]["loc"], json!(["body"]));

    let text = sdk_body().to_string();
    let (status, _, answer) =
        send_cors(&fake, call(Some(&token), Some("text/plain"), text.clone())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["detail"][0]["loc"], json!(["body"]));
    let (status, _, _) = send_cors(&fake, call(Some(&token), None, text)).await;
    assert_eq!(status, StatusCode::OK, "no Content-Type is parsed as JSON");

    let (status, _, answer) = send_cors(
        &fake,
        call(
            Some(&token),
            Some("application/json"),
            vec![b'{', 0xff, b'}'],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["detail"], "There was an error parsing the body");
}

#[tokio::test]
async fn the_preflight_lets_any_page_post_with_a_bearer_and_json() {
    let fake = router(MockOptions::default());
    let request = Request::options("/v1/realtime/calls")
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .body(Body::empty())
        .expect("a valid request");
    let response = fake.oneshot(request).await.expect("infallible");
    assert!(response.status().is_success());
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("access-control-allow-origin"), "*");
    assert_eq!(header("access-control-allow-methods"), "POST");
    assert_eq!(
        header("access-control-allow-headers"),
        "authorization, content-type"
    );
    assert!(
        header("access-control-allow-credentials").is_empty(),
        "no cookies"
    );
}

#[tokio::test(start_paused = true)]
async fn the_call_waits_out_the_configured_latency() {
    let fake = router(MockOptions {
        latency: Duration::from_millis(250),
        ..MockOptions::default()
    });
    let (_, minted) = send(&fake, post_secrets("")).await;
    let token = minted["ephemeral_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let started = tokio::time::Instant::now();
    let (status, _, _) = send_cors(&fake, json_call(&token, &sdk_body())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(250));
}
