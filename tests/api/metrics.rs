//! `/metrics`: served on its own listener only, with bounded labels, the public
//! listener's timeouts and a connection cap, so it can never starve the public port.

use crate::binary::{Proxy, command_under_fd_limit};
use crate::helpers::*;
use orga_proxy::config::Config;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
    spawn_with_metrics_and(|_| {}).await
}

async fn spawn_with_metrics_and(customize: impl FnOnce(&mut Config)) -> WithMetrics {
    let upstream = spawn_mock_upstream(Default::default()).await;
    let mut config = test_config(&upstream);
    customize(&mut config);
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

/// `GET http://{addr}{path}`.
async fn get(addr: SocketAddr, path: &str) -> reqwest::Response {
    let url = format!("http://{addr}{path}");
    client().get(url).send().await.expect("it answers")
}

async fn scrape(addr: SocketAddr) -> String {
    let response = get(addr, "/metrics").await;
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
    let public = get(app.public, "/metrics").await;
    assert_eq!(public.status(), 404);
    let body = scrape(app.metrics).await;
    assert!(body.contains("orga_proxy_build_info"), "{body}");
    let elsewhere = get(app.metrics, "/healthz").await;
    assert_eq!(elsewhere.status(), 404);
    assert!(elsewhere.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn the_metrics_listener_answers_with_a_request_id_too() {
    let app = spawn_with_metrics().await;
    let scrape_with_id = |id: &'static str| {
        client()
            .get(format!("http://{}/metrics", app.metrics))
            .header("x-request-id", id)
            .send()
    };
    let kept = scrape_with_id("scrape-1").await.unwrap();
    assert_eq!(kept.headers()["x-request-id"], "scrape-1");
    let replaced = scrape_with_id("not sane").await.unwrap();
    let id = replaced.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a fresh UUID: {id}");
}

#[tokio::test]
async fn requests_are_counted_by_route_template_with_no_raw_path_or_ip() {
    let app = spawn_with_metrics().await;
    let credentials = get(app.public, "/api/orga/credentials").await;
    assert_eq!(credentials.status(), 200);
    let token = credentials.json::<serde_json::Value>().await.unwrap()["ephemeralToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let probe = get(app.public, "/no/such/path-canary-9d1").await;
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

/// The metrics listener's connection cap (`METRICS_MAX_CONNECTIONS` in lib.rs).
const METRICS_CAP: usize = 64;

/// True when the server closes `connection` within `within` (reading to EOF).
async fn closed_within(mut connection: TcpStream, within: Duration) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(within, connection.read_to_end(&mut rest))
        .await
        .is_ok()
}

#[tokio::test]
async fn silent_and_half_sent_connections_to_the_metrics_port_are_closed_after_the_header_read_timeout()
 {
    let app =
        spawn_with_metrics_and(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let silent = TcpStream::connect(app.metrics).await.unwrap();
    let mut half = TcpStream::connect(app.metrics).await.unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (silent, half) = tokio::join!(
        closed_within(silent, Duration::from_secs(10)),
        closed_within(half, Duration::from_secs(10)),
    );
    assert!(silent, "a silent connection to the metrics port was kept");
    assert!(half, "a half-sent request to the metrics port was kept");
    scrape(app.metrics).await;
}

#[tokio::test]
async fn connections_past_the_metrics_cap_are_closed_at_once_while_both_ports_keep_answering() {
    let app =
        spawn_with_metrics_and(|c| c.server.header_read_timeout = Duration::from_secs(5)).await;
    // A scraper's keep-alive connection, opened first: it holds one of the slots. (Its
    // answer is read to the end, or the client would close the connection.)
    let scraper = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let url = format!("http://{}/metrics", app.metrics);
    let scrape_on = |client: &reqwest::Client| {
        let request = client.get(&url).send();
        async move {
            let response = request.await.unwrap();
            let status = response.status();
            response.text().await.unwrap();
            status
        }
    };
    assert_eq!(scrape_on(&scraper).await, 200);
    let extra = 8;
    let mut silent = Vec::new();
    for _ in 0..METRICS_CAP - 1 + extra {
        silent.push(TcpStream::connect(app.metrics).await.unwrap());
    }
    // Each silent connection is held for the 5 s header read timeout unless refused.
    let closed: Vec<bool> = join_all(
        silent
            .into_iter()
            .map(|c| closed_within(c, Duration::from_millis(1500))),
    )
    .await;
    let refused = closed.iter().filter(|c| **c).count();
    assert_eq!(
        refused, extra,
        "exactly the connections past the cap of {METRICS_CAP} are closed at once"
    );
    assert_eq!(
        scrape_on(&scraper).await,
        200,
        "the scraper's connection keeps answering"
    );
    let health = get(app.public, "/healthz").await;
    assert_eq!(health.status(), 200);
}

/// Awaits every future, concurrently, in order.
async fn join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

/// The review's attack on the binary: with 128 file descriptors, hundreds of silent
/// connections to the metrics port once made the public `/healthz` time out.
#[tokio::test]
async fn silent_metrics_connections_cannot_take_the_public_ports_file_descriptors() {
    let upstream = spawn_mock_upstream(Default::default()).await;
    let mut command = command_under_fd_limit(128, &["serve"]);
    command
        .env("ORGA_API_KEY", TEST_API_KEY)
        .env("ORGA_USER_EMAIL", TEST_EMAIL)
        .env("ORGA_BASE_URL", &upstream)
        .env("ORGA_PROXY_SERVER__LISTEN", "127.0.0.1:0");
    let proxy = tokio::task::spawn_blocking(move || Proxy::start(&mut command))
        .await
        .unwrap();
    let metrics = proxy
        .metrics_addr
        .clone()
        .expect("the metrics listener is on");
    let mut silent = Vec::new();
    for _ in 0..200 {
        match TcpStream::connect(&metrics).await {
            Ok(connection) => silent.push(connection),
            Err(_) => break,
        }
    }
    let health = client()
        .get(format!("http://{}/healthz", proxy.addr))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(
        health.as_ref().is_ok_and(|r| r.status() == 200),
        "the public /healthz did not answer: {health:?}"
    );
    drop(silent);
    let (status, logs) = tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();
    assert_eq!(status, Some(0), "{logs}");
}

#[tokio::test]
async fn series_without_labels_are_exported_at_zero_from_the_start() {
    let upstream = spawn_mock_upstream(orga_proxy::orga::mock::MockOptions::default()).await;
    let proxy = Proxy::start(
        crate::binary::serving_against(&upstream).env("ORGA_PROXY_POOL__ENABLED", "true"),
    );
    for series in [
        "orga_proxy_credentials_issued_total",
        "orga_proxy_ratelimit_evictions_total",
        "orga_proxy_pool_hits_total",
        "orga_proxy_pool_misses_total",
        "orga_proxy_pool_discards_total",
        "orga_proxy_upstream_pools_retired_total",
    ] {
        assert_eq!(
            crate::reload::sample(&proxy, series).await,
            Some(0.0),
            "{series}"
        );
    }
}
