//! `Secret`: a string that never shows itself in `Debug`, `Display` or serialized output.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The SHA-256 digest of `text`: how API keys are kept and tokens fingerprinted, so
/// neither is held or written in the clear.
pub(crate) fn sha256(text: &str) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()).as_ref(),
    );
    out
}

/// A secret value (API key, shared secret, token). The raw value is reachable only
/// through [`Secret::expose`], which is called where a header is built or a
/// comparison is made; every printed form is `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a raw value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value. Call sites are few on purpose: grep for `expose(`.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn shown(&self) -> &'static str {
        if self.0.is_empty() { "" } else { "[redacted]" }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

/// Serializes redacted: serialization exists for `check-config`, which must not print secrets.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.shown())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        LenientString::deserialize(deserializer).map(|text| Secret(text.0))
    }
}

/// A string as written in TOML or an environment variable, where a value such as
/// `ORGA_API_KEY=12345` may have been read as a number or a boolean: it reads back as
/// its text. Here rather than in `config` so that this module depends on nothing.
pub(crate) struct LenientString(pub String);

impl<'de> Deserialize<'de> for LenientString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a string")]
        enum Written {
            Text(String),
            Unsigned(u64),
            Signed(i64),
            Float(f64),
            Flag(bool),
        }
        Ok(Self(match Written::deserialize(deserializer)? {
            Written::Text(text) => text,
            Written::Unsigned(n) => n.to_string(),
            Written::Signed(n) => n.to_string(),
            Written::Float(n) => n.to_string(),
            Written::Flag(b) => b.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_serialize_never_show_the_value() {
        let secret = Secret::new("sk_orga_ai_canary");
        assert_eq!(format!("{secret:?}"), "\"[redacted]\"");
        assert_eq!(secret.to_string(), "[redacted]");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"[redacted]\"");
        assert_eq!(secret.expose(), "sk_orga_ai_canary");
    }

    #[test]
    fn an_empty_secret_shows_as_empty_so_check_config_tells_unset_from_set() {
        assert_eq!(Secret::default().to_string(), "");
    }
}
