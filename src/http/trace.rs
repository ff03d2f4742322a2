//! The request's span and its one log line, on tower-http's `TraceLayer`. The span
//! carries the method, the path (never the query string, which could carry a token;
//! capped in length) and the request id; the line adds the status, the latency and what
//! the stages noted while the request ran (see [`crate::telemetry`]).

use crate::telemetry;
use axum::http::{Request, Response};
use std::time::Duration;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::Span;

/// Longest path written to a log line; a longer one is cut (with `…`).
const MAX_LOGGED_PATH: usize = 256;

/// The layer: a span per request, and the log line when the answer is ready. Failures
/// are not logged again: the line already says 5xx, at warn.
pub fn layer()
-> TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan, (), LogLine, (), (), ()> {
    TraceLayer::new_for_http()
        .make_span_with(RequestSpan)
        .on_request(())
        .on_response(LogLine)
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

/// Makes the request's span.
#[derive(Debug, Clone, Copy)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let path = request.uri().path();
        let path = match path.char_indices().nth(MAX_LOGGED_PATH) {
            Some((cut, _)) => format!("{}…", &path[..cut]),
            None => path.to_owned(),
        };
        let request_id = request
            .headers()
            .get(&super::request_id::X_REQUEST_ID)
            .and_then(|id| id.to_str().ok())
            .unwrap_or("");
        tracing::info_span!(
            "request",
            method = request.method().as_str(),
            path,
            request_id,
        )
    }
}

/// Writes the request's one log line.
#[derive(Debug, Clone, Copy)]
pub struct LogLine;

impl<B> OnResponse<B> for LogLine {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        // To the microsecond: finer is noise, and 12.733 reads better than 12.732679000000001.
        let millis = |d: Duration| d.as_micros() as f64 / 1000.0;
        let facts = telemetry::request_facts().unwrap_or_default();
        let upstream = |call: &str| {
            facts
                .upstream
                .iter()
                .find(|(c, _)| *c == call)
                .map(|(_, took)| millis(*took))
        };
        let status = response.status().as_u16();
        let latency_ms = millis(latency);
        let subject = facts.subject.as_deref();
        let upstream_secret_ms = upstream("client-secrets");
        let upstream_ice_ms = upstream("ice-config");
        let upstream_call_ms = upstream("calls");
        let pool = facts.pool_hit.then_some("hit");
        let conversation_id = facts.conversation_id.as_deref();
        let policy = facts.policy.as_deref();
        macro_rules! finished {
            ($level:ident) => {
                tracing::$level!(
                    parent: span,
                    status,
                    latency_ms,
                    subject,
                    upstream_secret_ms,
                    upstream_ice_ms,
                    upstream_call_ms,
                    pool,
                    conversation_id,
                    policy,
                    "request finished"
                )
            };
        }
        if response.status().is_server_error() {
            finished!(warn);
        } else {
            finished!(info);
        }
    }
}
