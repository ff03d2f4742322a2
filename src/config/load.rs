//! Layering: built-in defaults, then the TOML file, then the conventional variables
//! (`ORGA_API_KEY`, `ORGA_API_KEY_FILE`, `ORGA_USER_EMAIL`, `ORGA_BASE_URL`, `PORT`),
//! then `ORGA_PROXY_<SECTION>__<KEY>` variables. Later layers win.
//!
//! Each section is extracted on its own, so one bad value does not hide the problems of
//! the other sections; within a section, the first bad value stops its extraction.

use super::env::PrefixedEnv;
use super::{Config, validate::Problems};
use figment::error::Kind;
use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use figment::{Figment, Provider};
use serde::de::DeserializeOwned;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The file used when neither `--config` nor `ORGA_PROXY_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "config/orga-proxy.toml";
const ENV_PREFIX: &str = "ORGA_PROXY_";
/// Conventional variable names and the keys they set.
const ALIASES: &[(&str, &str)] = &[
    ("ORGA_API_KEY", "orga.api_key"),
    ("ORGA_USER_EMAIL", "orga.user_email"),
    ("ORGA_BASE_URL", "orga.base_url"),
];
/// The other variables read here.
const OTHER_VARIABLES: &[&str] = &["ORGA_API_KEY_FILE", "PORT"];
/// Keys whose values must not appear even in an error message.
const SECRET_KEYS: &[&str] = &[
    "orga.api_key",
    "auth.api_keys",
    "auth.jwt.secret",
    "redis.url",
];
/// Keys of earlier versions, and what became of them.
const RETIRED_KEYS: &[(&str, &str)] = &[
    (
        "rate_limit.redis_url",
        "moved to redis.url (ORGA_PROXY_REDIS__URL)",
    ),
    (
        "rate_limit.redis_timeout",
        "moved to redis.timeout (ORGA_PROXY_REDIS__TIMEOUT)",
    ),
    (
        "rate_limit.redis_key_prefix",
        "moved to redis.key_prefix (ORGA_PROXY_REDIS__KEY_PREFIX)",
    ),
    (
        "server.workers",
        "removed: the proxy serves on one multi-threaded runtime sized to the CPUs; delete the key",
    ),
];

/// How the configuration will be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `serve` and `check-config`: real Orga credentials are required.
    Serve,
    /// `dev`: the caller substitutes the embedded fake Orga Cloud, so no key is needed.
    Dev,
}

/// Where the configuration came from, for logs and `check-config`.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The TOML file that was read, if any.
    pub file: Option<PathBuf>,
}

/// Everything wrong with a configuration, one line per problem, each naming the key
/// and the environment variable that sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// One human sentence per problem.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

/// Formats one problem as `key (ENV_VAR): message`.
pub(crate) fn problem(key: &str, message: impl fmt::Display) -> String {
    format!("{key} ({}): {message}", env_names(key))
}

/// The environment variables that set `key`, most specific first.
fn env_names(key: &str) -> String {
    let mut names = vec![format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )];
    names.extend(
        ALIASES
            .iter()
            .filter(|(_, k)| *k == key)
            .map(|(env, _)| env.to_string()),
    );
    if key == "orga.api_key" {
        names.push("ORGA_API_KEY_FILE".into());
    }
    if key == "server.listen" {
        names.push("PORT".into());
    }
    names.join(" or ")
}

/// Loads and validates the configuration.
pub fn load(explicit: Option<&Path>, mode: Mode) -> Result<(Config, ConfigSource), ConfigError> {
    let mut problems = Problems::default();
    let (config, source) = extract(explicit, mode, &mut problems)?;
    if problems.is_empty() {
        problems.0.extend(config.problems());
    }
    if problems.is_empty() {
        Ok((config, source))
    } else {
        Err(ConfigError {
            problems: problems.0,
        })
    }
}

/// Loads without validating, falling back to the defaults on any error. For
/// `healthcheck`, which only needs the listen port and must not fail because a
/// secret is only present in the server's environment.
pub fn load_lenient(explicit: Option<&Path>) -> Config {
    let mut problems = Problems::default();
    extract(explicit, Mode::Dev, &mut problems)
        .map(|(config, _)| config)
        .unwrap_or_default()
}

/// Reads every layer and extracts each section, recording what is wrong.
fn extract(
    explicit: Option<&Path>,
    mode: Mode,
    problems: &mut Problems,
) -> Result<(Config, ConfigSource), ConfigError> {
    let fatal = |problem: String| ConfigError {
        problems: vec![problem],
    };
    let file = config_file(explicit, problems);
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            fatal(format!(
                "config file {}: cannot read it: {e} (set by --config or ORGA_PROXY_CONFIG)",
                path.display()
            ))
        })?;
        if let Err(e) = toml::from_str::<toml::Table>(&text) {
            return Err(fatal(toml_syntax_error(path, &text, &e)));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let garbled = check_unicode(problems);
    for (env, key) in ALIASES {
        if let Some(value) = env_var(env) {
            figment = figment.merge(Serialized::default(key, value));
        }
    }
    if let Some(path) = env_var("ORGA_API_KEY_FILE") {
        if env_var("ORGA_API_KEY").is_some() {
            problems.add(
                "orga.api_key",
                "both ORGA_API_KEY and ORGA_API_KEY_FILE are set; set only one",
            );
        }
        match std::fs::read_to_string(&path) {
            Ok(key) => figment = figment.merge(Serialized::default("orga.api_key", key.trim())),
            Err(e) => problems.add(
                "orga.api_key",
                format!("ORGA_API_KEY_FILE names {path:?}, which cannot be read: {e}"),
            ),
        }
    }
    figment = figment.merge(PrefixedEnv::new(ENV_PREFIX, &["config"]));

    unknown_sections(&figment, problems);
    let mut config = Config {
        server: section(&figment, "server", problems),
        orga: section(&figment, "orga", problems),
        cors: section(&figment, "cors", problems),
        rate_limit: section(&figment, "rate_limit", problems),
        auth: section(&figment, "auth", problems),
        redis: section(&figment, "redis", problems),
        pool: section(&figment, "pool", problems),
        relay: section(&figment, "relay", problems),
        quota: section(&figment, "quota", problems),
        audit: section(&figment, "audit", problems),
        log: section(&figment, "log", problems),
    };
    // A key set in a variable that is not UTF-8 is already reported as such.
    let key_garbled = garbled.iter().any(|key| key == "orga.api_key");
    if mode == Mode::Serve && !is_set(&figment, "orga.api_key") && !key_garbled {
        problems.add(
            "orga.api_key",
            "required: the Orga API key (or run `orga-proxy dev` for the fake Orga Cloud)",
        );
    }
    if let Some(port) = env_var("PORT") {
        if env_var("ORGA_PROXY_SERVER__LISTEN").is_none() {
            match parse_port(&port) {
                Ok(port) => config.server.listen.set_port(port),
                Err(message) => problems.add("server.listen", message),
            }
        }
    }
    Ok((config, ConfigSource { file }))
}

/// One section, or its defaults with the problem recorded.
fn section<T: DeserializeOwned + Default>(
    figment: &Figment,
    name: &str,
    problems: &mut Problems,
) -> T {
    figment.extract_inner(name).unwrap_or_else(|error| {
        for line in describe(error, name) {
            problems.0.push(line);
        }
        T::default()
    })
}

/// Top-level tables that are not sections (a typo such as `[ratelimit]`).
fn unknown_sections(figment: &Figment, problems: &mut Problems) {
    let known = Figment::from(Serialized::defaults(Config::default()));
    let (Ok(known), Ok(given)) = (known.data(), figment.data()) else {
        return;
    };
    let (Some(known), Some(given)) = (
        known.get(&figment::Profile::Default),
        given.get(&figment::Profile::Default),
    ) else {
        return;
    };
    for name in given.keys().filter(|name| !known.contains_key(*name)) {
        let sections: Vec<&str> = known.keys().map(String::as_str).collect();
        problems.add(
            name,
            format!("unknown key; known sections: {}", sections.join(", ")),
        );
    }
}

/// True when `key` holds a non-empty value in some layer.
fn is_set(figment: &Figment, key: &str) -> bool {
    match figment.find_value(key) {
        Ok(Value::String(_, text)) => !text.trim().is_empty(),
        Ok(_) => true,
        Err(_) => false,
    }
}

fn config_file(explicit: Option<&Path>, _problems: &mut Problems) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_owned());
    }
    if let Some(path) = env_var("ORGA_PROXY_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let default = PathBuf::from(DEFAULT_CONFIG_PATH);
    default.is_file().then_some(default)
}

/// An environment variable, treating an empty value as unset (compose files and
/// `.env` templates often leave `ORGA_API_KEY=` blank). Values that are not UTF-8 are
/// reported by [`check_unicode`].
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Every variable this service reads must be UTF-8: one that is not would otherwise be
/// skipped silently and its key left at the default (`auth.mode` back to `"none"`).
/// Returns the keys such variables set.
fn check_unicode(problems: &mut Problems) -> Vec<String> {
    let ours = |name: &OsStr| {
        let bytes = name.as_bytes();
        bytes.starts_with(ENV_PREFIX.as_bytes())
            || ALIASES.iter().any(|(alias, _)| bytes == alias.as_bytes())
            || OTHER_VARIABLES
                .iter()
                .any(|other| bytes == other.as_bytes())
    };
    let mut keys = Vec::new();
    for (name, value) in std::env::vars_os().filter(|(name, _)| ours(name)) {
        match name.to_str() {
            None => problems.0.push(format!(
                "environment: a variable named {:?} is not valid UTF-8; rename or unset it",
                name.to_string_lossy()
            )),
            Some(name) if value.to_str().is_none() => {
                let message =
                    format!("{name} is not valid UTF-8 (not shown); write it as UTF-8 text");
                match key_set_by(name) {
                    Some(key) => {
                        problems.add(&key, message);
                        keys.push(key);
                    }
                    None => problems.0.push(message),
                }
            }
            Some(_) => {}
        }
    }
    keys
}

/// The key an environment variable sets, if it sets one.
fn key_set_by(variable: &str) -> Option<String> {
    match variable {
        "ORGA_PROXY_CONFIG" => None,
        "ORGA_API_KEY_FILE" => Some("orga.api_key".into()),
        "PORT" => Some("server.listen".into()),
        _ => match variable.strip_prefix(ENV_PREFIX) {
            Some(key) => Some(key.to_ascii_lowercase().replace("__", ".")),
            None => ALIASES
                .iter()
                .find(|(alias, _)| *alias == variable)
                .map(|(_, key)| key.to_string()),
        },
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.trim().parse::<u16>() {
        Ok(0) => Err("PORT=0 is not a usable port".into()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("PORT={port:?} is not a port number (1-65535)")),
    }
}

/// A TOML syntax error as one line: where, and what, but never the offending text
/// itself (it may be a secret, as in an unterminated `api_key = "...` or a key that
/// is all digits).
fn toml_syntax_error(path: &Path, text: &str, error: &toml::de::Error) -> String {
    let position = error.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!(" at line {line}, column {column}")
    });
    let message = without_quoted_values(error.message().lines().next().unwrap_or("invalid TOML"));
    format!(
        "config file {}: TOML syntax error{}: {message}",
        path.display(),
        position.unwrap_or_default()
    )
}

/// A parser message with every quoted value (`` `...` ``, `"..."`, `'...'`) replaced by `…`.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(quote) if c == quote => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None if matches!(c, '`' | '"' | '\'') => {
                out.push(c);
                open = Some(c);
            }
            None => out.push(c),
        }
    }
    if open.is_some() {
        out.push('…');
    }
    out
}

/// Turns figment's errors for section `name` into one line each.
fn describe(error: figment::Error, name: &str) -> Vec<String> {
    error
        .into_iter()
        .map(|e| {
            // figment appends the extracted section's name to the field path.
            let mut path = e.path.clone();
            if path.len() > 1 && path.last().map(String::as_str) == Some(name) {
                path.pop();
            }
            if path.first().map(String::as_str) != Some(name) {
                path.insert(0, name.to_owned());
            }
            let message = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    if path.last() != Some(field) {
                        path.push(field.clone());
                    }
                    let key = path.join(".");
                    match RETIRED_KEYS.iter().find(|(retired, _)| *retired == key) {
                        Some((_, what)) => what.to_string(),
                        None => format!("unknown key; known keys here: {}", expected.join(", ")),
                    }
                }
                Kind::UnknownVariant(value, expected) => {
                    format!(
                        "unknown value {value:?}; expected one of: {}",
                        expected.join(", ")
                    )
                }
                kind => kind.to_string(),
            };
            let key = path.join(".");
            let from = e
                .metadata
                .as_ref()
                .map(|m| source_label(m, &key))
                .unwrap_or_default();
            // A secret key's problem is hidden, since serde's own messages may quote the
            // value, except the API key list's own, written to name no key.
            let written_for_secrets = key == "auth.api_keys"
                && matches!(&e.kind, Kind::Message(m) if m.ends_with(super::auth::KEYS_NOT_SHOWN));
            if SECRET_KEYS.contains(&key.as_str()) && !written_for_secrets {
                problem(
                    &key,
                    format!("invalid value (not shown: it is a secret){from}"),
                )
            } else {
                problem(&key, format!("{message}{from}"))
            }
        })
        .collect()
}

/// Where a bad value came from: the file and its position, the environment, or one
/// of the conventional variables (whose layer figment names by its Rust type).
fn source_label(metadata: &figment::Metadata, key: &str) -> String {
    if metadata.name.contains("::") {
        let variable = ALIASES
            .iter()
            .find(|(env, k)| *k == key && env_var(env).is_some())
            .map(|(env, _)| *env)
            .unwrap_or("ORGA_API_KEY_FILE");
        return format!(" [{variable}]");
    }
    match &metadata.source {
        Some(source) => format!(" [{} {source}]", metadata.name),
        None => format!(" [{}]", metadata.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_include_the_conventional_aliases() {
        assert_eq!(
            env_names("orga.api_key"),
            "ORGA_PROXY_ORGA__API_KEY or ORGA_API_KEY or ORGA_API_KEY_FILE"
        );
        assert_eq!(
            env_names("cors.allowed_origins"),
            "ORGA_PROXY_CORS__ALLOWED_ORIGINS"
        );
    }

    #[test]
    fn variables_name_the_key_they_set() {
        assert_eq!(
            key_set_by("ORGA_PROXY_AUTH__MODE").as_deref(),
            Some("auth.mode")
        );
        assert_eq!(key_set_by("ORGA_API_KEY").as_deref(), Some("orga.api_key"));
        assert_eq!(
            key_set_by("ORGA_API_KEY_FILE").as_deref(),
            Some("orga.api_key")
        );
        assert_eq!(key_set_by("PORT").as_deref(), Some("server.listen"));
        assert_eq!(key_set_by("ORGA_PROXY_CONFIG"), None);
    }

    #[test]
    fn a_port_must_be_a_usable_number() {
        assert_eq!(parse_port("3000"), Ok(3000));
        assert!(parse_port("http").is_err());
        assert!(parse_port("70000").is_err());
        assert!(parse_port("0").is_err());
    }

    #[test]
    fn quoted_values_never_reach_a_message() {
        assert_eq!(
            without_quoted_values(
                "invalid type: integer `987654321098765432109876543210` as i128, expected any"
            ),
            "invalid type: integer `…` as i128, expected any"
        );
        assert_eq!(
            without_quoted_values("unterminated \"sk_orga"),
            "unterminated \"…"
        );
    }
}
