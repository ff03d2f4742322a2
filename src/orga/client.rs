//! `OrgaClient`: the upstream calls the official SDKs make, on the shared outbound
//! client (see [`crate::outbound`]; replaced when an answer was not JSON, see
//! `super::retire`): built from scratch (no client header forwarded),
//! with explicit timeouts and a cap on the answer size, behind a circuit breaker, with
//! one retry where a retry is safe (see [`OrgaClient::session_credentials`]).

use super::breaker::{CircuitBreaker, CircuitState, Permit};
use super::error::{Call, OrgaError};
use super::retire::RetirableClient;
use super::types::{ClientSecret, EphemeralToken, IceConfig, SessionCredentials, UpstreamAnswer};
use crate::clock::Clock;
use crate::config::OrgaConfig;
use crate::metrics::{CIRCUIT_REJECTED, UPSTREAM_DURATION, UPSTREAM_ERRORS, UPSTREAM_RETRIES};
use crate::outbound::{self, ReadError};
use crate::secret::Secret;
use reqwest::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER,
};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Largest upstream answer read; the documented answers are well under 1 KiB, and an
/// SDP answer a few KiB.
const MAX_UPSTREAM_BODY: usize = 64 * 1024;
/// `Retry-After` when Orga answers 429 without one.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The range Orga's `Retry-After` is clamped to before it is passed on.
const RETRY_AFTER_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

/// A cheap-to-clone handle on the upstream client.
#[derive(Clone)]
pub struct OrgaClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The shared outbound client, until an answer that was not JSON retires its pool.
    http: RetirableClient,
    /// `POST` target, with the encoded `email` query when `orga.user_email` is set.
    client_secrets_url: Url,
    ice_config_url: Url,
    calls_url: Url,
    /// `Bearer <api key>`, marked sensitive; replaced when SIGHUP reloads the key.
    api_key_bearer: RwLock<HeaderValue>,
    /// `orga.timeout`: the most one attempt may take.
    timeout: Duration,
    /// Opens after a run of failed credential requests.
    breaker: Arc<CircuitBreaker>,
}

impl OrgaClient {
    /// Builds the client from validated configuration, on the shared outbound client
    /// (`http`, from [`outbound::client`]: a retired pool is replaced by another client
    /// built there, with the same settings).
    pub fn new(config: &OrgaConfig, http: reqwest::Client, clock: Clock) -> Result<Self, String> {
        let mut client_secrets_url = config.base_url.endpoint("/v1/realtime/client-secrets");
        if let Some(email) = &config.user_email {
            // Percent-encoded like JavaScript's `encodeURIComponent`, as the Node SDK did;
            // the URL then carries `'` as %27, as fetch's WHATWG URL parser does too.
            client_secrets_url.set_query(Some(&format!(
                "email={}",
                encode_uri_component(email.as_str())
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                http: RetirableClient::new(http)?,
                client_secrets_url,
                ice_config_url: config.base_url.endpoint("/v1/realtime/ice-config"),
                calls_url: config.base_url.endpoint("/v1/realtime/calls"),
                api_key_bearer: RwLock::new(api_key_bearer(&config.api_key)?),
                timeout: config.timeout,
                breaker: CircuitBreaker::new(
                    config.circuit_breaker_threshold,
                    config.circuit_breaker_cooldown,
                    clock,
                ),
            }),
        })
    }

    /// Uses `key` from the next call on (SIGHUP reload of `orga.api_key`).
    pub fn set_api_key(&self, key: &Secret) -> Result<(), String> {
        let bearer = api_key_bearer(key)?;
        *self
            .inner
            .api_key_bearer
            .write()
            .unwrap_or_else(|p| p.into_inner()) = bearer;
        Ok(())
    }

    /// The circuit breaker's state, for `/readyz`.
    pub fn circuit_state(&self) -> CircuitState {
        self.inner.breaker.state()
    }

    /// [`OrgaError::CircuitOpen`] unless the circuit is closed, as [`Self::start_call`]
    /// would answer, taking nothing: for a caller that spends something (a bound token)
    /// before calling Orga.
    pub fn refuse_unless_closed(&self) -> Result<(), OrgaError> {
        match self.inner.breaker.not_closed_for() {
            Some(retry_after) => Err(circuit_open(retry_after)),
            None => Ok(()),
        }
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
    ) -> Result<SessionCredentials, OrgaError> {
        // Awaited in place, not through a wrapper (see `observe`).
        let result = match self.admit() {
            Ok(permit) => {
                let result = self.fetch_credentials(deadline).await;
                permit.record(
                    result
                        .as_ref()
                        .err()
                        .is_some_and(OrgaError::is_upstream_failure),
                );
                result
            }
            Err(open) => Err(open),
        };
        if let Err(error) = &result {
            error.report();
        }
        result
    }

    /// `POST /v1/realtime/calls` with the caller's ephemeral token and `body` (the
    /// offer and the policy-checked params): Orga's answer, parsed as `T`. Not retried:
    /// a call start is not idempotent.
    ///
    /// Refused unless the circuit is closed, but only a transport failure or a timeout
    /// counts against Orga's health here: a 5xx or a malformed answer may come from the
    /// client's own SDP, and no outcome of a caller's call start proves Orga can mint
    /// tokens, so none closes the circuit either.
    pub async fn start_call<T: UpstreamAnswer>(
        &self,
        token: &EphemeralToken,
        body: &impl serde::Serialize,
        deadline: Instant,
    ) -> Result<T, OrgaError> {
        let call = Call::StartCall;
        let request = |http: &reqwest::Client| {
            http.request(Method::POST, self.inner.calls_url.clone())
                .header(AUTHORIZATION, token.bearer())
                .json(body)
        };
        let timeout = left_before(deadline, self.inner.timeout);
        // Only while closed: a call start cannot close the circuit, so it must not take a
        // half-open circuit's probe from a credentials request that can.
        let permit = self
            .inner
            .breaker
            .admit_while_closed()
            .map_err(circuit_open)?;
        let started = Instant::now();
        let result = self.exchange(call, request, timeout).await;
        observe(call, started, &result);
        match &result {
            Err(error @ (OrgaError::Transport { .. } | OrgaError::Timeout { .. })) => {
                permit.record(true);
                error.report();
            }
            // Dropped without an outcome: the breaker's state stays as it was.
            Err(error) => error.report(),
            Ok(_) => {}
        }
        result
    }

    /// Leave from the circuit breaker to call Orga, or the open circuit's refusal.
    fn admit(&self) -> Result<Permit, OrgaError> {
        self.inner.breaker.admit().map_err(circuit_open)
    }

    async fn fetch_credentials(&self, deadline: Instant) -> Result<SessionCredentials, OrgaError> {
        let secret: ClientSecret = with_retry(
            Call::ClientSecret,
            deadline,
            self.inner.timeout,
            |timeout| {
                let request = |http: &reqwest::Client| {
                    http.request(Method::POST, self.inner.client_secrets_url.clone())
                        .header(AUTHORIZATION, self.api_key_bearer())
                        .header(CONTENT_TYPE, "application/json")
                        // Said outright, as fetch() says it for a POST without a body:
                        // hyper leaves it out, and some front ends then answer 411.
                        .header(CONTENT_LENGTH, "0")
                };
                self.exchange(Call::ClientSecret, request, timeout)
            },
        )
        .await?;
        let ice: IceConfig = with_retry(Call::IceConfig, deadline, self.inner.timeout, |timeout| {
            let request = |http: &reqwest::Client| {
                http.request(Method::GET, self.inner.ice_config_url.clone())
                    .header(AUTHORIZATION, secret.ephemeral_token.bearer())
            };
            self.exchange(Call::IceConfig, request, timeout)
        })
        .await?;
        Ok(SessionCredentials {
            ephemeral_token: secret.ephemeral_token,
            ice_servers: ice.ice_servers,
            expires_at: secret.expires_at,
        })
    }

    fn api_key_bearer(&self) -> HeaderValue {
        self.inner
            .api_key_bearer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One attempt of `call`: build the request on the current client, send it, check
    /// the status, read at most [`MAX_UPSTREAM_BODY`], parse and check it, all within
    /// `timeout`. An answer whose bytes are not JSON retires the client's pool.
    async fn exchange<T: UpstreamAnswer>(
        &self,
        call: Call,
        request: impl FnOnce(&reqwest::Client) -> RequestBuilder,
        timeout: Duration,
    ) -> Result<T, OrgaError> {
        let http = self.inner.http.current();
        // reqwest's per-request timeout runs from connecting to the body's last byte.
        let response = request(&http)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| transport_failure(call, &e))?;
        let status = response.status();
        if !status.is_success() {
            let error = status_error(call, status, response.headers());
            return Err(match error {
                // FastAPI's 422 names what it refused: read it for the log line.
                OrgaError::Rejected { .. } => OrgaError::Rejected {
                    call,
                    fields: rejected_fields(
                        &outbound::read_capped(response, MAX_UPSTREAM_BODY)
                            .await
                            .unwrap_or_default(),
                    ),
                },
                // Any other body is dropped unread, which closes the connection.
                error => error,
            });
        }
        let body = outbound::read_capped(response, MAX_UPSTREAM_BODY)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => OrgaError::Malformed {
                    call,
                    reason: format!("answer larger than {MAX_UPSTREAM_BODY} bytes"),
                },
                ReadError::Transport(e) => transport_failure(call, &e),
            })?;
        let answer = serde_json::from_slice::<T>(&body).map_err(|e| {
            // Bytes that are not JSON at all may mean the connection itself went wrong;
            // JSON of the wrong shape, or failing `check`, says nothing about it.
            if !e.is_data() {
                self.inner.http.retire(&http);
            }
            OrgaError::Malformed {
                call,
                reason: format!("not the documented JSON ({})", json_problem(&e)),
            }
        })?;
        answer
            .check()
            .map_err(|reason| OrgaError::Malformed { call, reason })?;
        Ok(answer)
    }
}

/// The refusal of a circuit that is not letting this call through, counted.
fn circuit_open(retry_after: Duration) -> OrgaError {
    metrics::counter!(CIRCUIT_REJECTED).increment(1);
    OrgaError::CircuitOpen { retry_after }
}

fn api_key_bearer(key: &Secret) -> Result<HeaderValue, String> {
    let mut bearer = HeaderValue::try_from(format!("Bearer {}", key.expose()))
        .map_err(|_| "orga.api_key: not a valid header value".to_string())?;
    bearer.set_sensitive(true);
    Ok(bearer)
}

/// The error for a non-success status.
fn status_error(call: Call, status: StatusCode, headers: &HeaderMap) -> OrgaError {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => OrgaError::Auth {
            call,
            status: status.as_u16(),
        },
        StatusCode::TOO_MANY_REQUESTS => OrgaError::RateLimited {
            call,
            retry_after: retry_after(headers, SystemTime::now()),
        },
        StatusCode::UNPROCESSABLE_ENTITY => OrgaError::Rejected {
            call,
            fields: Vec::new(),
        },
        status => OrgaError::Status {
            call,
            status: status.as_u16(),
        },
    }
}

/// Orga's `Retry-After` (delay seconds or an HTTP date), clamped to 1-300 s; 5 s when
/// absent or unreadable.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Duration {
    let Some(value) = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()) else {
        return DEFAULT_RETRY_AFTER;
    };
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => match httpdate::parse_http_date(value) {
            Ok(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
            Err(_) => return DEFAULT_RETRY_AFTER,
        },
    };
    wait.clamp(RETRY_AFTER_RANGE.0, RETRY_AFTER_RANGE.1)
}

/// The fields FastAPI's 422 `detail` names (`loc` paths joined with dots), never the
/// values (`input`, `msg`), and at most a few, each short.
fn rejected_fields(body: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Detail {
        detail: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        loc: Vec<serde_json::Value>,
    }
    let Ok(detail) = serde_json::from_slice::<Detail>(body) else {
        return vec!["(unnamed)".to_owned()];
    };
    let plain = |s: &str| {
        s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
    };
    let mut fields: Vec<String> = detail
        .detail
        .iter()
        .take(8)
        .map(|item| {
            item.loc
                .iter()
                .map(|part| match part {
                    serde_json::Value::String(s) if plain(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => "?".to_owned(),
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();
    fields.dedup();
    if fields.is_empty() {
        fields.push("(unnamed)".to_owned());
    }
    fields
}

/// What is left of `timeout` before `deadline`, never zero (a zero timeout would mean
/// "none" to some APIs).
fn left_before(deadline: Instant, timeout: Duration) -> Duration {
    let left = deadline.saturating_duration_since(Instant::now());
    timeout.min(left).max(Duration::from_millis(1))
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
/// `deadline`), once more if the failure is [`retryable`] and time is left.
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
        let started = Instant::now();
        let result = attempt(left_before(deadline, timeout)).await;
        observe(call, started, &result);
        let error = match result {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if retried || !retryable(call, &error) || Instant::now() >= deadline {
            return Err(error);
        }
        retried = true;
        metrics::counter!(UPSTREAM_RETRIES, "call" => call.as_str()).increment(1);
        tracing::info!(%call, error = %error, kind = error.kind(), "retrying the upstream call once");
    }
}

/// Records one attempt that began at `started`: its latency (metrics and the request's
/// log line) and its error kind. Called after awaiting the attempt in place: a wrapper
/// taking the attempt's future by value would store it twice (rust-lang/rust#62958).
fn observe<T>(call: Call, started: Instant, result: &Result<T, OrgaError>) {
    let elapsed = started.elapsed();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::histogram!(UPSTREAM_DURATION, "call" => call.as_str(), "outcome" => outcome)
        .record(elapsed);
    crate::telemetry::note_upstream(call.as_str(), elapsed);
    if let Err(error) = &result {
        metrics::counter!(UPSTREAM_ERRORS, "call" => call.as_str(), "kind" => error.kind())
            .increment(1);
    }
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

/// A transport error without its URL (the query may hold the email).
fn transport_failure(call: Call, error: &reqwest::Error) -> OrgaError {
    if error.is_timeout() {
        return OrgaError::Timeout { call };
    }
    let reason = describe_transport(error);
    OrgaError::Transport {
        call,
        reason,
        never_sent: error.is_connect(),
    }
}

/// The chain of causes of a transport error, without the URL.
fn describe_transport(error: &reqwest::Error) -> String {
    let mut reason = if error.is_connect() {
        "cannot connect".to_owned()
    } else if error.is_body() || error.is_decode() {
        "the answer broke off".to_owned()
    } else {
        "the exchange failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
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
#[path = "client_tests.rs"]
mod tests;
