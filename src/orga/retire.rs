//! The HTTP client the Orga calls use, replaced when an answer's bytes were not JSON, so
//! the connection that answer came on is never used again (its framing may be what went
//! wrong). Hand-written because reqwest cannot close one pooled connection: its requests'
//! extensions never reach hyper-util's `capture_connection`, so the whole pool is retired.

use crate::metrics::UPSTREAM_POOLS_RETIRED;
use crate::outbound;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::Arc;

/// The current client and a spare with an empty pool, built ahead so that a retirement
/// is a pointer swap: a request that starts after it cannot be given the old pool.
pub(super) struct RetirableClient {
    /// The client new requests use.
    current: ArcSwap<reqwest::Client>,
    /// The next client, when it has been built.
    spare: Arc<ArcSwapOption<reqwest::Client>>,
}

impl RetirableClient {
    /// Starts on `first` (the shared outbound client), with a spare built like it.
    pub(super) fn new(first: reqwest::Client) -> Result<Self, String> {
        Ok(Self {
            current: ArcSwap::from_pointee(first),
            spare: Arc::new(ArcSwapOption::from_pointee(outbound::client()?)),
        })
    }

    /// The client for a new request; hand it back to [`Self::retire`] if its answer
    /// could not be parsed.
    pub(super) fn current(&self) -> Arc<reqwest::Client> {
        self.current.load_full()
    }

    /// Replaces `used` with the spare, if `used` is still current (an answer from an
    /// already retired client retires nothing), then builds the next spare on the
    /// blocking pool: building loads the system's TLS roots, milliseconds of CPU that do
    /// not belong on an async worker.
    pub(super) fn retire(&self, used: &Arc<reqwest::Client>) {
        if !Arc::ptr_eq(&self.current.load(), used) {
            return;
        }
        let fresh = match self.spare.swap(None) {
            Some(spare) => spare,
            // A second retirement before the spare was rebuilt: build it here.
            None => match outbound::client() {
                Ok(client) => Arc::new(client),
                Err(error) => {
                    tracing::error!(%error, "cannot replace the outbound client");
                    return;
                }
            },
        };
        let previous = self.current.compare_and_swap(used, Arc::clone(&fresh));
        if !Arc::ptr_eq(&previous, used) {
            // Another request retired it first: keep ours for the next time.
            self.spare.store(Some(fresh));
            return;
        }
        metrics::counter!(UPSTREAM_POOLS_RETIRED).increment(1);
        tracing::warn!(
            "an Orga answer was not JSON: its connection pool is retired, so that connection is never reused"
        );
        let spare = Arc::clone(&self.spare);
        let build = move || match outbound::client() {
            Ok(client) => spare.store(Some(Arc::new(client))),
            Err(error) => tracing::error!(%error, "cannot build a spare outbound client"),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(build)),
            Err(_) => build(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_retirement_swaps_in_the_spare_once_and_an_old_clients_answer_retires_nothing() {
        let clients = RetirableClient::new(outbound::client().unwrap()).unwrap();
        let first = clients.current();
        clients.retire(&first);
        let second = clients.current();
        assert!(!Arc::ptr_eq(&first, &second), "the spare took over");
        clients.retire(&first);
        assert!(
            Arc::ptr_eq(&second, &clients.current()),
            "a late answer from the retired client leaves the new one alone"
        );
        clients.retire(&second);
        assert!(!Arc::ptr_eq(&second, &clients.current()));
    }
}
