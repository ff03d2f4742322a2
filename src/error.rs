//! `ApiError`: every error the HTTP edge answers, rendered as the contract's JSON body
//! `{"error":{"message","type","code"}}`. Components convert their own errors into it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

/// An error answered to the client. Messages are written for the developer calling
/// the proxy; they never carry secrets or upstream bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: the request itself is malformed.
    BadRequest(String),
    /// 401: missing or invalid caller credentials.
    Unauthorized(String),
    /// 403: the relay's session policy refuses a parameter; the message names it and
    /// what is allowed.
    SessionParamNotAllowed(String),
    /// 404: no such route.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 414: the request target is over the limit.
    UriTooLong,
    /// 431: the headers are over the limit.
    HeadersTooLarge,
    /// 429: a rate-limit budget is spent.
    RateLimited {
        /// The burst of the budget, sent as `RateLimit-Limit`.
        limit: u32,
        /// Until the budget is full again, sent as `RateLimit-Reset`.
        reset: Duration,
        /// Until one request is admitted, sent as `Retry-After`.
        retry_after: Duration,
    },
    /// 429: a daily quota is used up.
    QuotaExceeded {
        /// Whose quota, for the message: "this caller", "this client", "this service".
        whose: &'static str,
        /// Until the quota's UTC day ends, sent as `Retry-After`.
        retry_after: Duration,
    },
    /// 502: Orga refused our API key or email (an operator problem).
    UpstreamAuthFailed,
    /// 502: Orga unreachable, 5xx, or a malformed answer.
    Upstream,
    /// 503: Orga answered 429 (this account is over Orga's limits).
    UpstreamRateLimited {
        /// Orga's `Retry-After`, clamped; sent on as ours.
        retry_after: Duration,
    },
    /// 503: draining, overloaded, or the upstream circuit is open.
    Unavailable {
        /// Why, for the message.
        reason: String,
        /// Sent as `Retry-After`, rounded up to whole seconds.
        retry_after: Duration,
    },
    /// 504: Orga did not answer in time.
    UpstreamTimeout,
    /// Any of the above, answered to a call start whose token the relay has already
    /// spent: the same status, code and headers, and a message saying to fetch new
    /// credentials, since retrying with the same token can only get 401.
    TokenSpent(Box<ApiError>),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::SessionParamNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RateLimited { .. } | Self::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamAuthFailed | Self::Upstream => StatusCode::BAD_GATEWAY,
            Self::Unavailable { .. } | Self::UpstreamRateLimited { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::TokenSpent(error) => error.status(),
        }
    }

    /// The machine-readable `code` of the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::SessionParamNotAllowed(_) => "session_param_not_allowed",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::UpstreamAuthFailed => "upstream_auth_failed",
            Self::Upstream => "upstream_error",
            Self::UpstreamRateLimited { .. } => "upstream_rate_limited",
            Self::Unavailable { .. } => "unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::TokenSpent(error) => error.code(),
        }
    }

    /// The coarse `type` of the body: whose problem it is.
    fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "authentication_error",
            Self::UpstreamAuthFailed
            | Self::Upstream
            | Self::UpstreamTimeout
            | Self::UpstreamRateLimited { .. } => "upstream_error",
            Self::Unavailable { .. } => "server_error",
            Self::RateLimited { .. } | Self::QuotaExceeded { .. } => "rate_limit_error",
            Self::TokenSpent(error) => error.kind(),
            _ => "invalid_request_error",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::BadRequest(m) | Self::Unauthorized(m) | Self::SessionParamNotAllowed(m) => {
                m.clone()
            }
            Self::NotFound => "No route matches this path.".into(),
            Self::MethodNotAllowed => "This route does not accept this method.".into(),
            Self::PayloadTooLarge => "The request body is larger than this service accepts.".into(),
            Self::HeadersTooLarge => "The request headers are larger than this service accepts.".into(),
            Self::UriTooLong => "The request target (path and query) is longer than this service accepts.".into(),
            Self::UpstreamRateLimited { retry_after } => format!(
                "Orga Cloud is limiting this service's account; try again in {} s.",
                retry_after_secs(*retry_after)
            ),
            Self::RateLimited { retry_after, .. } => format!(
                "Too many requests; try again in {} s.",
                retry_after_secs(*retry_after)
            ),
            Self::QuotaExceeded { whose, retry_after } => format!(
                "The daily quota of credentials for {whose} is used up; it resets at 00:00 UTC, in {} s.",
                retry_after_secs(*retry_after)
            ),
            Self::UpstreamAuthFailed => {
                "The proxy's Orga credentials were refused by Orga; the operator must fix its configuration.".into()
            }
            Self::Upstream => "Orga Cloud failed or gave an unusable answer; try again shortly.".into(),
            Self::Unavailable { reason, .. } => reason.clone(),
            Self::UpstreamTimeout => "Orga Cloud did not answer in time; try again shortly.".into(),
            Self::TokenSpent(error) => format!(
                "{} This session token cannot start another call: fetch new credentials first.",
                error.message()
            ),
        }
    }
}

/// Whole seconds, rounded up and never 0, for `Retry-After`.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "message": self.message(), "type": self.kind(), "code": self.code() }
        });
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let inner = match &self {
            Self::TokenSpent(error) => error,
            error => error,
        };
        match inner {
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable { retry_after, .. }
            | Self::UpstreamRateLimited { retry_after }
            | Self::QuotaExceeded { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, retry_after_secs(*retry_after).into());
            }
            Self::RateLimited {
                limit,
                reset,
                retry_after,
            } => {
                headers.insert(header::RETRY_AFTER, retry_after_secs(*retry_after).into());
                headers.insert("ratelimit-limit", (*limit).into());
                headers.insert("ratelimit-remaining", HeaderValue::from_static("0"));
                headers.insert("ratelimit-reset", retry_after_secs(*reset).into());
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_token_keeps_the_errors_status_code_and_retry_after_and_says_so() {
        let open = ApiError::Unavailable {
            reason: "Orga Cloud is failing.".into(),
            retry_after: Duration::from_secs(10),
        };
        let spent = ApiError::TokenSpent(Box::new(open));
        assert_eq!(spent.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(spent.code(), "unavailable");
        assert!(spent.message().starts_with("Orga Cloud is failing. "));
        assert!(spent.message().contains("fetch new credentials"));
        let response = spent.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "10");
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn a_quota_refusal_names_the_quota_and_waits_until_midnight() {
        let error = ApiError::QuotaExceeded {
            whose: "this client",
            retry_after: Duration::from_secs(3_600),
        };
        assert!(
            error.message().contains("for this client"),
            "{}",
            error.message()
        );
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3600");
    }

    #[test]
    fn a_rate_limited_answer_carries_retry_after_and_the_ratelimit_headers() {
        let response = ApiError::RateLimited {
            limit: 10,
            reset: Duration::from_millis(19_500),
            retry_after: Duration::from_millis(1),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = response.headers();
        assert_eq!(h[header::RETRY_AFTER], "1");
        assert_eq!(h["ratelimit-limit"], "10");
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit-reset"], "20");
    }
}
