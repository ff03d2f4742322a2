//! `[auth]` and `[auth.jwt]`: who may call the credentials route, and the start-up
//! checks of those keys (one `(key, message)` per problem, never showing a secret).

use crate::config::Secret;
use crate::config::parse;
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Deserializer, Serialize};
use std::str::FromStr;
use std::time::Duration;

/// Shortest HS256 secret accepted: the hash's own size (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;
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
    /// api_key mode: the accepted keys, each `key` or `name:key` (the name, before the
    /// first `:`, is what the logs show). Sent as `Authorization: Bearer <key>` or
    /// `X-API-Key: <key>`.
    #[serde(deserialize_with = "secret_list")]
    pub api_keys: Vec<Secret>,
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
    /// Your identity provider's JWKS URL (RS256, ES256, EdDSA keys); https only, except
    /// for localhost. Exactly one of `jwks_url` and `secret`.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub jwks_url: String,
    /// An HS256 shared secret of at least 32 bytes. Exactly one of `jwks_url` and `secret`.
    pub secret: Secret,
    /// Required `iss` claim when set.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub issuer: String,
    /// Required member of the `aud` claim when set.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub audience: String,
    /// Accepted `alg` values; empty means `["HS256"]` with a secret and
    /// `["RS256", "ES256", "EdDSA"]` with a JWKS.
    #[serde(deserialize_with = "parse::string_list")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf` (at most 5m).
    #[serde(with = "parse::duration")]
    pub leeway: Duration,
    /// When set, a token is also read from this cookie (when no `Authorization` header
    /// is sent), for same-site deployments.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub cookie: String,
    /// How often the JWKS is fetched again (new and retired keys).
    #[serde(with = "parse::duration")]
    pub jwks_refresh: Duration,
    /// Least time between two fetches caused by unknown `kid`s, so a flood of made-up
    /// `kid`s costs the identity provider at most one request per this period.
    #[serde(with = "parse::duration")]
    pub jwks_min_refresh: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            jwks_url: String::new(),
            secret: Secret::default(),
            issuer: String::new(),
            audience: String::new(),
            algorithms: Vec::new(),
            leeway: Duration::from_secs(30),
            cookie: String::new(),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(30),
        }
    }
}

impl JwtConfig {
    /// The pinned algorithms: the configured ones, else the key source's default.
    /// Unknown names are reported by [`validate`]; here they are skipped.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        if self.algorithms.is_empty() {
            if self.secret.is_empty() {
                DEFAULT_JWKS_ALGORITHMS.to_vec()
            } else {
                DEFAULT_SECRET_ALGORITHMS.to_vec()
            }
        } else {
            self.algorithms
                .iter()
                .filter_map(|name| Algorithm::from_str(name).ok())
                .collect()
        }
    }
}

/// A list of secrets, written like any list (`"a,b"` in an environment variable).
fn secret_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Secret>, D::Error> {
    parse::string_list(deserializer).map(|keys| keys.into_iter().map(Secret::new).collect())
}

/// One entry of `auth.api_keys`, split into its optional name and the key.
pub(crate) struct ApiKeyEntry<'a> {
    /// The name before the first `:`, if the entry has one.
    pub name: Option<&'a str>,
    /// The key itself.
    pub key: &'a str,
}

impl<'a> ApiKeyEntry<'a> {
    /// Splits `name:key`; an entry whose text before the first `:` is not a name
    /// (a letter, then letters, digits, `_`, `-`, `.`; at most 64) is all key.
    pub fn parse(entry: &'a str) -> Self {
        if let Some((name, key)) = entry.split_once(':') {
            let is_name = name.len() <= 64
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if is_name && !key.is_empty() {
                return Self {
                    name: Some(name),
                    key,
                };
            }
        }
        Self {
            name: None,
            key: entry,
        }
    }
}

/// Checks `[auth]`; each problem is `(key, message)`. Secrets are never quoted.
pub fn validate(auth: &AuthConfig) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let jwt = &auth.jwt;
    match auth.mode {
        AuthMode::None => {
            // Settings for a mode that is off mean the operator meant to protect the
            // route; running it open would be the worst reading of that intent.
            if !auth.api_keys.is_empty() {
                problems.push((
                    "auth.mode",
                    "is \"none\" but auth.api_keys is set: the keys would not be checked; set auth.mode = \"api_key\" or remove the keys".into(),
                ));
            }
            if !jwt.secret.is_empty() || !jwt.jwks_url.is_empty() {
                problems.push((
                    "auth.mode",
                    "is \"none\" but auth.jwt is configured: tokens would not be checked; set auth.mode = \"jwt\" or remove the jwt settings".into(),
                ));
            }
        }
        AuthMode::ApiKey => validate_api_keys(&auth.api_keys, &mut problems),
        AuthMode::Jwt => validate_jwt(jwt, &mut problems),
    }
    problems
}

fn validate_api_keys(keys: &[Secret], problems: &mut Vec<(&'static str, String)>) {
    const KEY: &str = "auth.api_keys";
    if keys.is_empty() {
        problems.push((
            KEY,
            "required when auth.mode is \"api_key\": at least one key (comma-separated in the environment variable)".into(),
        ));
        return;
    }
    let mut seen_names: Vec<&str> = Vec::new();
    let mut seen_keys: Vec<&str> = Vec::new();
    for (index, secret) in keys.iter().enumerate() {
        let number = index + 1;
        let entry = ApiKeyEntry::parse(secret.expose());
        // Header values: visible ASCII only; anything else could never be sent.
        if !entry.key.bytes().all(|b| b.is_ascii_graphic()) {
            problems.push((
                KEY,
                format!("entry {number} contains white space, control or non-ASCII characters (not shown: it is a secret)"),
            ));
        }
        if let Some(name) = entry.name {
            if seen_names.contains(&name) {
                problems.push((KEY, format!("the name {name:?} is used more than once")));
            }
            seen_names.push(name);
        }
        if seen_keys.contains(&entry.key) {
            problems.push((
                KEY,
                format!("entry {number} repeats an earlier key (not shown: it is a secret)"),
            ));
        }
        seen_keys.push(entry.key);
    }
}

fn validate_jwt(jwt: &JwtConfig, problems: &mut Vec<(&'static str, String)>) {
    let has_secret = !jwt.secret.is_empty();
    let has_jwks = !jwt.jwks_url.is_empty();
    match (has_secret, has_jwks) {
        (true, true) => problems.push((
            "auth.jwt.secret",
            "both auth.jwt.secret and auth.jwt.jwks_url are set; set exactly one".into(),
        )),
        (false, false) => problems.push((
            "auth.jwt.jwks_url",
            "required when auth.mode is \"jwt\": your identity provider's JWKS URL, or else auth.jwt.secret (an HS256 shared secret)".into(),
        )),
        _ => {}
    }
    if has_secret && jwt.secret.expose().len() < MIN_SECRET_BYTES {
        problems.push((
            "auth.jwt.secret",
            format!("too short: at least {MIN_SECRET_BYTES} bytes of random data, e.g. `openssl rand -base64 48` (not shown: it is a secret)"),
        ));
    }
    if has_jwks {
        if let Err(message) = jwks_url(&jwt.jwks_url) {
            problems.push(("auth.jwt.jwks_url", message));
        }
    }
    for name in &jwt.algorithms {
        match Algorithm::from_str(name) {
            Err(_) => problems.push((
                "auth.jwt.algorithms",
                format!("{name:?} is not a supported algorithm; use HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"),
            )),
            Ok(alg) if has_secret && !is_hmac(alg) => problems.push((
                "auth.jwt.algorithms",
                format!("{name:?} needs a public key; with auth.jwt.secret only HS256, HS384 and HS512 apply"),
            )),
            Ok(alg) if !has_secret && is_hmac(alg) => problems.push((
                "auth.jwt.algorithms",
                format!("{name:?} is a shared-secret algorithm; keys from auth.jwt.jwks_url are public keys, so it is refused"),
            )),
            Ok(_) => {}
        }
    }
    if jwt.leeway > MAX_LEEWAY {
        problems.push((
            "auth.jwt.leeway",
            "at most 5m: a larger leeway keeps expired tokens working".into(),
        ));
    }
    if !jwt.cookie.is_empty() && !is_cookie_name(&jwt.cookie) {
        problems.push((
            "auth.jwt.cookie",
            format!(
                "{:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                jwt.cookie
            ),
        ));
    }
    if jwt.jwks_min_refresh < Duration::from_secs(1) {
        problems.push((
            "auth.jwt.jwks_min_refresh",
            "at least 1s: it is what keeps a flood of unknown kids from hammering the identity provider".into(),
        ));
    }
    if jwt.jwks_refresh < jwt.jwks_min_refresh {
        problems.push((
            "auth.jwt.jwks_refresh",
            "must not be shorter than auth.jwt.jwks_min_refresh".into(),
        ));
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// https, or http to this machine only (tests, a sidecar); no credentials or fragment.
fn jwks_url(value: &str) -> Result<(), String> {
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
    Ok(())
}

/// An RFC 6265 cookie name (an RFC 7230 token).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt_config(edit: impl FnOnce(&mut JwtConfig)) -> AuthConfig {
        let mut auth = AuthConfig {
            mode: AuthMode::Jwt,
            ..AuthConfig::default()
        };
        edit(&mut auth.jwt);
        auth
    }

    fn keys_of(problems: &[(&'static str, String)]) -> Vec<&'static str> {
        problems.iter().map(|(key, _)| *key).collect()
    }

    #[test]
    fn none_mode_with_defaults_is_valid() {
        assert!(validate(&AuthConfig::default()).is_empty());
    }

    #[test]
    fn keys_configured_while_auth_is_off_are_refused_rather_than_ignored() {
        let auth = AuthConfig {
            api_keys: vec![Secret::new("a-long-enough-key")],
            ..AuthConfig::default()
        };
        assert_eq!(keys_of(&validate(&auth)), ["auth.mode"]);
    }

    #[test]
    fn api_key_mode_needs_at_least_one_key() {
        let auth = AuthConfig {
            mode: AuthMode::ApiKey,
            ..AuthConfig::default()
        };
        assert_eq!(keys_of(&validate(&auth)), ["auth.api_keys"]);
    }

    #[test]
    fn bad_api_keys_are_reported_without_showing_them() {
        let auth = AuthConfig {
            mode: AuthMode::ApiKey,
            api_keys: vec![
                Secret::new("web:canary one"),
                Secret::new("web:canary2"),
                Secret::new("canary2"),
                Secret::new("canary2"),
            ],
            ..AuthConfig::default()
        };
        let problems = validate(&auth);
        let text: String = problems.iter().map(|(_, m)| format!("{m}\n")).collect();
        assert_eq!(problems.len(), 4, "{text}");
        assert!(text.contains("entry 1 contains white space"), "{text}");
        assert!(text.contains("\"web\" is used more than once"), "{text}");
        assert!(text.contains("entry 3 repeats"), "{text}");
        assert!(text.contains("entry 4 repeats"), "{text}");
        assert!(!text.contains("canary"), "{text}");
    }

    #[test]
    fn a_name_is_the_text_before_the_first_colon_when_it_looks_like_a_name() {
        let named = ApiKeyEntry::parse("mobile-app:k3y:with:colons");
        assert_eq!(named.name, Some("mobile-app"));
        assert_eq!(named.key, "k3y:with:colons");
        let unnamed = ApiKeyEntry::parse("0f9a:b2");
        assert_eq!(unnamed.name, None);
        assert_eq!(unnamed.key, "0f9a:b2");
        assert_eq!(ApiKeyEntry::parse("plain").key, "plain");
    }

    #[test]
    fn jwt_mode_needs_exactly_one_key_source() {
        assert_eq!(
            keys_of(&validate(&jwt_config(|_| {}))),
            ["auth.jwt.jwks_url"]
        );
        let both = jwt_config(|jwt| {
            jwt.secret = Secret::new("x".repeat(40));
            jwt.jwks_url = "https://idp.example.com/jwks.json".into();
        });
        assert_eq!(keys_of(&validate(&both)), ["auth.jwt.secret"]);
    }

    #[test]
    fn a_short_secret_is_refused_without_being_shown() {
        let auth = jwt_config(|jwt| jwt.secret = Secret::new("canary-but-short"));
        let problems = validate(&auth);
        assert_eq!(keys_of(&problems), ["auth.jwt.secret"]);
        assert!(!format!("{problems:?}").contains("canary"));
    }

    #[test]
    fn jwks_url_must_be_https_except_on_localhost() {
        assert!(jwks_url("https://idp.example.com/.well-known/jwks.json").is_ok());
        assert!(jwks_url("http://127.0.0.1:8081/jwks").is_ok());
        assert!(jwks_url("http://localhost/jwks").is_ok());
        assert!(jwks_url("http://[::1]:9/jwks").is_ok());
        assert!(jwks_url("http://idp.example.com/jwks").is_err());
        assert!(jwks_url("ftp://idp.example.com/jwks").is_err());
        assert!(jwks_url("https://user:pw@idp.example.com/jwks").is_err());
        assert!(jwks_url("not a url").is_err());
    }

    #[test]
    fn algorithms_must_suit_the_key_source() {
        let jwks = |algs: &[&str]| {
            jwt_config(|jwt| {
                jwt.jwks_url = "https://idp.example.com/jwks".into();
                jwt.algorithms = algs.iter().map(|a| a.to_string()).collect();
            })
        };
        assert!(validate(&jwks(&["RS256", "EdDSA"])).is_empty());
        assert_eq!(
            keys_of(&validate(&jwks(&["HS256"]))),
            ["auth.jwt.algorithms"]
        );
        assert_eq!(
            keys_of(&validate(&jwks(&["none"]))),
            ["auth.jwt.algorithms"]
        );
        let secret = jwt_config(|jwt| {
            jwt.secret = Secret::new("s".repeat(32));
            jwt.algorithms = vec!["RS256".into()];
        });
        assert_eq!(keys_of(&validate(&secret)), ["auth.jwt.algorithms"]);
    }

    #[test]
    fn default_algorithms_follow_the_key_source() {
        let mut jwt = JwtConfig::default();
        assert_eq!(jwt.algorithms(), DEFAULT_JWKS_ALGORITHMS);
        jwt.secret = Secret::new("s".repeat(32));
        assert_eq!(jwt.algorithms(), [Algorithm::HS256]);
    }

    #[test]
    fn leeway_cookie_and_refresh_periods_are_checked() {
        let auth = jwt_config(|jwt| {
            jwt.jwks_url = "https://idp.example.com/jwks".into();
            jwt.leeway = Duration::from_secs(3600);
            jwt.cookie = "my cookie".into();
            jwt.jwks_min_refresh = Duration::ZERO;
        });
        assert_eq!(
            keys_of(&validate(&auth)),
            [
                "auth.jwt.leeway",
                "auth.jwt.cookie",
                "auth.jwt.jwks_min_refresh"
            ]
        );
        let auth = jwt_config(|jwt| {
            jwt.jwks_url = "https://idp.example.com/jwks".into();
            jwt.jwks_refresh = Duration::from_secs(10);
        });
        assert_eq!(keys_of(&validate(&auth)), ["auth.jwt.jwks_refresh"]);
    }
}
