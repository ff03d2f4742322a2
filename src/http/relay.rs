//! `POST /v1/realtime/calls` (with `relay.enabled`): the open-circuit and token stages
//! and the handler.
//!
//! The route's gate is not the credentials gate: its Bearer is the ephemeral token, not
//! a caller credential, so there is no `authenticate` stage. In its place,
//! [`redeem_token`] checks the token's binding record (and marks it used) after the
//! client's rate limit, load shedding and [`wait_for_orga`]: a request shed for load, or
//! refused while Orga's circuit is not closed, keeps its token unspent. A token is spent
//! before its body is even read, so each token gets one attempt at anything (a malformed
//! body or a refused parameter included) and nobody without a token can probe the
//! session policy. Then [`start_call`] parses the body,
//! applies the policy and relays offer and params, nothing else, to Orga.

use crate::audit::{AuditRecord, Caller};
use crate::error::ApiError;
use crate::metrics::{RELAY_CALLS, RELAY_POLICY_VIOLATIONS, RELAY_TOKEN_REFUSALS};
use crate::orga::EphemeralToken;
use crate::relay::binding::Redeemed;
use crate::relay::call::{self, CallAnswer};
use crate::relay::policy::Action;
use crate::relay::{MAX_BODY_BYTES, RelayedCall, binding_refused};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::time::Instant;

/// The caller as the token stage found it: its token and, when bound, who got it.
#[derive(Clone)]
pub struct RelayCaller {
    /// The ephemeral token, sent on to Orga as the Bearer; never logged.
    token: EphemeralToken,
    /// The subject recorded when the token was issued.
    subject: Option<String>,
}

/// Unless Orga's circuit is closed, refuses the call start before the token stage spends
/// its token, so the caller can try again with the same token once it has closed.
pub async fn wait_for_orga(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match state.orga.refuse_unless_closed() {
        Ok(()) => next.run(request).await,
        Err(open) => counted(Err(ApiError::from(&open))),
    }
}

/// The token stage (see the module documentation). Without `relay.bind_tokens` it only
/// requires a Bearer, and Orga alone judges it.
pub async fn redeem_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer(request.headers()) else {
        return counted(Err(ApiError::Unauthorized(
            "The call start needs the ephemeral token from the credentials route, as Authorization: Bearer <token>.".into(),
        )));
    };
    let bindings = state
        .relay
        .as_ref()
        .and_then(|relay| relay.bindings.as_ref());
    let subject = match bindings {
        None => None,
        Some(bindings) => match bindings.redeem(&token).await {
            Ok(Redeemed::Accepted(subject)) => subject,
            Ok(Redeemed::Unknown) => {
                return refused_token(
                    "unknown",
                    "This session token was not issued by this service, or has expired; fetch new credentials.",
                );
            }
            Ok(Redeemed::AlreadyUsed) => {
                return refused_token(
                    "already_used",
                    "This session token has already started a call; fetch new credentials for each call.",
                );
            }
            Err(error) => return counted(Err(binding_refused(&error))),
        },
    };
    request
        .extensions_mut()
        .insert(RelayCaller { token, subject });
    next.run(request).await
}

/// `POST /v1/realtime/calls`, for a caller the token stage admitted. With
/// `audit.sink` set, the call's record (whatever its outcome) is written before the
/// answer leaves; an answer whose record cannot be written is not handed out (503), like
/// a credential: the conversation Orga started then goes unused.
pub async fn start_call(
    State(state): State<AppState>,
    Extension(caller): Extension<RelayCaller>,
    audit_caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // On a task of its own, so a client that goes away mid-call cannot cut it short: a
    // call Orga has started is billable, and its audit record must still be written.
    let work = relay_and_record(state, caller, audit_caller, headers, body);
    match tokio::spawn(crate::telemetry::gathering(work)).await {
        Ok((response, facts)) => {
            crate::telemetry::adopt(facts);
            response
        }
        Err(error) => {
            tracing::error!(%error, "relay: the call start's task failed");
            counted(Err(ApiError::Unavailable {
                reason:
                    "The call start failed inside the proxy; fetch new credentials and try again."
                        .into(),
                retry_after: std::time::Duration::from_secs(1),
            }))
        }
    }
}

/// [`relay`], then the call's audit record (see [`start_call`]).
async fn relay_and_record(
    state: AppState,
    caller: RelayCaller,
    mut audit_caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut facts = RelayedCall {
        subject: caller.subject.clone(),
        ..RelayedCall::default()
    };
    let mut result = relay(&state, &caller, &headers, body, &mut facts).await;
    facts.note();
    if state.audit.is_enabled() {
        // No auth stage runs here: the subject is the one the token was issued to.
        audit_caller.subject = caller.subject.clone();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => error.code(),
        };
        let record = AuditRecord::relay(
            audit_caller,
            &caller.token,
            outcome,
            facts.conversation_id.clone(),
            facts.decisions.as_map(),
        );
        if let Err(refused) = state.audit.record(record).await {
            if result.is_ok() {
                result = Err(ApiError::from(refused));
            }
        }
    }
    let bound = state.relay.as_ref().is_some_and(|r| r.bindings.is_some());
    counted(result.map_err(|error| match error {
        // These already tell the caller to fetch new credentials.
        ApiError::Unauthorized(_) | ApiError::SessionParamNotAllowed(_) => error,
        error if bound => ApiError::TokenSpent(Box::new(error)),
        error => error,
    }))
}

async fn relay(
    state: &AppState,
    caller: &RelayCaller,
    headers: &HeaderMap,
    body: Body,
    facts: &mut RelayedCall,
) -> Result<Response, ApiError> {
    let Some(relay) = state.relay.as_ref() else {
        return Err(ApiError::NotFound); // the route exists only with the relay
    };
    let content_type = headers.get(header::CONTENT_TYPE);
    if content_type.is_some_and(|t| !is_json(t)) {
        return Err(ApiError::BadRequest(
            "The call start must be sent as Content-Type: application/json.".into(),
        ));
    }
    let bytes = read_body(body).await?;
    let mut start = call::parse(&bytes).map_err(ApiError::BadRequest)?;
    let decided = relay.policy.apply(&mut start.params);
    let decisions = match &decided {
        Ok(decisions) => decisions,
        Err(refusal) => &refusal.decisions,
    };
    for (param, action) in &decisions.0 {
        if matches!(action, Action::Overridden | Action::Refused) {
            metrics::counter!(RELAY_POLICY_VIOLATIONS, "parameter" => param.as_str(), "action" => action.as_str())
                .increment(1);
        }
    }
    facts.decisions = decisions.clone();
    if let Err(refusal) = decided {
        return Err(ApiError::SessionParamNotAllowed(refusal.message));
    }
    let deadline = Instant::now() + state.config.server.request_timeout;
    let answer: CallAnswer = state
        .orga
        .start_call(&caller.token, &start, deadline)
        .await
        .map_err(|error| ApiError::from(&error))?;
    facts.conversation_id = Some(answer.conversation_id.clone());
    let mut response = Json(answer).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The answer, counted by outcome: `ok` or the error's code.
fn counted(result: Result<Response, ApiError>) -> Response {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(error) => error.code(),
    };
    metrics::counter!(RELAY_CALLS, "outcome" => outcome).increment(1);
    result.unwrap_or_else(IntoResponse::into_response)
}

fn refused_token(reason: &'static str, message: &str) -> Response {
    metrics::counter!(RELAY_TOKEN_REFUSALS, "reason" => reason).increment(1);
    tracing::info!(reason, "relay: session token refused");
    counted(Err(ApiError::Unauthorized(message.into())))
}

/// The Bearer token, if the header holds a plausible one.
fn bearer(headers: &HeaderMap) -> Option<EphemeralToken> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| EphemeralToken::new(token.trim()))
        .filter(|token| token.check().is_ok())
}

/// The body, at most [`MAX_BODY_BYTES`] (a body sent without `Content-Length` is
/// capped here; a declared one was checked by the route's body limit).
async fn read_body(body: Body) -> Result<axum::body::Bytes, ApiError> {
    match Limited::new(body, MAX_BODY_BYTES as usize).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge),
        Err(_) => Err(ApiError::BadRequest(
            "The request body could not be read.".into(),
        )),
    }
}

/// `application/json` or `application/*+json`, with or without parameters.
fn is_json(content_type: &HeaderValue) -> bool {
    content_type.to_str().is_ok_and(super::limits::is_json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn only_a_plausible_bearer_is_taken() {
        let token = |v: &str| bearer(&with_authorization(v)).map(|t| t.expose().to_owned());
        assert_eq!(token("Bearer ek_1").as_deref(), Some("ek_1"));
        assert_eq!(token("bearer  ek_1 ").as_deref(), Some("ek_1"));
        assert_eq!(token("Basic ek_1"), None);
        assert_eq!(token("Bearer "), None);
        assert_eq!(token("Bearer a b"), None);
        assert_eq!(token("Bearerek_1"), None);
        assert!(bearer(&HeaderMap::new()).is_none());
    }

    #[test]
    fn json_content_types_are_recognised() {
        let json = |v: &str| is_json(&HeaderValue::from_str(v).unwrap());
        assert!(json("application/json"));
        assert!(json("application/json; charset=utf-8"));
        assert!(json("Application/JSON"));
        assert!(json("application/vnd.api+json"));
        assert!(!json("text/plain"));
        assert!(!json("application/x-www-form-urlencoded"));
    }
}
