//! jwt mode with an HS256 shared secret: signature, algorithm pinning, and every claim
//! check (tokens are minted relative to now, so nothing sleeps).

use super::{
    HS_SECRET, RSA_PUBLIC_PEM, assert_unauthorized, claims, get_with_bearer, hs256, now, raw_token,
};
use crate::helpers::{TestApp, api_keys, origins, spawn_app_with};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use orga_proxy::auth::Authenticator;
use orga_proxy::clock::Clock;
use orga_proxy::config::{AuthConfig, AuthMode, Config};
use orga_proxy::readiness::Readiness;
use orga_proxy::secret::Secret;
use serde_json::json;
use std::time::{Duration, UNIX_EPOCH};

fn jwt_secret_config(config: &mut Config) {
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwt.secret = Secret::new(HS_SECRET);
}

async fn app() -> TestApp {
    spawn_app_with(jwt_secret_config).await
}

/// The reason `app` gives for refusing `token` (asserting the contract's 401).
async fn refusal(app: &TestApp, token: &str) -> String {
    assert_unauthorized(get_with_bearer(app, token).await).await
}

/// As [`refusal`], for a token with `claims` signed with the shared secret.
async fn refusal_of_signed(app: &TestApp, claims: &serde_json::Value) -> String {
    refusal(app, &hs256(HS_SECRET.as_bytes(), claims)).await
}

#[tokio::test]
async fn a_valid_hs256_token_is_accepted_which_needs_the_crypto_backend() {
    let app = app().await;
    let response = get_with_bearer(&app, &hs256(HS_SECRET.as_bytes(), &claims("user-1"))).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused() {
    let app = app().await;
    let token = hs256(b"another-secret-0123456789abcdefghijkl", &claims("user-1"));
    let message = refusal(&app, &token).await;
    assert!(message.contains("signature"), "{message}");
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let app = app().await;
    let message = refusal_of_signed(&app, &json!({"sub": "u", "exp": now() - 3600})).await;
    assert!(message.contains("expired"), "{message}");
}

#[tokio::test]
async fn a_token_expired_within_the_leeway_is_accepted() {
    let app = app().await;
    // Default leeway is 30 s; 10 s past exp is clock skew, not expiry.
    let token = hs256(
        HS_SECRET.as_bytes(),
        &json!({"sub": "u", "exp": now() - 10}),
    );
    assert_eq!(get_with_bearer(&app, &token).await.status(), 200);
}

#[tokio::test]
async fn a_token_not_valid_before_a_future_time_is_refused() {
    let app = app().await;
    let message = refusal_of_signed(
        &app,
        &json!({"sub": "u", "exp": now() + 7200, "nbf": now() + 3600}),
    )
    .await;
    assert!(message.contains("not valid yet"), "{message}");
}

#[tokio::test]
async fn a_token_without_exp_is_refused() {
    let app = app().await;
    let message = refusal_of_signed(&app, &json!({"sub": "u"})).await;
    assert!(message.contains("`exp`"), "{message}");
}

/// The issuer `app_trusting` is told to trust in these tests.
const TRUSTED_ISSUER: &str = "https://idp.example.com/";

/// As [`app`], accepting only tokens that `issuer` issued (`auth.jwt.issuer`).
async fn app_trusting(issuer: &str) -> TestApp {
    spawn_app_with(|config| {
        jwt_secret_config(config);
        config.auth.jwt.issuer = Some(issuer.into());
    })
    .await
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let app = app_trusting(TRUSTED_ISSUER).await;
    let mut wrong = claims("u");
    wrong["iss"] = json!("https://evil.example.com/");
    let message = refusal_of_signed(&app, &wrong).await;
    assert!(message.contains("issuer"), "{message}");

    let missing = claims("u");
    let message = refusal_of_signed(&app, &missing).await;
    assert!(message.contains("no `iss` claim"), "{message}");

    let mut right = claims("u");
    right["iss"] = json!(TRUSTED_ISSUER);
    let response = get_with_bearer(&app, &hs256(HS_SECRET.as_bytes(), &right)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_issuer_array_is_refused_even_when_it_holds_the_trusted_issuer() {
    let app = app_trusting(TRUSTED_ISSUER).await;
    // jsonwebtoken alone accepts an array with any matching member; RFC 7519 makes
    // `iss` one StringOrURI, and Envoy refuses the array too.
    for iss in [
        json!([TRUSTED_ISSUER]),
        json!(["https://evil.example.com/", TRUSTED_ISSUER]),
        json!({ "iss": TRUSTED_ISSUER }),
        json!(null),
        json!(7),
    ] {
        let mut token_claims = claims("u");
        token_claims["iss"] = iss.clone();
        let message = refusal_of_signed(&app, &token_claims).await;
        assert!(message.contains("single string"), "{iss}: {message}");
    }
}

#[tokio::test]
async fn an_issuer_that_is_not_a_string_is_refused_even_when_no_issuer_is_configured() {
    let app = app().await;
    let mut token_claims = claims("u");
    token_claims["iss"] = json!(["https://idp.example.com/"]);
    let message = refusal_of_signed(&app, &token_claims).await;
    assert!(message.contains("single string"), "{message}");

    // Any single string is fine when none is required.
    token_claims["iss"] = json!("https://anyone.example.com/");
    let token = hs256(HS_SECRET.as_bytes(), &token_claims);
    assert_eq!(get_with_bearer(&app, &token).await.status(), 200);
}

#[tokio::test]
async fn a_sub_that_is_not_a_non_empty_string_is_refused() {
    let app = app().await;
    // Arrays and objects already fail jsonwebtoken's own parse, with its general message.
    for sub in [
        json!(42),
        json!(null),
        json!(["user-1"]),
        json!({"id": "user-1"}),
    ] {
        let mut token_claims = claims("u");
        token_claims["sub"] = sub.clone();
        let message = refusal_of_signed(&app, &token_claims).await;
        assert!(
            message.contains("`sub`") && message.contains("string"),
            "{sub}: {message}"
        );
    }
    let mut empty = claims("u");
    empty["sub"] = json!("");
    let message = refusal_of_signed(&app, &empty).await;
    assert!(message.contains("no `sub` claim"), "{message}");
    let no_sub = json!({"exp": now() + 600});
    let message = refusal_of_signed(&app, &no_sub).await;
    assert!(message.contains("no `sub` claim"), "{message}");
}

#[tokio::test]
async fn a_token_for_another_audience_or_none_is_refused() {
    let app = spawn_app_with(|config| {
        jwt_secret_config(config);
        config.auth.jwt.audience = Some("orga-proxy".into());
    })
    .await;
    let mut wrong = claims("u");
    wrong["aud"] = json!(["billing-api"]);
    let message = refusal_of_signed(&app, &wrong).await;
    assert!(message.contains("audience"), "{message}");

    let missing = claims("u");
    let message = refusal_of_signed(&app, &missing).await;
    assert!(message.contains("`aud`"), "{message}");

    let mut right = claims("u");
    right["aud"] = json!(["billing-api", "orga-proxy"]);
    let response = get_with_bearer(&app, &hs256(HS_SECRET.as_bytes(), &right)).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    let app = app().await;
    let token = raw_token(&json!({"alg": "none", "typ": "JWT"}), &claims("u"), b"");
    let message = refusal(&app, &token).await;
    assert!(message.contains("none"), "{message}");
}

#[tokio::test]
async fn a_token_signed_with_a_pinned_out_algorithm_is_refused() {
    let app = app().await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims("u"),
        &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .unwrap();
    let message = refusal(&app, &token).await;
    assert!(message.contains("HS512"), "{message}");
}

#[tokio::test]
async fn garbage_and_other_schemes_are_refused_with_a_reason() {
    let app = app().await;
    let message = refusal(&app, "not-a-jwt").await;
    assert!(message.contains("malformed"), "{message}");
    let response = app
        .client
        .get(app.url(&app.credentials_path))
        .basic_auth("user", Some("pw"))
        .send()
        .await
        .unwrap();
    let message = assert_unauthorized(response).await;
    assert!(message.contains("Bearer"), "{message}");
}

#[tokio::test]
async fn a_token_in_the_query_string_is_refused() {
    let app = app().await;
    let token = hs256(HS_SECRET.as_bytes(), &claims("u"));
    let url = format!("{}?access_token={token}", app.url(&app.credentials_path));
    let message = assert_unauthorized(app.client.get(url).send().await.unwrap()).await;
    assert!(message.contains("query string"), "{message}");
}

#[tokio::test]
async fn the_token_is_read_from_the_configured_cookie() {
    let app = spawn_app_with(|config| {
        jwt_secret_config(config);
        config.auth.jwt.cookie = Some("orga_session".parse().unwrap());
    })
    .await;
    let token = hs256(HS_SECRET.as_bytes(), &claims("u"));
    let response = app
        .client
        .get(app.url(&app.credentials_path))
        .header("cookie", format!("theme=dark; orga_session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let response = app
        .client
        .get(app.url(&app.credentials_path))
        .header("cookie", format!("other_cookie={token}"))
        .send()
        .await
        .unwrap();
    let message = assert_unauthorized(response).await;
    assert!(message.contains("orga_session"), "{message}");
}

/// Sends the cookie token with the given browser headers.
async fn cookie_request(
    app: &TestApp,
    token: &str,
    browser_headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = app
        .client
        .get(app.url(&app.credentials_path))
        .header("cookie", format!("orga_session={token}"));
    for (name, value) in browser_headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_cookie_token_counts_only_from_the_own_or_an_allowed_origin() {
    let app = spawn_app_with(|config| {
        jwt_secret_config(config);
        config.auth.jwt.cookie = Some("orga_session".parse().unwrap());
        config.cors.allowed_origins = origins(&["https://app.example.com"]);
        config.cors.allow_credentials = true;
    })
    .await;
    let token = hs256(HS_SECRET.as_bytes(), &claims("u"));
    for accepted in [
        &[
            ("origin", "https://app.example.com"),
            ("sec-fetch-site", "same-site"),
        ][..],
        &[("sec-fetch-site", "same-origin")][..],
        &[("sec-fetch-site", "none")][..],
    ] {
        let response = cookie_request(&app, &token, accepted).await;
        assert_eq!(response.status(), 200, "{accepted:?}");
    }
    for refused in [
        // Another site navigating the user's browser to the credentials URL.
        &[
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ][..],
        // A sibling subdomain, or any page, fetching with credentials: 'include'.
        &[
            ("origin", "https://evil.example.com"),
            ("sec-fetch-site", "same-site"),
        ][..],
        &[
            ("origin", "https://app.example.com.evil.com"),
            ("sec-fetch-site", "cross-site"),
        ][..],
    ] {
        let message = assert_unauthorized(cookie_request(&app, &token, refused).await).await;
        assert!(message.contains("cookie"), "{refused:?}: {message}");
    }
    let bearer = get_with_bearer(&app, &token).await;
    assert_eq!(
        bearer.status(),
        200,
        "a Bearer token is not subject to the origin rule"
    );
}

#[tokio::test]
async fn a_cookie_is_not_read_unless_configured() {
    let app = app().await;
    let token = hs256(HS_SECRET.as_bytes(), &claims("u"));
    let response = app
        .client
        .get(app.url(&app.credentials_path))
        .header("cookie", format!("orga_session={token}"))
        .send()
        .await
        .unwrap();
    assert_unauthorized(response).await;
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused_in_jwks_mode() {
    // The classic confusion attack: the verifier's public key used as an HMAC secret.
    let key = super::rsa_key();
    let idp = super::JwksServer::start(vec![key.jwk_with_kid("rsa-1")]).await;
    let app = spawn_app_with(|config| {
        config.auth.mode = AuthMode::Jwt;
        config.auth.jwt.jwks_url = Some(idp.url.parse().unwrap());
    })
    .await;
    super::wait_until_ready(&app).await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims("attacker"),
        &jsonwebtoken::EncodingKey::from_secret(RSA_PUBLIC_PEM),
    )
    .unwrap();
    let message = refusal(&app, &forged).await;
    assert!(message.contains("HS256"), "{message}");
    // The genuine RS256 token of the same key still passes.
    let genuine = key.sign("rsa-1", &claims("user"));
    assert_eq!(get_with_bearer(&app, &genuine).await.status(), 200);
}

/// The subject the authenticator (the one the gate runs) finds for a request with
/// `header`, at t = 1000 s.
async fn subject_seen_by_handler(auth: &AuthConfig, header: (&str, String)) -> String {
    let readiness = Readiness::default();
    let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_000));
    let http = orga_proxy::outbound::client().unwrap();
    let authenticator =
        Authenticator::new(auth, &readiness, clock, Default::default(), http).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::try_from(header.0).unwrap(),
        HeaderValue::try_from(header.1).unwrap(),
    );
    let subject = authenticator.authenticate(&headers, None).await;
    subject.expect("accepted").expect("a subject").0
}

#[tokio::test]
async fn the_subject_is_the_sub_claim_or_the_api_key_name_never_the_key() {
    let mut jwt = AuthConfig {
        mode: AuthMode::Jwt,
        ..AuthConfig::default()
    };
    jwt.jwt.secret = Secret::new(HS_SECRET);
    // The clock is injected: this token is valid at t = 1000 s only.
    let token = hs256(
        HS_SECRET.as_bytes(),
        &json!({"sub": "user-42", "exp": 1_100}),
    );
    let subject = subject_seen_by_handler(&jwt, ("authorization", format!("Bearer {token}"))).await;
    assert_eq!(subject, "user-42");

    let keys = AuthConfig {
        mode: AuthMode::ApiKey,
        api_keys: api_keys(&["first-key-0123456789", "android:second-key-0123456789"]),
        ..AuthConfig::default()
    };
    let named = subject_seen_by_handler(&keys, ("x-api-key", "second-key-0123456789".into())).await;
    assert_eq!(named, "api_key:android");
    let indexed =
        subject_seen_by_handler(&keys, ("x-api-key", "first-key-0123456789".into())).await;
    assert_eq!(indexed, "api_key:1");
}
