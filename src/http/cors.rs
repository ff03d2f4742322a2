//! CORS as the contract fixes it: exact origins only (optionally any port of one
//! host), the request's own origin echoed with `Vary: Origin`, preflights answered
//! here before authentication, and no CORS headers at all for other origins.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashSet;

/// Headers a browser may send cross-origin to the credentials route.
const ALLOWED_HEADERS: &str = "authorization, content-type, x-api-key, x-request-id";
/// Response headers a cross-origin page may read.
const EXPOSED_HEADERS: &str =
    "x-request-id, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset";
/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The parsed `cors.allowed_origins`.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    /// `"*"` was configured: every origin is allowed.
    any: bool,
    /// Normalised `scheme://host[:port]` entries.
    exact: HashSet<String>,
    /// `(scheme, host)` of entries written `scheme://host:*`.
    any_port: Vec<(String, String)>,
    /// Whether to send `Access-Control-Allow-Credentials: true`.
    allow_credentials: bool,
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

impl AllowedOrigins {
    /// Parses the configured entries; the error names every bad entry.
    pub fn parse(entries: &[String], allow_credentials: bool) -> Result<Self, String> {
        let mut origins = Self {
            allow_credentials,
            ..Self::default()
        };
        let mut bad = Vec::new();
        for entry in entries {
            if entry == "*" {
                origins.any = true;
            } else if let Some(base) = entry.strip_suffix(":*") {
                match split_origin(base) {
                    Some((scheme, host, None)) => origins.any_port.push((scheme, host)),
                    _ => bad.push(entry.as_str()),
                }
            } else {
                match split_origin(entry) {
                    Some((scheme, host, port)) => {
                        origins.exact.insert(join(&scheme, &host, port));
                    }
                    None => bad.push(entry.as_str()),
                }
            }
        }
        if !bad.is_empty() {
            return Err(format!(
                "{bad:?} not an origin; write scheme://host[:port] with no path or trailing slash, e.g. \"https://app.example.com\""
            ));
        }
        if origins.any && allow_credentials {
            return Err(
                "\"*\" cannot be combined with cors.allow_credentials = true; list the origins"
                    .into(),
            );
        }
        Ok(origins)
    }

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
}

/// What CORS makes of one request: the origin to echo, if it is allowed.
pub struct Cors<'a> {
    origins: &'a AllowedOrigins,
    allowed: Option<HeaderValue>,
}

impl<'a> Cors<'a> {
    /// Reads the request's `Origin`. An allowed preflight is answered here and now:
    /// `Err` is that answer.
    pub fn check(origins: &'a AllowedOrigins, request: &Request) -> Result<Self, Preflight> {
        let allowed = request
            .headers()
            .get(header::ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| origins.allows(o)))
            .cloned();
        let is_preflight = request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match (is_preflight, allowed) {
            (true, Some(origin)) => Err(Preflight {
                origin,
                allow_credentials: origins.allow_credentials,
            }),
            (_, allowed) => Ok(Self { origins, allowed }),
        }
    }

    /// Adds the CORS headers to any other answer.
    pub fn decorate(self, response: &mut Response) {
        let headers = response.headers_mut();
        match self.allowed {
            Some(origin) => {
                allow_origin(headers, &origin, self.origins.allow_credentials);
                headers.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static(EXPOSED_HEADERS),
                );
            }
            // The answer still depends on Origin, so caches must key on it.
            None => {
                headers.append(header::VARY, HeaderValue::from_static("origin"));
            }
        }
    }
}

/// The answer to an allowed preflight.
pub struct Preflight {
    origin: HeaderValue,
    allow_credentials: bool,
}

impl IntoResponse for Preflight {
    fn into_response(self) -> Response {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        allow_origin(headers, &self.origin, self.allow_credentials);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
        for vary in [
            "access-control-request-method",
            "access-control-request-headers",
        ] {
            headers.append(header::VARY, HeaderValue::from_static(vary));
        }
        response
    }
}

fn allow_origin(headers: &mut HeaderMap, origin: &HeaderValue, credentials: bool) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> AllowedOrigins {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        AllowedOrigins::parse(&list, false).unwrap()
    }

    #[test]
    fn origins_match_exactly_never_by_prefix_or_suffix() {
        let o = origins(&["https://app.example.com"]);
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
        let o = origins(&["https://app.example.com:443"]);
        assert!(o.allows("https://app.example.com"));
    }

    #[test]
    fn a_port_wildcard_matches_only_that_host() {
        let o = origins(&["http://localhost:*"]);
        assert!(o.allows("http://localhost:5173"));
        assert!(o.allows("http://localhost"));
        assert!(!o.allows("http://localhost.evil.com:5173"));
        assert!(!o.allows("https://localhost:5173"));
    }

    #[test]
    fn bad_entries_and_wildcard_with_credentials_are_refused() {
        assert!(AllowedOrigins::parse(&["https://a.example/".into()], false).is_err());
        assert!(AllowedOrigins::parse(&["*.example.com".into()], false).is_err());
        assert!(AllowedOrigins::parse(&["*".into()], true).is_err());
        assert!(AllowedOrigins::parse(&["*".into()], false).is_ok());
    }
}
