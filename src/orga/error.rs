//! `OrgaError`: what can go wrong talking to Orga Cloud, how each case is logged for
//! the operator, and how it is answered to the client.

use crate::error::ApiError;
use std::fmt;
use std::time::Duration;

/// Which upstream call failed, for logs and the `call` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `POST /v1/realtime/client-secrets`.
    ClientSecret,
    /// `GET /v1/realtime/ice-config`.
    IceConfig,
    /// `POST /v1/realtime/calls` (the relay).
    StartCall,
}

impl Call {
    /// The call's name, for logs and the `call` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecret => "client-secrets",
            Self::IceConfig => "ice-config",
            Self::StartCall => "calls",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An upstream failure. Never carries the upstream body or a token: only what an
/// operator needs to tell the cases apart.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrgaError {
    /// Orga answered 401/403 to a call made with our API key: the key (or email) was
    /// refused. On a call made with an ephemeral token, the token was refused.
    #[error("{call} answered {status}: the credentials were refused")]
    Auth {
        /// The call that was refused.
        call: Call,
        /// The upstream status.
        status: u16,
    },
    /// Orga answered 429: this account is over Orga's limits.
    #[error("{call} answered 429: Orga is limiting this account")]
    RateLimited {
        /// The call that was limited.
        call: Call,
        /// What Orga asked us to wait (clamped to 1-300 s; 5 s when it did not say).
        retry_after: Duration,
    },
    /// Orga answered 422: it refused what we sent, naming the fields (never values).
    #[error("{call} answered 422: Orga rejected the request's {}", fields.join(", "))]
    Rejected {
        /// The call that was rejected.
        call: Call,
        /// The `loc` paths of FastAPI's `detail`, joined with dots (`query.email`).
        fields: Vec<String>,
    },
    /// Orga answered with an unexpected status (5xx, another 4xx, a 3xx redirect).
    #[error("{call} answered HTTP {status}")]
    Status {
        /// The failing call.
        call: Call,
        /// The upstream status.
        status: u16,
    },
    /// The answer was not the documented JSON (or was larger than we accept).
    #[error("{call} answered with a malformed body: {reason}")]
    Malformed {
        /// The failing call.
        call: Call,
        /// What was wrong, without the body itself.
        reason: String,
    },
    /// No answer within `orga.timeout`.
    #[error("{call} did not answer within the timeout")]
    Timeout {
        /// The call that timed out.
        call: Call,
    },
    /// Could not connect, or the connection broke.
    #[error("{call} failed: {reason}")]
    Transport {
        /// The failing call.
        call: Call,
        /// The transport error, without the URL (its query may hold the email).
        reason: String,
        /// True when the request provably never reached Orga (connection refused),
        /// so even a non-idempotent call may be retried.
        never_sent: bool,
    },
    /// The circuit breaker is open: Orga was not called.
    #[error("the upstream circuit is open; Orga was not called")]
    CircuitOpen {
        /// Until the breaker lets a probe through.
        retry_after: Duration,
    },
}

impl OrgaError {
    /// A short stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Auth { .. } => "auth",
            Self::RateLimited { .. } => "rate_limited",
            Self::Rejected { .. } => "rejected",
            Self::Status { .. } => "status",
            Self::Malformed { .. } => "malformed",
            Self::Timeout { .. } => "timeout",
            Self::Transport { .. } => "transport",
            Self::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// Whether this failure says Orga Cloud is unhealthy, and so counts towards opening
    /// the circuit. A refused key, a 429 (Orga limiting this account: a sane answer) or
    /// another 4xx means Orga answered sanely.
    pub fn is_upstream_failure(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } | Self::Malformed { .. } => true,
            Self::Status { status, .. } => *status >= 500,
            Self::Auth { .. }
            | Self::RateLimited { .. }
            | Self::Rejected { .. }
            | Self::CircuitOpen { .. } => false,
        }
    }

    /// Logs the failure once, at the level and with the advice an operator needs.
    pub fn report(&self) {
        let kind = self.kind();
        match self {
            Self::Auth {
                call: Call::ClientSecret,
                ..
            } => tracing::error!(
                error = %self, kind,
                "Orga refused the configured API key or user email; check orga.api_key and orga.user_email"
            ),
            // The caller's own token, on its call start: the caller's problem.
            Self::Auth {
                call: Call::StartCall,
                ..
            } => tracing::info!(error = %self, kind, "Orga refused the caller's ephemeral token"),
            // A token Orga minted a moment ago: Orga is not answering sanely.
            Self::Auth { .. } => tracing::error!(
                error = %self, kind,
                "Orga refused the ephemeral token it had just minted"
            ),
            Self::RateLimited { retry_after, .. } => tracing::warn!(
                error = %self, kind, retry_after_s = retry_after.as_secs(),
                "Orga is rate limiting this account: callers get 503 upstream_rate_limited; lower the proxy's own limits (rate_limit, quota) or ask Orga for a higher limit"
            ),
            Self::Rejected { .. } => tracing::error!(
                error = %self, kind,
                "Orga rejected a request this proxy built: check the proxy's configuration and version against Orga's current API"
            ),
            // Logged once by the breaker when it opens, not once per refused request.
            Self::CircuitOpen { .. } => {
                tracing::debug!(kind, "upstream circuit open: request refused")
            }
            Self::Timeout { .. } => tracing::warn!(error = %self, kind, "Orga Cloud timed out"),
            Self::Status { .. } | Self::Malformed { .. } | Self::Transport { .. } => {
                tracing::error!(error = %self, kind, "Orga Cloud call failed")
            }
        }
    }
}

impl From<&OrgaError> for ApiError {
    fn from(error: &OrgaError) -> Self {
        match error {
            OrgaError::Auth {
                call: Call::ClientSecret,
                ..
            } => ApiError::UpstreamAuthFailed,
            OrgaError::Auth {
                call: Call::StartCall,
                ..
            } => ApiError::Unauthorized(
                "Orga refused the session token; fetch new credentials.".into(),
            ),
            // ice-config with the token just minted: no fault of the caller's.
            OrgaError::Auth {
                call: Call::IceConfig,
                ..
            } => ApiError::Upstream,
            OrgaError::Timeout { .. } => ApiError::UpstreamTimeout,
            OrgaError::RateLimited { retry_after, .. } => ApiError::UpstreamRateLimited {
                retry_after: *retry_after,
            },
            OrgaError::Rejected {
                call: Call::StartCall,
                fields,
            } => ApiError::BadRequest(format!(
                "Orga rejected the call start; check these fields: {}.",
                fields.join(", ")
            )),
            OrgaError::Rejected { .. }
            | OrgaError::Status { .. }
            | OrgaError::Malformed { .. }
            | OrgaError::Transport { .. } => ApiError::Upstream,
            OrgaError::CircuitOpen { retry_after } => ApiError::Unavailable {
                reason: "Orga Cloud is failing, so the proxy is not calling it for a moment; try again shortly."
                    .into(),
                retry_after: *retry_after,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orgas_own_rate_limit_is_not_a_failure_of_its_health() {
        let limited = OrgaError::RateLimited {
            call: Call::ClientSecret,
            retry_after: Duration::from_secs(7),
        };
        assert!(!limited.is_upstream_failure());
        assert_eq!(
            ApiError::from(&limited),
            ApiError::UpstreamRateLimited {
                retry_after: Duration::from_secs(7)
            }
        );
        let broken = OrgaError::Status {
            call: Call::ClientSecret,
            status: 503,
        };
        assert!(broken.is_upstream_failure());
    }

    #[test]
    fn a_refused_api_key_is_an_operator_problem_and_a_refused_token_the_callers() {
        let key = OrgaError::Auth {
            call: Call::ClientSecret,
            status: 401,
        };
        assert_eq!(ApiError::from(&key), ApiError::UpstreamAuthFailed);
        let fresh = OrgaError::Auth {
            call: Call::IceConfig,
            status: 401,
        };
        assert_eq!(
            ApiError::from(&fresh),
            ApiError::Upstream,
            "a token Orga just minted, refused by Orga, is not the caller's fault"
        );
        let token = OrgaError::Auth {
            call: Call::StartCall,
            status: 401,
        };
        assert!(matches!(ApiError::from(&token), ApiError::Unauthorized(_)));
    }

    #[test]
    fn a_rejected_call_start_names_the_fields_only_for_the_caller_who_sent_them() {
        let fields = vec!["body.offer.sdp".to_owned()];
        let relay = OrgaError::Rejected {
            call: Call::StartCall,
            fields: fields.clone(),
        };
        assert!(
            matches!(ApiError::from(&relay), ApiError::BadRequest(m) if m.contains("body.offer.sdp"))
        );
        let ours = OrgaError::Rejected {
            call: Call::ClientSecret,
            fields,
        };
        assert_eq!(ApiError::from(&ours), ApiError::Upstream);
    }
}
