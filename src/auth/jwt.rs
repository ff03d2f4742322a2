//! jwt mode: verifies a token's signature with the pinned algorithms and the key
//! source (an HS256 shared secret or the JWKS), then `exp`, `nbf`, `iss`, `aud` and `sub`.
//!
//! `iss` and `sub` are checked here rather than by `jsonwebtoken`, which accepts an `iss`
//! array when any member matches. RFC 7519 §4.1.1 makes `iss` one StringOrURI, so a
//! token whose `iss` is not a JSON string is refused, and (a choice) it is refused even
//! when no `auth.jwt.issuer` is configured: it is malformed either way, as Envoy holds,
//! and setting an issuer later must not change which tokens are well-formed.

use super::AuthError;
use super::jwks::{self, Jwks, Lookup};
use crate::clock::Clock;
use crate::config::JwtConfig;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Longest token considered; real ones are well under 4 KiB.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where verification keys come from.
pub(super) enum KeySource {
    /// One HS256 shared secret.
    Secret(DecodingKey),
    /// The identity provider's keys.
    Jwks(Arc<Jwks>),
}

/// Verifies tokens against one key source and the configured claims.
pub(super) struct JwtVerifier {
    keys: KeySource,
    /// Only these `alg` values are ever verified: never `none`, never a shared-secret
    /// algorithm with public keys.
    algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    clock: Clock,
}

/// The claims the proxy reads itself; `aud` is checked by `jsonwebtoken`. `iss` and `sub`
/// are kept as raw JSON so that a wrong type gets its own refusal, and an explicit
/// `null` is told apart from an absent claim.
#[derive(Deserialize)]
struct Claims {
    #[serde(default, deserialize_with = "present")]
    iss: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    sub: Option<serde_json::Value>,
    exp: Option<f64>,
    nbf: Option<f64>,
}

/// `Some` for any value that is there, `null` included; `None` (the default) when absent.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig, keys: KeySource, clock: Clock) -> Self {
        Self {
            keys,
            algorithms: config.algorithms(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            clock,
        }
    }

    /// The JWKS cache, when keys come from one.
    pub fn jwks(&self) -> Option<&Arc<Jwks>> {
        match &self.keys {
            KeySource::Jwks(jwks) => Some(jwks),
            KeySource::Secret(_) => None,
        }
    }

    /// The token's `sub` when the token is valid now.
    pub async fn verify(&self, token: &str) -> Result<String, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::invalid("The token is too long to be a JWT."));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(e) if e.to_string().contains("unknown variant") => AuthError::invalid(
                "The token's algorithm is not accepted (unsigned \"alg\": \"none\" tokens never are).",
            ),
            _ => malformed(),
        })?;
        // RFC 7515 4.1.11: a critical extension the recipient does not understand makes
        // the token invalid, and this proxy understands none.
        if header.crit.is_some() {
            return Err(AuthError::invalid(
                "The token's header lists critical extensions (crit), which this proxy does not support.",
            ));
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "The token is signed with {:?}, which this proxy does not accept (accepted: {}).",
                header.alg,
                jwks::names(&self.algorithms)
            )));
        }
        let found;
        let key = match &self.keys {
            KeySource::Secret(key) => key,
            KeySource::Jwks(cache) => {
                match cache.key_for(header.kid.as_deref(), header.alg).await {
                    Lookup::Found(key) => {
                        found = key;
                        &found.key
                    }
                    Lookup::WrongAlgorithm => {
                        return Err(AuthError::invalid(
                            "The token's algorithm does not match its signing key (kid).",
                        ));
                    }
                    Lookup::Missing if header.kid.is_some() => {
                        return Err(AuthError::invalid(
                            "The token's key id (kid) is not among the identity provider's current keys.",
                        ));
                    }
                    Lookup::Missing => {
                        return Err(AuthError::invalid(
                            "The token has no key id (kid) and no single key of the identity provider matches its algorithm.",
                        ));
                    }
                    Lookup::Empty => return Err(AuthError::KeysUnavailable),
                }
            }
        };
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation(header.alg))
            .map_err(|e| describe(e.kind()))?
            .claims;
        self.check_times(&claims)?;
        self.check_issuer(claims.iss.as_ref())?;
        subject(claims.sub)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        // exp and nbf are checked in `check_times`, against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // `iss` and `sub` are checked in `check_issuer` and `subject`, strictly typed.
        let mut required = vec!["exp"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn check_times(&self, claims: &Claims) -> Result<(), AuthError> {
        let now = self
            .clock
            .wall()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let leeway = self.leeway.as_secs_f64();
        let Some(exp) = claims.exp else {
            return Err(AuthError::invalid(
                "The token has no `exp` claim, which this proxy requires.",
            ));
        };
        if now >= exp + leeway {
            return Err(AuthError::Invalid(format!(
                "The token has expired ({} s ago, beyond the {} s clock skew allowed).",
                (now - exp).floor(),
                leeway
            )));
        }
        if let Some(nbf) = claims.nbf {
            if now + leeway < nbf {
                return Err(AuthError::Invalid(format!(
                    "The token is not valid yet: its `nbf` is {} s in the future.",
                    (nbf - now).ceil()
                )));
            }
        }
        Ok(())
    }

    /// `iss`, when present, must be one string; when an issuer is configured it must be
    /// there and equal to it (RFC 7519 compares StringOrURI values as exact strings).
    fn check_issuer(&self, iss: Option<&serde_json::Value>) -> Result<(), AuthError> {
        let iss = match iss {
            None => None,
            Some(serde_json::Value::String(iss)) => Some(iss.as_str()),
            Some(_) => {
                return Err(AuthError::invalid(
                    "The token's issuer claim (iss) must be a single string.",
                ));
            }
        };
        match (&self.issuer, iss) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(AuthError::invalid(
                "The token has no `iss` claim, which this proxy requires.",
            )),
            (Some(trusted), Some(iss)) if iss == trusted => Ok(()),
            (Some(_), Some(_)) => Err(AuthError::invalid(
                "The token's issuer (iss) is not the one this proxy trusts.",
            )),
        }
    }
}

/// Longest `sub` accepted: it becomes the log line's subject, the audit record's and a
/// Redis key's part.
const MAX_SUBJECT_CHARS: usize = 256;

/// The subject: `sub` must be a non-empty string of at most [`MAX_SUBJECT_CHARS`].
fn subject(sub: Option<serde_json::Value>) -> Result<String, AuthError> {
    match sub {
        Some(serde_json::Value::String(sub)) if sub.chars().count() > MAX_SUBJECT_CHARS => Err(
            AuthError::invalid("The token's `sub` claim is longer than 256 characters."),
        ),
        Some(serde_json::Value::String(sub)) if !sub.is_empty() => Ok(sub),
        None | Some(serde_json::Value::String(_)) => Err(AuthError::invalid(
            "The token has no `sub` claim, which this proxy requires.",
        )),
        Some(_) => Err(AuthError::invalid(
            "The token's `sub` claim must be a string.",
        )),
    }
}

/// Longest claim string copied into an audit record; longer ones are cut (with `…`).
const MAX_CLAIM_CHARS: usize = 256;

/// The claims `names` of a token that [`JwtVerifier::verify`] has accepted, for the audit
/// record. Reading the payload again without checking the signature is sound only
/// because the very same bytes were just verified; it costs nothing unless
/// `audit.claims` is set. Only strings (cut at [`MAX_CLAIM_CHARS`]), numbers and booleans
/// are copied: an object or array could be any size, and null says nothing.
pub(super) fn copy_claims(token: &str, names: &[String]) -> super::AuditClaims {
    type Payload = std::collections::HashMap<String, serde_json::Value>;
    if names.is_empty() {
        return super::AuditClaims::default();
    }
    let Ok(payload) = jsonwebtoken::dangerous::insecure_decode::<Payload>(token) else {
        return super::AuditClaims::default();
    };
    let mut payload = payload.claims;
    let copied = names
        .iter()
        .filter_map(|name| {
            let value = match payload.remove(name)? {
                serde_json::Value::String(text) => match text.char_indices().nth(MAX_CLAIM_CHARS) {
                    Some((cut, _)) => serde_json::Value::String(format!("{}…", &text[..cut])),
                    None => serde_json::Value::String(text),
                },
                value @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => value,
                _ => return None,
            };
            Some((name.clone(), value))
        })
        .collect();
    super::AuditClaims(copied)
}

fn malformed() -> AuthError {
    AuthError::invalid("The token is malformed: expected a JWT (three base64url parts).")
}

/// A developer-facing reason for a `jsonwebtoken` refusal; never the token or a key.
fn describe(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::invalid("The token's signature does not verify."),
        ErrorKind::InvalidAudience => {
            AuthError::invalid("The token's audience (aud) does not include this proxy's audience.")
        }
        ErrorKind::MissingRequiredClaim(claim) => AuthError::Invalid(format!(
            "The token has no `{claim}` claim, which this proxy requires."
        )),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => {
            AuthError::invalid("The token's algorithm does not match the signing key.")
        }
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => AuthError::invalid(
            "The token's claims are malformed: a JSON object is expected, with `exp` and `nbf` numbers, `iss` and `sub` strings.",
        ),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => malformed(),
        _ => AuthError::invalid("The token is invalid."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    const SECRET: &str = "unit-test-shared-secret-0123456789abcdef";

    fn verifier(issuer: Option<&str>) -> JwtVerifier {
        let config = JwtConfig {
            secret: Secret::new(SECRET),
            issuer: issuer.map(str::to_owned),
            ..JwtConfig::default()
        };
        let key = KeySource::Secret(DecodingKey::from_secret(SECRET.as_bytes()));
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_000));
        JwtVerifier::new(&config, key, clock)
    }

    async fn verify(verifier: &JwtVerifier, iss: Option<Value>) -> Result<String, AuthError> {
        let mut claims = json!({"sub": "user-1", "exp": 2_000});
        if let Some(iss) = iss {
            claims["iss"] = iss;
        }
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let token = jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap();
        verifier.verify(&token).await
    }

    #[tokio::test]
    async fn a_token_with_critical_header_extensions_is_refused() {
        let verifier = verifier(None);
        let header = Header {
            crit: Some(vec!["exp".into()]),
            ..Header::default()
        };
        let claims = json!({"sub": "user-1", "exp": 4_000_000_000u64});
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert!(refusal(verifier.verify(&token).await).contains("critical extensions"));
    }

    fn refusal(result: Result<String, AuthError>) -> String {
        match result {
            Err(AuthError::Invalid(message)) => message,
            other => panic!("a 401 expected, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_configured_issuer_must_be_the_single_string_iss() {
        let trusted = "https://idp.example.com/";
        let verifier = verifier(Some(trusted));
        assert_eq!(
            verify(&verifier, Some(json!(trusted))).await.unwrap(),
            "user-1"
        );
        for iss in [json!([trusted]), json!([trusted, trusted]), json!(null)] {
            let message = refusal(verify(&verifier, Some(iss.clone())).await);
            assert!(message.contains("single string"), "{iss}: {message}");
        }
        let message = refusal(verify(&verifier, Some(json!("https://IDP.example.com/"))).await);
        assert!(message.contains("not the one"), "{message}");
        let message = refusal(verify(&verifier, None).await);
        assert!(message.contains("no `iss`"), "{message}");
    }

    #[tokio::test]
    async fn without_an_issuer_iss_is_optional_but_still_a_string() {
        let verifier = verifier(None);
        assert!(verify(&verifier, None).await.is_ok());
        assert!(verify(&verifier, Some(json!("anyone"))).await.is_ok());
        let message = refusal(verify(&verifier, Some(json!(["anyone"]))).await);
        assert!(message.contains("single string"), "{message}");
    }

    #[test]
    fn the_subject_is_a_non_empty_string_of_at_most_256_characters() {
        assert_eq!(subject(Some(json!("u"))).unwrap(), "u");
        assert!(subject(Some(json!("é".repeat(256)))).is_ok());
        assert!(refusal(subject(Some(json!("u".repeat(257))))).contains("longer than 256"));
        for sub in [None, Some(json!(""))] {
            assert!(refusal(subject(sub)).contains("no `sub`"));
        }
        for sub in [json!(1), json!(["u"]), json!(null), json!({"id": "u"})] {
            assert!(refusal(subject(Some(sub))).contains("must be a string"));
        }
    }
}
