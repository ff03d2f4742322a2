//! The binary: configuration errors and their exit status, `check-config`,
//! `healthcheck`, and secrets absent from the logs at trace level.

use crate::helpers::*;
use orga_proxy::orga::mock::MockOptions;
use orga_proxy::secret::Secret;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_orga-proxy");

/// The binary with a clean environment: no inherited ORGA_* or PORT, and a working
/// directory without a config/orga-proxy.toml.
pub(crate) fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_clear()
        // The default metrics port (9090) would clash between parallel tests.
        .env("ORGA_PROXY_SERVER__METRICS_LISTEN", "127.0.0.1:0")
        .current_dir(std::env::temp_dir());
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command
}

pub(crate) fn run(mut command: impl std::borrow::BorrowMut<Command>) -> Output {
    let command = command.borrow_mut();
    command.stdin(Stdio::null()).output().expect("binary runs")
}

#[test]
fn a_bad_configuration_exits_2_with_one_line_per_problem_naming_key_and_env_var() {
    let output = run(command(&["serve"])
        .env("ORGA_PROXY_SERVER__REQUEST_TIMEOUT", "soon")
        .env(
            "ORGA_PROXY_CORS__ALLOWED_ORIGINS",
            "https://ok.example,https://bad.example/",
        )
        .env("ORGA_USER_EMAIL", "not-an-email"));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.request_timeout (ORGA_PROXY_SERVER__REQUEST_TIMEOUT)"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).is_empty(),
        "nothing started"
    );

    // Type errors stop extraction; the remaining problems are found once those are fixed.
    let output = run(command(&["serve"])
        .env(
            "ORGA_PROXY_CORS__ALLOWED_ORIGINS",
            "https://ok.example,https://bad.example/",
        )
        .env("ORGA_USER_EMAIL", "not-an-email"));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "orga.api_key (ORGA_PROXY_ORGA__API_KEY or ORGA_API_KEY or ORGA_API_KEY_FILE): required",
        "orga.user_email (ORGA_PROXY_ORGA__USER_EMAIL or ORGA_USER_EMAIL)",
        "cors.allowed_origins (ORGA_PROXY_CORS__ALLOWED_ORIGINS)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    let problem_lines = stderr.lines().filter(|l| l.starts_with("  ")).count();
    assert_eq!(problem_lines, 3, "{stderr}");
}

#[test]
fn a_bad_tokio_worker_threads_value_exits_2_instead_of_panicking() {
    for bad in ["abc", "0", "-1"] {
        let output = run(command(&["check-config"]).env("TOKIO_WORKER_THREADS", bad));
        assert_eq!(output.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("TOKIO_WORKER_THREADS"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn an_unknown_key_in_the_toml_file_is_named() {
    let dir = tempdir();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:1\"\ncredential_path = \"/x\"\n",
    )
    .unwrap();
    let output = run(command(&[
        "check-config",
        "--config",
        file.to_str().unwrap(),
    ]));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.credential_path"), "{stderr}");
    assert!(stderr.contains("unknown key"), "{stderr}");
}

#[test]
fn a_missing_config_file_exits_2_naming_it() {
    let output = run(command(&[
        "check-config",
        "--config",
        "/nonexistent/orga.toml",
    ]));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/orga.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

#[test]
fn a_toml_syntax_error_is_one_line_with_its_position_and_never_the_secret_on_it() {
    let dir = tempdir();
    let file = dir.join("broken.toml");
    let text = "[orga]\nuser_email = \"a@example.com\"\napi_key = \"sk_orga_ai_CANARY_SECRET\n";
    std::fs::write(&file, text).unwrap();
    let output = run(command(&["check-config"]).env("ORGA_PROXY_CONFIG", &file));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("CANARY"), "the secret leaked: {stderr}");
    let problems: Vec<_> = stderr.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(problems.len(), 1, "{stderr}");
    assert!(
        problems[0].contains("TOML syntax error at line 3"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_section_is_named_once() {
    let dir = tempdir();
    let file = dir.join("unknown.toml");
    std::fs::write(&file, "[ratelimit]\nenabled = true\n").unwrap();
    let output = run(command(&[
        "check-config",
        "--config",
        file.to_str().unwrap(),
    ]));
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("  ratelimit (ORGA_PROXY_RATELIMIT): unknown key"),
        "{stderr}"
    );
}

#[test]
fn the_prefixed_variable_wins_over_the_conventional_alias() {
    let output = run(command(&["check-config"])
        .env("ORGA_API_KEY", "sk_orga_ai_x")
        .env("ORGA_USER_EMAIL", "alias@example.com")
        .env("ORGA_PROXY_ORGA__USER_EMAIL", "prefixed@example.com"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("prefixed@example.com"), "{stdout}");
}

#[test]
fn both_api_key_and_api_key_file_is_a_conflict() {
    let dir = tempdir();
    let key_file = dir.join("k");
    std::fs::write(&key_file, "sk_orga_ai_a").unwrap();
    let output = run(command(&["check-config"])
        .env("ORGA_API_KEY", "sk_orga_ai_b")
        .env("ORGA_API_KEY_FILE", &key_file)
        .env("ORGA_USER_EMAIL", "a@example.com"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("set only one"));
}

#[test]
fn help_and_version_describe_the_binary() {
    let help = run(command(&["--help"]));
    let text = String::from_utf8_lossy(&help.stdout);
    for sub in [
        "serve",
        "dev",
        "mock-upstream",
        "check-config",
        "healthcheck",
    ] {
        assert!(text.contains(sub), "{sub} missing from --help");
    }
    let version = run(command(&["--version"]));
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// `serve` against `upstream` with only `ORGA_API_KEY` set, on a free port: what a new
/// user starts with.
pub(crate) fn serving_against(upstream: &str) -> Command {
    let mut serve = command(&["serve"]);
    serve
        .env("ORGA_API_KEY", "sk_orga_ai_only_the_key")
        .env("ORGA_BASE_URL", upstream)
        .env("ORGA_PROXY_SERVER__LISTEN", "127.0.0.1:0");
    serve
}

/// The binary running `serve` (or `dev`), with its stdout and stderr collected.
pub(crate) struct Proxy {
    child: Child,
    output: Arc<Mutex<String>>,
    pub(crate) addr: String,
}

impl Proxy {
    pub(crate) fn start(command: &mut Command) -> Proxy {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let text = output.lock().unwrap().clone();
            // `serve` says "orga-proxy listening", `dev` its warning banner; both JSON.
            let listening = text.lines().find(|l| {
                l.starts_with('{') && (l.contains("orga-proxy listening") || l.contains("DEV MODE"))
            });
            if let Some(line) = listening {
                let json: serde_json::Value = serde_json::from_str(line).unwrap();
                break json["listen"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "proxy did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Proxy {
            child,
            output,
            addr,
        }
    }

    /// `GET` its credentials route.
    pub(crate) async fn get_credentials(&self) -> reqwest::Response {
        crate::helpers::client()
            .get(format!("http://{}/api/orga/credentials", self.addr))
            .send()
            .await
            .expect("the proxy answers")
    }

    /// Sends `signal` (`"HUP"`, `"TERM"`...) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Everything it printed so far.
    pub(crate) fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends SIGTERM and returns the exit status and everything it printed.
    pub(crate) fn stop(mut self) -> (Option<i32>, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("proxy did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        (status.code(), self.output.lock().unwrap().clone())
    }
}

#[tokio::test]
async fn secrets_never_reach_the_logs_even_at_trace_level() {
    const KEY: &str = "sk_orga_ai_canary_api_key_9f8e";
    let upstream = spawn_mock_upstream(MockOptions {
        api_key: Some(Secret::new(KEY)),
        ..MockOptions::default()
    })
    .await;
    let proxy = Proxy::start(
        command(&["serve"])
            .env("ORGA_API_KEY", KEY)
            .env("ORGA_USER_EMAIL", "dev+team@example.com")
            .env("ORGA_BASE_URL", &upstream)
            .env("ORGA_PROXY_SERVER__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "trace"),
    );
    let client = client();
    let url = format!("http://{}/api/orga/credentials", proxy.addr);
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let response = client
            .get(&url)
            .header("authorization", "Bearer caller-canary-bearer")
            .header("cookie", "session=caller-canary-cookie")
            .header("x-api-key", "caller-canary-x-api-key")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        tokens.push(body["ephemeralToken"].as_str().unwrap().to_owned());
        tokens.push(
            body["iceServers"][1]["credential"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (status, logs) = proxy.stop();
    assert_eq!(status, Some(0), "SIGTERM is a clean exit:\n{logs}");
    assert!(
        logs.contains(r#""level":"TRACE""#),
        "trace logging was on:\n{logs}"
    );
    assert!(logs.contains("request finished"));
    for secret in [
        KEY,
        "caller-canary-bearer",
        "caller-canary-cookie",
        "caller-canary-x-api-key",
    ]
    .into_iter()
    .chain(tokens.iter().map(String::as_str))
    {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}

#[tokio::test]
async fn healthcheck_exits_0_on_a_live_server_and_1_otherwise() {
    let app = spawn_app().await;
    let url = app.url("/healthz");
    let ok = tokio::task::spawn_blocking(move || run(command(&["healthcheck", "--url", &url])))
        .await
        .unwrap();
    assert_eq!(ok.status.code(), Some(0));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = tokio::task::spawn_blocking(move || {
        run(command(&["healthcheck"]).env("PORT", port.to_string()))
    })
    .await
    .unwrap();
    assert_eq!(down.status.code(), Some(1));
}

pub(crate) fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("orga-proxy-test-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
