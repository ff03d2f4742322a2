//! Load shedding: at most `server.concurrency_limit` credentials requests are handled
//! at once; past that a request is refused at once with 503 `unavailable` and
//! `Retry-After`, so a flood degrades into fast refusals instead of a growing queue of
//! requests that would all time out anyway.

use crate::error::ApiError;
use crate::metrics::REQUESTS_SHED;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a shed request is told to wait before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The shared budget of concurrent requests.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit(Arc<Semaphore>);

impl ConcurrencyLimit {
    /// A budget of `limit` requests at once.
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Semaphore::new(limit)))
    }

    /// A slot for the whole request (held until the permit drops), or the 503 refusal,
    /// without waiting.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.0.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!(REQUESTS_SHED).increment(1);
            tracing::debug!("concurrency limit reached: request shed");
            ApiError::Unavailable {
                reason: "The proxy is handling as many requests as it allows; try again shortly."
                    .into(),
                retry_after: RETRY_AFTER,
            }
        })
    }
}
