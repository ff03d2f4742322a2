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
/// Clients forgotten early to make room in a full in-memory rate-limit table.
pub const RATELIMIT_EVICTIONS: &str = "orga_proxy_ratelimit_evictions_total";
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
/// Times the Orga client's connection pool was retired after an answer that was not JSON.
pub const UPSTREAM_POOLS_RETIRED: &str = "orga_proxy_upstream_pools_retired_total";
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
/// Relay (`crate::relay`): call starts answered, by `outcome` (`ok` or the error code).
pub const RELAY_CALLS: &str = "orga_proxy_relay_calls_total";
/// Relay: parameters outside the session policy, by `parameter` and `action`
/// (`refused` or `overridden`).
pub const RELAY_POLICY_VIOLATIONS: &str = "orga_proxy_relay_policy_violations_total";
/// Relay: tokens refused by binding, by `reason` (`unknown` or `already_used`).
pub const RELAY_TOKEN_REFUSALS: &str = "orga_proxy_relay_token_refusals_total";
/// Relay: tokens bound in this process's memory now (0 with Redis).
pub const RELAY_BOUND_TOKENS: &str = "orga_proxy_relay_bound_tokens";
/// Relay: credentials refused because the binding table was full.
pub const RELAY_BINDING_FULL: &str = "orga_proxy_relay_binding_full_total";
/// Credentials requests refused because a daily quota was used up, by `quota`
/// (`subject`, `client` or `global`).
pub const QUOTA_EXCEEDED: &str = "orga_proxy_quota_exceeded_total";
/// Credentials counted against `quota.global_per_day` today (this replica's latest view
/// of the shared count with Redis).
pub const QUOTA_GLOBAL_USED: &str = "orga_proxy_quota_global_used";
/// Subjects or clients forgotten to make room in a full in-memory quota table (the one
/// with the fewest credentials today among a sample), by `quota`.
pub const QUOTA_TABLE_FULL: &str = "orga_proxy_quota_table_full_total";
/// Audit records written to the sink.
pub const AUDIT_RECORDS: &str = "orga_proxy_audit_records_total";
/// Failed writes to the audit sink (each refused the credentials waiting on it).
pub const AUDIT_WRITE_FAILURES: &str = "orga_proxy_audit_write_failures_total";
/// Audit records waiting for the writer.
pub const AUDIT_QUEUE_DEPTH: &str = "orga_proxy_audit_queue_depth";
/// Configuration reloads (SIGHUP), by `outcome`: `ok` (applied) or `invalid` (refused,
/// the running configuration kept).
pub const CONFIG_RELOADS: &str = "orga_proxy_config_reloads_total";
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

/// Every counter and what `/metrics` says it counts (its HELP line).
const COUNTERS: &[(&str, &str)] = &[
    (
        HTTP_REQUESTS,
        "Requests answered, by route template, method and status.",
    ),
    (
        REQUESTS_SHED,
        "Requests refused with 503 because server.concurrency_limit was reached.",
    ),
    (RATE_LIMITED, "Requests answered 429 (rate limited)."),
    (
        RATELIMIT_EVICTIONS,
        "Clients forgotten early, closest to a full budget first, to make room in a full in-memory rate-limit table (rate_limit.max_tracked_clients).",
    ),
    (
        AUTH_FAILURES,
        "Requests answered 401 (missing or invalid caller credentials).",
    ),
    (CREDENTIALS_ISSUED, "Session credentials handed out."),
    (
        UPSTREAM_ERRORS,
        "Failed Orga Cloud attempts, by call and error kind.",
    ),
    (UPSTREAM_RETRIES, "Orga Cloud attempts that were retries."),
    (
        UPSTREAM_POOLS_RETIRED,
        "Times the Orga client's connection pool was retired after an answer that was not JSON.",
    ),
    (CIRCUIT_OPENED, "Times the upstream circuit breaker opened."),
    (
        CIRCUIT_REJECTED,
        "Credentials requests refused by the open circuit without calling Orga.",
    ),
    (POOL_HITS, "Credentials served from the prefetch pool."),
    (
        POOL_MISSES,
        "Requests that found the prefetch pool empty and minted live.",
    ),
    (
        POOL_DISCARDS,
        "Prefetched credentials discarded unused at pool.max_age.",
    ),
    (
        RELAY_CALLS,
        "Relayed call starts answered, by outcome (ok or the error code).",
    ),
    (
        RELAY_POLICY_VIOLATIONS,
        "Call-start parameters outside the session policy, by parameter and action.",
    ),
    (
        RELAY_TOKEN_REFUSALS,
        "Call starts refused for their token's binding, by reason.",
    ),
    (
        RELAY_BINDING_FULL,
        "Credentials refused because the token binding table was full.",
    ),
    (
        QUOTA_EXCEEDED,
        "Credentials requests refused because a daily quota was used up, by quota.",
    ),
    (
        QUOTA_TABLE_FULL,
        "Callers forgotten to make room in a full in-memory quota table, by quota.",
    ),
    (AUDIT_RECORDS, "Audit records written to the sink."),
    (
        AUDIT_WRITE_FAILURES,
        "Failed writes to the audit sink; the credentials waiting on them were refused.",
    ),
    (
        CONFIG_RELOADS,
        "Configuration reloads on SIGHUP, by outcome: ok (applied) or invalid (refused, the running configuration kept).",
    ),
];

/// Every gauge and what `/metrics` says it measures.
const GAUGES: &[(&str, &str)] = &[
    (HTTP_IN_FLIGHT, "Requests being handled right now."),
    (
        CIRCUIT_STATE,
        "Upstream circuit breaker: 0 closed, 1 half-open, 2 open.",
    ),
    (
        RELAY_BOUND_TOKENS,
        "Issued tokens bound in this process's memory, awaiting their call or expiry.",
    ),
    (
        QUOTA_GLOBAL_USED,
        "Credentials counted against quota.global_per_day today.",
    ),
    (AUDIT_QUEUE_DEPTH, "Audit records waiting for the writer."),
    (
        POOL_TARGET,
        "Credentials the prefetch pool aims to hold, ready or being minted.",
    ),
    (POOL_READY, "Prefetched credentials ready right now."),
    (BUILD_INFO, "Always 1; the version is a label."),
];

fn describe() {
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer a request, by route template and method."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Time of each Orga Cloud attempt, by call and outcome."
    );
    for (name, help) in COUNTERS {
        describe_counter!(*name, *help);
    }
    for (name, help) in GAUGES {
        describe_gauge!(*name, *help);
    }

    // Series without labels exist from the start, so alerts and rate() see a 0
    // rather than nothing before the first event.
    for name in [
        REQUESTS_SHED,
        RATE_LIMITED,
        AUTH_FAILURES,
        CREDENTIALS_ISSUED,
        CIRCUIT_OPENED,
        CIRCUIT_REJECTED,
        RELAY_BINDING_FULL,
        AUDIT_RECORDS,
        AUDIT_WRITE_FAILURES,
        RATELIMIT_EVICTIONS,
        POOL_HITS,
        POOL_MISSES,
        POOL_DISCARDS,
        UPSTREAM_POOLS_RETIRED,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for outcome in ["ok", "invalid"] {
        metrics::counter!(CONFIG_RELOADS, "outcome" => outcome).absolute(0);
    }
    metrics::gauge!(HTTP_IN_FLIGHT).set(0.0);
    metrics::gauge!(CIRCUIT_STATE).set(0.0);
    metrics::gauge!(RELAY_BOUND_TOKENS).set(0.0);
    metrics::gauge!(QUOTA_GLOBAL_USED).set(0.0);
    metrics::gauge!(AUDIT_QUEUE_DEPTH).set(0.0);
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
        .layer(crate::http::request_id::layers())
}

/// Drains the recorder's histogram buffers on an interval, on the current runtime, until
/// it ends. Needed whether or not `/metrics` is served: without upkeep every latency
/// sample is kept, and memory grows with every request served, also with
/// `metrics_listen = ""`.
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
