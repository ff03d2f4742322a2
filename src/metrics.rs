//! Prometheus metrics: the process-wide recorder, the name of every metric, and the
//! `/metrics` server that runs on its own listener (`server.metrics_listen`), never on
//! the public one.
//!
//! Labels are bounded on purpose: a route template (never a raw path), a method from a
//! fixed list, a status code, an upstream call name, an error kind. Nothing that
//! identifies a caller (IP, subject, token) ever becomes a label.

use crate::error::ApiError;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Requests answered, by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "orga_proxy_http_requests_total";
/// Time to answer a request, by `route` and `method`.
pub const HTTP_DURATION: &str = "orga_proxy_http_request_duration_seconds";
/// Requests being handled right now.
pub const HTTP_IN_FLIGHT: &str = "orga_proxy_http_requests_in_flight";
/// Requests refused with 503 because `server.concurrency_limit` was reached.
pub const REQUESTS_SHED: &str = "orga_proxy_requests_shed_total";
/// Requests answered 429 (rate limited).
pub const RATE_LIMITED: &str = "orga_proxy_rate_limited_total";
/// Requests answered 401 (missing or invalid caller credentials).
pub const AUTH_FAILURES: &str = "orga_proxy_auth_failures_total";
/// Session credentials handed out (200 on the credentials route).
pub const CREDENTIALS_ISSUED: &str = "orga_proxy_credentials_issued_total";
/// Time of each upstream attempt, by `call` and `outcome` (`ok` or `error`).
pub const UPSTREAM_DURATION: &str = "orga_proxy_upstream_request_duration_seconds";
/// Failed upstream attempts, by `call` and `kind` (`OrgaError::kind`).
pub const UPSTREAM_ERRORS: &str = "orga_proxy_upstream_errors_total";
/// Upstream attempts that were retries, by `call`.
pub const UPSTREAM_RETRIES: &str = "orga_proxy_upstream_retries_total";
/// The circuit breaker's state: 0 closed, 1 half-open (one probe allowed), 2 open.
pub const CIRCUIT_STATE: &str = "orga_proxy_upstream_circuit_state";
/// Times the circuit breaker opened.
pub const CIRCUIT_OPENED: &str = "orga_proxy_upstream_circuit_opened_total";
/// Credentials requests answered 503 by the open circuit without calling Orga.
pub const CIRCUIT_REJECTED: &str = "orga_proxy_upstream_circuit_rejected_total";
/// Prefetch pool (`[pool]`, see `crate::pool`): credentials served from the pool.
pub const POOL_HITS: &str = "orga_proxy_pool_hits_total";
/// Prefetch pool: requests that found it empty and minted live.
pub const POOL_MISSES: &str = "orga_proxy_pool_misses_total";
/// Prefetch pool: credentials discarded unused at `pool.max_age`.
pub const POOL_DISCARDS: &str = "orga_proxy_pool_discards_total";
/// Prefetch pool: credentials it aims to hold, ready or being minted (`pool.size`, or
/// what demand needs with `"auto"`).
pub const POOL_TARGET: &str = "orga_proxy_pool_target_size";
/// Prefetch pool: credentials ready right now.
pub const POOL_READY: &str = "orga_proxy_pool_ready";
/// Always 1, labelled with the `version`.
pub const BUILD_INFO: &str = "orga_proxy_build_info";

/// Bucket bounds for request and upstream latencies, in seconds: from a fast local
/// answer up to the default 15 s request deadline.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
];
/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same
/// handle) and describes every metric. If the embedding program installed another
/// recorder first, ours still renders, but only what it was given directly.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "another metrics recorder is installed; /metrics will not show orga-proxy's metrics"
                );
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "Requests answered, by route template, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer a request, by route template and method."
    );
    describe_gauge!(HTTP_IN_FLIGHT, "Requests being handled right now.");
    describe_counter!(
        REQUESTS_SHED,
        "Requests refused with 503 because server.concurrency_limit was reached."
    );
    describe_counter!(RATE_LIMITED, "Requests answered 429 (rate limited).");
    describe_counter!(
        AUTH_FAILURES,
        "Requests answered 401 (missing or invalid caller credentials)."
    );
    describe_counter!(CREDENTIALS_ISSUED, "Session credentials handed out.");
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Time of each Orga Cloud attempt, by call and outcome."
    );
    describe_counter!(
        UPSTREAM_ERRORS,
        "Failed Orga Cloud attempts, by call and error kind."
    );
    describe_counter!(UPSTREAM_RETRIES, "Orga Cloud attempts that were retries.");
    describe_gauge!(
        CIRCUIT_STATE,
        "Upstream circuit breaker: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(CIRCUIT_OPENED, "Times the upstream circuit breaker opened.");
    describe_counter!(
        CIRCUIT_REJECTED,
        "Credentials requests refused by the open circuit without calling Orga."
    );
    describe_counter!(POOL_HITS, "Credentials served from the prefetch pool.");
    describe_counter!(
        POOL_MISSES,
        "Requests that found the prefetch pool empty and minted live."
    );
    describe_counter!(
        POOL_DISCARDS,
        "Prefetched credentials discarded unused at pool.max_age."
    );
    describe_gauge!(
        POOL_TARGET,
        "Credentials the prefetch pool aims to hold, ready or being minted."
    );
    describe_gauge!(POOL_READY, "Prefetched credentials ready right now.");
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");

    // Series without labels exist from the start, so alerts and rate() see a 0
    // rather than nothing before the first event.
    for name in [
        REQUESTS_SHED,
        RATE_LIMITED,
        AUTH_FAILURES,
        CREDENTIALS_ISSUED,
        CIRCUIT_OPENED,
        CIRCUIT_REJECTED,
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!(HTTP_IN_FLIGHT).set(0.0);
    metrics::gauge!(CIRCUIT_STATE).set(0.0);
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// The metrics listener's router: `GET /metrics` in the Prometheus text format, the
/// JSON 404/405 elsewhere. Served by [`crate::http::server`] with the public
/// listener's timeouts and a connection cap.
pub fn router() -> Router {
    let handle = install();
    let render = move || {
        let body = handle.render();
        async move {
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                body,
            )
                .into_response()
        }
    };
    Router::new()
        .route("/metrics", get(render))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}

/// Drains the recorder's histogram buffers on an interval, on the current runtime, until
/// it ends. Needed whether or not `/metrics` is served: without upkeep every latency
/// sample is kept, and memory grows with the request count (found in review: about 18
/// bytes a request with `metrics_listen = ""`).
pub fn spawn_upkeep() {
    let handle = install();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            handle.run_upkeep();
        }
    });
}
