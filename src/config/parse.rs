//! Serde helpers for the shapes people write in TOML and environment variables:
//! durations as `"10s"`, lists as TOML arrays or comma-separated strings, values that
//! the environment layer may have read as numbers, and typed values (addresses, URLs,
//! origins) that are parsed here, once, from their text.

use crate::secret::LenientString;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// The longest duration any key accepts. Nothing here needs more than a few days, and
/// a cap keeps timer arithmetic (`Instant + duration`) from ever overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// A string, accepting the numbers and booleans an environment variable may parse into
/// (`ORGA_PROXY_AUTH__JWT__ISSUER=12345` is a string, not an integer).
pub fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    LenientString::deserialize(deserializer).map(|text| text.0)
}

/// A list of strings: a TOML array, or one string as an environment variable carries it,
/// comma-separated (`https://a.example,https://b.example`) or in TOML's array syntax
/// (`["https://a.example", "https://b.example"]`). Entries are trimmed and empty entries
/// dropped, so `""` is the empty list.
pub fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a list of strings or a comma-separated string")]
    enum Written {
        Joined(String),
        List(Vec<LenientString>),
    }
    let entries: Vec<String> = match Written::deserialize(deserializer)? {
        Written::Joined(text) => split_list(&text).map_err(de::Error::custom)?,
        Written::List(items) => items.into_iter().map(|item| item.0).collect(),
    };
    Ok(entries
        .iter()
        .map(|entry| entry.trim())
        .filter(|entry| !entry.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The entries of a list written as one string: comma-separated (`a, b`), or in TOML's
/// array syntax (`[a, "b", 'c']`), where quotes are removed and a bare entry is kept as
/// written (`[007]` is `007`). Only keys that take a list read a string this way: for
/// any other key, `[Be brief]` is just text. Hand-written: figment's value parser
/// rewrites bare numbers (`007` → `7`) and does not read single-quoted strings.
pub fn split_list(text: &str) -> Result<Vec<String>, String> {
    let trimmed = text.trim();
    let Some(inner) = trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    else {
        return Ok(trimmed.split(',').map(str::to_owned).collect());
    };
    let mut entries = Vec::new();
    let mut entry = String::new();
    let mut quote: Option<char> = None;
    // The current entry was quoted and its quote has closed: only white space may follow.
    let mut closed = false;
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if let Some(open) = quote {
            match c {
                '\\' if open == '"' => entry.extend(chars.next()),
                c if c == open => {
                    quote = None;
                    closed = true;
                }
                c => entry.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                entries.push(std::mem::take(&mut entry));
                closed = false;
            }
            '"' | '\'' if !closed && entry.trim().is_empty() => {
                entry.clear();
                quote = Some(c);
            }
            c if closed && !c.is_whitespace() => {
                return Err(format!("{trimmed}: text after a closing quote"));
            }
            _ if closed => {}
            c => entry.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("{trimmed}: a quote is not closed"));
    }
    entries.push(entry);
    Ok(entries)
}

/// A list parsed into a typed value (`AllowedOrigins`, `TrustedProxies`...) through its
/// `TryFrom<Vec<String>>`, whose error message becomes the key's problem.
pub fn list<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<Vec<String>>,
    T::Error: Display,
{
    T::try_from(string_list(deserializer)?).map_err(de::Error::custom)
}

/// A value parsed from its text with `FromStr` (its error is the key's problem), and
/// written back with `Display`.
pub mod text {
    use super::*;

    /// Parses the text.
    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        lenient_string(deserializer)?
            .trim()
            .parse()
            .map_err(de::Error::custom)
    }

    /// Writes the text.
    pub fn serialize<S: Serializer, T: Display>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }
}

/// As [`text`], where the empty string means "not set".
pub mod optional_text {
    use super::*;

    /// `""` is `None`; anything else is parsed.
    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        let text = lenient_string(deserializer)?;
        match text.trim() {
            "" => Ok(None),
            text => text.parse().map(Some).map_err(de::Error::custom),
        }
    }

    /// `None` is written as `""`.
    pub fn serialize<S: Serializer, T: Display>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.collect_str(value),
            None => serializer.serialize_str(""),
        }
    }
}

/// `Duration` as a human string: `"10s"`, `"1m 30s"`, `"250ms"`, at most [`MAX_DURATION`].
pub mod duration {
    use super::*;

    /// Parses the text (see [`parse`]).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        parse(&lenient_string(deserializer)?).map_err(de::Error::custom)
    }

    /// Writes it as humantime does (`"1m 30s"`).
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    /// Parses `"10s"`-style durations; a bare number is refused because its unit is a
    /// guess, and anything over [`MAX_DURATION`] is refused as a typo.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let value = humantime::parse_duration(text.trim()).map_err(|e| {
            format!(
                "invalid duration {text:?} ({e}); write it with a unit, like \"10s\" or \"500ms\""
            )
        })?;
        if value > MAX_DURATION {
            return Err(format!(
                "{text:?} is longer than any setting allows (at most {})",
                humantime::format_duration(MAX_DURATION)
            ));
        }
        Ok(value)
    }
}

/// Serializes a list-like typed value as the list of its entries' text.
pub fn entries<S, I>(entries: I, serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    I: IntoIterator,
    I::Item: Display,
{
    let texts: Vec<String> = entries.into_iter().map(|e| e.to_string()).collect();
    texts.serialize(serializer)
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
        let c: Lists =
            serde_json::from_str(r#"{"v":"[\"https://a.example\", \"https://b.example\"]"}"#)
                .unwrap();
        assert_eq!(c.v, a.v, "TOML's array syntax in one string");
    }

    #[test]
    fn array_syntax_in_a_string_unquotes_entries_and_keeps_bare_ones_as_written() {
        let split = |text: &str| split_list(text).unwrap();
        assert_eq!(
            split(r#"[a, "b", 'c', 007, 1.50]"#),
            ["a", "b", "c", " 007", " 1.50"]
        );
        assert_eq!(
            split(r#"["x, y", 'z']"#),
            ["x, y", "z"],
            "a comma inside quotes stays"
        );
        assert_eq!(split(r#"["say \"hi\""]"#), [r#"say "hi""#]);
        assert_eq!(
            split("[]"),
            [""],
            "the empty list, once empty entries are dropped"
        );
        assert_eq!(
            split("[unclosed, x"),
            ["[unclosed", " x"],
            "not an array: commas"
        );
        assert!(split_list(r#"["a" b]"#).is_err());
        assert!(split_list(r#"["a]"#).is_err());
    }

    #[test]
    fn durations_need_a_unit_and_a_sane_length() {
        assert_eq!(duration::parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(duration::parse("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(
            duration::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert!(duration::parse("10").is_err());
        assert!(duration::parse("soon").is_err());
        assert!(duration::parse("300000000000y").is_err());
        assert!(duration::parse("31d").is_err());
        assert!(duration::parse("30d").is_ok());
    }
}
