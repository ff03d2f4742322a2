//! `OrgaClient`: the two upstream calls the official Node SDK makes, built from scratch
//! (no client header forwarded), with explicit timeouts, no redirects, no system
//! proxy and a cap on the answer size; behind a circuit breaker, with one retry where
//! a retry is safe (see [`OrgaClient::session_credentials`]). The HTTP itself is in
//! [`super::transport`].

use super::breaker::{CircuitBreaker, CircuitState, Clock, SystemClock};
use super::error::{Call, OrgaError};
use super::transport::{self, Transport, TransportError};
use super::types::{ClientSecret, EphemeralToken, IceServer, SessionCredentials};
use crate::config::OrgaConfig;
use crate::metrics::{CIRCUIT_REJECTED, UPSTREAM_DURATION, UPSTREAM_ERRORS, UPSTREAM_RETRIES};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, StatusCode, Uri};
use metrics::Histogram;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// Largest upstream answer read; both documented answers are well under 1 KiB.
const MAX_UPSTREAM_BODY: usize = 64 * 1024;

/// A cheap-to-clone handle on one shared connection pool.
#[derive(Clone)]
pub struct OrgaClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: Transport,
    /// `POST` target with the encoded `email` query already in place.
    client_secrets_url: Uri,
    ice_config_url: Uri,
    /// `Bearer <api key>`, marked sensitive so no `Debug` of the request shows it.
    api_key_bearer: HeaderValue,
    /// `orga.timeout`: the most one attempt may take.
    timeout: Duration,
    /// Opens after a run of failed credential requests.
    breaker: Arc<CircuitBreaker>,
}

/// How long each upstream call took, for the request's log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamTimings {
    /// The client-secrets call.
    pub client_secret: Duration,
    /// The ice-config call.
    pub ice_config: Duration,
}

impl OrgaClient {
    /// Builds the client from validated configuration.
    pub fn new(config: &OrgaConfig) -> Result<Self, String> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// [`OrgaClient::new`] with the circuit breaker reading time from `clock` (tests).
    pub fn with_clock(config: &OrgaConfig, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let base = config.base_url.trim_end_matches('/');
        let client_secrets_url = format!(
            "{base}/v1/realtime/client-secrets?email={}",
            encode_uri_component(&config.user_email)
        );
        // url normalizes and percent-encodes what http's stricter parser would refuse.
        let parse = |u: &str| {
            let url = url::Url::parse(u).map_err(|e| format!("orga.base_url: {e}"))?;
            Uri::try_from(url.as_str()).map_err(|e| format!("orga.base_url: {e}"))
        };
        let mut api_key_bearer =
            HeaderValue::try_from(format!("Bearer {}", config.api_key.expose()))
                .map_err(|_| "orga.api_key: not a valid header value".to_string())?;
        api_key_bearer.set_sensitive(true);
        Ok(Self {
            inner: Arc::new(Inner {
                http: Transport::new(config.timeout)?,
                client_secrets_url: parse(&client_secrets_url)?,
                ice_config_url: parse(&format!("{base}/v1/realtime/ice-config"))?,
                api_key_bearer,
                timeout: config.timeout,
                breaker: CircuitBreaker::new(
                    config.circuit_breaker_threshold,
                    config.circuit_breaker_cooldown,
                    clock,
                ),
            }),
        })
    }

    /// The same client (same breaker, same targets, same TLS settings) with a connection
    /// pool of its own.
    /// Each serving thread takes one (see [`crate::AppState::for_worker`]): a request
    /// whose pooled connection was opened on another thread would wake that thread
    /// twice per call.
    pub fn with_own_connections(&self) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                http: inner.http.with_own_connections(),
                client_secrets_url: inner.client_secrets_url.clone(),
                ice_config_url: inner.ice_config_url.clone(),
                api_key_bearer: inner.api_key_bearer.clone(),
                timeout: inner.timeout,
                breaker: inner.breaker.clone(),
            }),
        }
    }

    /// The circuit breaker's state, for `/readyz`.
    pub fn circuit_state(&self) -> CircuitState {
        self.inner.breaker.state()
    }

    /// Mints a fresh ephemeral token and fetches the ICE servers that go with it.
    /// Both must succeed: half a credential is never handed out.
    ///
    /// While the circuit is open this answers [`OrgaError::CircuitOpen`] without calling
    /// Orga. Each call is retried at most once, and only while `deadline` (the end of
    /// the client's request) has not passed: `ice-config`, an idempotent GET, on a
    /// connection error or a 5xx; `client-secrets`, which mints a token, only when the
    /// request provably never left (the connection was never made).
    pub async fn session_credentials(
        &self,
        deadline: Instant,
        timings: &mut UpstreamTimings,
    ) -> Result<SessionCredentials, OrgaError> {
        let permit = self.inner.breaker.admit().map_err(|retry_after| {
            metrics::counter!(CIRCUIT_REJECTED).increment(1);
            OrgaError::CircuitOpen { retry_after }
        })?;
        let result = self.fetch_credentials(deadline, timings).await;
        permit.record(
            result
                .as_ref()
                .err()
                .is_some_and(OrgaError::is_upstream_failure),
        );
        result
    }

    async fn fetch_credentials(
        &self,
        deadline: Instant,
        timings: &mut UpstreamTimings,
    ) -> Result<SessionCredentials, OrgaError> {
        let timeout = self.inner.timeout;
        let started = Instant::now();
        let secret = with_retry(Call::ClientSecret, deadline, timeout, |timeout| {
            self.client_secret_attempt(timeout)
        })
        .await;
        timings.client_secret = started.elapsed();
        let secret = secret?;
        let started = Instant::now();
        let ice_servers = with_retry(Call::IceConfig, deadline, timeout, |timeout| {
            self.ice_config_attempt(&secret.ephemeral_token, timeout)
        })
        .await;
        timings.ice_config = started.elapsed();
        Ok(SessionCredentials {
            ephemeral_token: secret.ephemeral_token,
            ice_servers: ice_servers?,
            expires_at: secret.expires_at,
        })
    }

    /// `POST /v1/realtime/client-secrets?email=...` with the API key as Bearer, no body.
    /// One attempt, no breaker.
    async fn client_secret_attempt(&self, timeout: Duration) -> Result<ClientSecret, OrgaError> {
        let call = Call::ClientSecret;
        let mut request = transport::request(Method::POST, &self.inner.client_secrets_url);
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, self.inner.api_key_bearer.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        within(call, timeout, async {
            let answer = self.inner.http.exchange(request, MAX_UPSTREAM_BODY).await;
            let answer = answer.map_err(|e| transport_failure(call, e))?;
            match answer.status {
                s if s.is_success() => {}
                s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                    return Err(OrgaError::Auth {
                        call,
                        status: s.as_u16(),
                    });
                }
                s => {
                    return Err(OrgaError::Status {
                        call,
                        status: s.as_u16(),
                    });
                }
            }
            let secret: ClientSecret = parse_json(call, answer.body)?;
            secret
                .validate()
                .map_err(|reason| OrgaError::Malformed { call, reason })?;
            Ok(secret)
        })
        .await
    }

    /// `GET /v1/realtime/ice-config` with the freshly minted token as Bearer.
    /// One attempt, no breaker.
    async fn ice_config_attempt(
        &self,
        token: &EphemeralToken,
        timeout: Duration,
    ) -> Result<Vec<IceServer>, OrgaError> {
        let call = Call::IceConfig;
        let mut request = transport::request(Method::GET, &self.inner.ice_config_url);
        request.headers_mut().insert(AUTHORIZATION, token.bearer());
        within(call, timeout, async {
            let answer = self.inner.http.exchange(request, MAX_UPSTREAM_BODY).await;
            let answer = answer.map_err(|e| transport_failure(call, e))?;
            if !answer.status.is_success() {
                return Err(OrgaError::Status {
                    call,
                    status: answer.status.as_u16(),
                });
            }
            #[derive(serde::Deserialize)]
            struct IceConfig {
                #[serde(rename = "iceServers")]
                ice_servers: Vec<IceServer>,
            }
            let config: IceConfig = parse_json(call, answer.body)?;
            for server in &config.ice_servers {
                server
                    .validate()
                    .map_err(|reason| OrgaError::Malformed { call, reason })?;
            }
            Ok(config.ice_servers)
        })
        .await
    }
}

/// Runs one attempt of `call`, sending, reading and parsing, within `timeout`.
async fn within<T>(
    call: Call,
    timeout: Duration,
    attempt: impl Future<Output = Result<T, OrgaError>>,
) -> Result<T, OrgaError> {
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(OrgaError::Timeout { call }))
}

/// Whether a failed attempt of `call` may be tried again (see
/// [`OrgaClient::session_credentials`]).
fn retryable(call: Call, error: &OrgaError) -> bool {
    match (call, error) {
        (Call::ClientSecret, OrgaError::Transport { never_sent, .. }) => *never_sent,
        (Call::IceConfig, OrgaError::Transport { .. }) => true,
        (Call::IceConfig, OrgaError::Status { status, .. }) => *status >= 500,
        _ => false,
    }
}

/// Runs `attempt` (given its timeout: `orga.timeout`, cut to what is left before
/// `deadline`), once more if the failure is [`retryable`] and time is left, and records
/// each attempt's latency and error in the metrics.
async fn with_retry<T, F, Fut>(
    call: Call,
    deadline: Instant,
    timeout: Duration,
    mut attempt: F,
) -> Result<T, OrgaError>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, OrgaError>>,
{
    let mut retried = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A floor keeps a zero timeout (deadline already gone) from meaning "none".
        let started = Instant::now();
        let result = attempt(timeout.min(left).max(Duration::from_millis(1))).await;
        upstream_duration(call, result.is_ok()).record(started.elapsed());
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        metrics::counter!(UPSTREAM_ERRORS, "call" => call.as_str(), "kind" => error.kind())
            .increment(1);
        if retried || !retryable(call, &error) || Instant::now() >= deadline {
            return Err(error);
        }
        retried = true;
        metrics::counter!(UPSTREAM_RETRIES, "call" => call.as_str()).increment(1);
        tracing::info!(%call, error = %error, kind = error.kind(), "retrying the upstream call once");
    }
}

/// The latency histogram of `call`'s attempts that succeeded (`ok`) or failed, resolved
/// once: two samples a credential, and the macro would build and look up the key for
/// each. Resolved on first use, after `crate::app` installed the recorder.
fn upstream_duration(call: Call, ok: bool) -> &'static Histogram {
    const CALLS: [Call; 2] = [Call::ClientSecret, Call::IceConfig];
    static HISTOGRAMS: LazyLock<[[Histogram; 2]; 2]> = LazyLock::new(|| {
        CALLS.map(|call| {
            ["ok", "error"].map(|outcome| {
                metrics::histogram!(UPSTREAM_DURATION, "call" => call.as_str(), "outcome" => outcome)
            })
        })
    });
    let index = CALLS.iter().position(|c| *c == call).unwrap_or(0);
    &HISTOGRAMS[index][usize::from(!ok)]
}

/// Parses a body read up to [`MAX_UPSTREAM_BODY`]. The body never goes into the
/// error: an upstream could put anything there.
fn parse_json<T: DeserializeOwned>(
    call: Call,
    body: Result<Bytes, TransportError>,
) -> Result<T, OrgaError> {
    let body = body.map_err(|e| transport_failure(call, e))?;
    serde_json::from_slice(&body).map_err(|e| OrgaError::Malformed {
        call,
        // serde_json's message names the position and expected type, never the content.
        reason: format!("not the documented JSON ({})", json_problem(&e)),
    })
}

/// What kind of JSON problem, without serde_json's message (which may quote the body).
fn json_problem(error: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match error.classify() {
        Category::Io => "i/o",
        Category::Syntax => "syntax error",
        Category::Data => "missing or mistyped field",
        Category::Eof => "truncated",
    }
}

fn transport_failure(call: Call, error: TransportError) -> OrgaError {
    let (reason, never_sent) = match error {
        TransportError::ConnectTimeout => return OrgaError::Timeout { call },
        TransportError::TooLarge => {
            return OrgaError::Malformed {
                call,
                reason: format!("answer larger than {MAX_UPSTREAM_BODY} bytes"),
            };
        }
        TransportError::Connect(reason) => (reason, true),
        TransportError::Sent(reason) => (reason, false),
    };
    OrgaError::Transport {
        call,
        reason,
        never_sent,
    }
}

/// Percent-encodes like JavaScript's `encodeURIComponent`, as the Node SDK does.
fn encode_uri_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(never_sent: bool) -> OrgaError {
        OrgaError::Transport {
            call: Call::ClientSecret,
            reason: String::new(),
            never_sent,
        }
    }

    #[test]
    fn client_secrets_is_retried_only_when_the_request_never_left() {
        assert!(retryable(Call::ClientSecret, &transport(true)));
        assert!(!retryable(Call::ClientSecret, &transport(false)));
        let status = OrgaError::Status {
            call: Call::ClientSecret,
            status: 503,
        };
        assert!(!retryable(Call::ClientSecret, &status));
    }

    #[test]
    fn ice_config_is_retried_on_connection_errors_and_5xx_only() {
        let status = |status| OrgaError::Status {
            call: Call::IceConfig,
            status,
        };
        assert!(retryable(Call::IceConfig, &transport(false)));
        assert!(retryable(Call::IceConfig, &status(502)));
        assert!(!retryable(Call::IceConfig, &status(401)));
        let timeout = OrgaError::Timeout {
            call: Call::IceConfig,
        };
        assert!(
            !retryable(Call::IceConfig, &timeout),
            "a timeout has used the time"
        );
    }

    #[test]
    fn email_is_encoded_like_encode_uri_component() {
        assert_eq!(
            encode_uri_component("dev+team@example.com"),
            "dev%2Bteam%40example.com"
        );
        assert_eq!(encode_uri_component("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(encode_uri_component("é"), "%C3%A9");
    }
}
