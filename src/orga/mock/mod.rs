//! The fake Orga Cloud behind `orga-proxy mock-upstream` and `orga-proxy dev`: the three
//! realtime endpoints (client-secrets, ice-config, calls) with Orga's wire format and
//! documented error shapes.
//!
//! Tokens are self-verifying (`ek_<id>_<expiry>_<tag>`, the tag a keyed hash under a
//! per-process random key), so the fake accepts on ice-config and calls exactly the
//! tokens it minted and unexpired, without keeping state that grows under a benchmark.

mod body;
mod calls;
pub mod sdp;

use crate::clock::Clock;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// How long a minted token stays valid.
const TOKEN_TTL: Duration = Duration::from_secs(600);
/// The API key prefix accepted when no key is pinned.
pub const API_KEY_PREFIX: &str = "sk_orga_ai_";

/// How the fake behaves.
#[derive(Debug, Clone, Default)]
pub struct MockOptions {
    /// Accept only this API key; `None` accepts any `sk_orga_ai_*` key.
    pub api_key: Option<crate::secret::Secret>,
    /// Added before every answer, to model a distant upstream.
    pub latency: Duration,
}

struct MockState {
    options: MockOptions,
    /// Keys the token tag; random per process so tokens cannot be forged or replayed
    /// across restarts.
    tag_key: RandomState,
    /// "Now" (its wall reading), for minting and verifying tokens; tests pass a manual
    /// clock they move forward instead of waiting out a token's life.
    clock: Clock,
}

impl MockState {
    fn new(options: MockOptions, clock: Clock) -> Self {
        Self {
            options,
            tag_key: RandomState::new(),
            clock,
        }
    }

    fn now_unix(&self) -> u64 {
        self.clock
            .wall()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// A token that [`MockState::token_is_valid`] accepts until `expires_at`.
    fn mint_token(&self, expires_at: u64) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let tag = self.tag_key.hash_one((&id, expires_at));
        format!("ek_{id}_{expires_at}_{tag:016x}")
    }

    /// Whether this process minted `token` and it has not expired.
    fn token_is_valid(&self, token: &str) -> bool {
        let mut parts = token.strip_prefix("ek_").unwrap_or("").split('_');
        let (Some(id), Some(expiry), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Ok(expires_at), Ok(tag)) = (expiry.parse::<u64>(), u64::from_str_radix(tag, 16))
        else {
            return false;
        };
        expires_at > self.now_unix() && self.tag_key.hash_one((id, expires_at)) == tag
    }
}

/// The fake's router, on the system clock.
pub fn router(options: MockOptions) -> Router {
    router_with_clock(options, Clock::system())
}

/// The fake's router, dating tokens by `clock`'s wall reading.
pub fn router_with_clock(options: MockOptions, clock: Clock) -> Router {
    let state = Arc::new(MockState::new(options, clock));
    Router::new()
        .route("/v1/realtime/client-secrets", post(client_secrets))
        .route("/v1/realtime/ice-config", get(ice_config))
        .route(
            "/v1/realtime/calls",
            post(calls::start).options(calls::preflight),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({"detail": "Method Not Allowed"})),
            )
        })
        .with_state(state)
}

/// Orga's documented 401/403 body.
fn openai_style_error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
    (status, Json(body)).into_response()
}

/// One entry of FastAPI's 422 `detail`. `input` stays null: the fake never echoes what
/// it was sent (an SDP, a token) back into a body that may end up in a log.
fn detail(loc: Value, kind: &str, msg: &str) -> Value {
    json!({"type": kind, "loc": loc, "msg": msg, "input": null})
}

/// FastAPI's 422 body, listing every problem found.
fn unprocessable(details: Vec<Value>) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"detail": details})),
    )
        .into_response()
}

/// The configured latency. Zero skips the timer entirely: tokio rounds even a zero
/// sleep up to its next 1 ms tick, which would make a "fast" fake cost a millisecond
/// per call and swamp every benchmark.
async fn delay(state: &MockState) {
    if !state.options.latency.is_zero() {
        tokio::time::sleep(state.options.latency).await;
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// `POST /v1/realtime/client-secrets`. The `email` query parameter is optional, as it is
/// for Orga today (the current Node SDK sends none, 1.0.0-beta and the Python SDK do);
/// when sent it must be an email.
async fn client_secrets(
    State(state): State<Arc<MockState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    delay(&state).await;
    let key_ok = match (bearer(&headers), &state.options.api_key) {
        (Some(key), Some(pinned)) => key == pinned.expose(),
        (Some(key), None) => key.starts_with(API_KEY_PREFIX) && key.len() > API_KEY_PREFIX.len(),
        (None, _) => false,
    };
    if !key_ok {
        return openai_style_error(StatusCode::UNAUTHORIZED, "Invalid API key provided");
    }
    let email_ok = query
        .get("email")
        .is_none_or(|email| email.parse::<crate::config::Email>().is_ok());
    if !email_ok {
        return unprocessable(vec![detail(
            json!(["query", "email"]),
            "value_error",
            "value is not a valid email address",
        )]);
    }
    let expires_at = state.now_unix() + TOKEN_TTL.as_secs();
    let token = state.mint_token(expires_at);
    Json(json!({"ephemeral_token": token, "expires_at": expires_at})).into_response()
}

async fn ice_config(State(state): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    delay(&state).await;
    if !bearer(&headers).is_some_and(|t| state.token_is_valid(t)) {
        return openai_style_error(StatusCode::UNAUTHORIZED, "Invalid ephemeral token");
    }
    let ice: Value = json!({"iceServers": [
        {"urls": "stun:127.0.0.1:3478"},
        {"urls": ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"],
         "username": "fake-orga-user", "credential": "fake-orga-turn-credential"}
    ]});
    Json(ice).into_response()
}

#[cfg(test)]
mod tests;
