//! Spawning the app and its fakes for the end-to-end tests.

use orga_proxy::clock::Clock;
use orga_proxy::config::{AllowedOrigins, ApiKeyList, Config};
use orga_proxy::orga::mock::{self, MockOptions};
use orga_proxy::secret::Secret;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The API key the test config uses; tests grep logs for it.
pub const TEST_API_KEY: &str = "sk_orga_ai_test_key_do_not_log";
/// An email that needs encoding (`+` and `@`), as the Node SDK would encode it.
pub const TEST_EMAIL: &str = "dev+team@example.com";

/// A running proxy.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client that follows no redirects and uses no proxy.
    pub client: reqwest::Client,
    /// The credentials path configured.
    pub credentials_path: String,
    shutdown: Option<oneshot::Sender<()>>,
    /// The app's shared state (pool, readiness...), for assertions on internals.
    pub state: orga_proxy::state::AppState,
    /// The server task; resolves when `run` returns.
    pub handle: JoinHandle<std::io::Result<()>>,
}

impl TestApp {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("proxy answers")
    }

    /// `GET` the credentials route.
    pub async fn get_credentials(&self) -> reqwest::Response {
        self.get(&self.credentials_path).await
    }

    /// Sends the shutdown signal (as SIGTERM would).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits up to `within` for the server to return (after [`Self::begin_shutdown`])
    /// and asserts it returned cleanly; `why` is what should have ended it, the panic
    /// message if it is still running.
    pub async fn stops_within(&mut self, within: Duration, why: &str) {
        tokio::time::timeout(within, &mut self.handle)
            .await
            .expect(why)
            .expect("the server task ran to its end")
            .expect("the server returned no error");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A test client: no proxy, no redirects, a timeout so a broken test cannot hang.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A configuration for tests, pointed at `base_url`.
pub fn test_config(base_url: &str) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.orga.base_url = base_url.parse().expect("a loopback base URL");
    config.orga.api_key = Secret::new(TEST_API_KEY);
    config.orga.user_email = Some(TEST_EMAIL.parse().unwrap());
    // Every test client is 127.0.0.1: one budget of 10. Tests about something else must
    // not trip over it; the rate-limit tests turn it back on.
    config.rate_limit.enabled = false;
    config
}

/// Starts the fake Orga Cloud in this process; returns its base URL.
pub async fn spawn_mock_upstream(options: MockOptions) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, mock::router(options)).await;
    });
    format!("http://{addr}")
}

/// The fake Orga Cloud answering every call `latency` late; returns its base URL.
pub async fn slow_mock_upstream(latency: Duration) -> String {
    spawn_mock_upstream(MockOptions {
        latency,
        ..MockOptions::default()
    })
    .await
}

/// `cors.allowed_origins` as a test writes it.
pub fn origins(entries: &[&str]) -> AllowedOrigins {
    AllowedOrigins::try_from(entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        .expect("valid test origins")
}

/// `auth.api_keys` as a test writes it.
pub fn api_keys(entries: &[&str]) -> ApiKeyList {
    ApiKeyList::try_from(entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        .expect("valid test keys")
}

/// The proxy against the embedded fake Orga Cloud, with default test config.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The proxy against the embedded fake Orga Cloud, with the config adjusted by `customize`.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Config)) -> TestApp {
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    spawn_app_against(&upstream, customize).await
}

/// The proxy against any upstream (a wiremock server, a closed port...).
pub async fn spawn_app_against(base_url: &str, customize: impl FnOnce(&mut Config)) -> TestApp {
    spawn(base_url, Clock::system(), customize).await
}

/// The proxy against `base_url`, every component reading time from `clock`.
pub async fn spawn_app_with_clock(
    base_url: &str,
    clock: Clock,
    customize: impl FnOnce(&mut Config),
) -> TestApp {
    spawn(base_url, clock, customize).await
}

async fn spawn(base_url: &str, clock: Clock, customize: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config(base_url);
    customize(&mut config);
    let credentials_path = config.server.credentials_path.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let (router, state) =
        orga_proxy::app_with_clock(config.into(), clock).expect("the test config is valid");
    let shutdown = async {
        let _ = rx.await;
    };
    let handle = tokio::spawn(orga_proxy::serve(router, state.clone(), listener, shutdown));
    TestApp {
        addr,
        client: client(),
        credentials_path,
        shutdown: Some(tx),
        state,
        handle,
    }
}

/// Sends `request` and reads the answer's body as JSON, whatever its status.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    let response = request.send().await.expect("it answers");
    response.json().await.expect("a JSON body")
}

/// The names of the `access-control-*` headers on `response` (none for an origin CORS
/// does not allow).
pub fn cors_headers(response: &reqwest::Response) -> Vec<String> {
    let names = response.headers().keys().map(|name| name.as_str());
    names
        .filter(|name| name.starts_with("access-control-"))
        .map(str::to_owned)
        .collect()
}

/// The `error.code` of a JSON error response, asserting the body has the contract's shape.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("error body is JSON");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    error["code"].as_str().expect("error.code").to_owned()
}

/// The client-secrets path on a scripted upstream.
pub const SECRET_PATH: &str = "/v1/realtime/client-secrets";
/// The ice-config path on a scripted upstream.
pub const ICE_PATH: &str = "/v1/realtime/ice-config";

/// A client-secrets success answer.
pub fn token() -> wiremock::ResponseTemplate {
    wiremock::ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"ephemeral_token": "ek_ok"}))
}

/// An ice-config success answer.
pub fn ice() -> wiremock::ResponseTemplate {
    wiremock::ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"iceServers": [{"urls": "stun:s.example:3478"}]}))
}

/// A wiremock Orga Cloud answering client-secrets with `secret` and ice-config with
/// `ice` (a success when `None`).
pub async fn scripted_upstream(
    secret: wiremock::ResponseTemplate,
    ice_answer: Option<wiremock::ResponseTemplate>,
) -> wiremock::MockServer {
    use wiremock::matchers::{method, path};
    let upstream = wiremock::MockServer::start().await;
    wiremock::Mock::given(method("POST"))
        .and(path(SECRET_PATH))
        .respond_with(secret)
        .mount(&upstream)
        .await;
    wiremock::Mock::given(method("GET"))
        .and(path(ICE_PATH))
        .respond_with(ice_answer.unwrap_or_else(ice))
        .mount(&upstream)
        .await;
    upstream
}

/// Makes `upstream` answer the first `times` requests of `method` to `to` with
/// `answer`, before its other mocks.
pub async fn first_answers(
    upstream: &wiremock::MockServer,
    (method, to): (&str, &str),
    answer: wiremock::ResponseTemplate,
    times: u64,
) {
    use wiremock::matchers;
    wiremock::Mock::given(matchers::method(method))
        .and(matchers::path(to))
        .respond_with(answer)
        .up_to_n_times(times)
        .with_priority(1)
        .mount(upstream)
        .await;
}

/// How many requests `upstream` received on `to`.
pub async fn calls_to(upstream: &wiremock::MockServer, to: &str) -> usize {
    let requests = upstream.received_requests().await.unwrap();
    requests.iter().filter(|r| r.url.path() == to).count()
}

/// True when running under CI (`CI` set and not "false"), where a missing tool fails.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// An executable from PATH. Missing: a failure under CI (which installs it), otherwise a
/// loud SKIPPED line written straight to the stderr handle (libtest hides the
/// `eprintln!` output of passing tests) and `None`.
pub fn find_tool(name: &str, test: &str, install: &str) -> Option<std::path::PathBuf> {
    use std::io::Write;
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            !in_ci(),
            "{test}: {name} is not installed; CI must install it ({install})"
        );
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED {test}: {name} not found in PATH ({install}) ***\n"
        );
    }
    found
}

/// A TCP relay to `upstream` that counts the connections made through it.
pub async fn counting_relay(upstream: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let target = upstream.trim_start_matches("http://").to_owned();
    let opened = Arc::new(AtomicUsize::new(0));
    let count = opened.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (format!("http://{addr}"), opened)
}
