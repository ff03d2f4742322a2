//! The gate in front of the service's billable routes, one small stage each, composed in
//! [`super::router`]: who the client is and its rate limit, then who the caller is, then
//! the caller's own limit, then the daily quotas. Load shedding comes after them (tower's
//! `LoadShed` over a shared concurrency limit), so refused callers never hold a slot. The
//! relay's gate takes only the first stage (see `super::relay_gate`). A stage that admits
//! with a budget puts its `RateLimit-*` headers on the answer, refusals from later
//! stages included.

use crate::auth::{AuthError, Subject};
use crate::error::ApiError;
use crate::metrics::REQUESTS_SHED;
use crate::ratelimit::{Client, Decision};
use crate::state::AppState;
use axum::BoxError;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What a shed request is told to wait before trying again.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Stage 1: who the client is (its IP through trusted proxies, keyed per IPv6
/// prefix) goes into the request for later stages, and one request of its budget is
/// spent.
pub async fn limit_client(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = state
        .rate_limit
        .client(peer_of(&request), request.headers());
    request.extensions_mut().insert(client);
    let decision = state.rate_limit.check_client(&client.key).await;
    within_budget(decision, request, next, || {
        tracing::info!(client = %client.key, "client over its rate limit");
    })
    .await
}

/// Stage 2: the caller's credentials (`auth.mode`). The subject (and the JWT claims
/// `audit.claims` names) go into the request for later stages and the audit record, and
/// the subject onto the request's log line.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = state
        .authenticator
        .authenticate_caller(request.headers(), request.uri().query())
        .await;
    match caller {
        Ok(Some((subject, claims))) => {
            crate::telemetry::note_subject(subject.as_str());
            request.extensions_mut().insert(subject);
            if !claims.0.is_empty() {
                request.extensions_mut().insert(claims);
            }
            next.run(request).await
        }
        Ok(None) => next.run(request).await,
        Err(error) => {
            match &error {
                AuthError::Invalid(reason) => tracing::info!(%reason, "caller refused"),
                AuthError::KeysUnavailable => tracing::warn!("caller refused: JWKS not loaded"),
            }
            ApiError::from(error).into_response()
        }
    }
}

/// Stage 3: one request of the authenticated subject's own budget, when
/// `rate_limit.per_subject` is on. Requests without a subject (auth mode `none`) pass.
pub async fn limit_subject(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(subject) = request.extensions().get::<Subject>().cloned() else {
        return next.run(request).await;
    };
    let decision = state.rate_limit.check_subject(subject.as_str()).await;
    within_budget(decision, request, next, || {
        tracing::info!("subject over its rate limit");
    })
    .await
}

/// Runs the rest of the request when a limiter admitted it, with its `RateLimit-*`
/// headers on the answer; answers the refusal (429, or 503 from a failing Redis)
/// otherwise, calling `over_limit` for a 429 (a failing Redis is logged by the store).
async fn within_budget(
    decision: Result<Option<Decision>, ApiError>,
    request: Request,
    next: Next,
    over_limit: impl FnOnce(),
) -> Response {
    let decision = match decision {
        Ok(decision) => decision,
        Err(refused) => {
            if matches!(refused, ApiError::RateLimited { .. }) {
                over_limit();
            }
            return refused.into_response();
        }
    };
    let mut response = next.run(request).await;
    if let Some(decision) = decision {
        decision.apply(response.headers_mut());
    }
    response
}

/// Stage 4 (credentials only, when a quota is on): one credential of each daily quota
/// that applies (`[quota]`: the subject's, the client's, the service's) is reserved
/// before the handler runs, and kept only if it answers 2xx. Any other answer, or the
/// request dropped half-way (its client gone, its deadline passed), gives it back:
/// a failed upstream call costs no quota, and concurrent requests cannot overshoot.
pub async fn limit_quota(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let reservation = state
        .quotas
        .reserve(
            request.extensions().get::<Subject>().map(Subject::as_str),
            request
                .extensions()
                .get::<Client>()
                .map(|client| &client.key),
        )
        .await;
    let reservation = match reservation {
        Ok(reservation) => reservation,
        Err(refused) => return refused.into_response(),
    };
    let response = next.run(request).await;
    if response.status().is_success() {
        reservation.keep();
    }
    response
}

/// The last stage's refusal: `server.concurrency_limit` requests are already being
/// handled, so this one is answered 503 at once instead of queueing.
pub async fn overloaded(error: BoxError) -> ApiError {
    if !error.is::<tower::load_shed::error::Overloaded>() {
        tracing::error!(%error, "the concurrency limit failed");
    }
    metrics::counter!(REQUESTS_SHED).increment(1);
    tracing::debug!("concurrency limit reached: request shed");
    ApiError::Unavailable {
        reason: "The proxy is handling as many requests as it allows; try again shortly.".into(),
        retry_after: SHED_RETRY_AFTER,
    }
}

/// The TCP peer of `request`, as the server recorded it.
fn peer_of(request: &Request) -> IpAddr {
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => addr.ip(),
        None => {
            warn_no_peer_once();
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        }
    }
}

fn warn_no_peer_once() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::error!(
            "no peer address on the request (serve the router with crate::http::server); every client shares one rate-limit budget"
        );
    }
}
