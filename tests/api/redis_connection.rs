//! The Redis connection itself against a real `redis-server`: `rediss://` with a CA
//! made at test time (trusted through `redis.tls_ca_file`, or refused), and what a
//! wrong password looks like in the log. Skipped loudly without `redis-server`,
//! except in CI.

use crate::cli::{Proxy, command};
use crate::helpers::{TestApp, client, error_code, spawn_app_with, spawn_mock_upstream};
use crate::ratelimit_redis::{ready, redis_backend, remaining, wait_for_readiness};
use crate::redis_server::{Listen, RedisServer};
use orga_proxy::config::{Config, RedisFailure};
use orga_proxy::orga::mock::MockOptions;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The log line's words for a refused password.
const AUTH_FAILED: &str = "authentication failed (check the user and password in redis.url)";

/// A certificate authority made for one test, its files in a temporary directory
/// that is removed on drop.
struct TestCa {
    /// Holds `ca.pem` and the server certificates issued.
    dir: PathBuf,
    /// Signs server certificates.
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "orga-proxy-ca-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("orga-proxy test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), certificate.pem()).unwrap();
        Self {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate, as `redis.tls_ca_file` takes it.
    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for 127.0.0.1 signed by this CA, and its key (PEM files).
    fn server_certificate(&self) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (self.dir.join("server.pem"), self.dir.join("server.key"));
        std::fs::write(&cert_path, certificate.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS-only `redis-server` presenting a certificate from `issuer`.
fn tls_server(test: &str, issuer: &TestCa) -> Option<RedisServer> {
    let (cert, key) = issuer.server_certificate();
    let ca = issuer.ca_file();
    RedisServer::start_with(
        test,
        Listen::Tls {
            cert: &cert,
            key: &key,
            ca: &ca,
        },
        &[],
    )
}

/// The Redis backend (as in `ratelimit_redis`), trusting `ca` for `rediss://`.
fn trusting(url: &str, ca: &TestCa) -> impl FnOnce(&mut Config) {
    let backend = redis_backend(url, RedisFailure::Closed);
    let ca_file = ca.ca_file().to_str().unwrap().parse().expect("a CA file");
    move |config| {
        backend(config);
        config.redis.tls_ca_file = Some(ca_file);
    }
}

/// The release binary serving with the Redis backend at `url`, failing closed, with
/// extra environment `env`; its logs come back from `Proxy::stop`.
async fn proxy_binary(url: &str, env: &[(&str, &str)]) -> Proxy {
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    let mut command = command(&["serve"]);
    command
        .env("ORGA_API_KEY", "sk_orga_ai_test_key")
        .env("ORGA_USER_EMAIL", "dev+team@example.com")
        .env("ORGA_BASE_URL", &upstream)
        .env("ORGA_PROXY_SERVER__LISTEN", "127.0.0.1:0")
        .env("ORGA_PROXY_RATE_LIMIT__ENABLED", "true")
        .env("ORGA_PROXY_RATE_LIMIT__BACKEND", "redis")
        .env("ORGA_PROXY_RATE_LIMIT__REDIS_FAILURE", "closed")
        .env("ORGA_PROXY_REDIS__URL", url)
        // Its own budgets: in-process proxies of the same test use other rates.
        .env("ORGA_PROXY_REDIS__KEY_PREFIX", "orga-proxy-binary:")
        .envs(env.iter().copied());
    tokio::task::spawn_blocking(move || Proxy::start(&mut command))
        .await
        .unwrap()
}

/// `/readyz` of the binary: status and body.
async fn binary_ready(proxy: &Proxy) -> (u16, serde_json::Value) {
    let response = client()
        .get(format!("http://{}/readyz", proxy.addr))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn binary_credentials(proxy: &Proxy) -> reqwest::Response {
    client().get(proxy.credentials_url()).send().await.unwrap()
}

fn stop(proxy: Proxy) -> String {
    let (status, logs) = proxy.stop();
    assert_eq!(status, Some(0), "SIGTERM is a clean exit:\n{logs}");
    logs
}

async fn spend_shared_budget(a: &TestApp, b: &TestApp) {
    for (app, left) in [(a, "3"), (b, "2"), (a, "1"), (b, "0")] {
        let response = app.get_credentials().await;
        assert_eq!(response.status(), 200);
        assert_eq!(remaining(&response), left);
    }
    for app in [a, b] {
        let refused = app.get_credentials().await;
        assert_eq!(refused.status(), 429);
        assert_eq!(error_code(refused).await, "rate_limited");
    }
}

#[tokio::test]
async fn two_proxies_share_one_budget_over_tls_trusting_a_private_ca() {
    let ca = TestCa::new("shared");
    let Some(redis) = tls_server(
        "two_proxies_share_one_budget_over_tls_trusting_a_private_ca",
        &ca,
    ) else {
        return;
    };
    assert!(redis.url().starts_with("rediss://"));
    let a = spawn_app_with(trusting(&redis.url(), &ca)).await;
    let b = spawn_app_with(trusting(&redis.url(), &ca)).await;
    wait_for_readiness(&a, 200).await;
    wait_for_readiness(&b, 200).await;
    spend_shared_budget(&a, &b).await;
}

#[tokio::test]
async fn a_server_certificate_from_an_untrusted_ca_is_refused_and_the_log_says_why() {
    let (trusted, other) = (TestCa::new("trusted"), TestCa::new("other"));
    let Some(redis) = tls_server(
        "a_server_certificate_from_an_untrusted_ca_is_refused_and_the_log_says_why",
        &other,
    ) else {
        return;
    };
    const PASSWORD: &str = "tls-canary-password";
    let url = redis.url_with_password(PASSWORD);
    let ca_file = trusted.ca_file();
    let proxy = proxy_binary(
        &url,
        &[
            ("ORGA_PROXY_REDIS__TLS_CA_FILE", ca_file.to_str().unwrap()),
            // A debug build may take longer than the default 250ms to load the
            // platform's roots for its first handshake; the failure logged first
            // should be the handshake's, not a timeout.
            ("ORGA_PROXY_REDIS__TIMEOUT", "2s"),
        ],
    )
    .await;
    let refused = binary_credentials(&proxy).await;
    assert_eq!(refused.status(), 503, "fails closed");
    assert_eq!(error_code(refused).await, "unavailable");
    let (status, body) = binary_ready(&proxy).await;
    assert_eq!(status, 503);
    assert_eq!(body["reasons"], serde_json::json!(["redis"]));
    let logs = stop(proxy);
    assert!(
        logs.contains(
            "TLS handshake failed: the server's certificate is not signed by a trusted CA"
        ),
        "{logs}"
    );
    for secret in [PASSWORD, "rediss://", &url] {
        assert!(!logs.contains(secret), "{secret:?} in the logs:\n{logs}");
    }

    // Without redis.tls_ca_file only the platform's roots are trusted: refused too.
    let app = spawn_app_with(redis_backend(&redis.url(), RedisFailure::Closed)).await;
    assert_eq!(app.get_credentials().await.status(), 503);
    assert_eq!(ready(&app).await.0, 503);
}

#[tokio::test]
async fn a_wrong_password_is_logged_as_such_and_the_right_one_works() {
    const RIGHT: &str = "right-password";
    const WRONG: &str = "wrong-password-canary";
    let Some(redis) = RedisServer::start_with(
        "a_wrong_password_is_logged_as_such_and_the_right_one_works",
        Listen::Plain,
        &["--requirepass", RIGHT],
    ) else {
        return;
    };
    let with_right = spawn_app_with(redis_backend(
        &redis.url_with_password(RIGHT),
        RedisFailure::Closed,
    ))
    .await;
    wait_for_readiness(&with_right, 200).await;
    assert_eq!(with_right.get_credentials().await.status(), 200);

    let proxy = proxy_binary(&redis.url_with_password(WRONG), &[]).await;
    assert_eq!(binary_credentials(&proxy).await.status(), 503);
    assert_eq!(binary_ready(&proxy).await.0, 503);

    // The server now takes the proxy's password: it recovers without a restart.
    let admin = redis::Client::open(redis.url_with_password(RIGHT)).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(WRONG)
        .query_async(&mut admin)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while binary_ready(&proxy).await.0 != 200 {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = binary_credentials(&proxy).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().contains_key("ratelimit-limit"),
        "decided in Redis"
    );

    let logs = stop(proxy);
    let failing = logs
        .lines()
        .find(|line| line.contains("Redis is failing"))
        .unwrap_or_else(|| panic!("no failure logged:\n{logs}"));
    assert!(failing.contains(AUTH_FAILED), "{failing}");
    assert!(logs.contains("Redis is answering"), "{logs}");
    assert!(
        !logs.contains(WRONG),
        "the password reached the logs:\n{logs}"
    );
}
