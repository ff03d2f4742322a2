//! The HTTP client for the two calls on every credential: hyper's connections over
//! rustls, pooled here, with the same outbound policy as [`crate::outbound`] (no
//! redirects, no system proxy, a connect timeout, `TCP_NODELAY`, the platform's
//! certificate verifier).
//!
//! Why not reqwest, as the JWKS fetcher and `healthcheck` use, nor hyper-util's pooled
//! client: both serve any number of hosts and callers, and on this path that generality
//! was most of the client's cost (reqwest about 25 µs of CPU a call over hyper-util's
//! client; that client's pool about 15,000 instructions a credential over the
//! connections themselves). Here a pool talks to one host, and each serving thread has
//! its own (see [`Transport::with_own_connections`]).
//!
//! HTTP/1.1 keep-alive connections (TLS offers only `http/1.1`) are kept in a list and
//! handed out one request at a time, as a reverse proxy keeps its upstream connections.

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::{TrySendError, http1};
use hyper::header::{ACCEPT, HOST, HeaderValue, USER_AGENT};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::ClientConfig;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// Pooled connections idle this long are closed rather than reused.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle HTTP/1.1 connections a pool keeps; more are closed as they free up.
const MAX_IDLE: usize = 256;

type Body = Empty<Bytes>;

/// One connection pool to Orga.
pub(super) struct Transport {
    connector: HttpsConnector<HttpConnector>,
    idle: Mutex<Vec<Idle>>,
    /// Kept for [`Transport::with_own_connections`]: loading the trusted roots once.
    tls: ClientConfig,
    timeout: Duration,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// What came back: the status, and the body read up to the cap.
pub(super) struct Answer {
    pub status: StatusCode,
    pub body: Result<Bytes, TransportError>,
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
        http.set_connect_timeout(Some(crate::outbound::connect_timeout(timeout)));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            connector,
            idle: Mutex::new(Vec::new()),
            tls,
            timeout,
        }
    }

    /// Sends a body-less request to `uri` (absolute) and reads the answer's body, at
    /// most `max_body` bytes. A request that provably never left (a pooled connection
    /// the server had closed) is sent again on a fresh connection.
    pub(super) async fn exchange(
        &self,
        mut request: Request<Body>,
        max_body: usize,
    ) -> Result<Answer, TransportError> {
        let uri = request.uri().clone();
        let headers = request.headers_mut();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(crate::outbound::USER_AGENT),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        loop {
            let (sender, reused) = match self.checkout().await {
                Some(sender) => (sender, true),
                // Boxed: connecting (TLS included) is a large future, and rare; inline,
                // its size would be copied with every request's future.
                None => (Box::pin(self.connect(&uri)).await?, false),
            };
            match send(sender, request).await {
                Ok((sender, response)) => {
                    let status = response.status();
                    let body = read_capped(response, max_body).await;
                    if body.is_ok() {
                        self.checkin(sender);
                    }
                    return Ok(Answer { status, body });
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(TransportError::Sent(error_chain(error.error()))),
                },
            }
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pooled connection ready for a request, if there is one. Connections idle past
    /// [`POOL_IDLE_TIMEOUT`] or closed by the server meanwhile are dropped.
    async fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        loop {
            let Idle { mut sender, since } = self.idle().pop()?;
            if since.elapsed() < POOL_IDLE_TIMEOUT && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Returns a connection whose answer was read in full. The list is a stack, oldest
    /// first: connections left at the bottom after a burst are closed here once idle past
    /// [`POOL_IDLE_TIMEOUT`], rather than kept open until the server closes them.
    fn checkin(&self, sender: http1::SendRequest<Body>) {
        let now = Instant::now();
        let mut idle = self.idle();
        let stale = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) >= POOL_IDLE_TIMEOUT)
            .count();
        idle.drain(..stale);
        if idle.len() < MAX_IDLE && !sender.is_closed() {
            idle.push(Idle { sender, since: now });
        }
    }

    /// Opens a connection (TLS for `https`), its driving task on the current runtime.
    async fn connect(&self, uri: &Uri) -> Result<http1::SendRequest<Body>, TransportError> {
        let failed = |e: Box<dyn std::error::Error + Send + Sync>| {
            if timed_out(&*e) {
                TransportError::ConnectTimeout
            } else {
                TransportError::Connect(error_chain(&*e))
            }
        };
        let stream = self
            .connector
            .clone()
            .oneshot(uri.clone())
            .await
            .map_err(failed)?;
        let (sender, connection) = http1::handshake(stream)
            .await
            .map_err(|e| TransportError::Connect(error_chain(&e)))?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// Sends `request` (absolute URI) on `sender`, in origin form with a Host header. On
/// failure, the request comes back if it never left.
async fn send(
    mut sender: http1::SendRequest<Body>,
    mut request: Request<Body>,
) -> Result<(http1::SendRequest<Body>, Response<Incoming>), TrySendError<Request<Body>>> {
    if let Some(authority) = request.uri().authority() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            request.headers_mut().insert(HOST, host);
        }
    }
    let path = request.uri().path_and_query().cloned();
    *request.uri_mut() = path.map_or_else(|| Uri::from_static("/"), Uri::from);
    let response = sender.try_send_request(request).await?;
    Ok((sender, response))
}

/// A body-less request to `uri` (cheap to clone: the URI's parts are shared bytes).
pub(super) fn request(method: hyper::Method, uri: &Uri) -> Request<Body> {
    let mut request = Request::new(Empty::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri.clone();
    request
}

/// Reads at most `max` bytes of `response`'s body, refusing a larger one as soon as its
/// `Content-Length` or its bytes say so, so a hostile peer cannot grow memory.
async fn read_capped(response: Response<Incoming>, max: usize) -> Result<Bytes, TransportError> {
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
