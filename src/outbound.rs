//! Outbound HTTP: the one reqwest client every outbound call shares (Orga, the JWKS,
//! `healthcheck`; the Orga calls move to a fresh one, built here too, when an answer was
//! not JSON: see `orga::retire`), built from scratch with one policy: rustls, no redirects followed,
//! no system proxy, a connect timeout, `Accept-Encoding: identity` (answers are small,
//! and a compressed one could expand past the read cap), and answers read only up to a
//! cap. Each request sets its own total timeout.

use reqwest::header::{ACCEPT_ENCODING, HeaderMap, HeaderValue};
use reqwest::{Response, redirect};
use std::time::Duration;

/// Sent on every outbound request.
pub const USER_AGENT: &str = concat!("orga-proxy/", env!("CARGO_PKG_VERSION"));
/// Connecting is never allowed more than this, whatever the request's total timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled connection is kept (Orga's load balancers close theirs
/// after about a minute; closing first avoids racing them).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// The shared client. Cheap to clone (one connection pool behind it).
///
/// Idle connections are not capped (reqwest's default): every request waiting on Orga
/// holds its own HTTP/1 connection, and a cap would close them as they come back, so
/// the next burst reconnects; that churn costs more CPU and latency than the idle
/// connections' memory (see docs/performance.md).
pub fn client() -> Result<reqwest::Client, String> {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .default_headers(headers)
        .redirect(redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the outbound HTTP client: {e}"))
}

/// Why an answer's body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The body is larger than the cap (declared or actual). The rest is never read,
    /// so the connection is closed rather than reused.
    TooLarge,
    /// The connection failed while reading.
    Transport(reqwest::Error),
}

/// Reads at most `max` bytes of `response`'s body, refusing a larger one as soon as
/// its `Content-Length` or its bytes say so, so a hostile peer cannot grow memory.
pub async fn read_capped(mut response: Response, max: usize) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::with_capacity(1024.min(max));
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if body.len() + chunk.len() > max {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
