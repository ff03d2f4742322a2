//! Unit tests of `client`.

use super::*;

fn transport(never_sent: bool) -> OrgaError {
    OrgaError::Transport {
        call: Call::ClientSecret,
        reason: String::new(),
        never_sent,
    }
}

#[test]
fn client_secrets_is_retried_only_when_the_request_never_left() {
    assert!(retryable(Call::ClientSecret, &transport(true)));
    assert!(!retryable(Call::ClientSecret, &transport(false)));
    let status = OrgaError::Status {
        call: Call::ClientSecret,
        status: 503,
    };
    assert!(!retryable(Call::ClientSecret, &status));
}

#[test]
fn ice_config_is_retried_on_connection_errors_and_5xx_only() {
    let status = |status| OrgaError::Status {
        call: Call::IceConfig,
        status,
    };
    assert!(retryable(Call::IceConfig, &transport(false)));
    assert!(retryable(Call::IceConfig, &status(502)));
    assert!(!retryable(Call::IceConfig, &status(401)));
    let timeout = OrgaError::Timeout {
        call: Call::IceConfig,
    };
    assert!(
        !retryable(Call::IceConfig, &timeout),
        "a timeout has used the time"
    );
    let limited = OrgaError::RateLimited {
        call: Call::IceConfig,
        retry_after: DEFAULT_RETRY_AFTER,
    };
    assert!(!retryable(Call::IceConfig, &limited));
}

#[test]
fn email_is_encoded_like_encode_uri_component() {
    assert_eq!(
        encode_uri_component("dev+team@example.com"),
        "dev%2Bteam%40example.com"
    );
    assert_eq!(encode_uri_component("a b&c=d"), "a%20b%26c%3Dd");
    assert_eq!(encode_uri_component("é"), "%C3%A9");
}

fn with_retry_after(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, HeaderValue::try_from(value).unwrap());
    headers
}

#[test]
fn retry_after_takes_seconds_or_a_date_and_is_clamped() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(
        retry_after(&with_retry_after("7"), now),
        Duration::from_secs(7)
    );
    let in_a_minute = httpdate::fmt_http_date(now + Duration::from_secs(60));
    assert_eq!(
        retry_after(&with_retry_after(&in_a_minute), now),
        Duration::from_secs(60)
    );
    assert_eq!(
        retry_after(&with_retry_after("0"), now),
        Duration::from_secs(1)
    );
    assert_eq!(
        retry_after(&with_retry_after("86400"), now),
        Duration::from_secs(300)
    );
    let past = httpdate::fmt_http_date(now - Duration::from_secs(60));
    assert_eq!(
        retry_after(&with_retry_after(&past), now),
        Duration::from_secs(1)
    );
    assert_eq!(
        retry_after(&with_retry_after("soon"), now),
        DEFAULT_RETRY_AFTER
    );
    assert_eq!(retry_after(&HeaderMap::new(), now), DEFAULT_RETRY_AFTER);
}

#[test]
fn a_422_is_described_by_its_field_names_never_its_values() {
    let body = br#"{"detail":[{"type":"value_error","loc":["query","email"],"msg":"value is not a valid email address: secret@","input":"secret@"},{"loc":["body","offer","candidates",0,"<script>"]}]}"#;
    assert_eq!(
        rejected_fields(body),
        ["query.email", "body.offer.candidates.0.?"]
    );
    assert_eq!(rejected_fields(b"<html>"), ["(unnamed)"]);
}
