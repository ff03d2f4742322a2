//! Outbound HTTP policy, shared by every client this service builds: built from scratch,
//! no redirects followed, no system proxy, explicit timeouts, and answers read only up
//! to a cap. The JWKS fetcher and `healthcheck` use [`client`]; the Orga calls apply
//! the same policy on hyper (`crate::orga::transport`), with [`USER_AGENT`] and
//! [`connect_timeout`] from here.

use reqwest::{ClientBuilder, Response, redirect};
use std::time::Duration;

/// Sent on every outbound request.
pub const USER_AGENT: &str = concat!("orga-proxy/", env!("CARGO_PKG_VERSION"));
/// Connecting is never allowed more than this, even with a longer total timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting may take for requests with `timeout` in total.
pub fn connect_timeout(timeout: Duration) -> Duration {
    timeout.min(MAX_CONNECT_TIMEOUT)
}

/// A client builder with the policy applied and `timeout` as the total deadline of
/// each request (connecting within `min(timeout, 5 s)`).
pub fn client(timeout: Duration) -> ClientBuilder {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(redirect::Policy::none())
        .no_proxy()
        .connect_timeout(connect_timeout(timeout))
        .timeout(timeout)
        .tcp_nodelay(true)
}

/// Why an answer's body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The body is larger than the cap (declared or actual).
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
