//! Layering: built-in defaults, then the TOML file, then the conventional variables
//! (`ORGA_API_KEY`, `ORGA_API_KEY_FILE`, `ORGA_USER_EMAIL`, `ORGA_BASE_URL`, `PORT`),
//! then `ORGA_PROXY_<SECTION>__<KEY>` variables. Later layers win.

use super::{Config, validate};
use figment::Figment;
use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use std::fmt;
use std::net::SocketAddr;
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
/// Keys whose values must not appear even in an error message.
const SECRET_KEYS: &[&str] = &["orga.api_key", "auth.api_keys", "auth.jwt.secret"];

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

/// Loads and validates the configuration. `dev` relaxes the requirement for real
/// Orga credentials (the caller substitutes the embedded fake Orga Cloud).
pub fn load(explicit: Option<&Path>, dev: bool) -> Result<(Config, ConfigSource), ConfigError> {
    let (config, source) = extract(explicit)?;
    let problems = validate::validate(&config, dev);
    if problems.is_empty() {
        Ok((config, source))
    } else {
        Err(ConfigError { problems })
    }
}

/// Loads without validating, falling back to the defaults on any error. For
/// `healthcheck`, which only needs the listen port and must not fail because a
/// secret is only present in the server's environment.
pub fn load_lenient(explicit: Option<&Path>) -> Config {
    extract(explicit).map(|(c, _)| c).unwrap_or_default()
}

fn extract(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
    let file = config_file(explicit)?;
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &file {
        if let Err(e) = std::fs::read_to_string(path) {
            return Err(ConfigError {
                problems: vec![format!(
                    "config file {}: cannot read it: {e} (set by --config or ORGA_PROXY_CONFIG)",
                    path.display()
                )],
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    for (env, key) in ALIASES {
        if let Some(value) = env_var(env) {
            figment = figment.merge(Serialized::default(key, value));
        }
    }
    let mut problems = Vec::new();
    if let Some(path) = env_var("ORGA_API_KEY_FILE") {
        if env_var("ORGA_API_KEY").is_some() {
            problems.push(problem(
                "orga.api_key",
                "both ORGA_API_KEY and ORGA_API_KEY_FILE are set; set only one",
            ));
        }
        match std::fs::read_to_string(&path) {
            Ok(key) => figment = figment.merge(Serialized::default("orga.api_key", key.trim())),
            Err(e) => problems.push(problem(
                "orga.api_key",
                format!("ORGA_API_KEY_FILE names {path:?}, which cannot be read: {e}"),
            )),
        }
    }
    figment = figment.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|key| key != "config")
            .split("__"),
    );

    let mut config: Config = match figment.extract() {
        Ok(config) => config,
        Err(e) => {
            problems.extend(describe(e));
            return Err(ConfigError { problems });
        }
    };
    if let Some(port) = env_var("PORT") {
        if env_var("ORGA_PROXY_SERVER__LISTEN").is_none() {
            match apply_port(&config.server.listen, &port) {
                Ok(listen) => config.server.listen = listen,
                Err(message) => problems.push(problem("server.listen", message)),
            }
        }
    }
    if problems.is_empty() {
        Ok((config, ConfigSource { file }))
    } else {
        Err(ConfigError { problems })
    }
}

fn config_file(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(path) = explicit {
        return Ok(Some(path.to_owned()));
    }
    if let Some(path) = env_var("ORGA_PROXY_CONFIG") {
        return Ok(Some(PathBuf::from(path)));
    }
    let default = PathBuf::from(DEFAULT_CONFIG_PATH);
    Ok(default.is_file().then_some(default))
}

/// An environment variable, treating an empty value as unset (compose files and
/// `.env` templates often leave `ORGA_API_KEY=` blank).
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn apply_port(listen: &str, port: &str) -> Result<String, String> {
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|_| format!("PORT={port:?} is not a port number (1-65535)"))?;
    if port == 0 {
        return Err("PORT=0 is not a usable port".into());
    }
    let mut addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("{listen:?} is not a host:port address"))?;
    addr.set_port(port);
    Ok(addr.to_string())
}

/// Turns figment's errors (all of them, not just the first) into one line each.
fn describe(error: figment::Error) -> Vec<String> {
    error
        .into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            let message = match &e.kind {
                Kind::UnknownField(field, expected) => {
                    path.push(field.clone());
                    format!("unknown key; known keys here: {}", expected.join(", "))
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
                .map(|m| match &m.source {
                    Some(source) => format!(" [{} {source}]", m.name),
                    None => format!(" [{}]", m.name),
                })
                .unwrap_or_default();
            if key.is_empty() {
                format!("configuration: {message}{from}")
            } else if SECRET_KEYS.contains(&key.as_str()) {
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
    fn port_replaces_only_the_port() {
        assert_eq!(apply_port("0.0.0.0:8080", "3000").unwrap(), "0.0.0.0:3000");
        assert!(apply_port("0.0.0.0:8080", "http").is_err());
        assert!(apply_port("0.0.0.0:8080", "70000").is_err());
    }
}
