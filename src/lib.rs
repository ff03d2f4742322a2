//! orga-proxy keeps the long-lived Orga API key server-side and hands browser and
//! mobile clients short-lived session credentials (`{ephemeralToken, iceServers}`).
//!
//! Layout, in the order a request meets it:
//! - [`cli`]: `serve | dev | mock-upstream | check-config | healthcheck`.
//! - [`config`]: the typed configuration, its layers and validation.
//! - [`http`]: the router and its declared middleware stack (request id, trace,
//!   metrics, drain, limits, CORS, deadline, then the gate), the handlers, the server.
//! - [`ratelimit`]: per-client and per-subject budgets (memory or Redis).
//! - [`auth`]: who may call the billable routes (none, API keys, JWT with a JWKS cache).
//! - [`quota`]: daily quotas per subject, per client and for the service (memory or Redis).
//! - [`pool`]: credentials minted ahead of demand (opt-in).
//! - [`relay`]: the call-start relay, its session policy and token binding (opt-in).
//! - [`audit`]: the record of every credential issued, written before it is handed out.
//! - [`orga`]: the upstream client, its error enum and the fake Orga Cloud.
//! - [`store`]: the Redis connection replicas share state through.
//! - [`error`]: `ApiError`, the one JSON error body at the HTTP edge.
//! - [`metrics`]: the Prometheus recorder and the separate `/metrics` listener.
//! - [`reload`]: SIGHUP, what changes live and what needs a restart.
//! - [`state`], [`readiness`], [`clock`], [`secret`], [`outbound`], [`telemetry`]:
//!   shared handles, lifecycle, time, secrets, outbound HTTP and logging.

#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod evict;
pub mod http;
pub mod metrics;
pub mod orga;
pub mod outbound;
pub mod pool;
pub mod quota;
pub mod ratelimit;
pub mod readiness;
pub mod relay;
pub mod reload;
pub mod secret;
pub mod state;
pub mod store;
pub mod telemetry;

use arc_swap::ArcSwap;
use clock::Clock;
use config::Config;
use http::server::ServeOptions;
use readiness::Readiness;
use state::AppState;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// After the drain deadline, how long the requests cut short get to send their 503.
const CUT_FLUSH_GRACE: Duration = Duration::from_millis(100);
/// Connections the metrics listener holds at once: a scraper needs one or two, and a
/// cap means silent connections there can never take the public port's descriptors.
const METRICS_MAX_CONNECTIONS: usize = 64;

/// Builds the application state and router from a validated configuration. Starts
/// background tasks (the pool's refill, the JWKS and Redis upkeep), so call it inside
/// a Tokio runtime.
pub fn app(config: Arc<Config>) -> Result<(axum::Router, AppState), String> {
    app_with_clock(config, Clock::system())
}

/// As [`app`], with every component reading time from `clock` (tests advance it).
pub fn app_with_clock(
    config: Arc<Config>,
    clock: Clock,
) -> Result<(axum::Router, AppState), String> {
    metrics::spawn_upkeep();
    let readiness = Arc::new(Readiness::default());
    let http = outbound::client()?;
    let orga = orga::OrgaClient::new(&config.orga, http.clone(), clock.clone())?;
    let cors = Arc::new(ArcSwap::from_pointee(config.cors.clone()));
    let redis = store::RedisConnection::from_config(&config, &readiness)?;
    let authenticator =
        auth::Authenticator::new(&config.auth, &readiness, clock.clone(), cors.clone(), http)?
            .with_audit_claims(&config.audit.claims);
    let relay = config
        .relay
        .enabled
        .then(|| relay::Relay::new(&config, redis.clone(), clock.clone()));
    let rate_limit = ratelimit::RateLimit::new(
        &config.rate_limit,
        redis.as_ref(),
        &config.redis,
        clock.clone(),
    );
    let quotas = quota::Quotas::new(
        &config.quota,
        config.rate_limit.max_tracked_clients,
        redis.as_ref(),
        &config.redis.key_prefix,
        clock.clone(),
    );
    let pool = config.pool.enabled.then(|| {
        let client = orga.clone();
        // A refill has no caller waiting; it gets the same deadline a request would.
        let request_timeout = config.server.request_timeout;
        let mint: pool::Mint = Arc::new(move || {
            let client = client.clone();
            Box::pin(async move {
                let deadline = std::time::Instant::now() + request_timeout;
                client.session_credentials(deadline).await
            })
        });
        // A credential no caller may take would be spend past the global cap.
        let spent = quotas.clone();
        let held_back: pool::HeldBack = Arc::new(move || spent.global_spent());
        pool::CredentialPool::start(&config.pool, mint, held_back, clock.clone())
    });
    let audit = audit::Audit::start(&config.audit, &readiness, clock.clone())?;
    let state = AppState::new(state::Shared {
        concurrency: Arc::new(tokio::sync::Semaphore::new(config.server.concurrency_limit)),
        config,
        cors,
        orga,
        readiness,
        rate_limit,
        authenticator,
        pool,
        relay,
        clock,
        quotas,
        audit,
    });
    Ok((http::router(state.clone()), state))
}

/// Serves the proxy on `listener` until `shutdown` resolves, then drains (see [`serve`]).
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with_metrics(config, listener, None, shutdown).await
}

/// [`run`], plus `/metrics` on `metrics_listener` (bound by the caller from
/// `server.metrics_listen`, or on port 0 by tests). The metrics listener keeps
/// answering while the public one drains, and stops when it is done.
pub async fn run_with_metrics(
    config: Arc<Config>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, state) = app(config).map_err(std::io::Error::other)?;
    serve_with_metrics(router, state, listener, metrics_listener, shutdown).await
}

/// [`serve`], plus `/metrics` on `metrics_listener`, as [`run_with_metrics`] does: for a
/// caller that keeps the state (the binary reloads it on SIGHUP).
pub async fn serve_with_metrics(
    router: axum::Router,
    state: AppState,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = metrics_listener.map(|listener| {
        let options = ServeOptions {
            header_read_timeout: state.config.server.header_read_timeout,
            http2: false,
            max_connections: Some(METRICS_MAX_CONNECTIONS),
        };
        tokio::spawn(http::server::serve(
            listener,
            metrics::router(),
            options,
            async move {
                let _ = metrics_stopped.await;
            },
        ))
    });
    let result = serve(router, state, listener, shutdown).await;
    let _ = metrics_stop.send(());
    if let Some(task) = metrics_server {
        // A scraper's keep-alive connection must not hold the process past the drain.
        let _ = tokio::time::timeout(CUT_FLUSH_GRACE, task).await;
    }
    result
}

/// Serves an already-built router (see [`app`]) until `shutdown` resolves, then drains:
/// readiness turns 503 and, after `server.shutdown_delay`, the listener closes and
/// in-flight requests finish; after `server.shutdown_timeout` the requests still open
/// are answered 503 and `serve` returns.
pub async fn serve(
    router: axum::Router,
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let server = &state.config.server;
    let (delay, deadline) = (server.shutdown_delay, server.shutdown_timeout);
    let options = ServeOptions {
        header_read_timeout: server.header_read_timeout,
        http2: server.http2,
        max_connections: None,
    };
    let (draining_tx, mut draining_rx) = tokio::sync::watch::channel(false);
    let readiness = state.readiness.clone();
    let signal = async move {
        shutdown.await;
        readiness.start_draining();
        if !delay.is_zero() {
            tracing::info!(delay = ?delay, "shutdown requested: readiness is 503; still serving until the delay passes");
            tokio::time::sleep(delay).await;
        }
        tracing::info!(deadline = ?deadline, "draining in-flight requests");
        let _ = draining_tx.send(true);
    };
    let hard_stop = async move {
        if draining_rx.wait_for(|draining| *draining).await.is_err() {
            // The signal future is gone only when the server has already returned.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(deadline).await;
    };
    tokio::select! {
        result = http::server::serve(listener, router, options, signal) => result?,
        () = hard_stop => {
            tracing::warn!(deadline = ?deadline, "drain deadline passed: ending the requests still open");
            state.readiness.cut_open_requests();
            // A moment for those 503s to be written before the caller (often `main`)
            // tears the runtime down.
            tokio::time::sleep(CUT_FLUSH_GRACE).await;
        }
    }
    // Every request has finished (each waited for its audit record); write what the
    // audit writer still holds before the process exits.
    state.audit.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
