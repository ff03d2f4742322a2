//! The `ORGA_PROXY_<SECTION>__<KEY>` layer. Unlike figment's `Env`, a value is turned into
//! a number or boolean only when that loses nothing (`30`, `true`), and otherwise stays
//! the exact text: figment's parser would read `007123` as 7123 and strip quotes or
//! escapes, silently changing a digits-only secret or issuer.

use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// Environment variables with a prefix, `__` separating nested keys.
pub struct PrefixedEnv {
    prefix: &'static str,
    /// Keys (after the prefix, lowercase) that are not configuration.
    ignore: &'static [&'static str],
}

impl PrefixedEnv {
    /// `ORGA_PROXY_SERVER__LISTEN` → `server.listen`, skipping `ignore`d keys.
    pub fn new(prefix: &'static str, ignore: &'static [&'static str]) -> Self {
        Self { prefix, ignore }
    }

    fn entries(&self) -> impl Iterator<Item = (String, String)> + '_ {
        std::env::vars_os().filter_map(|(name, value)| {
            let (name, value) = (name.into_string().ok()?, value.into_string().ok()?);
            let key = name.strip_prefix(self.prefix)?.to_ascii_lowercase();
            if key.is_empty() || self.ignore.contains(&key.as_str()) {
                return None;
            }
            Some((key.replace("__", "."), value))
        })
    }
}

/// The value as typed: a boolean or number only if it reads back as the same text, the
/// exact string otherwise. A list written as `[a, b]` stays text too: the keys that take
/// a list read it (`config::parse::split_list`), and for any other key it is just text.
fn typed(raw: &str) -> Value {
    let text = raw.trim();
    if text == "true" || text == "false" {
        return Value::from(text == "true");
    }
    if let Ok(n) = text.parse::<u64>() {
        if n.to_string() == text {
            return Value::from(n);
        }
    }
    if let Ok(n) = text.parse::<i64>() {
        if n.to_string() == text {
            return Value::from(n);
        }
    }
    Value::from(raw.to_owned())
}

/// Adds `from` into `into`, descending into tables present in both.
fn merge(into: &mut Dict, from: Dict) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Dict(_, existing)), Value::Dict(_, incoming)) => merge(existing, incoming),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

impl Provider for PrefixedEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("{}* environment variable", self.prefix))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut dict = Dict::new();
        for (key, raw) in self.entries() {
            match figment::util::nest(&key, typed(&raw)) {
                Value::Dict(_, nested) => merge(&mut dict, nested),
                // A name whose first segment is empty (`ORGA_PROXY___MODE`, one `_` too
                // many) nests nothing: kept under its own name, it is reported as an
                // unknown key instead of being taken for the whole configuration.
                value => {
                    dict.insert(key, value);
                }
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_numbers_or_booleans_only_when_nothing_is_lost() {
        assert_eq!(typed("30"), Value::from(30u64));
        assert_eq!(typed("-1"), Value::from(-1i64));
        assert_eq!(typed("true"), Value::from(true));
        for exact in [
            "007123",
            "1.50",
            "1e3",
            "\"quoted\"",
            "a,b",
            "truex",
            "[unclosed",
            "sk_orga_ai_x",
            "[a, b]",
            "[Be brief]",
        ] {
            assert_eq!(typed(exact), Value::from(exact.to_owned()), "{exact}");
        }
    }
}
