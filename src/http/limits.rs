//! Request limits: header and body size (413/431 with the JSON error body, which the
//! server's own defaults would answer as bare text) and the whole-request deadline.

use crate::error::ApiError;
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::time::Duration;

/// Total size of all request headers accepted (names, values and separators).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest request body accepted. The credentials route needs none; a small JSON
/// object from an SDK fits comfortably.
pub const MAX_BODY_BYTES: u64 = 16 * 1024;

/// Refuses an oversized request before any work.
pub fn check(request: &Request) -> Result<(), ApiError> {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()));
    match declared {
        Some(None) => Err(ApiError::BadRequest(
            "Content-Length is not a number.".into(),
        )),
        Some(Some(length)) if length > MAX_BODY_BYTES => Err(ApiError::PayloadTooLarge),
        // A chunked body without Content-Length is never buffered: no handler reads a body.
        _ => Ok(()),
    }
}

/// Waits for `answer` at most `deadline` (`server.request_timeout`), then answers 504.
pub async fn within(deadline: Duration, answer: impl Future<Output = Response>) -> Response {
    match tokio::time::timeout(deadline, answer).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout = ?deadline, "request exceeded server.request_timeout");
            ApiError::UpstreamTimeout.into_response()
        }
    }
}
