//! jwt mode with keys from a JWKS served by a local identity provider: RS256, ES256 and
//! EdDSA, rotation, the refresh cooldown, and failing closed while nothing is loaded.

use super::{
    JwksServer, TestKey, assert_unauthorized, claims, ec_key, ed_key, get_with_bearer, rsa_key,
    wait_until_jwks_not_ready, wait_until_ready,
};
use crate::helpers::{TestApp, error_code, spawn_app_with};
use axum::http::HeaderMap;
use orga_proxy::auth::{AuthError, Authenticator, Subject};
use orga_proxy::clock::Clock;
use orga_proxy::config::{AuthConfig, AuthMode, JwtConfig};
use orga_proxy::readiness::Readiness;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The proxy in jwt mode with keys from `idp`, its `[auth.jwt]` adjusted by `customize`.
async fn app_with_jwks(idp: &JwksServer, customize: impl FnOnce(&mut JwtConfig)) -> TestApp {
    let url = idp.url.parse().expect("a loopback JWKS URL");
    spawn_app_with(move |config| {
        config.auth.mode = AuthMode::Jwt;
        config.auth.jwt.jwks_url = Some(url);
        customize(&mut config.auth.jwt);
    })
    .await
}

/// The proxy in jwt mode with keys from `idp`, once it has loaded them.
async fn ready_app_for(idp: &JwksServer) -> TestApp {
    let app = app_with_jwks(idp, |_| {}).await;
    wait_until_ready(&app).await;
    app
}

async fn accepted(app: &TestApp, key: &TestKey, kid: &str) -> bool {
    let response = get_with_bearer(app, &key.sign(kid, &claims("user"))).await;
    response.status() == 200
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_from_the_jwks_are_accepted() {
    let (rsa, ec, ed) = (rsa_key(), ec_key(), ed_key());
    let idp = JwksServer::start(vec![
        rsa.jwk_with_kid("rsa"),
        ec.jwk_with_kid("ec"),
        ed.jwk_with_kid("ed"),
    ])
    .await;
    let app = ready_app_for(&idp).await;
    assert!(accepted(&app, &rsa, "rsa").await, "RS256");
    assert!(accepted(&app, &ec, "ec").await, "ES256");
    assert!(accepted(&app, &ed, "ed").await, "EdDSA");
}

#[tokio::test]
async fn a_token_signed_by_a_key_not_in_the_jwks_is_refused() {
    let (published, other) = (ec_key(), ec_key());
    let idp = JwksServer::start(vec![published.jwk_with_kid("k1")]).await;
    let app = ready_app_for(&idp).await;
    // Same kid, another key: the signature cannot verify.
    let message =
        assert_unauthorized(get_with_bearer(&app, &other.sign("k1", &claims("u"))).await).await;
    assert!(message.contains("signature"), "{message}");
}

#[tokio::test]
async fn a_new_kid_after_key_rotation_is_accepted_without_restart() {
    let (old, new) = (rsa_key(), ec_key());
    let idp = JwksServer::start(vec![old.jwk_with_kid("2024")]).await;
    let app = ready_app_for(&idp).await;
    assert!(accepted(&app, &old, "2024").await);

    idp.publish(vec![new.jwk_with_kid("2025")]);
    assert!(
        accepted(&app, &new, "2025").await,
        "the new kid triggers a refresh"
    );
}

/// The proxy in jwt mode with keys from `idp`, retrying at most a second apart while no
/// key is loaded, so a test sees the recovery soon. It does not wait for the keys: the
/// provider may be down from the start.
async fn quick_retry_app_for(idp: &JwksServer) -> TestApp {
    app_with_jwks(idp, |jwt| jwt.jwks_min_refresh = Duration::from_secs(1)).await
}

/// A token naming a `kid` nobody published: the proxy refetches the JWKS at once (the
/// first such fetch has no cooldown to wait for), so a test can trigger a refresh.
async fn force_refresh(app: &TestApp, idp: &JwksServer, key: &TestKey) {
    let before = idp.hits();
    let response = get_with_bearer(app, &key.sign("never-published", &claims("u"))).await;
    assert!(matches!(response.status().as_u16(), 401 | 503));
    // More than one when the keys went: the refresher then wakes to retry soon.
    assert!(idp.hits() > before, "the refresh was attempted");
}

async fn ready_status(app: &TestApp) -> u16 {
    let response = app.get("/readyz").await;
    response.status().as_u16()
}

#[tokio::test]
async fn a_key_dropped_from_the_jwks_is_refused_after_the_next_refresh() {
    let (kept, dropped) = (ec_key(), rsa_key());
    let idp = JwksServer::start(vec![
        kept.jwk_with_kid("kept"),
        dropped.jwk_with_kid("dropped"),
    ])
    .await;
    let app = ready_app_for(&idp).await;
    assert!(accepted(&app, &dropped, "dropped").await);

    idp.publish(vec![kept.jwk_with_kid("kept")]);
    force_refresh(&app, &idp, &kept).await;
    let message =
        assert_unauthorized(get_with_bearer(&app, &dropped.sign("dropped", &claims("u"))).await)
            .await;
    assert!(message.contains("not among"), "{message}");
    assert!(accepted(&app, &kept, "kept").await);
    assert_eq!(ready_status(&app).await, 200);
}

#[tokio::test]
async fn an_empty_jwks_revokes_every_key_and_readiness_turns_503_until_keys_return() {
    let key = rsa_key();
    let idp = JwksServer::start(vec![key.jwk_with_kid("k")]).await;
    let app = quick_retry_app_for(&idp).await;
    wait_until_ready(&app).await;
    assert!(accepted(&app, &key, "k").await);

    // A well-formed answer is the provider's word on which keys exist, even when it
    // names none: the token that worked a moment ago is refused, as when no keys ever
    // loaded (503, fail closed), and the proxy reports itself not ready.
    idp.publish(vec![]);
    force_refresh(&app, &idp, &key).await;
    let response = get_with_bearer(&app, &key.sign("k", &claims("u"))).await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_code(response).await, "unavailable");
    wait_until_jwks_not_ready(&app).await;

    // The refresher retries soon on its own (nothing else would: a not-ready replica
    // gets no traffic), and the keys come back.
    idp.publish(vec![key.jwk_with_kid("k")]);
    wait_until_ready(&app).await;
    assert!(accepted(&app, &key, "k").await);
}

#[tokio::test]
async fn a_jwks_with_no_usable_key_revokes_every_key_too() {
    let key = ec_key();
    let idp = JwksServer::start(vec![key.jwk_with_kid("k")]).await;
    let app = quick_retry_app_for(&idp).await;
    wait_until_ready(&app).await;

    // Keys the proxy never uses (encryption, shared secret): the document is well-formed
    // and holds no signing key this proxy accepts.
    let mut encryption = key.jwk_with_kid("k");
    encryption["use"] = serde_json::json!("enc");
    idp.publish(vec![
        encryption,
        serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
    ]);
    force_refresh(&app, &idp, &key).await;
    let response = get_with_bearer(&app, &key.sign("k", &claims("u"))).await;
    assert_eq!(response.status(), 503);
    wait_until_jwks_not_ready(&app).await;
}

#[tokio::test]
async fn a_malformed_jwks_answer_keeps_the_cached_keys() {
    let key = ec_key();
    let idp = JwksServer::start(vec![key.jwk_with_kid("k")]).await;
    let app = ready_app_for(&idp).await;

    // A 200 whose JSON has no `keys` array is a failed fetch, not a statement that the
    // keys are gone (the parser's unit tests cover the other malformed shapes).
    idp.publish_document(serde_json::json!({"error": "temporarily unavailable"}));
    force_refresh(&app, &idp, &key).await;
    assert!(accepted(&app, &key, "k").await);
    assert_eq!(ready_status(&app).await, 200);
}

// On worker threads, as the binary serves: the key cache and its single-flight refresh
// are shared by requests running on different threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_unknown_kids_cause_at_most_one_jwks_fetch() {
    let key = ec_key();
    let idp = JwksServer::start(vec![key.jwk_with_kid("real")]).await;
    let app = Arc::new(ready_app_for(&idp).await);
    let before = idp.hits();

    let requests = (0..50).map(|i| {
        let app = app.clone();
        let token = key.sign(&format!("made-up-{i}"), &claims("attacker"));
        tokio::spawn(async move { get_with_bearer(&app, &token).await.status() })
    });
    for request in requests {
        assert_eq!(request.await.unwrap(), 401);
    }
    assert!(
        idp.hits() - before <= 1,
        "{} JWKS fetches for 50 unknown kids",
        idp.hits() - before
    );
    assert!(
        accepted(&app, &key, "real").await,
        "known keys keep working"
    );
}

#[tokio::test]
async fn jwks_down_at_start_keeps_readiness_503_and_refuses_every_token() {
    let key = ec_key();
    let idp = JwksServer::start(vec![key.jwk_with_kid("k")]).await;
    idp.set_failing(true);
    let app = quick_retry_app_for(&idp).await;

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["reasons"], serde_json::json!(["jwks"]));
    assert_eq!(app.get("/healthz").await.status(), 200);

    // Fail closed: a well-signed token is still refused while no key is loaded.
    let response = get_with_bearer(&app, &key.sign("k", &claims("u"))).await;
    assert_eq!(response.status(), 503);
    assert_eq!(error_code(response).await, "unavailable");
    // Without any token the answer is the ordinary 401.
    assert_unauthorized(app.get_credentials().await).await;

    // Once the provider answers, the proxy becomes ready on its own.
    idp.set_failing(false);
    wait_until_ready(&app).await;
    assert!(accepted(&app, &key, "k").await);
}

#[tokio::test]
async fn jwks_down_later_keeps_the_cached_keys_working() {
    let key = rsa_key();
    let idp = JwksServer::start(vec![key.jwk_with_kid("k")]).await;
    let app = ready_app_for(&idp).await;

    idp.set_failing(true);
    let before = idp.hits();
    // An unknown kid forces a refresh, which fails.
    let unknown = get_with_bearer(&app, &key.sign("unknown", &claims("u"))).await;
    assert_unauthorized(unknown).await;
    assert_eq!(idp.hits(), before + 1, "the refresh was attempted");

    assert!(accepted(&app, &key, "k").await, "cached key still verifies");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
}

/// An authenticator on its own, no server around it: jwt mode with keys from `idp`, on a
/// manual clock the test moves.
struct Standalone {
    /// The authenticator under test.
    auth: Authenticator,
    /// The readiness it reports a missing JWKS to.
    readiness: Readiness,
    /// The clock it reads.
    clock: Clock,
}

impl Standalone {
    /// With the `[auth.jwt]` settings adjusted by `customize`.
    fn new(idp: &JwksServer, customize: impl FnOnce(&mut JwtConfig)) -> Self {
        let mut config = AuthConfig {
            mode: AuthMode::Jwt,
            ..AuthConfig::default()
        };
        config.jwt.jwks_url = Some(idp.url.parse().unwrap());
        customize(&mut config.jwt);
        let clock = Clock::manual(SystemTime::now());
        let readiness = Readiness::default();
        let http = orga_proxy::outbound::client().unwrap();
        let auth = Authenticator::new(&config, &readiness, clock.clone(), Default::default(), http)
            .unwrap();
        Self {
            auth,
            readiness,
            clock,
        }
    }

    /// Authenticates a request that carries `token` as its Bearer.
    async fn check(&self, token: String) -> Result<Option<Subject>, AuthError> {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        self.auth.authenticate(&headers, None).await
    }

    /// Waits (boundedly) until readiness reports exactly `expected`.
    async fn readiness_becomes(&self, expected: &[&str]) {
        for _ in 0..6000 {
            if self.readiness.problems() == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("readiness never became {expected:?}");
    }
}

#[tokio::test]
async fn after_the_cooldown_an_unknown_kid_may_fetch_again() {
    let key = ec_key();
    let idp = JwksServer::start(vec![key.jwk_with_kid("k1")]).await;
    let standalone = Standalone::new(&idp, |_| {});
    let (auth, clock) = (&standalone.auth, &standalone.clock);
    let check = |kid: &str| standalone.check(key.sign(kid, &claims("u")));
    standalone.readiness_becomes(&[]).await;
    // Loaded at start-up; then one fetch for the first unknown kid.
    assert!(check("k1").await.is_ok());
    assert!(matches!(check("k2").await, Err(AuthError::Invalid(_))));
    let after_first = auth.jwks_fetches().unwrap();

    // Within the cooldown, the provider publishing k2 changes nothing yet.
    idp.publish(vec![key.jwk_with_kid("k1"), key.jwk_with_kid("k2")]);
    assert!(check("k2").await.is_err());
    assert_eq!(auth.jwks_fetches().unwrap(), after_first);

    clock.advance(Duration::from_secs(31));
    assert!(
        check("k2").await.is_ok(),
        "past the 30 s cooldown it refreshes"
    );
    assert_eq!(auth.jwks_fetches().unwrap(), after_first + 1);
}

#[tokio::test]
async fn a_failing_jwks_keeps_the_keys_until_jwks_max_stale_then_readiness_turns_503() {
    let key = ec_key();
    let idp = JwksServer::start(vec![key.jwk_with_kid("k")]).await;
    let standalone = Standalone::new(&idp, |jwt| {
        jwt.jwks_min_refresh = Duration::from_secs(1);
        jwt.jwks_max_stale = Duration::from_secs(3600);
    });
    let (auth, clock, readiness) = (&standalone.auth, &standalone.clock, &standalone.readiness);
    // The clock moves hours ahead: the token must outlive it.
    let token_claims = serde_json::json!({"sub": "u", "exp": super::now() + 86_400});
    let check = |kid: &str| standalone.check(key.sign(kid, &token_claims));
    standalone.readiness_becomes(&[]).await;
    assert!(check("k").await.is_ok());

    // The provider fails; a refresh fails with it (an unknown kid forces one), and the
    // cached key keeps working for as long as jwks_max_stale allows.
    idp.set_failing(true);
    clock.advance(Duration::from_secs(59 * 60));
    let fetches = auth.jwks_fetches().unwrap();
    assert!(matches!(check("unknown").await, Err(AuthError::Invalid(_))));
    assert_eq!(auth.jwks_fetches().unwrap(), fetches + 1);
    assert!(check("k").await.is_ok(), "59 min after the last good fetch");
    assert!(readiness.problems().is_empty());

    // Past it the keys are dropped: the token is refused as when no keys ever loaded,
    // and readiness is 503.
    clock.advance(Duration::from_secs(2 * 60));
    assert_eq!(check("k").await, Err(AuthError::KeysUnavailable));
    assert_eq!(readiness.problems(), ["jwks"]);

    // The provider answers again: the refresher's next fetch restores both.
    idp.set_failing(false);
    standalone.readiness_becomes(&[]).await;
    assert!(check("k").await.is_ok());
}
