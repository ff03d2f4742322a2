//! Request metrics: one count and one latency sample per answered request, labelled by
//! the matched route template (never the raw path, which could carry anything), the
//! method and the status. 401 and 429 answers are also counted as auth failures and
//! rate-limit refusals whichever stage produced them, so those stages need no wiring.

use crate::metrics::{AUTH_FAILURES, HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS, RATE_LIMITED};
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// The `route` label of requests that matched no route (404s of any path).
const UNMATCHED: &str = "unmatched";

/// The middleware: records the request's answer, and keeps the in-flight gauge (which
/// a request dropped half-way, its client gone, also leaves).
pub async fn record(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method());
    let started = Instant::now();
    let _in_flight = InFlight::start();
    let response = next.run(request).await;
    let status = response.status();
    metrics::counter!(
        HTTP_REQUESTS,
        "route" => route.clone(),
        "method" => method,
        "status" => status.as_str().to_owned(),
    )
    .increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route, "method" => method)
        .record(started.elapsed());
    match status {
        StatusCode::UNAUTHORIZED => metrics::counter!(AUTH_FAILURES).increment(1),
        StatusCode::TOO_MANY_REQUESTS => metrics::counter!(RATE_LIMITED).increment(1),
        _ => {}
    }
    response
}

/// Decrements the in-flight gauge even when the request future is dropped.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!(HTTP_IN_FLIGHT).increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(HTTP_IN_FLIGHT).decrement(1.0);
    }
}

/// A method label from a fixed set, so a client inventing methods cannot grow the
/// number of series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        let invented = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&invented), "other");
    }
}
