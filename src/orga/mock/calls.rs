//! `POST /v1/realtime/calls` on the fake: Orga's call start, answered with an SDP answer
//! that a browser's `setRemoteDescription` accepts, and the CORS that lets the SDK make
//! the call from a page, as it does against the real Orga.
//!
//! Stateless like the rest of the fake: the token verifies itself, and nothing about a
//! call is kept (media would never flow to the fake anyway).

use super::body::{self, Refusal};
use super::sdp::AnswerKeys;
use super::{MockState, bearer, delay, openai_style_error, unprocessable};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::json;
use std::sync::Arc;

/// The largest call body accepted. A Chromium offer with every codec and a few dozen
/// candidates is under 20 KiB; this leaves room without buffering anything a client sends.
pub(super) const MAX_BODY: usize = 256 * 1024;

/// How much of an oversized body is read and dropped before answering 413: a client
/// still sending when the connection closes sees a reset instead of the answer.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// `POST /v1/realtime/calls`. Every answer, errors included, is readable cross-origin.
pub(super) async fn start(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    delay(&state).await;
    let mut response = answer(&state, &headers, body).await;
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// The CORS preflight the browser sends first (the SDK's `Authorization` and JSON
/// `Content-Type` make the POST non-simple). Open to any origin, as Orga's API is
/// called from customers' pages; no cookies are involved, so `*` is enough.
pub(super) async fn preflight(State(state): State<Arc<MockState>>) -> Response {
    delay(&state).await;
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "POST"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "authorization, content-type",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

async fn answer(state: &MockState, headers: &HeaderMap, body: Body) -> Response {
    // The size is refused first, as the reverse proxy in front of an API would.
    let bytes = match read_capped(body).await {
        Ok(bytes) => bytes,
        Err(ReadError::TooLarge) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({"detail": "Request body too large"})),
            )
                .into_response();
        }
        Err(ReadError::Broken) => return unreadable(),
    };
    if !bearer(headers).is_some_and(|t| state.token_is_valid(t)) {
        return openai_style_error(StatusCode::UNAUTHORIZED, "Invalid ephemeral token");
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("application/octet-stream"));
    let value = match body::decode(content_type, &bytes) {
        Ok(value) => value,
        Err(Refusal::Unprocessable(details)) => return unprocessable(details),
        Err(Refusal::Unreadable) => return unreadable(),
    };
    let offer = match body::validate(&value) {
        Ok(offer) => offer,
        Err(details) => return unprocessable(details),
    };
    let Some(keys) = AnswerKeys::random() else {
        tracing::error!("fake Orga Cloud: the system random source failed");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"detail": "Internal Server Error"})),
        )
            .into_response();
    };
    let conversation_id = format!("conv_{}", uuid::Uuid::new_v4().simple());
    Json(json!({
        "answer": {"type": "answer", "sdp": offer.answer(&keys)},
        "conversation_id": conversation_id,
    }))
    .into_response()
}

/// FastAPI's answer to a body it cannot even decode.
fn unreadable() -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"detail": "There was an error parsing the body"})),
    )
        .into_response()
}

enum ReadError {
    /// Over [`MAX_BODY`].
    TooLarge,
    /// The client's body broke off or was malformed.
    Broken,
}

/// The body, up to [`MAX_BODY`]; past it, the rest is read and dropped (up to
/// [`DRAIN_LIMIT`]) so that the 413 reaches the client.
async fn read_capped(mut body: Body) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| ReadError::Broken)?.into_data() else {
            continue; // trailers carry nothing the call needs
        };
        seen = seen.saturating_add(data.len());
        if seen > DRAIN_LIMIT {
            break;
        }
        if seen <= MAX_BODY {
            bytes.extend_from_slice(&data);
        }
    }
    if seen > MAX_BODY {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}
