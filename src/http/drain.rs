//! The end of the drain: when `server.shutdown_timeout` passes, requests still open
//! are answered 503 `unavailable` at once instead of being left running, so `serve`
//! really is finished when it returns, also when embedded in a longer-lived process.
//!
//! The switch lives in [`crate::state::Readiness`] ([`Readiness::cut_open_requests`]);
//! the edge middleware runs every request through [`or_cut`].
//!
//! [`Readiness::cut_open_requests`]: crate::state::Readiness::cut_open_requests

use crate::error::ApiError;
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tokio::sync::watch;

/// Flips once, when the drain deadline passes.
#[derive(Debug, Clone)]
pub(crate) struct Cutoff(pub(crate) watch::Receiver<bool>);

/// The request's answer, or 503 if the drain deadline comes first.
pub(crate) async fn or_cut(cutoff: &Cutoff, answer: impl Future<Output = Response>) -> Response {
    let mut cut = cutoff.0.clone();
    let deadline = async move {
        if cut.wait_for(|cut| *cut).await.is_err() {
            // The switch is gone without a cut: nothing to end.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        response = answer => response,
        () = deadline => ApiError::Unavailable {
            reason: "The proxy is shutting down; try again.".into(),
            retry_after: Duration::from_secs(1),
        }
        .into_response(),
    }
}
