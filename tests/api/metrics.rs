//! `/metrics`: served on its own listener only, with bounded labels.

use crate::helpers::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

/// The proxy with its metrics listener, both on 127.0.0.1:0.
struct WithMetrics {
    public: SocketAddr,
    metrics: SocketAddr,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for WithMetrics {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn spawn_with_metrics() -> WithMetrics {
    let upstream = spawn_mock_upstream(Default::default()).await;
    let config = test_config(&upstream);
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (public_addr, metrics_addr) = (public.local_addr().unwrap(), metrics.local_addr().unwrap());
    let server = tokio::spawn(orga_proxy::run_with_metrics(
        config.into(),
        public,
        Some(metrics),
        std::future::pending(),
    ));
    WithMetrics {
        public: public_addr,
        metrics: metrics_addr,
        server,
    }
}

async fn scrape(addr: SocketAddr) -> String {
    let response = client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_and_never_on_the_public_one() {
    let app = spawn_with_metrics().await;
    let public = client()
        .get(format!("http://{}/metrics", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let body = scrape(app.metrics).await;
    assert!(body.contains("orga_proxy_build_info"), "{body}");
    let elsewhere = client()
        .get(format!("http://{}/healthz", app.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404);
}

#[tokio::test]
async fn requests_are_counted_by_route_template_with_no_raw_path_or_ip() {
    let app = spawn_with_metrics().await;
    let client = client();
    let credentials = client
        .get(format!("http://{}/api/orga/credentials", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(credentials.status(), 200);
    let token = credentials.json::<serde_json::Value>().await.unwrap()["ephemeralToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let probe = client
        .get(format!("http://{}/no/such/path-canary-9d1", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 404);

    let body = scrape(app.metrics).await;
    for expected in [
        r#"orga_proxy_http_requests_total{route="/api/orga/credentials",method="GET",status="200"}"#,
        r#"orga_proxy_http_requests_total{route="unmatched",method="GET",status="404"}"#,
        r#"orga_proxy_http_request_duration_seconds_bucket{route="/api/orga/credentials",method="GET",le="0.005"}"#,
        r#"orga_proxy_upstream_request_duration_seconds_bucket{call="client-secrets",outcome="ok",le="#,
        r#"orga_proxy_upstream_request_duration_seconds_bucket{call="ice-config",outcome="ok",le="#,
        "orga_proxy_credentials_issued_total ",
        "orga_proxy_upstream_circuit_state 0",
        "orga_proxy_requests_shed_total ",
        "orga_proxy_rate_limited_total ",
        "orga_proxy_auth_failures_total ",
    ] {
        assert!(body.contains(expected), "missing {expected}:\n{body}");
    }
    for leaked in ["path-canary-9d1", "127.0.0.1", token.as_str(), TEST_EMAIL] {
        assert!(!body.contains(leaked), "{leaked} leaked into the metrics");
    }
    // The samples land (the recorder is shared by every test in the process: at least).
    for counted in [
        r#"orga_proxy_http_requests_total{route="/api/orga/credentials",method="GET",status="200"}"#,
        r#"orga_proxy_http_requests_total{route="unmatched",method="GET",status="404"}"#,
        r#"orga_proxy_http_request_duration_seconds_count{route="/api/orga/credentials",method="GET"}"#,
        r#"orga_proxy_upstream_request_duration_seconds_count{call="client-secrets",outcome="ok"}"#,
        r#"orga_proxy_upstream_request_duration_seconds_count{call="ice-config",outcome="ok"}"#,
        "orga_proxy_credentials_issued_total",
    ] {
        let value = body
            .lines()
            .find_map(|line| line.strip_prefix(counted)?.strip_prefix(' '))
            .and_then(|value| value.parse::<f64>().ok());
        assert!(value >= Some(1.0), "{counted} is {value:?}:\n{body}");
    }
}

#[tokio::test]
async fn the_metrics_listener_stops_with_the_server() {
    let upstream = spawn_mock_upstream(Default::default()).await;
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(orga_proxy::run_with_metrics(
        test_config(&upstream).into(),
        public,
        Some(metrics),
        async {
            let _ = rx.await;
        },
    ));
    scrape(metrics_addr).await;
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .expect("run returns")
        .unwrap()
        .unwrap();
    // Let the aborted task release its socket.
    let mut refused = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(metrics_addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the metrics port is closed after run returns");
}
