//! The fake Orga Cloud over real HTTP speaks Orga's wire format, including its error
//! shapes, for the whole call start: client-secrets, ice-config and calls.

use crate::helpers::*;
use orga_proxy::clock::Clock;
use orga_proxy::orga::mock::{self, MockOptions};
use orga_proxy::secret::Secret;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

async fn mint(base: &str, key: &str, email: Option<&str>) -> reqwest::Response {
    let mut url = format!("{base}/v1/realtime/client-secrets");
    if let Some(email) = email {
        url.push_str(&format!("?email={email}"));
    }
    client().post(url).bearer_auth(key).send().await.unwrap()
}

async fn ice(base: &str, token: &str) -> reqwest::Response {
    client()
        .get(format!("{base}/v1/realtime/ice-config"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn it_mints_tokens_that_only_it_accepts() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    let answer: Value = mint(&base, "sk_orga_ai_x", Some("a%40example.com"))
        .await
        .json()
        .await
        .unwrap();
    let token = answer["ephemeral_token"].as_str().unwrap();
    assert!(answer["expires_at"].is_u64());
    let servers: Value = ice(&base, token).await.json().await.unwrap();
    assert!(
        servers["iceServers"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    );

    let forged = ice(&base, &format!("{token}0")).await;
    assert_eq!(forged.status(), 401);
    let body: Value = forged.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Invalid ephemeral token");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let other = spawn_mock_upstream(MockOptions::default()).await;
    assert_eq!(
        ice(&other, token).await.status(),
        401,
        "another instance's key differs"
    );
}

#[tokio::test]
async fn it_refuses_keys_of_the_wrong_form() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    assert_eq!(
        mint(&base, "not_an_orga_key", Some("a%40example.com"))
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn it_mints_a_token_with_or_without_an_email_as_orga_does_today() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    for email in [None, Some("dev%2Bteam%40example.com")] {
        let answer = mint(&base, "sk_orga_ai_x", email).await;
        assert_eq!(answer.status(), 200, "email {email:?}");
        let body: Value = answer.json().await.unwrap();
        let token = body["ephemeral_token"].as_str().unwrap();
        assert_eq!(ice(&base, token).await.status(), 200, "email {email:?}");
    }
}

#[tokio::test]
async fn an_email_that_is_sent_must_be_an_email() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    for email in ["not-an-email", ""] {
        let refused = mint(&base, "sk_orga_ai_x", Some(email)).await;
        assert_eq!(refused.status(), 422, "email {email:?}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["detail"][0]["loc"], json!(["query", "email"]));
        assert_eq!(body["detail"][0]["type"], "value_error");
    }
}

#[tokio::test]
async fn a_pinned_key_is_the_only_one_accepted() {
    let base = spawn_mock_upstream(MockOptions {
        api_key: Some(Secret::new("sk_orga_ai_pinned")),
        ..MockOptions::default()
    })
    .await;
    assert_eq!(
        mint(&base, "sk_orga_ai_other", Some("a%40example.com"))
            .await
            .status(),
        401
    );
    assert_eq!(
        mint(&base, "sk_orga_ai_pinned", Some("a%40example.com"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn the_proxy_maps_a_refused_key_on_the_fake_to_upstream_auth_failed() {
    let base = spawn_mock_upstream(MockOptions {
        api_key: Some(Secret::new("sk_orga_ai_the_real_one")),
        ..MockOptions::default()
    })
    .await;
    let app = spawn_app_against(&base, |_| {}).await;
    let response = app.get_credentials().await;
    assert_eq!(response.status(), 502);
    assert_eq!(error_code(response).await, "upstream_auth_failed");
}

// ---- POST /v1/realtime/calls ----

/// An offer Chromium 156 made for the SDK's data channel and transceivers.
const CHROMIUM_OFFER: &str = include_str!("../../src/orga/mock/testdata/chromium-156-offer.sdp");

/// The body `@orga-ai/core`'s `connectToRealtime` sends.
fn sdk_body() -> Value {
    json!({
        "offer": {"sdp": CHROMIUM_OFFER, "type": "offer", "candidates": [
            {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
        ]},
        "params": {"voice": "Sofía", "model": "orga-1-beta", "temperature": 0.5,
                   "return_transcription": false, "instructions": null,
                   "modalities": ["audio", "video"], "history": true},
    })
}

async fn start_call(base: &str, token: &str, body: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/realtime/calls"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn minted_token(base: &str) -> String {
    let answer: Value = mint(base, "sk_orga_ai_x", None).await.json().await.unwrap();
    answer["ephemeral_token"].as_str().unwrap().to_owned()
}

/// The fake on a clock the test moves; returns its base URL and the clock.
async fn spawn_mock_upstream_on_a_manual_clock() -> (String, Clock) {
    let clock = Clock::manual(SystemTime::now());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = mock::router_with_clock(MockOptions::default(), clock.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), clock)
}

#[tokio::test]
async fn a_minted_token_starts_a_call_and_gets_an_sdp_answer_and_a_conversation_id() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    let token = minted_token(&base).await;
    let response = start_call(&base, &token, &sdk_body().to_string()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["answer"]["type"], "answer");
    let sdp = body["answer"]["sdp"].as_str().unwrap();
    assert!(sdp.starts_with("v=0\r\n"), "{sdp}");
    let m_lines: Vec<&str> = sdp.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(
        m_lines,
        [
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel"
        ]
    );
    assert!(
        body["conversation_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("conv_") && id.len() == 37),
        "{body}"
    );
}

#[tokio::test]
async fn a_call_with_a_token_the_fake_did_not_mint_is_401_with_orgas_body() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    let other = spawn_mock_upstream(MockOptions::default()).await;
    let token = minted_token(&base).await;
    let body = sdk_body().to_string();
    for (why, bearer) in [
        ("unknown", "ek_not_a_token".to_owned()),
        ("forged", format!("{token}0")),
        ("another instance's", minted_token(&other).await),
        ("the API key", "sk_orga_ai_x".to_owned()),
    ] {
        let response = start_call(&base, &bearer, &body).await;
        assert_eq!(response.status(), 401, "{why}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(
            error,
            json!({"error": {"message": "Invalid ephemeral token", "type": "invalid_request_error", "param": null, "code": null}}),
            "{why}"
        );
    }
    let anonymous = client()
        .post(format!("{base}/v1/realtime/calls"))
        .json(&sdk_body())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn a_call_with_an_expired_token_is_401() {
    let (base, clock) = spawn_mock_upstream_on_a_manual_clock().await;
    let token = minted_token(&base).await;
    let body = sdk_body().to_string();
    assert_eq!(start_call(&base, &token, &body).await.status(), 200);
    clock.advance(Duration::from_secs(600));
    assert_eq!(start_call(&base, &token, &body).await.status(), 401);
}

#[tokio::test]
async fn a_bad_call_body_is_422_naming_the_field() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    let token = minted_token(&base).await;
    let mut wrong_voice = sdk_body();
    wrong_voice["params"]["voice"] = json!(7);
    let cases = [
        ("{}".to_owned(), json!(["body", "offer"])),
        (
            json!({"offer": {"sdp": CHROMIUM_OFFER, "type": "answer"}}).to_string(),
            json!(["body", "offer", "type"]),
        ),
        (
            json!({"offer": {"sdp": "not an sdp", "type": "offer"}}).to_string(),
            json!(["body", "offer", "sdp"]),
        ),
        (wrong_voice.to_string(), json!(["body", "params", "voice"])),
        ("offer=1".to_owned(), json!(["body", 0])),
    ];
    for (body, loc) in cases {
        let response = start_call(&base, &token, &body).await;
        assert_eq!(response.status(), 422, "{body:.60}");
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["detail"][0]["loc"], loc, "{answer}");
    }
}

#[tokio::test]
async fn a_call_body_over_256_kib_is_413_and_the_client_reads_it() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    let token = minted_token(&base).await;
    let huge = json!({"offer": {"sdp": "v".repeat(300 * 1024), "type": "offer"}});
    let response = start_call(&base, &token, &huge.to_string()).await;
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn the_call_route_answers_a_browsers_preflight() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    let response = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/v1/realtime/calls"),
        )
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert_eq!(headers["access-control-allow-methods"], "POST");
    assert_eq!(
        headers["access-control-allow-headers"],
        "authorization, content-type"
    );
}
