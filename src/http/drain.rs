//! The end of the drain: when `server.shutdown_timeout` passes, requests still open
//! are answered 503 `unavailable` at once instead of being left running, so serving
//! really is finished when it returns, also when embedded in a longer-lived process.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// The request's answer, or 503 if the drain deadline comes first.
pub async fn cut_at_deadline(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    tokio::select! {
        response = next.run(request) => response,
        () = state.readiness.requests_cut() => ApiError::Unavailable {
            reason: "The proxy is shutting down; try again.".into(),
            retry_after: Duration::from_secs(1),
        }
        .into_response(),
    }
}
