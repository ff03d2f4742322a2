//! The HTTP edge: the router and its middleware stack, composed in one place.

pub mod cors;
mod credentials;
pub(crate) mod drain;
mod edge;
mod health;
mod limits;
mod observe;
pub(crate) mod overload;
pub mod request_id;
pub mod server;

use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

pub use limits::{MAX_BODY_BYTES, MAX_HEADER_BYTES};

/// Builds the public router. No side effects: the caller binds the listener.
///
/// In front of every route, outermost first: the sensitive headers are marked (so no
/// `Debug` print of the request shows them), then [`edge::edge`]: metrics, request id,
/// the request's span and log line, the drain cutoff, CORS, limits and the request
/// deadline. The credentials route adds [`credentials::gate`]: the per-client rate
/// limit, auth, the per-subject limit, then load shedding. Health, readiness and CORS
/// preflights never reach the gate.
pub fn router(state: AppState) -> Router {
    // HEAD is refused explicitly: axum would otherwise run the GET handler for it and
    // mint a billable token whose body is thrown away (a monitoring probe would burn quota).
    let credentials = get(credentials::credentials)
        .post(credentials::credentials)
        .head(|| async {
            let mut response = ApiError::MethodNotAllowed.into_response();
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            response
        })
        .route_layer(from_fn_with_state(state.clone(), credentials::gate));
    let edge = Arc::new(edge::Edge {
        credentials_path: state.config.server.credentials_path.as_str().into(),
        origins: state.origins.clone(),
        request_timeout: state.config.server.request_timeout,
        cutoff: state.readiness.cutoff(),
    });

    Router::new()
        .route(&state.config.server.credentials_path, credentials)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(from_fn_with_state(edge, edge::edge))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::COOKIE,
            header::HeaderName::from_static("x-api-key"),
        ]))
        .with_state(state)
}
