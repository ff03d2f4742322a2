//! Request limits: header and body size (413/431 with the JSON error body, which the
//! server's own defaults would answer as bare text) and the whole-request deadline.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Total size of all request headers accepted (names, values and separators).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest request body accepted. The credentials route needs none; a small JSON
/// object from an SDK fits comfortably.
pub const MAX_BODY_BYTES: u64 = 16 * 1024;

/// Middleware: refuses oversized requests before any work, then runs the rest of the
/// stack under `server.request_timeout`.
pub async fn limits(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge.into_response();
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()));
    match declared {
        Some(None) => {
            return ApiError::BadRequest("Content-Length is not a number.".into()).into_response();
        }
        Some(Some(length)) if length > MAX_BODY_BYTES => {
            return ApiError::PayloadTooLarge.into_response();
        }
        _ => {}
    }
    // A chunked body without Content-Length is never buffered: no handler reads a body.
    let deadline = state.config.server.request_timeout;
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = ?deadline, "request exceeded server.request_timeout");
            ApiError::UpstreamTimeout.into_response()
        }
    }
}
