//! The credentials route: what it answers and exactly what it asks Orga.

use crate::helpers::*;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn get_returns_a_token_and_ice_servers_with_no_store() {
    let app = spawn_app().await;
    let response = app.get_credentials().await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["ephemeralToken"]
            .as_str()
            .is_some_and(|t| t.starts_with("ek_"))
    );
    let servers = body["iceServers"].as_array().expect("iceServers array");
    assert!(!servers.is_empty());
    assert!(servers.iter().all(|s| s.get("urls").is_some()));
    assert!(
        body["expiresAt"].is_u64(),
        "the upstream expiry is passed on: {body}"
    );
}

#[tokio::test]
async fn post_works_like_get() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url(&app.credentials_path))
        .json(&json!({"anything": "ignored"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["ephemeralToken"].is_string());
}

#[tokio::test]
async fn every_call_gets_a_fresh_token() {
    let app = spawn_app().await;
    let mut tokens = std::collections::HashSet::new();
    for _ in 0..5 {
        let body: Value = app.get_credentials().await.json().await.unwrap();
        tokens.insert(body["ephemeralToken"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens.len(), 5);
}

#[tokio::test]
async fn a_custom_credentials_path_is_served_and_the_default_is_not() {
    let app = spawn_app_with(|c| c.server.credentials_path = "/session".into()).await;
    assert_eq!(app.get_credentials().await.status(), 200);
    let default = app
        .client
        .get(app.url("/api/orga/credentials"))
        .send()
        .await
        .unwrap();
    assert_eq!(default.status(), 404);
}

#[tokio::test]
async fn upstream_requests_are_exactly_what_the_node_sdk_sends() {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/realtime/client-secrets"))
        .and(query_param("email", TEST_EMAIL))
        .and(header(
            "authorization",
            format!("Bearer {TEST_API_KEY}").as_str(),
        ))
        .and(header("content-type", "application/json"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"ephemeral_token": "ek_scripted"})),
        )
        .expect(1)
        .mount(&upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/realtime/ice-config"))
        .and(header("authorization", "Bearer ek_scripted"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "iceServers": [{"urls": ["turn:t.example:3478"], "username": "u", "credential": "c"}]
        })))
        .expect(1)
        .mount(&upstream)
        .await;
    let app = spawn_app_against(&upstream.uri(), |_| {}).await;

    let response = app
        .client
        .get(app.url(&app.credentials_path))
        .header("cookie", "session=caller-cookie")
        .header("authorization", "Bearer caller-token")
        .header("x-custom", "from-the-browser")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"ephemeralToken": "ek_scripted",
               "iceServers": [{"urls": ["turn:t.example:3478"], "username": "u", "credential": "c"}]})
    );

    let requests = upstream.received_requests().await.unwrap();
    let secrets = &requests[0];
    assert_eq!(secrets.url.query(), Some("email=dev%2Bteam%40example.com"));
    assert!(
        secrets.body.is_empty(),
        "client-secrets is sent with no body"
    );
    for request in &requests {
        let user_agent = request.headers["user-agent"].to_str().unwrap();
        assert!(user_agent.starts_with("orga-proxy/"), "{user_agent}");
        for forwarded in ["cookie", "x-custom", "x-forwarded-for"] {
            assert!(
                !request.headers.contains_key(forwarded),
                "{forwarded} must not be forwarded"
            );
        }
        assert!(
            !request.headers["authorization"]
                .to_str()
                .unwrap()
                .contains("caller-token")
        );
    }
}
