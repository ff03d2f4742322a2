//! jwt mode: verifies a token's signature with the pinned algorithms and the key
//! source (an HS256 shared secret or the JWKS), then `exp`, `nbf`, `iss` and `aud`.

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

/// The claims the proxy reads itself; `iss` and `aud` are checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
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
        claims.sub.filter(|s| !s.is_empty()).ok_or_else(|| {
            AuthError::invalid("The token has no `sub` claim, which this proxy requires.")
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        // exp and nbf are checked in `check_times`, against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
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
        ErrorKind::InvalidIssuer => {
            AuthError::invalid("The token's issuer (iss) is not the one this proxy trusts.")
        }
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
            "The token's claims are malformed (`exp`, `nbf` must be numbers, `sub` a string).",
        ),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => malformed(),
        _ => AuthError::invalid("The token is invalid."),
    }
}
