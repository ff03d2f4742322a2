//! `[auth]` and `[auth.jwt]`: who may call the credentials route, and the typed values
//! they are written with ([`ApiKeyList`], [`JwksUrl`], [`Algorithms`], [`CookieName`]).
//! Problems never quote a secret.

use super::parse;
use super::validate::{Problems, duration_within};
use crate::secret::Secret;
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Shortest HS256 secret accepted: the hash's own size (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;
/// Ends every problem of `auth.api_keys` that is told in full: those messages name entries
/// by position and name, never by key (see `load::describe`).
pub(crate) const KEYS_NOT_SHOWN: &str = "(keys not shown: they are secrets)";
/// The shortest API key accepted: a short one could be guessed, slowly, through the
/// rate limit.
pub const MIN_API_KEY_LEN: usize = 16;
/// Largest clock skew accepted for `exp`/`nbf`: beyond it expired tokens keep working.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// Algorithms accepted by default with an HS256 shared secret.
pub const DEFAULT_SECRET_ALGORITHMS: &[Algorithm] = &[Algorithm::HS256];
/// Algorithms accepted by default from a JWKS.
pub const DEFAULT_JWKS_ALGORITHMS: &[Algorithm] =
    &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// `[auth]`: authentication in front of the credentials route.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` (anyone who reaches the route), `api_key` or `jwt`.
    pub mode: AuthMode,
    /// api_key mode: the accepted keys, each `key` or `name:key` (the name is what the
    /// logs show). Sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`.
    #[serde(deserialize_with = "parse::list")]
    pub api_keys: ApiKeyList,
    /// jwt mode: how tokens are verified.
    pub jwt: JwtConfig,
}

/// How callers of the credentials route are authenticated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication: anyone who can reach the route mints tokens.
    #[default]
    None,
    /// A static key from `auth.api_keys`.
    ApiKey,
    /// A JWT signed by `auth.jwt.secret` or by a key of `auth.jwt.jwks_url`.
    Jwt,
}

/// `[auth.jwt]`: JWT verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Your identity provider's JWKS URL (RS256, ES256, EdDSA keys). Exactly one of
    /// `jwks_url` and `secret`.
    #[serde(with = "parse::optional_text")]
    pub jwks_url: Option<JwksUrl>,
    /// An HS256 shared secret of at least 32 bytes. Exactly one of `jwks_url` and `secret`.
    pub secret: Secret,
    /// Required `iss` claim when set.
    #[serde(with = "parse::optional_text")]
    pub issuer: Option<String>,
    /// Required member of the `aud` claim when set.
    #[serde(with = "parse::optional_text")]
    pub audience: Option<String>,
    /// Accepted `alg` values; empty means `["HS256"]` with a secret and
    /// `["RS256", "ES256", "EdDSA"]` with a JWKS (see [`JwtConfig::algorithms`]).
    #[serde(deserialize_with = "parse::list")]
    pub algorithms: Algorithms,
    /// Clock skew tolerated on `exp` and `nbf` (at most 5m).
    #[serde(with = "parse::duration")]
    pub leeway: Duration,
    /// When set, a token is also read from this cookie (when no `Authorization` header
    /// is sent), for same-site deployments.
    #[serde(with = "parse::optional_text")]
    pub cookie: Option<CookieName>,
    /// How often the JWKS is fetched again (new and retired keys).
    #[serde(with = "parse::duration")]
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by unknown `kid`s, so a flood of made-up
    /// `kid`s costs the identity provider at most one request per this period.
    #[serde(with = "parse::duration")]
    pub jwks_min_refresh: Duration,
    /// How long cached keys outlive failed JWKS refreshes; past it they are dropped,
    /// tokens are refused and readiness turns 503 until a fetch succeeds.
    #[serde(with = "parse::duration")]
    pub jwks_max_stale: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            jwks_url: None,
            secret: Secret::default(),
            issuer: None,
            audience: None,
            algorithms: Algorithms::default(),
            leeway: Duration::from_secs(30),
            cookie: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(30),
            jwks_max_stale: Duration::from_secs(86_400),
        }
    }
}

impl JwtConfig {
    /// The pinned algorithms: the configured ones, else the key source's default.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        match (&self.algorithms.0[..], self.secret.is_empty()) {
            ([], true) => DEFAULT_JWKS_ALGORITHMS.to_vec(),
            ([], false) => DEFAULT_SECRET_ALGORITHMS.to_vec(),
            (pinned, _) => pinned.to_vec(),
        }
    }
}

impl AuthConfig {
    pub(super) fn check(&self, problems: &mut Problems) {
        let jwt = &self.jwt;
        match self.mode {
            AuthMode::None => {
                // Settings for a mode that is off mean the operator meant to protect the
                // route; running it open would be the worst reading of that intent.
                if !self.api_keys.0.is_empty() {
                    problems.add(
                        "auth.mode",
                        "is \"none\" but auth.api_keys is set: the keys would not be checked; set auth.mode = \"api_key\" or remove the keys",
                    );
                }
                let jwt_set = !jwt.secret.is_empty()
                    || jwt.jwks_url.is_some()
                    || jwt.issuer.is_some()
                    || jwt.audience.is_some()
                    || jwt.cookie.is_some()
                    || !jwt.algorithms.0.is_empty();
                if jwt_set {
                    problems.add(
                        "auth.mode",
                        "is \"none\" but auth.jwt is configured: tokens would not be checked; set auth.mode = \"jwt\" or remove the jwt settings",
                    );
                }
            }
            AuthMode::ApiKey if self.api_keys.0.is_empty() => problems.add(
                "auth.api_keys",
                "required when auth.mode is \"api_key\": at least one key (comma-separated in the environment variable)",
            ),
            AuthMode::ApiKey => {}
            AuthMode::Jwt => jwt.check(problems),
        }
    }
}

impl JwtConfig {
    fn check(&self, problems: &mut Problems) {
        let has_secret = !self.secret.is_empty();
        match (has_secret, self.jwks_url.is_some()) {
            (true, true) => problems.add(
                "auth.jwt.secret",
                "both auth.jwt.secret and auth.jwt.jwks_url are set; set exactly one",
            ),
            (false, false) => problems.add(
                "auth.jwt.jwks_url",
                "required when auth.mode is \"jwt\": your identity provider's JWKS URL, or else auth.jwt.secret (an HS256 shared secret)",
            ),
            _ => {}
        }
        if has_secret && self.secret.expose().len() < MIN_SECRET_BYTES {
            problems.add(
                "auth.jwt.secret",
                format!("too short: at least {MIN_SECRET_BYTES} bytes of random data, e.g. `openssl rand -base64 48` (not shown: it is a secret)"),
            );
        }
        for alg in &self.algorithms.0 {
            let name = algorithm_name(*alg);
            if has_secret && !is_hmac(*alg) {
                problems.add(
                    "auth.jwt.algorithms",
                    format!("{name:?} needs a public key; with auth.jwt.secret only HS256, HS384 and HS512 apply"),
                );
            } else if !has_secret && is_hmac(*alg) {
                problems.add(
                    "auth.jwt.algorithms",
                    format!("{name:?} is a shared-secret algorithm; keys from auth.jwt.jwks_url are public keys, so it is refused"),
                );
            }
        }
        if self.leeway > MAX_LEEWAY {
            problems.add(
                "auth.jwt.leeway",
                "at most 5m: a larger leeway keeps expired tokens working",
            );
        }
        let (s, day) = (Duration::from_secs, Duration::from_secs(86_400));
        problems.check(
            "auth.jwt.jwks_min_refresh",
            duration_within(self.jwks_min_refresh, s(1), day).map_err(|e| {
                format!("{e}: it is what keeps a flood of unknown kids from hammering the identity provider")
            }),
        );
        if self.jwks_refresh < self.jwks_min_refresh {
            problems.add(
                "auth.jwt.jwks_refresh",
                "must not be shorter than auth.jwt.jwks_min_refresh",
            );
        }
        problems.check(
            "auth.jwt.jwks_refresh",
            duration_within(self.jwks_refresh, s(1), day),
        );
        problems.check(
            "auth.jwt.jwks_max_stale",
            duration_within(self.jwks_max_stale, self.jwks_refresh, 7 * day).map_err(|e| {
                format!("{e}: at least auth.jwt.jwks_refresh, so one refresh can succeed, and at most 7 days")
            }),
        );
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The JOSE name of an algorithm (`"RS256"`).
pub fn algorithm_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{alg:?}"))
}

/// One `auth.api_keys` entry: an optional name (what logs show) and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyEntry {
    /// The name before the first `:`, if the entry has one.
    pub name: Option<String>,
    /// The key itself.
    pub key: Secret,
}

impl ApiKeyEntry {
    /// Splits `name:key`; an entry whose text before the first `:` is not a name
    /// (a letter, then letters, digits, `_`, `-`, `.`; at most 64) is all key.
    fn parse(entry: &str) -> Self {
        if let Some((name, key)) = entry.split_once(':') {
            let is_name = name.len() <= 64
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if is_name && !key.is_empty() {
                return Self {
                    name: Some(name.to_owned()),
                    key: Secret::new(key),
                };
            }
        }
        Self {
            name: None,
            key: Secret::new(entry),
        }
    }
}

/// The parsed `auth.api_keys`: names unique, keys unique and sendable in a header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeyList(pub Vec<ApiKeyEntry>);

impl TryFrom<Vec<String>> for ApiKeyList {
    type Error = String;

    fn try_from(entries: Vec<String>) -> Result<Self, String> {
        let parsed: Vec<ApiKeyEntry> = entries.iter().map(|e| ApiKeyEntry::parse(e)).collect();
        let mut problems = Vec::new();
        for (index, entry) in parsed.iter().enumerate() {
            let number = index + 1;
            let earlier = &parsed[..index];
            // Header values: visible ASCII only; anything else could never be sent.
            if !entry.key.expose().bytes().all(|b| b.is_ascii_graphic()) {
                problems.push(format!(
                    "entry {number} contains white space, control or non-ASCII characters"
                ));
            } else if entry.key.expose().len() < MIN_API_KEY_LEN {
                problems.push(format!(
                    "entry {number} is shorter than {MIN_API_KEY_LEN} characters: use a random key, e.g. `openssl rand -hex 32`"
                ));
            }
            if let Some(name) = &entry.name {
                if earlier.iter().any(|e| e.name.as_ref() == Some(name)) {
                    problems.push(format!("the name {name:?} is used more than once"));
                }
            }
            if earlier.iter().any(|e| e.key == entry.key) {
                problems.push(format!("entry {number} repeats an earlier key"));
            }
        }
        if problems.is_empty() {
            Ok(Self(parsed))
        } else {
            Err(format!("{} {KEYS_NOT_SHOWN}", problems.join("; ")))
        }
    }
}

impl Serialize for ApiKeyList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let shown = self.0.iter().map(|entry| match &entry.name {
            Some(name) => format!("{name}:{}", entry.key),
            None => entry.key.to_string(),
        });
        parse::entries(shown, serializer)
    }
}

/// The JWKS URL: https, or http to this machine only (tests, a sidecar); no
/// credentials or fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl(pub url::Url);

impl FromStr for JwksUrl {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let url = url::Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
        let local = matches!(
            url.host(),
            Some(url::Host::Domain("localhost"))
                | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
                | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
        );
        match url.scheme() {
            "https" => {}
            "http" if local => {}
            "http" => {
                return Err(format!(
                    "{value:?} must be https: keys fetched over plain http could be replaced in transit (http is allowed only for localhost)"
                ));
            }
            _ => return Err(format!("{value:?} must be an https URL")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{value:?} has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{value:?} must not carry credentials or a fragment"
            ));
        }
        Ok(Self(url))
    }
}

impl fmt::Display for JwksUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// The pinned `alg` values, as configured (empty: the key source's default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Algorithms(pub Vec<Algorithm>);

impl TryFrom<Vec<String>> for Algorithms {
    type Error = String;

    fn try_from(names: Vec<String>) -> Result<Self, String> {
        names
            .iter()
            .map(|name| {
                Algorithm::from_str(name).map_err(|_| {
                    format!("{name:?} is not a supported algorithm; use HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA")
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl Serialize for Algorithms {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        parse::entries(self.0.iter().map(|alg| algorithm_name(*alg)), serializer)
    }
}

/// An RFC 6265 cookie name (an RFC 7230 token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieName(String);

impl CookieName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CookieName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(format!(
                "{name:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"
            ));
        }
        Ok(Self(name.to_owned()))
    }
}

impl fmt::Display for CookieName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
