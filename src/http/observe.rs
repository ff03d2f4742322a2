//! Request metrics: one count and one latency sample per answered request, labelled by
//! the matched route template (never the raw path, which could carry anything), the
//! method and the status. 401 and 429 answers are also counted as auth failures and
//! rate-limit refusals whichever layer produced them, so those layers need no wiring.

use crate::metrics::{
    AUTH_FAILURES, CREDENTIALS_ISSUED, HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS, RATE_LIMITED,
};
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use metrics::{Counter, Gauge, Histogram};
use std::cell::RefCell;
use std::sync::LazyLock;
use std::time::Instant;

/// The `route` label of requests that matched no route (404s of any path).
const UNMATCHED: &str = "unmatched";

// Every request records through handles resolved once and kept: through a kept handle
// a sample is an atomic add, where the macros build, hash and look up the key each time
// (seven times a request). The labels are bounded, so the caches are too. A handle is
// resolved on first use, by then the recorder is installed (`crate::app` does it first).

static IN_FLIGHT: LazyLock<Gauge> = LazyLock::new(|| metrics::gauge!(HTTP_IN_FLIGHT));
static ISSUED: LazyLock<Counter> = LazyLock::new(|| metrics::counter!(CREDENTIALS_ISSUED));

/// The series of the answers with one route, method and status.
struct Series {
    route: Box<str>,
    method: &'static str,
    status: StatusCode,
    answers: Counter,
    /// By route and method only: entries differing in status share the series.
    duration: Histogram,
}

thread_local! {
    /// One list a thread, so looking up takes no lock; a short list scanned in order
    /// costs less than hashing the key.
    static SERIES: RefCell<Vec<Series>> = const { RefCell::new(Vec::new()) };
}

/// Decrements the in-flight gauge even when the request future is dropped.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        IN_FLIGHT.increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.decrement(1.0);
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

/// One request being observed: started when it arrives, recorded once its answer is
/// known. Dropped without [`Observation::finish`] (the client went away), it still
/// leaves the in-flight gauge.
pub struct Observation {
    route: Option<MatchedPath>,
    method: &'static str,
    started: Instant,
    _in_flight: InFlight,
}

impl Observation {
    /// Starts observing `request` (routed: its matched path is known).
    pub fn start(request: &Request) -> Self {
        Self {
            route: request.extensions().get::<MatchedPath>().cloned(),
            method: method_label(request.method()),
            started: Instant::now(),
            _in_flight: InFlight::start(),
        }
    }

    /// Records the answer. `credentials_path` is the route whose 200s count as
    /// credentials issued.
    pub fn finish(self, status: StatusCode, credentials_path: &str) {
        let route = self.route.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
        let method = self.method;
        SERIES.with_borrow_mut(|kept| {
            let found = kept
                .iter()
                .position(|s| s.status == status && s.method == method && *s.route == *route);
            let index = found.unwrap_or_else(|| {
                kept.push(Series {
                    route: route.into(),
                    method,
                    status,
                    answers: metrics::counter!(
                        HTTP_REQUESTS,
                        "route" => route.to_owned(),
                        "method" => method,
                        "status" => status.as_str().to_owned(),
                    ),
                    duration: metrics::histogram!(
                        HTTP_DURATION,
                        "route" => route.to_owned(),
                        "method" => method,
                    ),
                });
                kept.len() - 1
            });
            kept[index].answers.increment(1);
            kept[index].duration.record(self.started.elapsed());
        });
        match status {
            StatusCode::UNAUTHORIZED => metrics::counter!(AUTH_FAILURES).increment(1),
            StatusCode::TOO_MANY_REQUESTS => metrics::counter!(RATE_LIMITED).increment(1),
            StatusCode::OK if self.route.is_some() && route == credentials_path => {
                ISSUED.increment(1);
            }
            _ => {}
        }
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
