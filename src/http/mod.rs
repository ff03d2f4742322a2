//! The HTTP edge: the router and its middleware stack, composed in one place.

pub mod cors;
mod credentials;
pub mod drain;
mod health;
mod limits;
mod observe;
pub(crate) mod overload;
pub mod request_id;
pub mod server;

use crate::auth::Subject;
use crate::error::ApiError;
use crate::orga::UpstreamTimings;
use crate::ratelimit;
use crate::state::AppState;
use axum::Router;
use axum::http::{HeaderValue, Request, Response, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;

pub use limits::{MAX_BODY_BYTES, MAX_HEADER_BYTES};

/// Builds the public router. No side effects: the caller binds the listener.
///
/// The stack reads outermost first: metrics, request id, sensitive headers, trace,
/// CORS, limits and the request deadline; then the routes. The credentials route adds
/// its own layers, outermost first: the per-client rate limit, auth, the per-subject
/// limit, then load shedding past `server.concurrency_limit` (so refused callers hold no
/// slot). Health, readiness and CORS preflights never reach them.
pub fn router(state: AppState) -> Router {
    let shed = state.shed.clone();
    // HEAD is refused explicitly: axum would otherwise run the GET handler for it and
    // mint a billable token whose body is thrown away (a monitoring probe would burn quota).
    // A route layer wraps the ones added before it: the last added runs first.
    let credentials = get(credentials::credentials)
        .post(credentials::credentials)
        .head(|| async {
            let mut response = ApiError::MethodNotAllowed.into_response();
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
            response
        })
        .route_layer(from_fn_with_state(shed, overload::shed))
        .route_layer(from_fn_with_state(
            state.rate_limit.clone(),
            ratelimit::limit_subjects,
        ))
        .route_layer(from_fn_with_state(
            state.authenticator.clone(),
            crate::auth::require,
        ))
        .route_layer(from_fn_with_state(
            state.rate_limit.clone(),
            ratelimit::limit_clients,
        ));
    let credentials_path: Arc<str> = Arc::from(state.config.server.credentials_path.as_str());
    let stack = ServiceBuilder::new()
        .layer(from_fn_with_state(credentials_path, observe::observe))
        .layer(from_fn(request_id::request_id))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::COOKIE,
            header::HeaderName::from_static("x-api-key"),
        ]))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(make_span)
                .on_response(on_response)
                .on_failure(()),
        )
        .layer(from_fn_with_state(state.origins.clone(), cors::cors))
        .layer(from_fn_with_state(state.clone(), limits::limits));

    Router::new()
        .route(&state.config.server.credentials_path, credentials)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(stack)
        .with_state(state)
}

/// The request's span: only the path (a query string could carry a token), never
/// headers. Later stages fill the empty fields.
fn make_span<B>(request: &Request<B>) -> Span {
    let request_id = request
        .headers()
        .get(&request_id::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
    )
}

/// The request's one log line, with what the stages left in the response extensions.
fn on_response<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    let millis = |d: Duration| d.as_secs_f64() * 1000.0;
    let extensions = response.extensions();
    let status = response.status().as_u16();
    let latency_ms = millis(latency);
    let subject = extensions.get::<Subject>().map(Subject::as_str);
    let timings = extensions.get::<UpstreamTimings>();
    let upstream_secret_ms = timings.map(|t| millis(t.client_secret));
    let upstream_ice_ms = timings
        .filter(|t| !t.ice_config.is_zero())
        .map(|t| millis(t.ice_config));
    let pool = extensions.get::<credentials::PoolHit>().map(|_| "hit");
    macro_rules! finished {
        ($level:ident) => {
            tracing::$level!(
                status,
                latency_ms,
                subject,
                upstream_secret_ms,
                upstream_ice_ms,
                pool,
                "request finished"
            )
        };
    }
    if response.status().is_server_error() {
        finished!(warn);
    } else {
        finished!(info);
    }
}
