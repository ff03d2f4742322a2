//! Graceful drain: readiness turns 503 at once, new connections are still served during
//! `server.shutdown_delay`, then refused, in-flight requests finish, and the server
//! returns by `server.shutdown_timeout` even when a client hangs. Also the real binary
//! on SIGTERM.

use crate::binary::{Proxy, serving_test_config_against};
use crate::gated_upstream::{GatedUpstream, binary_against, hold_a_request, hold_a_request_to};
use crate::helpers::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// Generous bound for "the server stops by itself": only a hang trips it.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// Waits (boundedly) until a new TCP connection to `addr` is refused.
async fn connections_refused(addr: SocketAddr) -> bool {
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn readiness_answers_503_as_soon_as_shutdown_begins() {
    // A held request keeps the server draining while readiness is probed, so "at once"
    // is told apart from "once everything has stopped".
    let upstream = GatedUpstream::start().await;
    let mut config = test_config(&upstream.url);
    config.server.shutdown_timeout = Duration::from_secs(30);
    let (router, state) = orga_proxy::app(Arc::new(config)).unwrap();
    let readyz = || {
        Request::get("/readyz")
            .header("host", "proxy.test")
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        router.clone().oneshot(readyz()).await.unwrap().status(),
        StatusCode::OK
    );

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(orga_proxy::serve(
        router.clone(),
        state.clone(),
        listener,
        async {
            let _ = rx.await;
        },
    ));
    let in_flight = tokio::spawn({
        let client = client();
        async move {
            let url = format!("http://{addr}/api/orga/credentials");
            client.get(url).send().await.map(|r| r.status().as_u16())
        }
    });
    upstream.arrived().await;
    tx.send(()).unwrap();

    let deadline = Instant::now() + HANG_GUARD;
    let response = loop {
        let response = router.clone().oneshot(readyz()).await.unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !server.is_finished(),
        "readiness turned 503 while the drain was still running"
    );
    assert!(response.headers().contains_key("retry-after"));
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["reasons"], serde_json::json!(["draining"]));
    assert_eq!(body["error"]["code"], "unavailable");

    upstream.release(1);
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
    tokio::time::timeout(HANG_GUARD, server)
        .await
        .expect("the server stops once the request is done")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn in_flight_requests_finish_while_new_connections_are_refused() {
    let upstream = GatedUpstream::start().await;
    let mut app = spawn_app_against(&upstream.url, |c| {
        c.server.shutdown_timeout = Duration::from_secs(30);
    })
    .await;
    let in_flight = hold_a_request(&app, &upstream).await;

    app.begin_shutdown();
    assert!(
        connections_refused(app.addr).await,
        "the listener closes on shutdown"
    );
    assert!(!in_flight.is_finished(), "the request is still in flight");
    assert!(!app.handle.is_finished(), "the server waits for it");

    upstream.release(1);
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["ephemeralToken"], "ek_gated");
    app.stops_within(HANG_GUARD, "the server stops once drained")
        .await;
}

#[tokio::test]
async fn a_request_slower_than_the_drain_deadline_does_not_keep_the_server_alive() {
    let upstream = GatedUpstream::start().await;
    let mut app = spawn_app_against(&upstream.url, |c| {
        c.server.shutdown_timeout = Duration::from_millis(200);
    })
    .await;
    let in_flight = hold_a_request(&app, &upstream).await;

    app.begin_shutdown();
    app.stops_within(HANG_GUARD, "the drain deadline ends the server")
        .await;
    let outcome = tokio::time::timeout(HANG_GUARD, in_flight)
        .await
        .expect("the unfinished request is ended, not left hanging")
        .unwrap();
    if let Ok(response) = outcome {
        // Answered before the connection closed: the contract's 503, never a hang,
        // and through the edge like any other answer (request id, log line).
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("x-request-id"));
        assert_eq!(error_code(response).await, "unavailable");
    }
}

#[tokio::test]
async fn a_client_that_sent_half_a_request_does_not_keep_the_server_alive() {
    let mut app = spawn_app_with(|c| {
        c.server.shutdown_timeout = Duration::from_millis(200);
        // Long, so only the drain deadline can be what ends the stalled connection.
        c.server.header_read_timeout = Duration::from_secs(120);
    })
    .await;
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Half: ")
        .await
        .unwrap();
    // The proxy has the connection (a full request on another one is answered).
    assert_eq!(app.get("/healthz").await.status(), 200);

    app.begin_shutdown();
    // Well under the 120 s header timeout: the 200 ms drain deadline did it.
    app.stops_within(HANG_GUARD, "the drain deadline ends the server")
        .await;
    drop(stalled);
}

/// The binary itself: SIGTERM while a request is in flight. The request is answered,
/// new connections are refused meanwhile, and the process exits 0.
#[tokio::test]
async fn the_binary_drains_and_exits_0_on_sigterm() {
    let upstream = GatedUpstream::start().await;
    let mut proxy = binary_against(&upstream);
    let addr: SocketAddr = proxy.addr.parse().unwrap();
    let in_flight = hold_a_request_to(proxy.credentials_url(), &upstream).await;

    proxy.signal("TERM");
    assert!(
        connections_refused(addr).await,
        "the listener closes on SIGTERM"
    );
    assert!(proxy.is_running(), "still draining");

    upstream.release(1);
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);

    let (status, logs) = tokio::task::spawn_blocking(move || proxy.wait())
        .await
        .unwrap();
    assert_eq!(status, Some(0), "{logs}");
    assert!(logs.contains("draining"), "{logs}");
}

/// A client that opens a new connection for every request, as a load balancer's
/// probe or a new visitor does.
fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Polls `url` on new connections until it answers `status` (a bounded wait).
async fn answers(client: &reqwest::Client, url: &str, status: u16) -> reqwest::Response {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Ok(response) = client.get(url).send().await {
            if response.status() == status {
                return response;
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn during_the_shutdown_delay_readiness_is_503_and_new_connections_are_still_served() {
    const DELAY: Duration = Duration::from_secs(2);
    let mut app = spawn_app_with(|c| c.server.shutdown_delay = DELAY).await;
    let client = fresh_connections();
    let started = Instant::now();
    app.begin_shutdown();

    let ready = answers(&client, &app.url("/readyz"), 503).await;
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["reasons"], serde_json::json!(["draining"]));
    let credentials = client
        .get(app.url(&app.credentials_path))
        .send()
        .await
        .expect("a new connection is served during the delay");
    assert_eq!(credentials.status(), 200);
    assert!(
        started.elapsed() < DELAY,
        "all of this happened within the delay (the machine is very slow otherwise)"
    );

    assert!(
        connections_refused(app.addr).await,
        "then the listener closes"
    );
    assert!(started.elapsed() >= DELAY, "not before the delay");
    app.stops_within(HANG_GUARD, "the server stops once drained")
        .await;
}

/// The binary: after SIGTERM, a load balancer's probe sees `/readyz` 503 on a new
/// connection while requests are still served; then the process drains and exits 0.
#[tokio::test]
async fn the_binary_answers_readyz_503_during_the_shutdown_delay_after_sigterm() {
    let upstream = spawn_mock_upstream(Default::default()).await;
    let mut proxy = Proxy::start(
        serving_test_config_against(&upstream).env("ORGA_PROXY_SERVER__SHUTDOWN_DELAY", "3s"),
    );
    let client = fresh_connections();
    let base = format!("http://{}", proxy.addr);
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    proxy.signal("TERM");
    answers(&client, &format!("{base}/readyz"), 503).await;
    let served = client
        .get(proxy.credentials_url())
        .send()
        .await
        .expect("still served during the delay");
    assert_eq!(served.status(), 200);
    assert!(proxy.is_running());
    let (status, logs) = tokio::task::spawn_blocking(move || proxy.wait())
        .await
        .unwrap();
    assert_eq!(status, Some(0), "{logs}");
    assert!(logs.contains("readiness is 503"), "{logs}");
}
