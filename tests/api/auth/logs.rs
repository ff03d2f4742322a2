//! Configured keys, secrets and callers' credentials never reach the logs or
//! `check-config`, while the subject does reach the request's log line.

use super::HS_SECRET;
use crate::cli::{Proxy, command, refused_configuration, run};
use crate::helpers::{client, spawn_mock_upstream};
use orga_proxy::orga::mock::MockOptions;

const WEB_KEY: &str = "canary-web-key-0123456789abcdef";

#[tokio::test]
async fn api_keys_stay_out_of_the_logs_and_the_subject_goes_in() {
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    let proxy = Proxy::start(
        command(&["serve"])
            .env("ORGA_API_KEY", "sk_orga_ai_test")
            .env("ORGA_USER_EMAIL", "dev@example.com")
            .env("ORGA_BASE_URL", &upstream)
            .env("ORGA_PROXY_SERVER__LISTEN", "127.0.0.1:0")
            .env("ORGA_PROXY_AUTH__MODE", "api_key")
            .env(
                "ORGA_PROXY_AUTH__API_KEYS",
                format!("web:{WEB_KEY},canary-unnamed-0123456789"),
            )
            .env("RUST_LOG", "trace"),
    );
    let client = client();
    let url = proxy.credentials_url();
    let ok = client.get(&url).bearer_auth(WEB_KEY).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let ok = client
        .get(&url)
        .header("x-api-key", "canary-unnamed-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = client
        .get(&url)
        .header("x-api-key", "canary-wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let (status, logs) = proxy.stop();
    assert_eq!(status, Some(0), "{logs}");
    assert!(logs.contains("api_key:web"), "subject logged:\n{logs}");
    assert!(logs.contains("api_key:2"), "subject logged:\n{logs}");
    assert!(logs.contains("caller refused"), "refusal logged:\n{logs}");
    assert!(
        !logs.contains("canary"),
        "a key leaked into the logs:\n{logs}"
    );
}

#[tokio::test]
async fn check_config_redacts_the_jwt_secret() {
    let output = tokio::task::spawn_blocking(|| {
        run(command(&["check-config"])
            .env("ORGA_API_KEY", "sk_orga_ai_test")
            .env("ORGA_USER_EMAIL", "dev@example.com")
            .env("ORGA_PROXY_AUTH__MODE", "jwt")
            .env("ORGA_PROXY_AUTH__JWT__SECRET", HS_SECRET))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("secret = \"[redacted]\""), "{stdout}");
    assert!(!stdout.contains(HS_SECRET), "{stdout}");
}

#[test]
fn auth_problems_exit_2_naming_key_and_variable_without_the_secret() {
    let output = run(command(&["check-config"])
        .env("ORGA_API_KEY", "sk_orga_ai_test")
        .env("ORGA_USER_EMAIL", "dev@example.com")
        .env("ORGA_PROXY_AUTH__MODE", "jwt")
        .env("ORGA_PROXY_AUTH__JWT__SECRET", "canary-short"));
    let stderr = refused_configuration(&output);
    assert!(
        stderr.contains("auth.jwt.secret (ORGA_PROXY_AUTH__JWT__SECRET): too short"),
        "{stderr}"
    );
    assert!(!stderr.contains("canary"), "{stderr}");
}
