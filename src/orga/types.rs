//! The upstream answers and the credentials handed to clients. Tokens and TURN
//! credentials are redacted from every `Debug` print.

use reqwest::header::HeaderValue;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An answer from Orga: JSON that parses as `Self`, then passes [`Self::check`].
pub trait UpstreamAnswer: DeserializeOwned {
    /// Why the parsed answer is still unusable, if it is.
    fn check(&self) -> Result<(), String>;
}

/// Longest ephemeral token accepted from upstream; it travels in a header.
const MAX_TOKEN_LEN: usize = 4096;

/// A short-lived Orga session token. Serializes as itself (it is the payload handed to
/// the client) but never shows in `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EphemeralToken(String);

impl EphemeralToken {
    /// Whether it can be a token at all: not empty, at most [`MAX_TOKEN_LEN`] bytes, and
    /// only characters that travel in a header.
    pub fn check(&self) -> Result<(), String> {
        let token = self.0.as_str();
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err("ephemeral_token is empty or too long".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("ephemeral_token holds characters that cannot travel in a header".into());
        }
        Ok(())
    }

    /// Wraps a raw token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The raw token; for the response body and the ice-config call only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `Bearer <token>` as a sensitive header value.
    pub(crate) fn bearer(&self) -> HeaderValue {
        // validate() has checked the token is visible ASCII, so this cannot fail.
        let mut bearer = String::with_capacity("Bearer ".len() + self.0.len());
        bearer.push_str("Bearer ");
        bearer.push_str(&self.0);
        let mut value = HeaderValue::try_from(bearer)
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for EphemeralToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EphemeralToken([redacted])")
    }
}

/// The SHA-256 of an ephemeral token: what the proxy keeps and writes in the token's
/// place (the relay's binding records, audit records), never the token itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `token`.
    pub fn of(token: &EphemeralToken) -> Self {
        Self(crate::secret::sha256(token.expose()))
    }

    /// The first `digits` hex digits (all 64 at most).
    pub fn hex(&self, digits: usize) -> String {
        use std::fmt::Write;
        let mut hex = self
            .0
            .iter()
            .fold(String::with_capacity(64), |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            });
        hex.truncate(digits);
        hex
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({}…)", self.hex(8))
    }
}

/// The client-secrets answer: the token and, when Orga gives one, its expiry.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientSecret {
    /// The minted token.
    pub ephemeral_token: EphemeralToken,
    /// Expiry as Orga gave it (Unix seconds or a timestamp string), passed through.
    /// An expiry in any other shape is dropped rather than failing the request: the
    /// contract lets the answer carry extra fields, and the token itself is fine.
    #[serde(default, deserialize_with = "lenient_expiry")]
    pub expires_at: Option<Expiry>,
}

impl UpstreamAnswer for ClientSecret {
    fn check(&self) -> Result<(), String> {
        self.ephemeral_token.check()
    }
}

fn lenient_expiry<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Expiry>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .map(Expiry::Unix),
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= 64 => Some(Expiry::Text(s)),
        _ => None,
    })
}

/// An expiry in whichever of the two usual shapes upstream used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Expiry {
    /// Unix seconds.
    Unix(u64),
    /// An RFC 3339 timestamp or similar string.
    Text(String),
}

/// One STUN/TURN server as `RTCPeerConnection` takes it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct IceServer {
    /// One URL or several.
    pub urls: IceUrls,
    /// TURN user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential (short-lived, but still a secret: never in `Debug`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `urls` is a string or an array of strings, kept in the shape Orga used.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum IceUrls {
    /// A single URL.
    One(String),
    /// Several URLs.
    Many(Vec<String>),
}

/// By hand rather than `untagged`, which buffers every value before trying each shape.
impl<'de> Deserialize<'de> for IceUrls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = IceUrls;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL or an array of URLs")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<IceUrls, E> {
                Ok(IceUrls::One(url.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<IceUrls, A::Error> {
                let mut urls = Vec::with_capacity(seq.size_hint().unwrap_or(2).min(16));
                while let Some(url) = seq.next_element()? {
                    urls.push(url);
                }
                Ok(IceUrls::Many(urls))
            }
        }
        deserializer.deserialize_any(Shape)
    }
}

/// The ice-config answer.
#[derive(Deserialize)]
pub(crate) struct IceConfig {
    /// The STUN/TURN servers, passed on as they came.
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
}

impl UpstreamAnswer for IceConfig {
    fn check(&self) -> Result<(), String> {
        self.ice_servers.iter().try_for_each(IceServer::validate)
    }
}

impl IceServer {
    fn validate(&self) -> Result<(), String> {
        let urls: Vec<&str> = match &self.urls {
            IceUrls::One(u) => vec![u.as_str()],
            IceUrls::Many(us) => us.iter().map(String::as_str).collect(),
        };
        if urls.is_empty() {
            return Err("an ICE server has no urls".into());
        }
        for url in urls {
            let scheme_ok = ["stun:", "stuns:", "turn:", "turns:"].iter().any(|s| {
                url.get(..s.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(s))
            });
            if !scheme_ok {
                return Err("an ICE server URL is not stun:, stuns:, turn: or turns:".into());
            }
        }
        Ok(())
    }
}

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// What the credentials route answers: exactly what the client SDKs expect from
/// `sessionConfigEndpoint` / `fetchSessionConfig`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionCredentials {
    /// The ephemeral token for `POST /v1/realtime/calls`.
    pub ephemeral_token: EphemeralToken,
    /// STUN/TURN servers for `RTCPeerConnection`.
    pub ice_servers: Vec<IceServer>,
    /// When the token expires, if Orga said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Expiry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_the_sha256_and_never_shows_the_token() {
        let abc = Fingerprint::of(&EphemeralToken::new("abc"));
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(abc.hex(16), "ba7816bf8f01cfea");
        assert_eq!(abc.hex(64).len(), 64);
        let debug = format!("{:?}", Fingerprint::of(&EphemeralToken::new("ek_canary")));
        assert!(!debug.contains("canary"), "{debug}");
    }

    #[test]
    fn debug_never_shows_the_token_or_turn_credential() {
        let credentials = SessionCredentials {
            ephemeral_token: EphemeralToken::new("ek_canary"),
            ice_servers: vec![IceServer {
                urls: IceUrls::One("turn:turn.example:3478".into()),
                username: Some("u".into()),
                credential: Some("turn_canary".into()),
            }],
            expires_at: None,
        };
        let debug = format!("{credentials:?}");
        assert!(!debug.contains("canary"), "{debug}");
        let json = serde_json::to_value(&credentials).unwrap();
        assert_eq!(json["ephemeralToken"], "ek_canary");
        assert_eq!(json["iceServers"][0]["credential"], "turn_canary");
    }

    #[test]
    fn an_expiry_in_an_unexpected_shape_is_dropped_not_fatal() {
        let parse = |json: &str| {
            serde_json::from_str::<ClientSecret>(json)
                .unwrap()
                .expires_at
        };
        assert_eq!(
            parse(r#"{"ephemeral_token":"t","expires_at":1700000000}"#),
            Some(Expiry::Unix(1700000000))
        );
        assert_eq!(
            parse(r#"{"ephemeral_token":"t","expires_at":1700000000.5}"#),
            Some(Expiry::Unix(1700000000))
        );
        assert_eq!(
            parse(r#"{"ephemeral_token":"t","expires_at":"2026-11-21T10:00:00Z"}"#),
            Some(Expiry::Text("2026-11-21T10:00:00Z".into()))
        );
        assert_eq!(
            parse(r#"{"ephemeral_token":"t","expires_at":{"at":1}}"#),
            None
        );
        assert_eq!(parse(r#"{"ephemeral_token":"t","expires_at":null}"#), None);
        assert_eq!(parse(r#"{"ephemeral_token":"t"}"#), None);
    }

    #[test]
    fn ice_urls_keep_their_shape() {
        let one: IceServer = serde_json::from_str(r#"{"urls":"stun:s:3478"}"#).unwrap();
        let many: IceServer =
            serde_json::from_str(r#"{"urls":["turn:t:3478"],"username":"u","credential":"c"}"#)
                .unwrap();
        assert_eq!(
            serde_json::to_string(&one).unwrap(),
            r#"{"urls":"stun:s:3478"}"#
        );
        assert!(many.validate().is_ok());
        let bad: IceServer = serde_json::from_str(r#"{"urls":"http://evil"}"#).unwrap();
        assert!(bad.validate().is_err());
        assert_eq!(
            serde_json::to_string(&many).unwrap(),
            r#"{"urls":["turn:t:3478"],"username":"u","credential":"c"}"#
        );
        for shape in [
            r#"{"urls":3}"#,
            r#"{"urls":{"a":"b"}}"#,
            r#"{"urls":[1]}"#,
            "{}",
        ] {
            assert!(serde_json::from_str::<IceServer>(shape).is_err(), "{shape}");
        }
    }
}
