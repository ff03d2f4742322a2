//! The credentials route: a fresh ephemeral token and its ICE servers on every call.

use crate::auth::{self, Subject};
use crate::error::ApiError;
use crate::orga::{OrgaError, SessionCredentials, UpstreamTimings};
use crate::ratelimit;
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Marks a response served from the prefetch pool, for the request's log line.
#[derive(Debug, Clone, Copy)]
pub struct PoolHit;

/// The middleware in front of [`credentials`], stages outermost first: the per-client
/// rate limit, auth, the per-subject limit, then load shedding past
/// `server.concurrency_limit` (so refused callers hold no slot). What a stage adds to
/// the answer (rate-limit headers, the subject for the log line) goes on every answer
/// from behind it, refusals included.
///
/// One middleware rather than a layer per stage: each axum layer costs about 1.6 µs of
/// CPU a request (ten no-op layers added 16 µs).
pub async fn gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let peer = ratelimit::peer_of(&request);
    let client = match ratelimit::admit_client(&state.rate_limit, peer, request.headers()).await {
        Ok(decision) => decision,
        Err(refused) => return refused,
    };
    let mut response =
        match auth::identify(&state.authenticator, request.headers(), request.uri()).await {
            Ok(subject) => admit(&state, subject, request, next).await,
            Err(refused) => refused,
        };
    if let Some(decision) = client {
        decision.apply(response.headers_mut());
    }
    response
}

/// The stages of [`gate`] after auth.
async fn admit(
    state: &AppState,
    subject: Option<Subject>,
    request: Request,
    next: Next,
) -> Response {
    let per_subject = match &subject {
        Some(subject) => ratelimit::admit_subject(&state.rate_limit, subject.as_str()).await,
        None => Ok(None),
    };
    let mut response = match per_subject.map(|decision| (decision, state.shed.admit())) {
        Err(refused) => refused,
        Ok((_, Err(shed))) => shed.into_response(),
        Ok((decision, Ok(_slot))) => {
            let mut response = next.run(request).await;
            if let Some(decision) = decision {
                decision.apply(response.headers_mut());
            }
            response
        }
    };
    if let Some(subject) = subject {
        response.extensions_mut().insert(subject);
    }
    response
}

/// `GET` / `POST {server.credentials_path}`. Never cached, never shared: each call
/// mints its own token upstream. What the request's log line needs (upstream timings,
/// a pool hit) travels as response extensions, which the edge reads once.
pub async fn credentials(State(state): State<AppState>) -> Response {
    if let Some(credentials) = state.pool.as_ref().and_then(|pool| pool.take()) {
        let mut response = respond(credentials);
        response.extensions_mut().insert(PoolHit);
        return response;
    }
    let mut timings = UpstreamTimings::default();
    // The request's deadline (server.request_timeout) bounds upstream retries too.
    let deadline = std::time::Instant::now() + state.config.server.request_timeout;
    let mut response = match state.orga.session_credentials(deadline, &mut timings).await {
        Ok(credentials) => respond(credentials),
        Err(error) => {
            log_upstream_error(&error);
            ApiError::from(&error).into_response()
        }
    };
    response.extensions_mut().insert(timings);
    response
}

fn respond(credentials: SessionCredentials) -> Response {
    // Written into a buffer that fits the usual answer (about 300 bytes) and a header
    // map sized for what the edge and the gate add: axum's `Json` grows a `BytesMut`
    // from 128 bytes through many small writes, and the map from nothing. Half the
    // instructions of building the answer.
    let mut body = Vec::with_capacity(512);
    if serde_json::to_writer(&mut body, &credentials).is_err() {
        // Cannot happen for strings, numbers and lists; axum's 500 if it ever does.
        return Json(credentials).into_response();
    }
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.reserve(8);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
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
