//! The fake's handlers through its router, as the proxy and the SDK call them.

use super::*;
use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

fn state() -> MockState {
    MockState::new(MockOptions::default(), Arc::new(SystemTime::now))
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
    let start = SystemTime::now();
    let offset = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let wall: WallClock = {
        let offset = offset.clone();
        Arc::new(move || {
            start + Duration::from_secs(offset.load(std::sync::atomic::Ordering::Relaxed))
        })
    };
    let state = MockState::new(MockOptions::default(), wall);
    let token = state.mint_token(state.now_unix() + TOKEN_TTL.as_secs());
    offset.store(
        TOKEN_TTL.as_secs() - 1,
        std::sync::atomic::Ordering::Relaxed,
    );
    assert!(state.token_is_valid(&token));
    offset.store(TOKEN_TTL.as_secs(), std::sync::atomic::Ordering::Relaxed);
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
