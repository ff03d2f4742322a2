//! The binary: configuration errors and their exit status (including configuration
//! that must not start), `check-config`, `healthcheck`, secrets absent from the logs at
//! trace level, and text logs without colour codes in a pipe.

pub(crate) use crate::binary::{
    Proxy, command, problem_lines, refused_configuration, run, serving_against,
    serving_test_config_against, spawn_piped,
};
use crate::helpers::*;
use orga_proxy::orga::mock::MockOptions;
use orga_proxy::secret::Secret;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

#[test]
fn a_bad_configuration_exits_2_with_one_line_per_problem_naming_key_and_env_var() {
    let output = run(command(&["serve"])
        .env("ORGA_PROXY_SERVER__REQUEST_TIMEOUT", "soon")
        .env(
            "ORGA_PROXY_CORS__ALLOWED_ORIGINS",
            "https://ok.example,https://bad.example/",
        )
        .env("ORGA_USER_EMAIL", "not-an-email"));
    let stderr = refused_configuration(&output);
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
    let stderr = refused_configuration(&output);
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
    assert_eq!(problem_lines(&stderr).len(), 3, "{stderr}");
}

#[test]
fn environment_values_in_array_syntax_are_lists_only_for_keys_that_take_a_list() {
    let output = run(command(&["check-config"])
        .env("ORGA_API_KEY", "sk_orga_ai_x")
        .env("ORGA_PROXY_RELAY__POLICY__INSTRUCTIONS", "[Be brief]")
        .env("ORGA_PROXY_AUTH__MODE", "jwt")
        .env(
            "ORGA_PROXY_AUTH__JWT__SECRET",
            "[0123456789abcdef0123456789abcdef]",
        )
        .env("ORGA_PROXY_AUTH__JWT__AUDIENCE", "[api]")
        .env(
            "ORGA_PROXY_RELAY__POLICY__VOICES",
            r#"["Sofía", "Victoria"]"#,
        )
        .env("ORGA_PROXY_RELAY__POLICY__MODELS", "['orga-1', 007]")
        .env("ORGA_PROXY_RELAY__POLICY__TEMPERATURE", "[0.2, 0.7]"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        r#"instructions = "[Be brief]""#,
        r#"audience = "[api]""#,
        "\"Sofía\",\n    \"Victoria\",",
        "0.2,\n    0.7,",
        "\"orga-1\",\n    \"007\",",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("0123456789abcdef"),
        "the secret is redacted"
    );
}

#[test]
fn a_short_api_key_does_not_start_and_the_problem_is_told_without_the_key() {
    let output = run(command(&["check-config"])
        .env("ORGA_API_KEY", "sk_orga_ai_x")
        .env("ORGA_PROXY_AUTH__MODE", "api_key")
        .env(
            "ORGA_PROXY_AUTH__API_KEYS",
            "web:canary,web:canary-0123456789abc",
        ));
    let stderr = refused_configuration(&output);
    assert!(
        stderr.contains("auth.api_keys (ORGA_PROXY_AUTH__API_KEYS): entry 1 is shorter than 16"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"web\" is used more than once"),
        "{stderr}"
    );
    assert!(!stderr.contains("canary"), "{stderr}");
}

#[test]
fn a_bad_tokio_worker_threads_value_exits_2_instead_of_panicking() {
    for bad in ["abc", "0", "-1"] {
        let output = run(command(&["check-config"]).env("TOKIO_WORKER_THREADS", bad));
        let stderr = refused_configuration(&output);
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
    let stderr = refused_configuration(&output);
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
    let stderr = refused_configuration(&output);
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
    let stderr = refused_configuration(&output);
    assert!(!stderr.contains("CANARY"), "the secret leaked: {stderr}");
    let problems = problem_lines(&stderr);
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
    let stderr = refused_configuration(&output);
    assert!(
        stderr.contains("  ratelimit (ORGA_PROXY_RATELIMIT): unknown key"),
        "{stderr}"
    );
}

#[test]
fn a_variable_with_one_underscore_too_many_is_an_unknown_key_not_a_crash() {
    let output = run(command(&["check-config"])
        .env("ORGA_API_KEY", "sk_orga_ai_x")
        .env("ORGA_PROXY___MODE", "api_key"));
    let stderr = refused_configuration(&output);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("(ORGA_PROXY___MODE): unknown key"),
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
    assert!(refused_configuration(&output).contains("set only one"));
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
    let url = proxy.credentials_url();
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

#[tokio::test]
async fn text_logs_carry_no_colour_codes_when_stdout_is_not_a_terminal() {
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    let mut proxy =
        Proxy::start(serving_test_config_against(&upstream).env("ORGA_PROXY_LOG__FORMAT", "text"));
    let url = format!("http://{}/healthz", proxy.addr);
    assert_eq!(client().get(url).send().await.unwrap().status(), 200);
    let logs = proxy.wait_for_log("request finished", 1);
    assert!(
        !logs.contains('\u{1b}'),
        "escape codes in logs written to a pipe:\n{logs:?}"
    );
    assert!(logs.contains(" INFO "), "text lines:\n{logs}");
    let (status, _) = proxy.stop();
    assert_eq!(status, Some(0));
}

/// Runs `serve` with these variables added to a valid configuration and returns its
/// exit status and stderr; panics if it starts listening instead of refusing.
fn refuses_to_start(variables: &[(&str, &OsStr)]) -> (Option<i32>, String) {
    let mut command = command(&["serve"]);
    command
        .env("ORGA_API_KEY", TEST_API_KEY)
        .env("ORGA_USER_EMAIL", TEST_EMAIL)
        .env("ORGA_PROXY_SERVER__LISTEN", "127.0.0.1:0");
    for (name, value) in variables {
        command.env(name, value);
    }
    let mut child = spawn_piped(&mut command);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "it started with {variables:?}:\n{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.stdout.is_empty(),
        "nothing is logged: nothing started"
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn text(value: &str) -> &OsStr {
    OsStr::new(value)
}

#[test]
fn trusted_proxy_ranges_that_trust_everyone_or_have_host_bits_set_do_not_start() {
    const KEY: &str = "rate_limit.trusted_proxies (ORGA_PROXY_RATE_LIMIT__TRUSTED_PROXIES)";
    for everyone in ["0.0.0.0/1,128.0.0.0/1", "::/1,8000::/1"] {
        let (status, stderr) =
            refuses_to_start(&[("ORGA_PROXY_RATE_LIMIT__TRUSTED_PROXIES", text(everyone))]);
        assert_eq!(status, Some(2), "{stderr}");
        assert!(
            stderr.contains(KEY) && stderr.contains("every address"),
            "{stderr}"
        );
    }
    let (status, stderr) =
        refuses_to_start(&[("ORGA_PROXY_RATE_LIMIT__TRUSTED_PROXIES", text("1.2.3.4/8"))]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains(KEY) && stderr.contains("1.0.0.0/8"),
        "the network meant is named: {stderr}"
    );
}

#[test]
fn durations_longer_than_any_setting_allows_do_not_start() {
    for key in ["REQUEST_TIMEOUT", "HEADER_READ_TIMEOUT"] {
        let variable = format!("ORGA_PROXY_SERVER__{key}");
        let (status, stderr) = refuses_to_start(&[(&variable, text("300000000000y"))]);
        assert_eq!(status, Some(2), "{stderr}");
        let named = format!("server.{} ({variable})", key.to_ascii_lowercase());
        assert!(stderr.contains(&named), "{named} missing:\n{stderr}");
    }
}

#[test]
fn a_variable_that_is_not_utf8_does_not_start_and_names_its_key() {
    use std::os::unix::ffi::OsStrExt;
    let mode = OsStr::from_bytes(b"api_key\xff");
    // Skipped, it would leave auth.mode at "none": anyone could mint tokens.
    let (status, stderr) = refuses_to_start(&[("ORGA_PROXY_AUTH__MODE", mode)]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains("auth.mode (ORGA_PROXY_AUTH__MODE)") && stderr.contains("UTF-8"),
        "{stderr}"
    );
    // The conventional aliases too, and the value is not echoed.
    let key = OsStr::from_bytes(b"sk_orga_ai_canary\xff");
    let (status, stderr) = refuses_to_start(&[("ORGA_API_KEY", key)]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("orga.api_key ("), "{stderr}");
    assert!(
        stderr.contains("ORGA_API_KEY is not valid UTF-8"),
        "{stderr}"
    );
    assert!(!stderr.contains("canary"), "{stderr}");
    assert_eq!(
        problem_lines(&stderr).len(),
        1,
        "one problem, not also \"required\": {stderr}"
    );
}

#[test]
fn a_toml_error_on_an_unquoted_number_never_prints_the_digits() {
    let dir = tempdir();
    let file = dir.join("digits.toml");
    std::fs::write(&file, "[orga]\napi_key = 987654321098765432109876543210\n").unwrap();
    let (status, stderr) = refuses_to_start(&[("ORGA_PROXY_CONFIG", file.as_os_str())]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("TOML syntax error at line 2"), "{stderr}");
    assert!(
        !stderr.contains("98765432109876"),
        "the value leaked: {stderr}"
    );
}

#[test]
fn origins_with_a_wildcard_host_do_not_start_and_the_hint_says_to_list_them() {
    for pattern in ["https://*.example.com", "https://app.*.com"] {
        let (status, stderr) =
            refuses_to_start(&[("ORGA_PROXY_CORS__ALLOWED_ORIGINS", text(pattern))]);
        assert_eq!(status, Some(2), "{stderr}");
        assert!(
            stderr.contains("cors.allowed_origins (ORGA_PROXY_CORS__ALLOWED_ORIGINS)"),
            "{stderr}"
        );
        assert!(
            stderr.contains("can never match") && stderr.contains("list each origin"),
            "{stderr}"
        );
    }
}

#[test]
fn any_origin_with_a_jwt_cookie_does_not_start() {
    let (status, stderr) = refuses_to_start(&[
        ("ORGA_PROXY_CORS__ALLOWED_ORIGINS", text("*")),
        ("ORGA_PROXY_AUTH__MODE", text("jwt")),
        (
            "ORGA_PROXY_AUTH__JWT__SECRET",
            text("0123456789abcdef0123456789abcdef-canary"),
        ),
        ("ORGA_PROXY_AUTH__JWT__COOKIE", text("session")),
    ]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains("cors.allowed_origins (ORGA_PROXY_CORS__ALLOWED_ORIGINS)")
            && stderr.contains("auth.jwt.cookie"),
        "{stderr}"
    );
    assert!(!stderr.contains("canary"), "{stderr}");
}
