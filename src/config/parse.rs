//! Serde helpers for the shapes people write in TOML and environment variables:
//! durations as `"10s"`, lists as TOML arrays or comma-separated strings, and
//! strings that the environment layer may have read as numbers or booleans.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A string, accepting the numbers and booleans an environment variable may parse into
/// (`ORGA_API_KEY=12345` is a string key, not an integer).
pub fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Lenient;
    impl Visitor<'_> for Lenient {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    deserializer.deserialize_any(Lenient)
}

/// A list of strings: a TOML/JSON array, or one comma-separated string
/// (`ORGA_PROXY_CORS__ALLOWED_ORIGINS=https://a.example,https://b.example`).
/// Entries are trimmed and empty entries dropped, so `""` is the empty list.
pub fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct List;
    impl<'de> Visitor<'de> for List {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings or a comma-separated string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            #[derive(Deserialize)]
            struct Item(#[serde(deserialize_with = "lenient_string")] String);
            let mut out = Vec::new();
            while let Some(Item(s)) = seq.next_element()? {
                let s = s.trim();
                if !s.is_empty() {
                    out.push(s.to_owned());
                }
            }
            Ok(out)
        }
    }
    deserializer.deserialize_any(List)
}

/// `Duration` as a human string: `"10s"`, `"1m 30s"`, `"250ms"`.
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = lenient_string(deserializer)?;
        parse(&text).map_err(de::Error::custom)
    }

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    /// Parses `"10s"`-style durations; a bare number is refused because its unit is a guess.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim()).map_err(|e| {
            format!(
                "invalid duration {text:?} ({e}); write it with a unit, like \"10s\" or \"500ms\""
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Lists {
        #[serde(deserialize_with = "string_list")]
        v: Vec<String>,
    }

    #[test]
    fn comma_separated_and_array_lists_read_the_same() {
        let a: Lists =
            serde_json::from_str(r#"{"v":"https://a.example, https://b.example,"}"#).unwrap();
        let b: Lists =
            serde_json::from_str(r#"{"v":["https://a.example","https://b.example"]}"#).unwrap();
        assert_eq!(a.v, b.v);
        assert_eq!(a.v, ["https://a.example", "https://b.example"]);
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(duration::parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(duration::parse("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(
            duration::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert!(duration::parse("10").is_err());
        assert!(duration::parse("soon").is_err());
    }
}
