//! One audit record: who got which credential (or started which call), from where and
//! when, as one JSON object. serde_json writes it, so every value is escaped and no
//! header a client sends (a `User-Agent` holding `"`, a newline or `}{`) can end the
//! line or the object early and forge another record. The token itself is never in it:
//! only its fingerprint.

use crate::auth::{AuditClaims, Subject};
use crate::http::request_id::X_REQUEST_ID;
use crate::orga::{EphemeralToken, Expiry, Fingerprint, SessionCredentials};
use crate::ratelimit::Client;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, header};
use serde::Serialize;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::IpAddr;

/// Longest `User-Agent` or `Origin` kept; longer ones are cut (with `…`).
const MAX_HEADER_CHARS: usize = 256;

/// Who asked, as the gate's stages and the request's headers say: what each record
/// holds about its caller. An extractor for the handlers of the audited routes; it
/// gathers nothing while the audit trail is off.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The request's `x-request-id` (kept if sane, generated otherwise).
    pub request_id: Option<String>,
    /// The authenticated subject (auth mode api_key or jwt).
    pub subject: Option<String>,
    /// The JWT claims named in `audit.claims`.
    pub claims: AuditClaims,
    /// The client's address (through trusted proxies), as the rate limiter saw it.
    pub client_ip: Option<IpAddr>,
    /// The `Origin` header, cut to [`MAX_HEADER_CHARS`].
    pub origin: Option<String>,
    /// The `User-Agent` header, cut to [`MAX_HEADER_CHARS`].
    pub user_agent: Option<String>,
}

impl Caller {
    /// The caller of the request with these `parts`.
    pub fn of(parts: &Parts) -> Self {
        let extensions = &parts.extensions;
        Self {
            request_id: header_text(&parts.headers, &X_REQUEST_ID),
            subject: extensions.get::<Subject>().map(|s| s.as_str().to_owned()),
            claims: extensions.get::<AuditClaims>().cloned().unwrap_or_default(),
            client_ip: extensions.get::<Client>().map(|client| client.ip),
            origin: header_text(&parts.headers, &header::ORIGIN),
            user_agent: header_text(&parts.headers, &header::USER_AGENT),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        Ok(if state.audit.is_enabled() {
            Self::of(parts)
        } else {
            Self::default()
        })
    }
}

/// The first value of header `name` as text (bytes that are not UTF-8 replaced), cut to
/// [`MAX_HEADER_CHARS`].
fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let text = String::from_utf8_lossy(headers.get(name)?.as_bytes());
    Some(match text.char_indices().nth(MAX_HEADER_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    })
}

/// One line of the audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// When: RFC 3339, UTC, to the millisecond (set by `Audit::record`).
    pub time: String,
    /// What is recorded: `"credential"` (one issued) or `"relay"` (a call relayed).
    pub audit: &'static str,
    /// The request's id, as on its log line and its `x-request-id` answer header.
    pub request_id: Option<String>,
    /// What the proxy did: `"issued"` for a credential; for a relayed call `"ok"` or the
    /// code of the error answered.
    pub outcome: &'static str,
    /// The authenticated subject; null in auth mode none.
    pub subject: Option<String>,
    /// The JWT claims named in `audit.claims` (absent when none is listed or found).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, serde_json::Value>,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The request's `Origin`, cut short.
    pub origin: Option<String>,
    /// The request's `User-Agent`, cut short.
    pub user_agent: Option<String>,
    /// The first 16 hex digits of the SHA-256 of the ephemeral token: enough to match a
    /// token an operator holds, useless to anyone who reads the file.
    pub token_fingerprint: String,
    /// The token's expiry, as Orga gave it (credential records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Expiry>,
    /// Whether the credential came from the prefetch pool (credential records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_hit: Option<bool>,
    /// Orga's id of the call started (relay records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// What the session policy did to each parameter, e.g. `{"voice": "replaced"}`
    /// (relay records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<BTreeMap<String, String>>,
}

impl AuditRecord {
    /// The record of a credential about to be handed to `caller`.
    pub fn credential(caller: Caller, credentials: &SessionCredentials, pool_hit: bool) -> Self {
        Self {
            expires_at: credentials.expires_at.clone(),
            pool_hit: Some(pool_hit),
            ..Self::new("credential", "issued", caller, &credentials.ephemeral_token)
        }
    }

    /// The record of a relayed call: the token it used, what happened (`outcome`: `"ok"`,
    /// or the code of the error answered), Orga's conversation id and the policy's
    /// decisions.
    pub fn relay(
        caller: Caller,
        token: &EphemeralToken,
        outcome: &'static str,
        conversation_id: Option<String>,
        policy: BTreeMap<String, String>,
    ) -> Self {
        Self {
            conversation_id,
            policy: Some(policy),
            ..Self::new("relay", outcome, caller, token)
        }
    }

    fn new(
        audit: &'static str,
        outcome: &'static str,
        caller: Caller,
        token: &EphemeralToken,
    ) -> Self {
        Self {
            time: String::new(),
            audit,
            request_id: caller.request_id,
            outcome,
            subject: caller.subject,
            claims: caller.claims.0.into_iter().collect(),
            client_ip: caller.client_ip,
            origin: caller.origin,
            user_agent: caller.user_agent,
            token_fingerprint: fingerprint(token),
            expires_at: None,
            pool_hit: None,
            conversation_id: None,
            policy: None,
        }
    }
}

/// The first 16 hex digits (64 bits) of the token's SHA-256.
pub fn fingerprint(token: &EphemeralToken) -> String {
    Fingerprint::of(token).hex(16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, Request};

    fn parts(user_agent: &[u8]) -> Parts {
        let mut request = Request::new(());
        request.headers_mut().insert(
            header::USER_AGENT,
            HeaderValue::from_bytes(user_agent).unwrap(),
        );
        request.into_parts().0
    }

    #[test]
    fn the_fingerprint_is_the_start_of_the_sha256_and_never_the_token() {
        let token = EphemeralToken::new("abc");
        assert_eq!(fingerprint(&token), "ba7816bf8f01cfea");
    }

    #[test]
    fn a_hostile_user_agent_stays_inside_its_own_string() {
        // A header cannot carry a newline, but a record's fields must not rely on that.
        let hostile =
            "x\", \"outcome\":\"forged\"}\n{\"audit\":\"credential\",\"outcome\":\"issued\u{2028}";
        let caller = Caller {
            user_agent: Some(hostile.into()),
            ..Caller::default()
        };
        let record = AuditRecord::relay(
            caller,
            &EphemeralToken::new("ek_canary"),
            "ok",
            None,
            BTreeMap::new(),
        );
        let line = serde_json::to_string(&record).unwrap();
        assert!(!line.contains('\n'), "{line}");
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["user_agent"], hostile);
        assert_eq!(parsed["outcome"], "ok");
        assert!(!line.contains("ek_canary"));
    }

    #[test]
    fn long_and_non_utf8_headers_are_cut_and_replaced_not_refused() {
        let caller = Caller::of(&parts(&[b'a'; 1000]));
        let agent = caller.user_agent.unwrap();
        assert_eq!(agent.chars().count(), MAX_HEADER_CHARS + 1);
        assert!(agent.ends_with('…'));
        let caller = Caller::of(&parts(b"curl/8 \xff"));
        assert_eq!(caller.user_agent.as_deref(), Some("curl/8 \u{fffd}"));
    }
}
