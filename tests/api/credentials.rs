//! The credentials route: what it answers and exactly what it asks Orga.

use crate::helpers::*;
use orga_proxy::orga::mock::MockOptions;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn get_returns_a_token_and_ice_servers_with_no_store() {
    let app = spawn_app().await;
    let response = app.get_credentials().await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["content-type"], "application/json");
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
    let default = app.get("/api/orga/credentials").await;
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
    // As fetch() sends a POST without a body: front ends that require a length on a POST
    // answer 411 otherwise.
    assert_eq!(
        secrets
            .headers
            .get("content-length")
            .map(|v| v.to_str().unwrap()),
        Some("0")
    );
    assert!(!secrets.headers.contains_key("transfer-encoding"));
    for request in &requests {
        let user_agent = request.headers["user-agent"].to_str().unwrap();
        assert!(user_agent.starts_with("orga-proxy/"), "{user_agent}");
        // Uncompressed answers only: a compressed one could expand past the read cap.
        assert_eq!(request.headers["accept-encoding"], "identity");
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

#[tokio::test]
async fn without_a_user_email_client_secrets_carries_no_query_at_all() {
    // What the current Node SDK sends: the API key as Bearer, no `email`, no query.
    let upstream = scripted_upstream(token(), None).await;
    let app = spawn_app_against(&upstream.uri(), |c| c.orga.user_email = None).await;
    assert_eq!(app.get_credentials().await.status(), 200);
    let requests = upstream.received_requests().await.unwrap();
    let secrets = requests
        .iter()
        .find(|r| r.url.path() == SECRET_PATH)
        .expect("client-secrets was called");
    assert_eq!(secrets.url.query(), None, "{}", secrets.url);
}

#[tokio::test]
async fn a_fresh_clone_with_only_orga_api_key_set_serves_credentials() {
    // The new user's path: no email, no config file, only the key (and where Orga is).
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    let proxy = crate::cli::Proxy::start(&mut crate::cli::serving_against(&upstream));
    let response = proxy.get_credentials().await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["ephemeralToken"]
            .as_str()
            .is_some_and(|t| t.starts_with("ek_"))
    );
    let (status, logs) = proxy.stop();
    assert_eq!(status, Some(0), "{logs}");
}

#[tokio::test]
async fn upstream_connections_are_kept_and_reused() {
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    let (relay, opened) = counting_relay(upstream).await;
    let app = spawn_app_against(&relay, |_| {}).await;
    for _ in 0..10 {
        assert_eq!(app.get_credentials().await.status(), 200);
    }
    // Twenty upstream calls, one after another: one connection carries them all.
    assert_eq!(opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_unnoticed() {
    // This fake drops a keep-alive connection after 100 ms without a request, as load
    // balancers do; the proxy must not send the next call into the dead connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let options = orga_proxy::http::server::ServeOptions {
        header_read_timeout: std::time::Duration::from_millis(100),
        http2: false,
        max_connections: None,
    };
    tokio::spawn(orga_proxy::http::server::serve(
        listener,
        orga_proxy::orga::mock::router(MockOptions::default()),
        options,
        std::future::pending(),
    ));
    let (relay, opened) = counting_relay(upstream).await;
    let app = spawn_app_against(&relay, |_| {}).await;
    for _ in 0..3 {
        assert_eq!(app.get_credentials().await.status(), 200);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(
        opened.load(Ordering::SeqCst),
        3,
        "one fresh connection a round"
    );
}
