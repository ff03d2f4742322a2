//! Authentication in front of the credentials route: API keys, JWT with a shared secret,
//! JWT from a JWKS served by a local test server. Shared helpers live here.

mod api_key;
mod jwks;
mod jwt;
mod logs;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

use crate::helpers::TestApp;

/// A test-only RSA key pair (see tests/fixtures/README.md).
pub const RSA_PRIVATE_DER: &[u8] = include_bytes!("../../fixtures/TEST_ONLY_rsa_private.der");
pub const RSA_PUBLIC_PEM: &[u8] = include_bytes!("../../fixtures/TEST_ONLY_rsa_public.pem");

/// A shared secret of the accepted length.
pub const HS_SECRET: &str = "test-only-shared-secret-0123456789abcdef";

/// A signing key and its public JWK (without `kid`).
pub struct TestKey {
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    /// The public JWK with this `kid`.
    pub fn jwk_with_kid(&self, kid: &str) -> Value {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = json!(kid);
        jwk
    }

    /// A token signed by this key, with `kid` in the header.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("test token signs")
    }
}

/// RS256 with the fixture key.
pub fn rsa_key() -> TestKey {
    let encoding = EncodingKey::from_rsa_der(RSA_PRIVATE_DER);
    let jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap();
    TestKey {
        alg: Algorithm::RS256,
        encoding,
        jwk: serde_json::to_value(jwk).unwrap(),
    }
}

/// ES256 with a P-256 key generated now.
pub fn ec_key() -> TestKey {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    TestKey {
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref()),
        jwk,
    }
}

/// EdDSA with an Ed25519 key generated now.
pub fn ed_key() -> TestKey {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let pair = Ed25519KeyPair::generate().unwrap();
    let jwk = json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
    });
    TestKey {
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(pair.to_pkcs8().unwrap().as_ref()),
        jwk,
    }
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims valid for ten more minutes.
pub fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "iat": now()})
}

/// An HS256 token signed with `secret`.
pub fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A token assembled by hand: any header, any signature bytes.
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        part(header),
        part(claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// `GET` the credentials route with a bearer token.
pub async fn get_with_bearer(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(&app.credentials_path))
        .bearer_auth(token)
        .send()
        .await
        .expect("proxy answers")
}

/// Asserts a contract 401 and returns its message.
pub async fn assert_unauthorized(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer",
        "401 carries WWW-Authenticate"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// Polls `/readyz` until it answers 200; panics after a generous deadline (a hang guard,
/// not a timing assertion).
pub async fn wait_until_ready(app: &TestApp) {
    for _ in 0..6000 {
        let response = app.get("/readyz").await;
        if response.status() == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the proxy never became ready");
}

/// Polls `/readyz` until it answers 503 naming `jwks`; panics after a generous deadline.
pub async fn wait_until_jwks_not_ready(app: &TestApp) {
    for _ in 0..6000 {
        let response = app.get("/readyz").await;
        if response.status() == 503 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["reasons"], json!(["jwks"]), "{body}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("readiness never turned 503");
}

/// A local identity provider's JWKS endpoint whose document and health tests control.
#[derive(Clone)]
pub struct JwksServer {
    pub url: String,
    state: Arc<JwksState>,
}

struct JwksState {
    document: RwLock<Value>,
    failing: AtomicBool,
    hits: AtomicUsize,
}

impl JwksServer {
    /// Serves `{"keys": keys}` at `http://127.0.0.1:<port>/jwks.json`.
    pub async fn start(keys: Vec<Value>) -> Self {
        let state = Arc::new(JwksState {
            document: RwLock::new(json!({ "keys": keys })),
            failing: AtomicBool::new(false),
            hits: AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .route("/jwks.json", get(serve_jwks))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { url, state }
    }

    /// Replaces the published keys (a rotation).
    pub fn publish(&self, keys: Vec<Value>) {
        *self.state.document.write().unwrap() = json!({ "keys": keys });
    }

    /// Serves `document` as it is, JWKS or not (a malformed answer).
    pub fn publish_document(&self, document: Value) {
        *self.state.document.write().unwrap() = document;
    }

    /// From now on, answer 500 (or recover).
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

async fn serve_jwks(State(state): State<Arc<JwksState>>) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if state.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Json(state.document.read().unwrap().clone()).into_response()
}
