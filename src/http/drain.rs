//! The end of the drain: when `server.shutdown_timeout` passes, requests still open
//! are answered 503 `unavailable` at once instead of being left running, so `serve`
//! really is finished when it returns, also when embedded in a longer-lived process.

use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tokio::sync::watch;

/// Flips once, when the drain deadline passes.
#[derive(Debug, Clone)]
pub struct Cutoff(watch::Receiver<bool>);

/// The switch (send `true` at the deadline) and the state for [`cut_at_deadline`].
pub fn cutoff() -> (watch::Sender<bool>, Cutoff) {
    let (tx, rx) = watch::channel(false);
    (tx, Cutoff(rx))
}

/// Middleware: the request's answer, or 503 if the drain deadline comes first.
pub async fn cut_at_deadline(
    State(Cutoff(mut cut)): State<Cutoff>,
    request: Request,
    next: Next,
) -> Response {
    let deadline = async move {
        if cut.wait_for(|cut| *cut).await.is_err() {
            // The server is gone without a cut: nothing to end.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        response = next.run(request) => response,
        () = deadline => ApiError::Unavailable {
            reason: "The proxy is shutting down; try again.".into(),
            retry_after: Duration::from_secs(1),
        }
        .into_response(),
    }
}
