//! Who may call the billable routes: `auth.mode` = none | api_key | jwt. The
//! [`Authenticator`] is built once from config; the gate's `authenticate` stage
//! (`crate::http::gate`) runs it and hands the [`Subject`] to later stages.

mod api_key;
mod jwks;
mod jwt;
mod token;

use crate::clock::Clock;
use crate::config::{ApiKeyList, AuthConfig, AuthMode, CorsConfig};
use crate::error::ApiError;
use crate::readiness::Readiness;
use api_key::ApiKeys;
use arc_swap::ArcSwap;
use axum::http::HeaderMap;
use jwt::{JwtVerifier, KeySource};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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

/// The JWT claims named in `audit.claims`, copied from a verified token for the audit
/// record (see [`jwt::copy_claims`]): string, number and boolean values only, strings
/// cut short. Inserted as a request extension next to the [`Subject`] when not empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditClaims(pub Vec<(String, serde_json::Value)>);

/// Why a caller was refused. Messages help the developer and never echo a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// 401: missing or invalid credentials.
    Invalid(String),
    /// 503: jwt mode with no usable JWKS key (never loaded, none published, or dropped
    /// past `auth.jwt.jwks_max_stale`); fail closed.
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
                reason: "The identity provider's signing keys are not loaded, so no token can be checked; try again shortly.".into(),
                retry_after: Duration::from_secs(5),
            },
        }
    }
}

/// Checks callers of the credentials route; a cheap clone of one shared instance.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Mode>,
    /// `audit.claims`: what jwt mode copies from each token for the audit record.
    audit_claims: Arc<[String]>,
}

enum Mode {
    Open,
    /// The keys, replaced by SIGHUP.
    ApiKeys(ArcSwap<ApiKeys>),
    Jwt {
        /// Cookie tokens are honoured only for requests from the allowed origins (or
        /// same-origin): the live `[cors]`.
        cors: Arc<ArcSwap<CorsConfig>>,
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
        clock: Clock,
        cors: Arc<ArcSwap<CorsConfig>>,
        http: reqwest::Client,
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
            AuthMode::ApiKey => {
                Mode::ApiKeys(ArcSwap::from_pointee(ApiKeys::new(&config.api_keys)))
            }
            AuthMode::Jwt => {
                let jwt = &config.jwt;
                let keys = match &jwt.jwks_url {
                    Some(url) => KeySource::Jwks(jwks::Jwks::start(
                        url.0.clone(),
                        jwt,
                        http,
                        readiness.dependency("jwks"),
                        clock.clone(),
                    )?),
                    None => KeySource::Secret(jsonwebtoken::DecodingKey::from_secret(
                        jwt.secret.expose().as_bytes(),
                    )),
                };
                Mode::Jwt {
                    verifier: JwtVerifier::new(jwt, keys, clock),
                    cookie: jwt.cookie.as_ref().map(|name| name.as_str().to_owned()),
                    cors,
                }
            }
        };
        Ok(Self {
            inner: Arc::new(mode),
            audit_claims: Arc::new([]),
        })
    }

    /// Copies the claims `names` (`audit.claims`) from each verified JWT, for the audit
    /// record; see [`Authenticator::authenticate_caller`].
    pub fn with_audit_claims(mut self, names: &[String]) -> Self {
        self.audit_claims = names.into();
        self
    }

    /// Checks a request's credentials. `Ok(None)` when authentication is off.
    /// `query` is only looked at to explain that credentials do not belong there.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<Subject>, AuthError> {
        let caller = self.authenticate_caller(headers, query).await?;
        Ok(caller.map(|(subject, _)| subject))
    }

    /// [`Authenticator::authenticate`], with the claims `audit.claims` names (empty
    /// unless in jwt mode).
    pub async fn authenticate_caller(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Option<(Subject, AuditClaims)>, AuthError> {
        match &*self.inner {
            Mode::Open => Ok(None),
            Mode::ApiKeys(keys) => {
                let presented = match token::bearer(headers)? {
                    Some(key) => key,
                    None => token::api_key_header(headers)?.ok_or_else(|| {
                        token::missing(
                            query,
                            "an API key, as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                        )
                    })?,
                };
                let keys = keys.load();
                let subject = keys
                    .check(presented)
                    .ok_or_else(|| AuthError::invalid("The API key is not valid."))?;
                Ok(Some((Subject(subject.to_owned()), AuditClaims::default())))
            }
            Mode::Jwt {
                verifier,
                cookie,
                cors,
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
                                    &format!("a token, as `Authorization: Bearer <token>` or the `{name}` cookie"),
                                ),
                                None => token::missing(
                                    query,
                                    "a token, as `Authorization: Bearer <token>`",
                                ),
                            })?;
                        token::check_cookie_request(headers, &cors.load().allowed_origins)?;
                        from_cookie
                    }
                };
                let subject = verifier.verify(&token).await?;
                let claims = jwt::copy_claims(&token, &self.audit_claims);
                Ok(Some((Subject(subject), claims)))
            }
        }
    }

    /// Replaces the accepted API keys (SIGHUP); `false` when not in api_key mode.
    pub fn reload_api_keys(&self, keys: &ApiKeyList) -> bool {
        match &*self.inner {
            Mode::ApiKeys(current) => {
                current.store(Arc::new(ApiKeys::new(keys)));
                true
            }
            _ => false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn audit_claims_are_the_listed_scalars_with_long_strings_cut() {
        let payload = json!({"sub": "u", "org_id": "acme", "long": "x".repeat(300),
            "admin": true, "tier": 3, "roles": ["a"], "meta": {"a": 1}, "gone": null});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &payload,
            &jsonwebtoken::EncodingKey::from_secret(b"test-only"),
        )
        .unwrap();
        let names = [
            "org_id", "long", "admin", "tier", "roles", "meta", "gone", "absent",
        ]
        .map(String::from);
        let AuditClaims(copied) = jwt::copy_claims(&token, &names);
        let long = format!("{}…", "x".repeat(256));
        assert_eq!(
            copied,
            [
                ("org_id".into(), json!("acme")),
                ("long".into(), json!(long)),
                ("admin".into(), json!(true)),
                ("tier".into(), json!(3)),
            ]
        );
        assert!(jwt::copy_claims(&token, &[]).0.is_empty());
    }
}
