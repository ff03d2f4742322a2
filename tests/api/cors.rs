//! CORS by the contract: exact origins, `Vary: Origin`, preflights without
//! authentication, and requests without `Origin` served normally.

use crate::helpers::*;

const APP_ORIGIN: &str = "https://app.example.com";

async fn app() -> TestApp {
    spawn_app_with(|c| c.cors.allowed_origins = origins(&[APP_ORIGIN])).await
}

async fn get_from(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .get(app.url(&app.credentials_path))
        .header("origin", origin)
        .send()
        .await
        .unwrap()
}

fn vary_has_origin(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().to_ascii_lowercase().contains("origin"))
}

#[tokio::test]
async fn an_allowed_origin_gets_exactly_its_own_origin_back() {
    let app = app().await;
    let response = get_from(&app, APP_ORIGIN).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        APP_ORIGIN
    );
    assert!(vary_has_origin(&response));
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-credentials")
    );
}

#[tokio::test]
async fn look_alike_origins_get_no_cors_headers() {
    let app = app().await;
    for origin in [
        "https://app.example.com.evil.com",
        "https://evil-app.example.com",
        "https://app.example.com:444",
        "http://app.example.com",
        "null",
    ] {
        let response = get_from(&app, origin).await;
        let cors = cors_headers(&response);
        assert!(cors.is_empty(), "{origin} got {cors:?}");
    }
}

#[tokio::test]
async fn a_request_without_origin_is_served_normally() {
    let app = app().await;
    let response = app.get_credentials().await;
    assert_eq!(response.status(), 200);
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_without_authentication() {
    // Auth is on: a preflight carries no credentials, and must pass anyway.
    let app = spawn_app_with(|c| {
        c.cors.allowed_origins = origins(&[APP_ORIGIN]);
        c.auth.mode = orga_proxy::config::AuthMode::ApiKey;
        c.auth.api_keys = api_keys(&["cors-test-key-0123456789abcdef"]);
    })
    .await;
    let unauthenticated = app.get_credentials().await;
    assert_eq!(unauthenticated.status(), 401, "auth is really on");
    let response = app
        .client
        .request(reqwest::Method::OPTIONS, app.url(&app.credentials_path))
        .header("origin", APP_ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], APP_ORIGIN);
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(methods.contains("POST") && methods.contains("GET"));
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    assert_eq!(
        headers["allow"], "GET, POST",
        "HEAD is refused, so not advertised"
    );
    assert!(vary_has_origin(&response));
}

#[tokio::test]
async fn a_preflight_from_another_origin_gets_no_cors_headers() {
    let app = app().await;
    let response = app
        .client
        .request(reqwest::Method::OPTIONS, app.url(&app.credentials_path))
        .header("origin", "https://app.example.com.evil.com")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-methods")
    );
}

#[tokio::test]
async fn allow_credentials_is_sent_only_when_configured() {
    let app = spawn_app_with(|c| {
        c.cors.allowed_origins = origins(&[APP_ORIGIN]);
        c.cors.allow_credentials = true;
    })
    .await;
    let response = get_from(&app, APP_ORIGIN).await;
    assert_eq!(
        response.headers()["access-control-allow-credentials"],
        "true"
    );
}
