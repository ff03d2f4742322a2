//! Who may call the credentials route: `auth.mode` = none | api_key | jwt. The
//! [`Authenticator`] is built once from config; [`require`] is the middleware that
//! runs it on the credentials route only and hands the [`Subject`] to later stages.

mod api_key;
pub mod config;
mod jwks;
mod jwt;
mod token;

pub use config::{AuthConfig, AuthMode, JwtConfig};

use crate::error::ApiError;
use crate::http::cors::AllowedOrigins;
use crate::state::Readiness;
use api_key::ApiKeys;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jwt::{JwtVerifier, KeySource};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The authenticated caller: the JWT `sub`, or `api_key:<name or 1-based index>`;
/// never a key or a token. Inserted as a request extension, for the logs and for
/// per-subject limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(pub String);

impl Subject {
    /// The subject as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a caller was refused. Messages help the developer and never echo a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// 401: missing or invalid credentials.
    Invalid(String),
    /// 503: jwt mode with a JWKS that has never loaded; fail closed.
    KeysUnavailable,
}

impl AuthError {
    fn invalid(message: &str) -> Self {
        Self::Invalid(message.to_owned())
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Invalid(message) => ApiError::Unauthorized(message),
            AuthError::KeysUnavailable => ApiError::Unavailable {
                reason: "The identity provider's signing keys are not loaded yet, so no token can be checked; try again shortly.".into(),
                retry_after: Duration::from_secs(5),
            },
        }
    }
}

/// Wall-clock time for `exp`/`nbf` and the JWKS cooldown; tests inject a [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self(Mutex::new(start))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Checks callers of the credentials route; a cheap clone of one shared instance.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Mode>,
}

enum Mode {
    Open,
    ApiKeys(ApiKeys),
    Jwt {
        /// Cookie tokens are honoured only for requests from these origins (or same-origin).
        origins: Arc<AllowedOrigins>,
        verifier: JwtVerifier,
        /// Also read the token from this cookie.
        cookie: Option<String>,
    },
}

impl Authenticator {
    /// Builds the authenticator from validated config. With a JWKS URL this registers
    /// the `jwks` readiness dependency and starts loading keys on the current Tokio
    /// runtime (ready once loaded).
    pub fn new(
        config: &AuthConfig,
        readiness: &Readiness,
        clock: Arc<dyn Clock>,
        origins: Arc<AllowedOrigins>,
    ) -> Result<Self, String> {
        // Explicit, so a second backend enabled by some other crate can never leave
        // jsonwebtoken without one (it would panic at the first verification).
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let mode = match config.mode {
            AuthMode::None => {
                tracing::warn!(
                    "auth.mode is \"none\": anyone who can reach the credentials route mints Orga tokens"
                );
                Mode::Open
            }
            AuthMode::ApiKey => Mode::ApiKeys(ApiKeys::new(&config.api_keys)),
            AuthMode::Jwt => {
                let jwt = &config.jwt;
                let keys = if jwt.secret.is_empty() {
                    KeySource::Jwks(jwks::Jwks::start(
                        &jwt.jwks_url,
                        jwt.algorithms(),
                        jwt.jwks_refresh,
                        jwt.jwks_min_refresh,
                        readiness.dependency("jwks"),
                        clock.clone(),
                    )?)
                } else {
                    KeySource::Secret(jsonwebtoken::DecodingKey::from_secret(
                        jwt.secret.expose().as_bytes(),
                    ))
                };
                Mode::Jwt {
                    verifier: JwtVerifier::new(jwt, keys, clock),
                    cookie: (!jwt.cookie.is_empty()).then(|| jwt.cookie.clone()),
                    origins,
                }
            }
        };
        Ok(Self {
            inner: Arc::new(mode),
        })
    }

    /// Checks a request's credentials. `Ok(None)` when authentication is off.
    /// `query` is only looked at to explain that credentials do not belong there.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Subject>, AuthError> {
        match &*self.inner {
            Mode::Open => Ok(None),
            Mode::ApiKeys(keys) => {
                let presented = match token::bearer(headers)? {
                    Some(key) => key,
                    None => token::api_key_header(headers)?.ok_or_else(|| {
                        token::missing(
                            query,
                            "an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                        )
                    })?,
                };
                let subject = keys
                    .check(presented)
                    .ok_or_else(|| AuthError::invalid("The API key is not valid."))?;
                Ok(Some(Subject(subject.to_owned())))
            }
            Mode::Jwt {
                verifier,
                cookie,
                origins,
            } => {
                let token = match token::bearer(headers)? {
                    Some(token) => token.to_owned(),
                    None => {
                        let from_cookie = cookie
                            .as_deref()
                            .and_then(|name| token::cookie(headers, name))
                            .ok_or_else(|| match cookie {
                                Some(name) => token::missing(
                                    query,
                                    &format!("a token: send `Authorization: Bearer <token>` or the `{name}` cookie"),
                                ),
                                None => token::missing(
                                    query,
                                    "a token: send `Authorization: Bearer <token>`",
                                ),
                            })?;
                        token::check_cookie_request(headers, origins)?;
                        from_cookie
                    }
                };
                verifier.verify(&token).await.map(|sub| Some(Subject(sub)))
            }
        }
    }

    /// How many JWKS fetches were attempted; `None` without a JWKS.
    pub fn jwks_fetches(&self) -> Option<u64> {
        match &*self.inner {
            Mode::Jwt { verifier, .. } => verifier.jwks().map(|jwks| jwks.fetches()),
            _ => None,
        }
    }
}

/// Middleware for the credentials route: refuses the request (401, or 503 while a
/// JWKS has never loaded), or inserts the subject as a request extension (for later
/// stages) and a response extension (for the request's log line).
pub async fn require(
    State(auth): State<Authenticator>,
    mut request: Request,
    next: Next,
) -> Response {
    match identify(&auth, request.headers(), request.uri()).await {
        Ok(Some(subject)) => {
            request.extensions_mut().insert(subject.clone());
            let mut response = next.run(request).await;
            response.extensions_mut().insert(subject);
            response
        }
        Ok(None) => next.run(request).await,
        Err(refused) => refused,
    }
}

/// The check of [`require`] for a request with `headers` to `uri`: the caller's subject
/// (none in auth mode `none`), or the refusal to send instead, logged.
pub async fn identify(
    auth: &Authenticator,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Option<Subject>, Response> {
    auth.authenticate(headers, uri.query())
        .await
        .map_err(|error| {
            match &error {
                AuthError::Invalid(reason) => tracing::info!(%reason, "caller refused"),
                AuthError::KeysUnavailable => {
                    tracing::warn!("caller refused: JWKS not loaded")
                }
            }
            ApiError::from(error).into_response()
        })
}
