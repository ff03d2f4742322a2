//! The HTTP client for the two calls on every credential: hyper's pooled client over
//! rustls, with the same outbound policy as [`crate::outbound`] (no redirects, no system
//! proxy, a connect timeout, `TCP_NODELAY`, the platform's certificate verifier).
//!
//! Why not reqwest, as the JWKS fetcher and `healthcheck` use: on this path reqwest
//! cost about 25 µs of CPU per call more than the hyper client it wraps (URL
//! re-parsing, its connector and timeout layers), and every credential makes two calls.

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, HeaderValue, USER_AGENT};
use hyper::{Request, Response, Uri};
use hyper_rustls::ConfigBuilderExt;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::Duration;

/// Connecting is never allowed more than this, even with a longer total timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pooled connections idle this long are closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One connection pool to Orga (HTTP/1.1, or HTTP/2 where TLS negotiates it).
#[derive(Clone)]
pub(super) struct Transport {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Kept for [`Transport::with_own_connections`]: loading the trusted roots once.
    tls: ClientConfig,
    timeout: Duration,
}

/// Why a call failed below HTTP semantics.
#[derive(Debug)]
pub(super) enum TransportError {
    /// Connecting took longer than the connect timeout.
    ConnectTimeout,
    /// No connection could be made: the request never left.
    Connect(String),
    /// The request may have reached Orga before the connection failed.
    Sent(String),
    /// The answer's body is larger than the cap.
    TooLarge,
}

impl Transport {
    /// A new, empty pool whose connections take at most `min(timeout, 5 s)` to open.
    pub(super) fn new(timeout: Duration) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.try_with_platform_verifier())
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_no_client_auth();
        Ok(Self::with_tls(timeout, tls))
    }

    /// Another, empty pool with the same settings.
    pub(super) fn with_own_connections(&self) -> Self {
        Self::with_tls(self.timeout, self.tls.clone())
    }

    fn with_tls(timeout: Duration, tls: ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(MAX_CONNECT_TIMEOUT)));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(https);
        Self {
            client,
            tls,
            timeout,
        }
    }

    /// Sends a body-less request with the user agent set, and answers the response.
    pub(super) async fn send(
        &self,
        mut request: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, TransportError> {
        let headers = request.headers_mut();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(crate::outbound::USER_AGENT),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        self.client.request(request).await.map_err(|e| {
            if !e.is_connect() {
                TransportError::Sent(error_chain(&e))
            } else if timed_out(&e) {
                TransportError::ConnectTimeout
            } else {
                TransportError::Connect(error_chain(&e))
            }
        })
    }
}

/// A body-less request to `uri` (cheap to clone: the URI's parts are shared bytes).
pub(super) fn request(method: hyper::Method, uri: &Uri) -> Request<Empty<Bytes>> {
    let mut request = Request::new(Empty::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri.clone();
    request
}

/// Reads at most `max` bytes of `response`'s body, refusing a larger one as soon as its
/// `Content-Length` or its bytes say so, so a hostile peer cannot grow memory.
pub(super) async fn read_capped(
    response: Response<Incoming>,
    max: usize,
) -> Result<Bytes, TransportError> {
    let declared = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(TransportError::TooLarge);
    }
    match Limited::new(response.into_body(), max).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(TransportError::TooLarge),
        Err(e) => Err(TransportError::Sent(error_chain(&*e))),
    }
}

/// Whether an I/O timeout is among `error`'s causes.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

/// An error and its causes, joined with ": ". hyper's errors never name the URL, so the
/// account email in the query stays out of logs.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut reason = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
}
