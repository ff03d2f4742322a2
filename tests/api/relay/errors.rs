//! Orga's refusals, failures and silence on the relayed call start, answered as the
//! contract says (never echoing Orga's body), and CORS on the relay's route.

use super::*;

/// What the caller gets when Orga answers the call start with `orga`.
async fn answered(orga: ResponseTemplate) -> (u16, Value, reqwest::header::HeaderMap) {
    let relay = relay_app(orga, |_| {}).await;
    let token = relay.token().await;
    let response = relay.start(&token, &sdk_body(OFFER_SDP)).await;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let text = response.text().await.unwrap();
    assert!(
        !text.contains("upstream-canary"),
        "Orga's body was echoed: {text}"
    );
    (status, serde_json::from_str(&text).unwrap(), headers)
}

#[tokio::test]
async fn orgas_refusals_and_failures_map_to_the_contracts_answers() {
    let invalid = json!({"error": {"message": "Invalid ephemeral token upstream-canary", "type": "invalid_request_error", "param": null, "code": null}});
    for status in [401, 403] {
        let (status, body, headers) =
            answered(ResponseTemplate::new(status).set_body_json(&invalid)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    let detail = json!({"detail": [
        {"type": "literal_error", "loc": ["body", "params", "voice"], "msg": "Input should be upstream-canary", "input": "upstream-canary"}
    ]});
    let (status, body, _) = answered(ResponseTemplate::new(422).set_body_json(detail)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("body.params.voice"),
        "{body}"
    );
    let (status, body, headers) =
        answered(ResponseTemplate::new(429).insert_header("retry-after", "7")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("upstream_rate_limited"))
    );
    assert_eq!(headers["retry-after"], "7");
    // The token was spent on this attempt: retrying with it could only get 401.
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("fetch new credentials"), "{message}");
    for failing in [
        ResponseTemplate::new(500).set_body_string("upstream-canary"),
        ResponseTemplate::new(502),
        ResponseTemplate::new(200).set_body_string("<html>upstream-canary"),
        ResponseTemplate::new(200)
            .set_body_json(json!({"answer": {"type": "answer", "sdp": ANSWER_SDP}})),
        ResponseTemplate::new(200).set_body_json(
            json!({"answer": {"type": "offer", "sdp": ANSWER_SDP}, "conversation_id": "c"}),
        ),
    ] {
        let (status, body, _) = answered(failing).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (502, Some("upstream_error")),
            "{body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.ends_with("fetch new credentials first."),
            "{message}"
        );
    }
}

#[tokio::test]
async fn orga_not_answering_within_orga_timeout_is_504() {
    let slow = call_answer().set_delay(Duration::from_secs(3));
    let relay = relay_app(slow, |c| c.orga.timeout = Duration::from_millis(300)).await;
    let token = relay.token().await;
    let response = relay.start(&token, &sdk_body(OFFER_SDP)).await;
    assert_eq!(response.status(), 504);
    assert_eq!(error_code(response).await, "upstream_timeout");
}

const APP_ORIGIN: &str = "https://app.example.com";

#[tokio::test]
async fn cors_on_the_relay_allows_the_sdks_headers_to_allowed_origins_only() {
    let relay = relay_app(call_answer(), |c| {
        c.cors.allowed_origins = origins(&[APP_ORIGIN])
    })
    .await;
    let preflight = |origin: &'static str| {
        relay
            .app
            .client
            .request(reqwest::Method::OPTIONS, relay.app.url(CALLS))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight(APP_ORIGIN).await.unwrap();
    assert_eq!(allowed.status(), 204);
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], APP_ORIGIN);
    assert_eq!(h["access-control-allow-methods"], "POST");
    let allow_headers = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allow_headers.contains("authorization") && allow_headers.contains("content-type"));
    let other = preflight("https://evil.example").await.unwrap();
    let cors = cors_headers(&other);
    assert!(cors.is_empty(), "{cors:?}");
    let token = relay.token().await;
    let post = relay
        .app
        .client
        .post(relay.app.url(CALLS))
        .header("origin", APP_ORIGIN)
        .bearer_auth(&token)
        .json(&sdk_body(OFFER_SDP))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    assert_eq!(post.headers()["access-control-allow-origin"], APP_ORIGIN);
    assert!(
        relay.calls().await.len() == 1,
        "preflights never reach Orga"
    );
}

#[tokio::test]
async fn failed_call_starts_never_open_the_circuit_for_the_credentials_route() {
    // A 5xx on a call start may come from the caller's own SDP: it says nothing about
    // Orga minting tokens, so three of them (the breaker opens after two failures here)
    // leave the credentials route working.
    let relay = relay_app(ResponseTemplate::new(500), |c| {
        c.orga.circuit_breaker_threshold = 2;
    })
    .await;
    for _ in 0..3 {
        let token = relay.token().await;
        let failed = relay.start(&token, &sdk_body(OFFER_SDP)).await;
        assert_eq!(failed.status(), 502);
    }
    let ready = json_of(relay.app.client.get(relay.app.url("/readyz"))).await;
    assert_eq!(ready["upstream_circuit"], "closed");
    assert_eq!(relay.app.get_credentials().await.status(), 200);
}

#[tokio::test]
async fn the_connection_a_call_answer_that_was_not_json_came_on_is_never_reused() {
    let not_json = ResponseTemplate::new(200).set_body_string("<html>upstream-canary");
    let orga = recording_orga(not_json, Some(600)).await;
    let (counted, opened) = counting_relay(orga.uri()).await;
    let app = spawn_app_against(&counted, |c| c.relay.enabled = true).await;
    let token = token_from(&app).await;
    let status = start(&app, &token, &sdk_body(OFFER_SDP)).await.status();
    assert_eq!(status, 502);
    let _ = token_from(&app).await;
    // The token's two calls and the call start shared one connection; the next token
    // needs a new one.
    assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn while_the_circuit_is_open_a_call_start_keeps_its_token_for_later() {
    let relay = relay_app(call_answer(), |c| {
        c.orga.circuit_breaker_threshold = 1;
        c.orga.circuit_breaker_cooldown = Duration::from_millis(300);
    })
    .await;
    let token = relay.token().await;
    // One failed mint opens the circuit.
    first_answers(
        &relay.orga,
        ("POST", SECRET_PATH),
        ResponseTemplate::new(500),
        1,
    )
    .await;
    assert_eq!(relay.app.get_credentials().await.status(), 502);

    let refused = relay.start(&token, &sdk_body(OFFER_SDP)).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(relay.calls().await.is_empty(), "Orga was not called");

    // After the cool-down the circuit is half-open: a call start, which cannot prove
    // Orga can mint, still waits, and the next credentials request is the probe.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let waiting = relay.start(&token, &sdk_body(OFFER_SDP)).await;
    assert_eq!(waiting.status(), 503);
    assert_eq!(relay.app.get_credentials().await.status(), 200);
    let started = relay.start(&token, &sdk_body(OFFER_SDP)).await;
    assert_eq!(
        started.status(),
        200,
        "the same token, once the circuit has closed"
    );
}
