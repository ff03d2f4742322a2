//! The fake Orga Cloud speaks Orga's wire format, including its error shapes.

use crate::helpers::*;
use orga_proxy::config::Secret;
use orga_proxy::orga::mock::MockOptions;
use serde_json::Value;

async fn mint(base: &str, key: &str, email: Option<&str>) -> reqwest::Response {
    let mut url = format!("{base}/v1/realtime/client-secrets");
    if let Some(email) = email {
        url.push_str(&format!("?email={email}"));
    }
    client().post(url).bearer_auth(key).send().await.unwrap()
}

async fn ice(base: &str, token: &str) -> reqwest::Response {
    client()
        .get(format!("{base}/v1/realtime/ice-config"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn it_mints_tokens_that_only_it_accepts() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    let answer: Value = mint(&base, "sk_orga_ai_x", Some("a%40example.com"))
        .await
        .json()
        .await
        .unwrap();
    let token = answer["ephemeral_token"].as_str().unwrap();
    assert!(answer["expires_at"].is_u64());
    let servers: Value = ice(&base, token).await.json().await.unwrap();
    assert!(
        servers["iceServers"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    );

    let forged = ice(&base, &format!("{token}0")).await;
    assert_eq!(forged.status(), 401);
    let body: Value = forged.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Invalid ephemeral token");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let other = spawn_mock_upstream(MockOptions::default()).await;
    assert_eq!(
        ice(&other, token).await.status(),
        401,
        "another instance's key differs"
    );
}

#[tokio::test]
async fn it_refuses_keys_of_the_wrong_form() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    assert_eq!(
        mint(&base, "not_an_orga_key", Some("a%40example.com"))
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn it_mints_a_token_with_or_without_an_email_as_orga_does_today() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    for email in [None, Some("dev%2Bteam%40example.com")] {
        let answer = mint(&base, "sk_orga_ai_x", email).await;
        assert_eq!(answer.status(), 200, "email {email:?}");
        let body: Value = answer.json().await.unwrap();
        let token = body["ephemeral_token"].as_str().unwrap();
        assert_eq!(ice(&base, token).await.status(), 200, "email {email:?}");
    }
}

#[tokio::test]
async fn an_email_that_is_sent_must_be_an_email() {
    let base = spawn_mock_upstream(MockOptions::default()).await;
    for email in ["not-an-email", ""] {
        let refused = mint(&base, "sk_orga_ai_x", Some(email)).await;
        assert_eq!(refused.status(), 422, "email {email:?}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(
            body["detail"][0]["loc"],
            serde_json::json!(["query", "email"])
        );
        assert_eq!(body["detail"][0]["type"], "value_error");
    }
}

#[tokio::test]
async fn a_pinned_key_is_the_only_one_accepted() {
    let base = spawn_mock_upstream(MockOptions {
        api_key: Some(Secret::new("sk_orga_ai_pinned")),
        ..MockOptions::default()
    })
    .await;
    assert_eq!(
        mint(&base, "sk_orga_ai_other", Some("a%40example.com"))
            .await
            .status(),
        401
    );
    assert_eq!(
        mint(&base, "sk_orga_ai_pinned", Some("a%40example.com"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn the_proxy_maps_a_refused_key_on_the_fake_to_upstream_auth_failed() {
    let base = spawn_mock_upstream(MockOptions {
        api_key: Some(Secret::new("sk_orga_ai_the_real_one")),
        ..MockOptions::default()
    })
    .await;
    let app = spawn_app_against(&base, |_| {}).await;
    let response = app.get_credentials().await;
    assert_eq!(response.status(), 502);
    assert_eq!(error_code(response).await, "upstream_auth_failed");
}
