//! `[redis]`: the one Redis that replicas share state through (rate limits with
//! `rate_limit.backend = "redis"`, quotas, relay token binding), [`RedisUrl`], and
//! [`CaFile`], the private CA a `rediss://` connection may trust.

use super::parse;
use super::validate::{Problems, duration_within};
use crate::secret::Secret;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// `[redis]`: the shared Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS) `[user:password@]host:port[/db]`; `""` keeps all
    /// state in the process. A secret: it may carry a password, and is never printed.
    #[serde(with = "parse::optional_text")]
    pub url: Option<RedisUrl>,
    /// Deadline of every Redis call; past it the call counts as a Redis failure.
    #[serde(with = "parse::duration")]
    pub timeout: Duration,
    /// Prefix of every key, so several deployments can share one Redis.
    #[serde(deserialize_with = "parse::lenient_string")]
    pub key_prefix: String,
    /// PEM file of the CA that signed a `rediss://` server's certificate, for a private
    /// CA; when set, only it is trusted. `""`: the platform's roots (public CAs).
    #[serde(with = "parse::optional_text")]
    pub tls_ca_file: Option<CaFile>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout: Duration::from_millis(250),
            key_prefix: "orga-proxy:".into(),
            tls_ca_file: None,
        }
    }
}

impl RedisConfig {
    pub(super) fn check(&self, problems: &mut Problems) {
        problems.check(
            "redis.timeout",
            duration_within(
                self.timeout,
                Duration::from_millis(1),
                Duration::from_secs(5),
            )
            .map_err(|e| format!("{e}: every request that uses Redis waits on it")),
        );
        if self.key_prefix.chars().any(char::is_control) {
            problems.add("redis.key_prefix", "must not contain control characters");
        }
        if self.tls_ca_file.is_some() && !self.url.as_ref().is_some_and(|url| url.tls) {
            problems.add(
                "redis.tls_ca_file",
                "only applies to a rediss:// (TLS) redis.url; set the URL's scheme to rediss:// or leave this empty",
            );
        }
    }
}

/// `redis.tls_ca_file`: a PEM file holding at least one CA certificate, read and
/// checked when the configuration loads, so a wrong path stops the start (exit 2)
/// rather than failing every TLS handshake later.
#[derive(Clone)]
pub struct CaFile {
    /// The path as configured (shown by `check-config`).
    path: PathBuf,
    /// The file's content, checked to hold parsable certificates.
    pem: Arc<[u8]>,
}

impl CaFile {
    /// The PEM text, for the Redis client's trust store.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

impl FromStr for CaFile {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let path = PathBuf::from(value);
        let pem = std::fs::read(&path).map_err(|e| format!("cannot read {value:?}: {e}"))?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{value:?} is not valid PEM: {e}"))?;
        if certificates.is_empty() {
            return Err(format!(
                "{value:?} holds no certificate; expected PEM \"-----BEGIN CERTIFICATE-----\" blocks"
            ));
        }
        // The same check the TLS client applies when it builds its trust store.
        let mut roots = rustls::RootCertStore::empty();
        for (index, certificate) in certificates.into_iter().enumerate() {
            roots.add(certificate).map_err(|e| {
                format!(
                    "certificate {} in {value:?} is not usable as a CA: {e}",
                    index + 1
                )
            })?;
        }
        Ok(Self {
            path,
            pem: pem.into(),
        })
    }
}

impl fmt::Display for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.path.display(), f)
    }
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A Redis URL, checked for shape only. It may carry a password, so it prints as
/// `[redacted]` and no error ever quotes it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// The URL as configured.
    url: Secret,
    /// `rediss://`: the connection uses TLS.
    pub tls: bool,
}

impl RedisUrl {
    /// The raw URL, for the Redis client only.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }
}

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(value)
            .map_err(|e| format!("is not a URL ({e}); value not shown: it may hold a password"))?;
        let tls = match parsed.scheme() {
            "redis" => false,
            "rediss" => true,
            _ => {
                return Err(format!(
                    "scheme {:?} is not supported; use redis://host:port[/db] or rediss:// for TLS",
                    parsed.scheme()
                ));
            }
        };
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err("needs a host, e.g. \"redis://redis:6379/0\"".into());
        }
        Ok(Self {
            url: Secret::new(value),
            tls,
        })
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.url, f)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_shown() {
        let url: RedisUrl = "redis://:hunter2@redis:6379/0".parse().unwrap();
        assert!(!url.tls);
        assert!(!format!("{url} {url:?}").contains("hunter2"));
        assert!("rediss://redis:6380".parse::<RedisUrl>().unwrap().tls);
        for bad in [
            "http://:hunter2@redis:6379",
            "not a url hunter2",
            "redis://",
        ] {
            let error = bad.parse::<RedisUrl>().unwrap_err();
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    /// A temporary file `name` holding `content`, in a directory of `test`'s own.
    fn file_with(test: &str, name: &str, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("orga-proxy-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_ca_file_must_exist_and_hold_a_certificate() {
        let good = file_with("ca-file", "ca.pem", &ca_pem());
        let ca: CaFile = good
            .to_str()
            .unwrap()
            .parse()
            .expect("a PEM CA certificate");
        assert!(ca.pem().starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert_eq!(ca.to_string(), good.to_str().unwrap());

        let missing = good.with_file_name("missing.pem");
        let error = missing.to_str().unwrap().parse::<CaFile>().unwrap_err();
        assert!(error.contains("cannot read"), "{error}");
        let key_only = file_with(
            "ca-file",
            "key.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let error = key_only.to_str().unwrap().parse::<CaFile>().unwrap_err();
        assert!(error.contains("holds no certificate"), "{error}");
        let garbled = file_with(
            "ca-file",
            "garbled.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );
        let error = garbled.to_str().unwrap().parse::<CaFile>().unwrap_err();
        assert!(error.contains("certificate 1"), "{error}");
        let _ = std::fs::remove_dir_all(good.parent().unwrap());
    }

    #[test]
    fn a_ca_file_needs_a_tls_url() {
        let path = file_with("ca-url", "ca.pem", &ca_pem());
        let ca: CaFile = path.to_str().unwrap().parse().unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let mut config = RedisConfig {
            url: Some("redis://redis:6379".parse().unwrap()),
            tls_ca_file: Some(ca),
            ..RedisConfig::default()
        };
        let problems = |config: &RedisConfig| {
            let mut problems = Problems::default();
            config.check(&mut problems);
            problems.0.join("\n")
        };
        assert!(problems(&config).contains("redis.tls_ca_file"));
        config.url = Some("rediss://redis:6380".parse().unwrap());
        assert_eq!(problems(&config), "");
    }
}
