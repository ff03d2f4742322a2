//! `x-request-id`: kept from the request when it is a sane value, generated otherwise
//! (tower-http's `SetRequestId`, which keeps any id already present, so an insane one
//! is removed first), and echoed on every response (`PropagateRequestId`).

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower::util::MapRequestLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

/// The three layers, outermost first, for every listener's router.
pub type Layers = Stack<
    PropagateRequestIdLayer,
    Stack<
        SetRequestIdLayer<RandomRequestId>,
        Stack<MapRequestLayer<fn(Request) -> Request>, Identity>,
    >,
>;

/// An insane id dropped ([`drop_unless_sane`]), a fresh one set where none is left, and
/// the id sent back on the response.
pub fn layers() -> ServiceBuilder<Layers> {
    ServiceBuilder::new()
        .layer(MapRequestLayer::new(
            drop_unless_sane as fn(Request) -> Request,
        ))
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .layer(PropagateRequestIdLayer::x_request_id())
}

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

/// Removes a request id that is not [`is_sane`], so a fresh one is made for it. More than
/// one id is no id at all.
pub fn drop_unless_sane(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let mut ids = headers.get_all(&X_REQUEST_ID).iter();
    let keep = match (ids.next(), ids.next()) {
        (Some(id), None) => is_sane(id),
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if !keep {
        headers.remove(&X_REQUEST_ID);
    }
    request
}

/// Makes a random (UUID v4) request id.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
        HeaderValue::from_str(id).ok().map(RequestId::new)
    }
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

    #[test]
    fn an_insane_or_repeated_id_is_removed_and_a_sane_one_kept() {
        let with = |ids: &[&'static str]| {
            let mut request = Request::new(axum::body::Body::empty());
            for id in ids {
                request
                    .headers_mut()
                    .append(&X_REQUEST_ID, HeaderValue::from_static(id));
            }
            drop_unless_sane(request)
                .headers()
                .get(&X_REQUEST_ID)
                .cloned()
        };
        assert_eq!(with(&["abc"]), Some(HeaderValue::from_static("abc")));
        assert_eq!(with(&["a b"]), None);
        assert_eq!(with(&["abc", "def"]), None);
        assert_eq!(with(&[]), None);
    }
}
