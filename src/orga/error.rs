//! `OrgaError`: what can go wrong talking to Orga Cloud, and how each case is answered.

use crate::error::ApiError;
use std::fmt;
use std::time::Duration;

/// Which upstream call failed, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `POST /v1/realtime/client-secrets`.
    ClientSecret,
    /// `GET /v1/realtime/ice-config`.
    IceConfig,
}

impl Call {
    /// The call's name, for logs and the `call` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecret => "client-secrets",
            Self::IceConfig => "ice-config",
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
#[derive(Debug, thiserror::Error)]
pub enum OrgaError {
    /// Orga answered 401/403 to the client-secrets call: our API key or email was refused.
    #[error("Orga refused the API key or user email ({call} answered {status})")]
    Auth {
        /// The call that was refused.
        call: Call,
        /// The upstream status.
        status: u16,
    },
    /// Orga answered with an unexpected status (5xx, 4xx other than auth, 3xx redirect).
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
        /// The transport error, without the URL's query (which holds the email).
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
            Self::Status { .. } => "status",
            Self::Malformed { .. } => "malformed",
            Self::Timeout { .. } => "timeout",
            Self::Transport { .. } => "transport",
            Self::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// Whether this failure says Orga Cloud is unhealthy, and so counts towards opening
    /// the circuit. A refused API key or another 4xx means Orga answered sanely.
    pub fn is_upstream_failure(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } | Self::Malformed { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::Auth { .. } | Self::CircuitOpen { .. } => false,
        }
    }
}

impl From<&OrgaError> for ApiError {
    fn from(error: &OrgaError) -> Self {
        match error {
            OrgaError::Auth { .. } => ApiError::UpstreamAuthFailed,
            OrgaError::Timeout { .. } => ApiError::UpstreamTimeout,
            OrgaError::Status { .. }
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
