//! The call-start relay (`relay.enabled`): the SDK's `POST /v1/realtime/calls`, sent to
//! this service (its `baseUrl`) instead of Orga, relayed with a server-side session
//! policy and only for tokens this service issued.
//!
//! - [`call`]: the body, parsed strictly; what is forwarded; Orga's answer.
//! - [`policy`]: `[relay.policy]` applied to the params.
//! - [`binding`]: tokens bound to the caller who got them, once each.
//!
//! The route and its stages are in `crate::http::relay`; the credentials route records
//! what it issues through [`Relay::ensure_room`] and [`Relay::bind_issued`].

pub mod binding;
pub mod call;
pub mod policy;

use crate::clock::Clock;
use crate::config::Config;
use crate::error::ApiError;
use crate::orga::SessionCredentials;
use crate::store::RedisConnection;
use binding::{BindingError, TokenBindings};
use policy::{Decisions, Policy};
use std::sync::Arc;
use std::time::Duration;

/// The route, fixed by the SDK (`${baseUrl}/v1/realtime/calls`).
pub const PATH: &str = "/v1/realtime/calls";
/// The route's body limit: a real SDP offer with its candidates and params fits.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// What a caller is told to wait when no token can be recorded.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(5);
const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The relay's shared parts.
pub struct Relay {
    /// `[relay.policy]` with `relay.on_violation`.
    pub policy: Policy,
    /// Where issued tokens are recorded, when `relay.bind_tokens`.
    pub bindings: Option<TokenBindings>,
}

impl Relay {
    /// The relay of a validated configuration; `redis` when `[redis]` is configured
    /// (see `store::RedisConnection::from_config`).
    pub fn new(config: &Config, redis: Option<Arc<RedisConnection>>, clock: Clock) -> Self {
        let relay = &config.relay;
        Self {
            policy: Policy::new(relay),
            bindings: relay
                .bind_tokens
                .then(|| TokenBindings::new(relay, redis, &config.redis, clock)),
        }
    }

    /// The credentials route, before it takes or mints a credential: 503 when the
    /// binding table is full or Redis is failing (nothing is minted that could not be
    /// bound).
    pub fn ensure_room(&self) -> Result<(), ApiError> {
        match &self.bindings {
            Some(bindings) => bindings.has_room().map_err(|e| binding_refused(&e)),
            None => Ok(()),
        }
    }

    /// The credentials route, once it holds `credentials` for `subject`: records the
    /// token, or answers 503 (a token handed out unrecorded would only be refused at the
    /// relay later).
    pub async fn bind_issued(
        &self,
        credentials: &SessionCredentials,
        subject: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(bindings) = &self.bindings else {
            return Ok(());
        };
        bindings
            .bind(
                &credentials.ephemeral_token,
                subject,
                credentials.expires_at.as_ref(),
            )
            .await
            .map_err(|error| binding_refused(&error))
    }
}

/// The 503 for a token that cannot be recorded or checked. Neither cause is logged per
/// request: the memory table warns while it is full, and the Redis connection logs each
/// outage when it starts.
pub fn binding_refused(error: &BindingError) -> ApiError {
    match error {
        BindingError::Full => ApiError::Unavailable {
            reason:
                "The proxy is holding as many unused session tokens as it allows; try again shortly."
                    .into(),
            retry_after: FULL_RETRY_AFTER,
        },
        BindingError::Store(reason) => {
            tracing::debug!(%reason, "relay token binding: Redis failed; refusing");
            ApiError::Unavailable {
                reason: "The proxy cannot record or check session tokens right now (its token store is down); try again shortly."
                    .into(),
                retry_after: STORE_RETRY_AFTER,
            }
        }
    }
}

/// The facts of one relayed call: for its log line now, and for an audit record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayedCall {
    /// Who the token was issued to (from its binding record), when known.
    pub subject: Option<String>,
    /// What the session policy did to each parameter.
    pub decisions: Decisions,
    /// Orga's id for the conversation, once started.
    pub conversation_id: Option<String>,
}

impl RelayedCall {
    /// Puts the facts on the request's log line.
    pub fn note(&self) {
        if let Some(subject) = &self.subject {
            crate::telemetry::note_subject(subject);
        }
        if !self.decisions.0.is_empty() {
            crate::telemetry::note_policy(self.decisions.to_string());
        }
        if let Some(id) = &self.conversation_id {
            crate::telemetry::note_conversation(id);
        }
    }
}
