//! Where a caller's credential is read from: `Authorization: Bearer`, `X-API-Key`,
//! or a cookie. Never the query string, which ends up in access logs and history.

use super::AuthError;
use crate::config::AllowedOrigins;
use axum::http::{HeaderMap, HeaderName, header};

/// The `X-API-Key` header.
pub(super) static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Query parameters that look like a credential, for a helpful refusal.
const CREDENTIAL_PARAMS: &[&str] = &["access_token", "token", "api_key", "apikey", "key", "jwt"];

/// The token of `Authorization: Bearer <token>`; `None` when the header is absent.
pub(super) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = single(headers, &header::AUTHORIZATION, "Authorization")? else {
        return Ok(None);
    };
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::invalid(
            "The Authorization header must use the Bearer scheme: `Authorization: Bearer <credential>`.",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::invalid(
            "The Authorization header has no credential after `Bearer`.",
        ));
    }
    Ok(Some(token))
}

/// The value of `X-API-Key`; `None` when absent.
pub(super) fn api_key_header(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let value = single(headers, &X_API_KEY, "X-API-Key")?.map(str::trim);
    match value {
        Some("") => Err(AuthError::invalid("The X-API-Key header is empty.")),
        other => Ok(other),
    }
}

/// The value of cookie `name` across every `Cookie` header; `None` when absent or empty.
pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .filter(|value| !value.is_empty())
}

/// A browser sends a site's cookies on requests other sites start (a top-level
/// navigation to the credentials URL, a form post), so a cookie token alone would let any
/// page spend the Orga quota of a logged-in user. It counts only when the request comes
/// from the proxy's own origin (`Sec-Fetch-Site: same-origin`) or from an allowed origin;
/// a browser request from elsewhere, with or without `Origin`, is refused. A client that
/// sends no fetch metadata and no `Origin` (not a browser) is not affected.
pub(super) fn check_cookie_request(
    headers: &HeaderMap,
    origins: &AllowedOrigins,
) -> Result<(), AuthError> {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let allowed = match (fetch_site, origin) {
        (Some("same-origin"), _) => true,
        (_, Some(origin)) => origins.allows(origin),
        (Some("cross-site" | "same-site"), None) => false,
        (_, None) => true,
    };
    if allowed {
        Ok(())
    } else {
        Err(AuthError::invalid(
            "A cookie token is accepted only from the proxy's own origin or an origin in cors.allowed_origins; send `Authorization: Bearer <token>` instead.",
        ))
    }
}

/// The 401 for a request without credentials, explaining what to send; when the
/// query string seems to carry one, says that it is not read from there.
pub(super) fn missing(query: Option<&str>, what: &str) -> AuthError {
    let in_query = query.is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .any(|(name, _)| CREDENTIAL_PARAMS.contains(&name.to_ascii_lowercase().as_str()))
    });
    if in_query {
        AuthError::Invalid(format!(
            "Credentials are not accepted in the query string (URLs end up in logs); send {what}."
        ))
    } else {
        AuthError::Invalid(format!("Missing credentials: send {what}."))
    }
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    shown: &str,
) -> Result<Option<&'a str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Invalid(format!(
            "Send one {shown} header, not several."
        )));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| AuthError::Invalid(format!("The {shown} header is not valid text.")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_refused() {
        let h = headers(&[("authorization", "bearer abc.def.ghi")]);
        assert_eq!(bearer(&h).unwrap(), Some("abc.def.ghi"));
        assert!(bearer(&headers(&[("authorization", "Basic dXNlcjpwdw==")])).is_err());
        assert!(bearer(&headers(&[("authorization", "Bearer ")])).is_err());
        assert_eq!(bearer(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert!(bearer(&h).is_err());
    }

    #[test]
    fn the_named_cookie_is_found_among_others_and_across_headers() {
        let h = headers(&[
            ("cookie", "theme=dark; session_x=1"),
            ("cookie", "other=2; session=tok.en.value"),
        ]);
        assert_eq!(cookie(&h, "session").as_deref(), Some("tok.en.value"));
        assert_eq!(cookie(&h, "missing"), None);
        assert_eq!(cookie(&headers(&[("cookie", "session=")]), "session"), None);
    }

    #[test]
    fn a_credential_in_the_query_string_gets_its_own_explanation() {
        let AuthError::Invalid(message) = missing(Some("access_token=abc"), "a token") else {
            panic!("401 expected");
        };
        assert!(message.contains("query string"), "{message}");
        assert!(!message.contains("abc"), "{message}");
        let AuthError::Invalid(message) = missing(Some("x=1"), "a token") else {
            panic!("401 expected");
        };
        assert!(message.starts_with("Missing credentials"), "{message}");
    }
}
