//! `[cors]`: which browser origins may read the answers, and [`AllowedOrigins`], the
//! parsed list every origin check reads. CORS is a browser policy, not authentication.

use super::parse;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::HashSet;

/// `[cors]`: browser access.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`scheme://host[:port]`) allowed to read responses. An entry may
    /// use `*` as its port (`http://localhost:*`), and `"*"` alone allows every origin;
    /// there is no prefix, suffix or regex matching.
    #[serde(deserialize_with = "parse::list")]
    pub allowed_origins: AllowedOrigins,
    /// Send `Access-Control-Allow-Credentials: true` so browsers may attach cookies.
    /// Refused together with the `"*"` wildcard.
    pub allow_credentials: bool,
}

/// The parsed `cors.allowed_origins`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    /// `"*"` was configured: every origin is allowed.
    any: bool,
    /// Normalised `scheme://host[:port]` entries.
    exact: HashSet<String>,
    /// `(scheme, host)` of entries written `scheme://host:*`.
    any_port: Vec<(String, String)>,
    /// The entries as normalised, in order, for `check-config`.
    written: Vec<String>,
}

/// An origin split into its parts, or `None` when it is not a plain origin.
fn split_origin(origin: &str) -> Option<(String, String, Option<u16>)> {
    let url = url::Url::parse(origin).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && !origin.ends_with('/');
    let host = url.host_str().filter(|_| plain)?;
    Some((url.scheme().to_owned(), host.to_owned(), url.port()))
}

fn join(scheme: &str, host: &str, port: Option<u16>) -> String {
    match port {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

impl TryFrom<Vec<String>> for AllowedOrigins {
    type Error = String;

    /// Parses the configured entries; the error names every bad entry.
    fn try_from(entries: Vec<String>) -> Result<Self, String> {
        let mut origins = Self::default();
        let (mut bad, mut wildcard_hosts) = (Vec::new(), Vec::new());
        for entry in &entries {
            let (base, any_port) = match entry.strip_suffix(":*") {
                Some(base) => (base, true),
                None => (entry.as_str(), false),
            };
            if entry == "*" {
                origins.any = true;
                origins.written.push(entry.clone());
                continue;
            }
            if base.contains('*') {
                wildcard_hosts.push(entry.as_str());
                continue;
            }
            match split_origin(base) {
                Some((scheme, host, None)) if any_port => {
                    origins.written.push(format!("{scheme}://{host}:*"));
                    origins.any_port.push((scheme, host));
                }
                Some((scheme, host, port)) if !any_port => {
                    let origin = join(&scheme, &host, port);
                    origins.written.push(origin.clone());
                    origins.exact.insert(origin);
                }
                _ => bad.push(entry.as_str()),
            }
        }
        if !wildcard_hosts.is_empty() {
            return Err(format!(
                "{wildcard_hosts:?} can never match: a browser sends its exact origin, and origins are never matched by pattern; list each origin, e.g. \"https://app.example.com,https://admin.example.com\""
            ));
        }
        if !bad.is_empty() {
            return Err(format!(
                "{bad:?} not an origin; write scheme://host[:port] with no path or trailing slash, e.g. \"https://app.example.com\""
            ));
        }
        Ok(origins)
    }
}

impl Serialize for AllowedOrigins {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        parse::entries(&self.written, serializer)
    }
}

impl AllowedOrigins {
    /// Whether a request's `Origin` header value is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        let Some((scheme, host, port)) = split_origin(origin) else {
            return false;
        };
        // Compare the normalised form with the header as sent: a browser sends the
        // normalised form, so anything else is not a browser origin we allow.
        let normalised = join(&scheme, &host, port);
        if normalised != origin {
            return false;
        }
        self.any
            || self.exact.contains(&normalised)
            || self
                .any_port
                .iter()
                .any(|(s, h)| *s == scheme && *h == host)
    }

    /// True when `"*"` was configured.
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// True when no origin is allowed.
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// These origins plus any port of `localhost` and `127.0.0.1` over http, for `dev`.
    pub fn with_local_development(&self) -> Self {
        let mut entries = self.written.clone();
        entries.extend(["http://localhost:*".into(), "http://127.0.0.1:*".into()]);
        Self::try_from(entries).unwrap_or_else(|_| self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Result<AllowedOrigins, String> {
        AllowedOrigins::try_from(list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn origins_match_exactly_never_by_prefix_or_suffix() {
        let o = origins(&["https://app.example.com"]).unwrap();
        assert!(o.allows("https://app.example.com"));
        for other in [
            "https://app.example.com.evil.com",
            "https://evilapp.example.com",
            "https://app.example.com:8443",
            "http://app.example.com",
            "https://app.example.co",
            "https://app.example.com/",
            "null",
            "",
        ] {
            assert!(!o.allows(other), "{other} must not match");
        }
    }

    #[test]
    fn default_ports_are_normalised_in_config() {
        let o = origins(&["https://app.example.com:443"]).unwrap();
        assert!(o.allows("https://app.example.com"));
    }

    #[test]
    fn a_port_wildcard_matches_only_that_host() {
        let o = origins(&["http://localhost:*"]).unwrap();
        assert!(o.allows("http://localhost:5173"));
        assert!(o.allows("http://localhost"));
        assert!(!o.allows("http://localhost.evil.com:5173"));
        assert!(!o.allows("https://localhost:5173"));
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(origins(&["https://a.example/"]).is_err());
        assert!(origins(&["*.example.com"]).is_err());
        assert!(origins(&["*"]).is_ok());
    }

    #[test]
    fn host_wildcards_are_refused_with_a_hint_because_they_can_never_match() {
        for pattern in ["https://*.example.com", "https://app.*.com"] {
            let error = origins(&[pattern]).unwrap_err();
            assert!(error.contains("never match"), "{error}");
            assert!(error.contains("list each origin"), "{error}");
        }
    }

    #[test]
    fn dev_mode_adds_local_origins() {
        let o = origins(&["https://app.example.com"])
            .unwrap()
            .with_local_development();
        assert!(o.allows("http://localhost:5173"));
        assert!(o.allows("http://127.0.0.1:3000"));
        assert!(o.allows("https://app.example.com"));
    }
}
