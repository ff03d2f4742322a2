//! `AppState`: the cheap handles every handler and middleware shares, and `Readiness`.

use crate::config::Config;
use crate::http::cors::AllowedOrigins;
use crate::http::drain::Cutoff;
use crate::http::overload::ConcurrencyLimit;
use crate::orga::OrgaClient;
use crate::pool::CredentialPool;
use crate::ratelimit::RateLimit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// Shared by every request of one router. A clone is one reference count (axum clones
/// the state for each handler and middleware that takes it), and that count is the
/// router's own: one `Arc` per field would be counted up and down several times a
/// request on counters every serving thread shares.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] holds; all fields are cheap clones.
#[derive(Clone)]
pub struct Shared {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The upstream client (one connection pool).
    pub orga: OrgaClient,
    /// Whether the process should receive new traffic.
    pub readiness: Arc<Readiness>,
    /// The rate limits of the credentials route.
    pub rate_limit: RateLimit,
    /// Credentials minted ahead of demand, when `pool.enabled`.
    pub pool: Option<CredentialPool>,
    /// Checks callers of the credentials route (`auth.mode`).
    pub authenticator: crate::auth::Authenticator,
    /// The origins CORS allows (`cors.allowed_origins`).
    pub origins: Arc<AllowedOrigins>,
    /// The `server.concurrency_limit` budget, shared by every worker's router.
    pub shed: ConcurrencyLimit,
}

impl AppState {
    /// The state over `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }

    /// The same state with its own upstream connection pool, for one worker thread:
    /// a worker then never waits on a connection task living on another thread. The
    /// circuit breaker, limits and everything else stay shared.
    pub fn for_worker(&self) -> Self {
        Self::new(Shared {
            orga: self.orga.with_own_connections(),
            ..Shared::clone(&self.0)
        })
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What `/readyz` reports: not ready while draining, or while any registered
/// dependency (JWKS keys, Redis...) says it is not loaded. Also the switch that ends
/// the requests still open when the drain deadline passes (see `http::drain`).
#[derive(Debug)]
pub struct Readiness {
    draining: AtomicBool,
    dependencies: RwLock<Vec<(&'static str, Arc<AtomicBool>)>>,
    cut: watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            dependencies: RwLock::default(),
            cut: watch::Sender::new(false),
        }
    }
}

impl Readiness {
    /// Answers every request still open 503 `unavailable` now (the drain deadline
    /// has passed), and every later one at once.
    pub fn cut_open_requests(&self) {
        self.cut.send_replace(true);
    }

    /// What the edge watches for [`Readiness::cut_open_requests`].
    pub(crate) fn cutoff(&self) -> Cutoff {
        Cutoff(self.cut.subscribe())
    }

    /// Marks the process as draining: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Registers a dependency that starts not ready; the component sets the returned
    /// flag to `true` once it can serve (and back to `false` if it no longer can).
    pub fn dependency(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.dependencies
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((name, flag.clone()));
        flag
    }

    /// The reasons the process is not ready; empty when ready.
    pub fn problems(&self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if self.is_draining() {
            problems.push("draining");
        }
        let dependencies = self.dependencies.read().unwrap_or_else(|p| p.into_inner());
        problems.extend(
            dependencies
                .iter()
                .filter(|(_, ready)| !ready.load(Ordering::SeqCst))
                .map(|(name, _)| *name),
        );
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dependency_blocks_readiness_until_it_reports_ready() {
        let readiness = Readiness::default();
        let jwks = readiness.dependency("jwks");
        assert_eq!(readiness.problems(), ["jwks"]);
        jwks.store(true, Ordering::SeqCst);
        assert!(readiness.problems().is_empty());
        readiness.start_draining();
        assert_eq!(readiness.problems(), ["draining"]);
    }
}
