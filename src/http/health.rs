//! Liveness and readiness probes.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `GET /healthz`: 200 while the process runs. Checks nothing else on purpose, so a
/// slow upstream never gets a healthy process restarted.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when able to serve, 503 (with the reasons) while draining or
/// while a required dependency is not loaded.
///
/// The upstream circuit state is reported as detail but never makes this 503: every
/// replica shares the same Orga Cloud, so pulling them all out of the load balancer
/// would turn an upstream outage into a total one, while an open circuit still
/// answers fast 503s with `Retry-After` that clients can act on.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let problems = state.readiness.problems();
    let circuit = state.orga.circuit_state().as_str();
    if problems.is_empty() {
        return Json(json!({"status": "ready", "upstream_circuit": circuit})).into_response();
    }
    let message = format!("Not ready: {}.", problems.join(", "));
    let body = json!({
        "status": "not_ready",
        "reasons": problems,
        "upstream_circuit": circuit,
        "error": {"message": message, "type": "server_error", "code": "unavailable"},
    });
    let headers = [
        (header::RETRY_AFTER, "1"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (StatusCode::SERVICE_UNAVAILABLE, headers, Json(body)).into_response()
}
