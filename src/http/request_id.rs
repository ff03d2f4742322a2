//! `x-request-id`: kept from the request when it is a sane value, generated otherwise,
//! and echoed on every response.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};

/// The header carrying the request id.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_LEN: usize = 128;

/// A caller-supplied id is kept only if it is short and made of safe characters, so it
/// cannot forge log lines or smuggle anything into headers.
fn is_sane(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// Settles the request's id before anything else sees the request, and answers it
/// (for the response header).
pub fn assign(request: &mut Request) -> HeaderValue {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| is_sane(v))
        .cloned()
        .unwrap_or_else(|| {
            let mut buffer = uuid::Uuid::encode_buffer();
            let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
            HeaderValue::from_str(id).expect("a UUID is a valid header value")
        });
    request
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), id.clone());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(is_sane(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!is_sane(&HeaderValue::from_static("")));
        assert!(!is_sane(&HeaderValue::from_static("a b")));
        assert!(!is_sane(&HeaderValue::from_static(
            "x\"}{\"level\":\"error"
        )));
        assert!(!is_sane(&HeaderValue::try_from("a".repeat(129)).unwrap()));
    }
}
