//! `AppState`: the cheap handles every handler and middleware shares.

use crate::audit::Audit;
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::{Config, CorsConfig};
use crate::orga::OrgaClient;
use crate::pool::CredentialPool;
use crate::quota::Quotas;
use crate::ratelimit::RateLimit;
use crate::readiness::Readiness;
use crate::relay::Relay;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Shared by every request. A clone is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] holds.
pub struct Shared {
    /// The validated configuration the process started with (what SIGHUP can change
    /// lives in the components below, which reload themselves: see `crate::reload`).
    pub config: Arc<Config>,
    /// `[cors]`, replaced by SIGHUP.
    pub cors: Arc<ArcSwap<CorsConfig>>,
    /// The upstream client.
    pub orga: OrgaClient,
    /// Whether the process should receive new traffic.
    pub readiness: Arc<Readiness>,
    /// The rate limits of the billable routes.
    pub rate_limit: RateLimit,
    /// Checks callers of the billable routes (`auth.mode`).
    pub authenticator: Authenticator,
    /// Credentials minted ahead of demand, when `pool.enabled`.
    pub pool: Option<CredentialPool>,
    /// The call-start relay, when `relay.enabled`.
    pub relay: Option<Relay>,
    /// The `server.concurrency_limit` budget, shared by the billable routes.
    pub concurrency: Arc<Semaphore>,
    /// The time source of every component.
    pub clock: Clock,
    /// The daily quotas of the credentials route.
    pub quotas: Quotas,
    /// The audit trail of credentials issued.
    pub audit: Audit,
}

impl AppState {
    /// The state over `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
