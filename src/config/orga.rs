//! `[orga]`: the upstream account, and the typed values it is written with: the API
//! root ([`BaseUrl`]) and the optional account email ([`Email`]).

use super::parse;
use super::validate::{Problems, duration_within, within};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `[orga]`: the upstream account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrgaConfig {
    /// Orga Cloud API root; the client appends `/v1/realtime/...`.
    #[serde(with = "parse::text")]
    pub base_url: BaseUrl,
    /// The long-lived Orga API key; sent only as the Bearer of the client-secrets call.
    pub api_key: Secret,
    /// The Orga account email, sent as the `email` query parameter only when set (the
    /// Node SDK's 1.0.0-beta sent it; its current version sends none).
    #[serde(with = "parse::optional_text")]
    pub user_email: Option<Email>,
    /// Total deadline of each upstream call (connecting included).
    #[serde(with = "parse::duration")]
    pub timeout: Duration,
    /// Consecutive failed credential requests (Orga unreachable, timing out, 5xx or
    /// malformed) that open the circuit breaker; `0` turns the breaker off.
    pub circuit_breaker_threshold: u32,
    /// How long an open circuit answers 503 without calling Orga before one probe
    /// request is let through.
    #[serde(with = "parse::duration")]
    pub circuit_breaker_cooldown: Duration,
}

impl Default for OrgaConfig {
    fn default() -> Self {
        Self {
            base_url: BaseUrl::orga_cloud(),
            api_key: Secret::default(),
            user_email: None,
            timeout: Duration::from_secs(10),
            circuit_breaker_threshold: 5,
            circuit_breaker_cooldown: Duration::from_secs(10),
        }
    }
}

impl OrgaConfig {
    pub(super) fn check(&self, problems: &mut Problems) {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        problems.check(
            "orga.timeout",
            duration_within(self.timeout, ms(100), s(120)),
        );
        problems.check(
            "orga.circuit_breaker_threshold",
            within(self.circuit_breaker_threshold, 0, 1_000),
        );
        problems.check(
            "orga.circuit_breaker_cooldown",
            duration_within(self.circuit_breaker_cooldown, ms(100), s(3_600)),
        );
        if self
            .api_key
            .expose()
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            problems.add(
                "orga.api_key",
                "contains white space or control characters (not shown: it is a secret)",
            );
        }
    }
}

/// The Orga Cloud API root: http(s) with a host, no query, fragment or credentials,
/// and plain http only where it cannot cross a network the operator does not own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl(url::Url);

impl BaseUrl {
    /// `https://api.orga-ai.com`.
    pub fn orga_cloud() -> Self {
        Self(url::Url::parse("https://api.orga-ai.com").expect("a valid constant URL"))
    }

    /// The URL of an API path (`/v1/realtime/...`) under this root.
    pub fn endpoint(&self, path: &str) -> url::Url {
        let mut url = self.0.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}{path}"));
        url
    }
}

impl FromStr for BaseUrl {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let url = url::Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{value:?} must be an http or https URL with a host"
            ));
        }
        if url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(format!(
                "{value:?} must not carry a query, fragment or credentials"
            ));
        }
        if url.scheme() == "http" && !is_local_host(&url) {
            return Err(format!(
                "{value:?} would send the API key unencrypted; use https (plain http is accepted only for localhost, loopback addresses and single-label container hostnames such as http://mock-orga:8081)"
            ));
        }
        Ok(Self(url))
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str().trim_end_matches('/'))
    }
}

/// Hosts where plain http cannot cross a network boundary the operator does not own:
/// loopback, and single-label names (a compose or Kubernetes service on the same host
/// network, like the fake Orga Cloud).
fn is_local_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost" || !name.contains('.'),
        None => false,
    }
}

/// An email address, checked the way the Node SDK's 1.0.0-beta did (a syntactic check
/// that catches typos and placeholders, not full RFC 5322).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// The address as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Email {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let bad = || Err(format!("{value:?} is not an email address"));
        let Some((local, domain)) = value.rsplit_once('@') else {
            return bad();
        };
        let valid_domain = domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if local.is_empty()
            || local.contains('@')
            || value.len() > 254
            || value.chars().any(|c| c.is_whitespace() || c.is_control())
            || !valid_domain
        {
            return bad();
        }
        Ok(Self(value.to_owned()))
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_for_remote_hosts_because_it_would_expose_the_api_key() {
        assert!("http://api.orga-ai.com".parse::<BaseUrl>().is_err());
        assert!("http://10.0.0.5:8081".parse::<BaseUrl>().is_err());
        for local in [
            "http://127.0.0.1:8081",
            "http://[::1]:8081",
            "http://localhost:8081",
            "http://mock-orga:8081",
            "https://api.orga-ai.com",
        ] {
            assert!(local.parse::<BaseUrl>().is_ok(), "{local}");
        }
        assert!("https://u:p@api.orga-ai.com".parse::<BaseUrl>().is_err());
    }

    #[test]
    fn endpoints_join_under_the_root_with_or_without_a_trailing_slash() {
        for root in ["https://gw.example/orga", "https://gw.example/orga/"] {
            let base: BaseUrl = root.parse().unwrap();
            assert_eq!(
                base.endpoint("/v1/realtime/calls").as_str(),
                "https://gw.example/orga/v1/realtime/calls"
            );
        }
        assert_eq!(BaseUrl::orga_cloud().to_string(), "https://api.orga-ai.com");
    }

    #[test]
    fn emails_with_plus_and_subdomains_are_accepted() {
        assert!("dev+team@example.com".parse::<Email>().is_ok());
        assert!("a.b@mail.example.co.uk".parse::<Email>().is_ok());
    }

    #[test]
    fn placeholder_and_malformed_emails_are_refused() {
        for bad in [
            "you",
            "you@",
            "@example.com",
            "a@b",
            "a b@example.com",
            "a@-x.com",
        ] {
            assert!(bad.parse::<Email>().is_err(), "{bad:?} should be refused");
        }
    }
}
