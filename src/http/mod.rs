//! The HTTP edge: the router and its middleware stack, declared in one place
//! ([`router`]), and the server that runs it ([`server`]).

pub mod cors;
mod credentials;
mod drain;
pub mod gate;
mod health;
pub mod limits;
mod observe;
mod relay;
pub mod request_id;
pub mod server;
mod trace;

use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, Route, get, post};
use std::convert::Infallible;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::util::BoxCloneSyncServiceLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

pub use limits::{MAX_BODY_BYTES, MAX_HEADER_BYTES};

/// Builds the public router. No side effects: the caller binds the listener.
///
/// Every request, outermost first: its sensitive headers are marked (so no `Debug`
/// print of it shows them); its `x-request-id` is kept if sane or made, and echoed on
/// the answer; its log facts are gathered, its span opened and its one log line written
/// ([`trace`]); its metrics recorded ([`observe`]); it is cut short if the drain deadline
/// passes ([`drain`]); and its target, head and `Host` are checked ([`limits::edge`]).
///
/// The service's own routes add, outermost first: CORS ([`cors`]), the body limit and
/// the request deadline; then, on the billable methods only, the gate ([`gate`]): the
/// client's rate limit, authentication, the subject's rate limit, on the credentials
/// route the daily quotas, and load shedding. Health and readiness never reach the gate,
/// nor do CORS preflights. With `relay.enabled`, the call start has a gate of its own
/// ([`relay_gate`]).
pub fn router(state: AppState) -> Router {
    let edge = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::COOKIE,
            header::HeaderName::from_static("x-api-key"),
        ]))
        .layer(request_id::layers())
        .layer(from_fn(|request, next: axum::middleware::Next| {
            crate::telemetry::with_request_facts(next.run(request))
        }))
        .layer(trace::layer())
        .layer(from_fn(observe::record))
        .layer(from_fn_with_state(state.clone(), drain::cut_at_deadline))
        .layer(from_fn(limits::edge));

    let mut routes = Router::new().route(
        &state.config.server.credentials_path,
        own_route(
            &state,
            credentials_methods(&state),
            "GET, POST",
            MAX_BODY_BYTES,
        ),
    );
    if state.relay.is_some() {
        let methods = post(relay::start_call)
            .fallback(|| async { not_allowed("POST") })
            .route_layer(relay_gate(&state));
        routes = routes.route(
            crate::relay::PATH,
            own_route(&state, methods, "POST", crate::relay::MAX_BODY_BYTES),
        );
    }
    routes
        .route(
            "/healthz",
            get(health::healthz).fallback(|| async { not_allowed("GET, HEAD") }),
        )
        .route(
            "/readyz",
            get(health::readyz).fallback(|| async { not_allowed("GET, HEAD") }),
        )
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(edge)
        .with_state(state)
}

/// `GET` and `POST` behind the gate. `HEAD` is refused explicitly: axum would otherwise
/// run the GET handler for it and mint a billable token whose body is thrown away. It is
/// added after the gate, like the fallback, so a refused method spends no budget, asks
/// for no credentials and reserves no quota.
fn credentials_methods(state: &AppState) -> MethodRouter<AppState> {
    get(credentials::credentials)
        .post(credentials::credentials)
        .route_layer(credentials_gate(state))
        .head(|| async { not_allowed("GET, POST") })
        .fallback(|| async { not_allowed("GET, POST") })
}

/// The gate's layers, type-erased so every billable route can take them.
pub type Gate = BoxCloneSyncServiceLayer<Route, Request, Response, Infallible>;

/// The credentials route's gate, outermost first (see [`gate`]); the daily quotas
/// stage only when a quota is on.
fn credentials_gate(state: &AppState) -> Gate {
    let quotas = state
        .quotas
        .is_enabled()
        .then(|| from_fn_with_state(state.clone(), gate::limit_quota));
    BoxCloneSyncServiceLayer::new(
        ServiceBuilder::new()
            .layer(from_fn_with_state(state.clone(), gate::limit_client))
            .layer(from_fn_with_state(state.clone(), gate::authenticate))
            .layer(from_fn_with_state(state.clone(), gate::limit_subject))
            .option_layer(quotas)
            .layer(HandleErrorLayer::new(gate::overloaded))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                state.concurrency.clone(),
            )),
    )
}

/// The call start's gate, outermost first: the client's rate limit, load shedding, an
/// open circuit's refusal ([`relay::wait_for_orga`]), then the token's binding
/// ([`relay::redeem_token`]). No `authenticate`: the Bearer here is the ephemeral token,
/// not a caller credential. Shedding and the open circuit come before the token is
/// spent, so a caller refused by either can retry with the same token.
pub fn relay_gate(state: &AppState) -> Gate {
    BoxCloneSyncServiceLayer::new(
        ServiceBuilder::new()
            .layer(from_fn_with_state(state.clone(), gate::limit_client))
            .layer(HandleErrorLayer::new(gate::overloaded))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                state.concurrency.clone(),
            ))
            .layer(from_fn_with_state(state.clone(), relay::wait_for_orga))
            .layer(from_fn_with_state(state.clone(), relay::redeem_token)),
    )
}

/// One of the service's own routes: `methods` with CORS (allowing `cors_methods` in
/// preflights), a body limit of `max_body` bytes and the request deadline.
fn own_route(
    state: &AppState,
    methods: MethodRouter<AppState>,
    cors_methods: &'static str,
    max_body: u64,
) -> MethodRouter<AppState> {
    let timeout = state.config.server.request_timeout;
    let cors = cors::Cors {
        config: state.cors.clone(),
        methods: cors_methods,
    };
    methods.layer(
        ServiceBuilder::new()
            .layer(from_fn_with_state(cors, cors::cors))
            .layer(from_fn_with_state(
                limits::BodyLimit(max_body),
                limits::body,
            ))
            .layer(HandleErrorLayer::new(move |error| {
                limits::deadline_passed(timeout, error)
            }))
            .timeout(timeout),
    )
}

/// 405 with the methods the route really serves (axum's own `Allow` would list HEAD).
fn not_allowed(methods: &'static str) -> Response {
    let mut response = ApiError::MethodNotAllowed.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(methods));
    response
}
