//! api_key mode, and what stays open whatever the mode.

use super::{assert_unauthorized, get_with_bearer};
use crate::helpers::{TestApp, api_keys, origins, spawn_app_with};
use orga_proxy::config::AuthMode;

const WEB_KEY: &str = "web-key-0123456789abcdef";
const IOS_KEY: &str = "ios-key-0123456789abcdef";

async fn app_with_keys() -> TestApp {
    spawn_app_with(|config| {
        config.auth.mode = AuthMode::ApiKey;
        config.auth.api_keys = api_keys(&[WEB_KEY, &format!("ios:{IOS_KEY}")]);
    })
    .await
}

#[tokio::test]
async fn a_valid_api_key_as_bearer_is_accepted() {
    let app = app_with_keys().await;
    assert_eq!(get_with_bearer(&app, WEB_KEY).await.status(), 200);
}

#[tokio::test]
async fn a_valid_api_key_in_x_api_key_is_accepted() {
    let app = app_with_keys().await;
    let response = app
        .client
        .post(app.url(&app.credentials_path))
        .header("x-api-key", IOS_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_wrong_api_key_is_refused_in_either_header() {
    let app = app_with_keys().await;
    for (name, value) in [
        ("authorization", format!("Bearer {WEB_KEY}x")),
        ("x-api-key", "web-key".to_string()),
        // The `name:key` form is configuration syntax, not what clients send.
        ("x-api-key", format!("ios:{IOS_KEY}")),
    ] {
        let response = app
            .client
            .get(app.url(&app.credentials_path))
            .header(name, value)
            .send()
            .await
            .unwrap();
        let message = assert_unauthorized(response).await;
        assert_eq!(message, "The API key is not valid.");
    }
}

#[tokio::test]
async fn a_missing_api_key_is_refused_with_how_to_send_one() {
    let app = app_with_keys().await;
    let message = assert_unauthorized(app.get_credentials().await).await;
    assert!(message.contains("X-API-Key"), "{message}");
}

#[tokio::test]
async fn an_api_key_in_the_query_string_is_refused() {
    let app = app_with_keys().await;
    let url = format!("{}?api_key={WEB_KEY}", app.url(&app.credentials_path));
    let response = app.client.get(url).send().await.unwrap();
    let message = assert_unauthorized(response).await;
    assert!(message.contains("query string"), "{message}");
    assert!(!message.contains(WEB_KEY), "{message}");
}

#[tokio::test]
async fn health_readiness_and_preflights_stay_open_when_auth_is_on() {
    let app = spawn_app_with(|config| {
        config.auth.mode = AuthMode::ApiKey;
        config.auth.api_keys = api_keys(&[WEB_KEY]);
        config.cors.allowed_origins = origins(&["https://app.example.com"]);
    })
    .await;
    for path in ["/healthz", "/readyz"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url(&app.credentials_path))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(
        preflight.status().is_success(),
        "preflight answered {}",
        preflight.status()
    );
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}
