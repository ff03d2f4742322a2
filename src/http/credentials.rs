//! The credentials route: a fresh ephemeral token and its ICE servers on every call.

use crate::error::ApiError;
use crate::orga::{OrgaError, SessionCredentials, UpstreamTimings};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// `GET` / `POST {server.credentials_path}`. Never cached, never shared: each call
/// mints its own token upstream.
pub async fn credentials(State(state): State<AppState>) -> Result<Response, ApiError> {
    if let Some(credentials) = state.pool.as_ref().and_then(|pool| pool.take()) {
        tracing::Span::current().record("pool", "hit");
        return Ok(respond(credentials));
    }
    let mut timings = UpstreamTimings::default();
    // The request's deadline (server.request_timeout) bounds upstream retries too.
    let deadline = std::time::Instant::now() + state.config.server.request_timeout;
    let result = state.orga.session_credentials(deadline, &mut timings).await;
    let span = tracing::Span::current();
    span.record("upstream_secret_ms", millis(timings.client_secret));
    if !timings.ice_config.is_zero() {
        span.record("upstream_ice_ms", millis(timings.ice_config));
    }
    match result {
        Ok(credentials) => Ok(respond(credentials)),
        Err(error) => {
            log_upstream_error(&error);
            Err(ApiError::from(&error))
        }
    }
}

fn respond(credentials: SessionCredentials) -> Response {
    let mut response = Json(credentials).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn log_upstream_error(error: &OrgaError) {
    match error {
        OrgaError::Auth { .. } => tracing::error!(
            error = %error,
            kind = error.kind(),
            "Orga refused the configured API key or user email; check orga.api_key and orga.user_email"
        ),
        // Logged once by the breaker when it opens, not once per refused request.
        OrgaError::CircuitOpen { .. } => {
            tracing::debug!(
                kind = error.kind(),
                "upstream circuit open: request refused"
            )
        }
        OrgaError::Timeout { .. } => {
            tracing::warn!(error = %error, kind = error.kind(), "Orga Cloud timed out")
        }
        _ => tracing::error!(error = %error, kind = error.kind(), "Orga Cloud call failed"),
    }
}

fn millis(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
