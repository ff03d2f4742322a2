//! orga-proxy keeps the long-lived Orga API key server-side and hands browser and
//! mobile clients short-lived session credentials (`{ephemeralToken, iceServers}`).
//!
//! Layout, in the order a request meets it:
//! - [`cli`]: `serve | dev | mock-upstream | check-config | healthcheck`.
//! - [`config`]: the typed configuration, its layers and validation; [`config::Secret`].
//! - [`http`]: the router and its middleware stack (request id, trace, CORS, limits),
//!   the credentials handler and the health probes.
//! - [`ratelimit`]: per-client and per-subject budgets (memory or Redis).
//! - [`auth`]: who may call the credentials route (none, API keys, JWT with a JWKS cache).
//! - [`orga`]: the upstream client, its error enum and the fake Orga Cloud.
//! - [`error`]: `ApiError`, the one JSON error body at the HTTP edge.
//! - [`metrics`]: the Prometheus recorder and the separate `/metrics` listener.
//! - [`state`], [`telemetry`]: shared handles and logging.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod orga;
pub mod outbound;
pub mod pool;
pub mod ratelimit;
pub mod state;
pub mod telemetry;

use config::Config;
use http::cors::AllowedOrigins;
use state::{AppState, Readiness};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// After the drain deadline, how long the requests cut short get to send their 503.
const CUT_FLUSH_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Builds the application state and router from a validated configuration. Starts
/// background tasks (the pool's refill), so call it inside a Tokio runtime.
pub fn app(config: Arc<Config>) -> Result<(axum::Router, AppState), String> {
    app_with_clock(config, ratelimit::LimiterClock::monotonic())
}

/// As [`app`], with the in-memory rate-limit budgets on `clock` (tests advance a fake one).
pub fn app_with_clock(
    config: Arc<Config>,
    clock: ratelimit::LimiterClock,
) -> Result<(axum::Router, AppState), String> {
    metrics::spawn_upkeep();
    let orga = orga::OrgaClient::new(&config.orga)?;
    let origins =
        AllowedOrigins::parse(&config.cors.allowed_origins, config.cors.allow_credentials)?;
    let pool = config.pool.enabled.then(|| {
        let client = orga.clone();
        // A refill has no caller waiting; it gets the same deadline a request would.
        let request_timeout = config.server.request_timeout;
        let mint: pool::Mint = Arc::new(move || {
            let client = client.clone();
            let deadline = std::time::Instant::now() + request_timeout;
            Box::pin(async move {
                client
                    .session_credentials(deadline, &mut Default::default())
                    .await
            })
        });
        pool::CredentialPool::start(&config.pool, mint)
    });
    let readiness = Arc::new(Readiness::default());
    let config_limit = config.server.concurrency_limit;
    let origins = Arc::new(origins);
    let authenticator = auth::Authenticator::new(
        &config.auth,
        &readiness,
        Arc::new(auth::SystemClock),
        origins.clone(),
    )?;
    let rate_limit = ratelimit::RateLimit::with_clock(&config.rate_limit, &readiness, clock)?;
    let state = AppState::new(state::Shared {
        config,
        orga,
        readiness,
        rate_limit,
        authenticator,
        pool,
        origins,
        shed: http::overload::ConcurrencyLimit::new(config_limit),
    });
    Ok((http::router(state.clone()), state))
}

/// Serves the proxy on `listener` until `shutdown` resolves, then drains: readiness
/// turns 503, the listener closes, in-flight requests finish, and after
/// `server.shutdown_timeout` the requests still open are answered 503 and `run` returns.
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
    let (_, state) = app(config.clone()).map_err(std::io::Error::other)?;
    let metrics_server = metrics_listener
        .map(|listener| tokio::spawn(metrics::serve(listener, std::future::pending())));
    let result = serve_on_workers(state, listener, shutdown).await;
    if let Some(task) = metrics_server {
        // Stopped outright rather than drained: a scraper holding a keep-alive
        // connection must not keep the process alive past the drain deadline.
        task.abort();
    }
    result
}

/// Serves an already-built router (see [`app`]) on the current runtime, with graceful
/// drain.
pub async fn serve(
    router: axum::Router,
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(Routers::Here(router), state, listener, shutdown).await
}

/// As [`serve`], on `server.workers` threads of their own (see [`http::server`]), each
/// with a router over [`AppState::for_worker`]; what `run` uses.
pub async fn serve_on_workers(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let routers = (0..state.config.server.worker_threads())
        .map(|_| http::router(state.for_worker()))
        .collect();
    serve_with(Routers::Workers(routers), state, listener, shutdown).await
}

/// Where connections are served: on the caller's runtime, or one thread per router.
enum Routers {
    Here(axum::Router),
    Workers(Vec<axum::Router>),
}

async fn serve_with(
    routers: Routers,
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let deadline = state.config.server.shutdown_timeout;
    let (draining_tx, mut draining_rx) = tokio::sync::watch::channel(false);
    let readiness = state.readiness.clone();
    let signal = async move {
        shutdown.await;
        readiness.start_draining();
        tracing::info!(deadline = ?deadline, "shutdown requested: draining in-flight requests");
        let _ = draining_tx.send(true);
    };
    let header_read_timeout = state.config.server.header_read_timeout;
    let server = async move {
        match routers {
            Routers::Here(router) => {
                http::server::serve(listener, router, header_read_timeout, signal).await
            }
            Routers::Workers(routers) => {
                http::server::serve_on_workers(listener, routers, header_read_timeout, signal).await
            }
        }
    };
    let hard_stop = async move {
        if draining_rx.wait_for(|draining| *draining).await.is_err() {
            // The signal future is gone only when the server has already returned.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(deadline).await;
    };
    tokio::select! {
        result = server => result?,
        () = hard_stop => {
            tracing::warn!(deadline = ?deadline, "drain deadline passed: ending the requests still open");
            state.readiness.cut_open_requests();
            // A moment for those 503s to be written before the caller (often `main`)
            // tears the runtime down.
            tokio::time::sleep(CUT_FLUSH_GRACE).await;
        }
    }
    tracing::info!("stopped");
    Ok(())
}
