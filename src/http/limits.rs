//! Request limits, answered with the contract's JSON bodies (hyper and tower-http would
//! answer bare text): the request target, header size and `Host` on every route; the
//! declared body size and the whole-request deadline on the service's own routes.

use crate::error::ApiError;
use axum::BoxError;
use axum::extract::{Request, State};
use axum::http::{Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// Longest request target (path and query) accepted, as nginx's default buffers allow.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Total size of all request headers accepted (names, values and separators).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest request body the credentials route accepts. It reads none; a small JSON
/// object from an SDK fits comfortably.
pub const MAX_BODY_BYTES: u64 = 16 * 1024;

/// Every route: refuses an oversized target or head, and an HTTP/1.1 request without
/// exactly one `Host` (RFC 9112 §3.2), before any other work.
pub async fn edge(request: Request, next: Next) -> Response {
    match check_edge(&request) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

fn check_edge(request: &Request) -> Result<(), ApiError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |t| t.as_str().len());
    if target > MAX_TARGET_BYTES {
        return Err(ApiError::UriTooLong);
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(ApiError::HeadersTooLarge);
    }
    if request.version() == Version::HTTP_11
        && request.headers().get_all(header::HOST).iter().count() != 1
    {
        return Err(ApiError::BadRequest(
            "An HTTP/1.1 request needs exactly one Host header.".into(),
        ));
    }
    Ok(())
}

/// A route's body limit (`Content-Length`), as middleware state.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);

/// The service's own routes: refuses a declared body over the route's limit. A body
/// sent without `Content-Length` is capped where it is read.
pub async fn body(
    State(BodyLimit(max)): State<BodyLimit>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()));
    match declared {
        Some(None) => {
            ApiError::BadRequest("Content-Length is not a number.".into()).into_response()
        }
        Some(Some(length)) if length > max => ApiError::PayloadTooLarge.into_response(),
        _ => next.run(request).await,
    }
}

/// What the deadline layer (`tower::timeout`) fails with, as the contract's 504; any
/// other error of the layers below (there is none) as a 503.
pub async fn deadline_passed(timeout: Duration, error: BoxError) -> ApiError {
    if error.is::<tower::timeout::error::Elapsed>() {
        tracing::warn!(timeout = ?timeout, "request exceeded server.request_timeout");
        ApiError::UpstreamTimeout
    } else {
        tracing::error!(%error, "a request layer failed");
        ApiError::Unavailable {
            reason: "The proxy could not handle the request; try again.".into(),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// Whether a `Content-Type` names JSON: `application/json` or `application/*+json`,
/// with or without parameters, in any case.
pub fn is_json(content_type: &str) -> bool {
    content_type.parse::<mime::Mime>().is_ok_and(|media| {
        media.type_() == mime::APPLICATION
            && (media.subtype() == mime::JSON || media.suffix() == Some(mime::JSON))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn request(target: &str, hosts: usize) -> Request {
        let mut request = Request::builder().uri(target).body(Body::empty()).unwrap();
        for _ in 0..hosts {
            request
                .headers_mut()
                .append(header::HOST, "proxy.example".parse().unwrap());
        }
        request
    }

    #[test]
    fn a_target_over_8_kib_is_refused() {
        assert_eq!(
            check_edge(&request(&format!("/x?{}", "a".repeat(9000)), 1)),
            Err(ApiError::UriTooLong)
        );
        assert_eq!(check_edge(&request("/x?a=1", 1)), Ok(()));
    }

    #[test]
    fn http_1_1_needs_exactly_one_host() {
        assert!(matches!(
            check_edge(&request("/", 0)),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            check_edge(&request("/", 2)),
            Err(ApiError::BadRequest(_))
        ));
        let mut http10 = request("/", 0);
        *http10.version_mut() = Version::HTTP_10;
        assert_eq!(check_edge(&http10), Ok(()));
    }
}
