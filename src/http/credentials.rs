//! The credentials route: a fresh ephemeral token and its ICE servers on every call.

use crate::audit::Caller;
use crate::auth::Subject;
use crate::error::ApiError;
use crate::metrics::CREDENTIALS_ISSUED;
use crate::orga::SessionCredentials;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use std::time::Instant;

/// `GET` / `POST {server.credentials_path}`. Never cached, never shared: each call
/// takes a credential from the prefetch pool (handed out once) or mints its own. With
/// `audit.sink` set, it leaves only once its audit record is written; if that fails,
/// the credential is dropped here, unused, and the caller gets 503. With the relay's token
/// binding, the token is recorded for the caller's subject before either.
pub async fn credentials(
    State(state): State<AppState>,
    subject: Option<Extension<Subject>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    if let Some(relay) = &state.relay {
        relay.ensure_room()?;
    }
    let pooled = state.pool.as_ref().and_then(|pool| pool.take());
    let pool_hit = pooled.is_some();
    let credentials = match pooled {
        Some(credentials) => {
            crate::telemetry::note_pool_hit();
            credentials
        }
        None => {
            // The request's deadline (server.request_timeout) bounds upstream retries too.
            let deadline = Instant::now() + state.config.server.request_timeout;
            state
                .orga
                .session_credentials(deadline)
                .await
                .map_err(|error| ApiError::from(&error))?
        }
    };
    if let Some(relay) = &state.relay {
        let subject = subject.as_ref().map(|Extension(s)| s.as_str());
        relay.bind_issued(&credentials, subject).await?;
    }
    state
        .audit
        .credential_issued(caller, &credentials, pool_hit)
        .await?;
    metrics::counter!(CREDENTIALS_ISSUED).increment(1);
    Ok(respond(credentials))
}

fn respond(credentials: SessionCredentials) -> Response {
    let mut response = Json(credentials).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
