//! CORS as the contract fixes it, on the service's own routes: the request's own
//! origin echoed with `Vary: Origin` when allowed, preflights answered here before
//! authentication, and no CORS headers at all for any other origin.
//!
//! Hand-written because tower-http's `CorsLayer` sends `Allow-Methods`,
//! `Allow-Headers` and `Expose-Headers` to origins it refuses and answers every
//! `OPTIONS` itself, where the contract wants other origins to get no CORS headers.

use crate::config::CorsConfig;
use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Headers a browser may send cross-origin to the service's routes.
const ALLOWED_HEADERS: &str = "authorization, content-type, x-api-key, x-request-id";
/// Response headers a cross-origin page may read.
const EXPOSED_HEADERS: &str =
    "x-request-id, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset";
/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// One route's CORS: the live `[cors]` section (SIGHUP replaces it) and the methods
/// the route serves.
#[derive(Clone)]
pub struct Cors {
    /// `[cors]`, as last loaded.
    pub config: Arc<ArcSwap<CorsConfig>>,
    /// `Access-Control-Allow-Methods` of this route's preflights.
    pub methods: &'static str,
}

/// The middleware (see the module documentation).
pub async fn cors(State(cors): State<Cors>, request: Request, next: Next) -> Response {
    let config = cors.config.load();
    let allowed = request
        .headers()
        .get(header::ORIGIN)
        .filter(|o| o.to_str().is_ok_and(|o| config.allowed_origins.allows(o)))
        .cloned();
    let is_preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    match (is_preflight, allowed) {
        (true, Some(origin)) => preflight(&origin, config.allow_credentials, cors.methods),
        (_, allowed) => {
            let mut response = next.run(request).await;
            let headers = response.headers_mut();
            match allowed {
                Some(origin) => {
                    allow_origin(headers, &origin, config.allow_credentials);
                    headers.insert(
                        header::ACCESS_CONTROL_EXPOSE_HEADERS,
                        HeaderValue::from_static(EXPOSED_HEADERS),
                    );
                }
                // The answer still depends on Origin, so caches must key on it.
                None => {
                    headers.append(header::VARY, HeaderValue::from_static("origin"));
                }
            }
            response
        }
    }
}

/// The answer to an allowed preflight.
fn preflight(origin: &HeaderValue, credentials: bool, methods: &'static str) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    allow_origin(headers, origin, credentials);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    // Also what the route serves: axum would otherwise add an `Allow` naming HEAD,
    // which the billable routes refuse.
    headers.insert(header::ALLOW, HeaderValue::from_static(methods));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    for vary in [
        "access-control-request-method",
        "access-control-request-headers",
    ] {
        headers.append(header::VARY, HeaderValue::from_static(vary));
    }
    response
}

fn allow_origin(headers: &mut HeaderMap, origin: &HeaderValue, credentials: bool) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}
