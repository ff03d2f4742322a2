//! The audit trail end to end: each record field by field (success and pool hit), no
//! token in the file, a hostile `User-Agent`, a failing sink (503 and readiness, then
//! recovery), and with the binary: SIGTERM with requests in flight, logrotate's move and
//! SIGHUP, the stdout sink, and start-up refusals. Plus the count under load: every
//! credential issued is in the file exactly once.

use crate::auth::{HS_SECRET, hs256};
use crate::cli::{
    Proxy, command, refused_configuration, run, serving_test_config_against, tempdir,
};
use crate::helpers::*;
use orga_proxy::clock::Clock;
use orga_proxy::config::{AuditSink, AuthMode, Config, TrustedProxies};
use orga_proxy::orga::mock::MockOptions;
use orga_proxy::secret::Secret;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The audit file `audit.log` in a fresh directory.
fn audit_path() -> PathBuf {
    tempdir().join("audit.log")
}

fn file_sink(path: &Path) -> impl FnOnce(&mut Config) {
    let path = path.to_owned();
    move |config| config.audit.sink = AuditSink::File(path)
}

/// Every record in `path`, each line checked to be one whole JSON object.
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let record: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(record.is_object(), "{line}");
            record
        })
        .collect()
}

/// The fingerprints of the records in `path`.
fn fingerprints(path: &Path) -> Vec<String> {
    records(path)
        .iter()
        .map(|r| r["token_fingerprint"].as_str().unwrap().to_owned())
        .collect()
}

/// The first 16 hex digits of the SHA-256 of `token`, computed here independently.
fn fingerprint(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The body of a 200 answer.
async fn issued(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Polls `/readyz` until it answers `want`, for at most 10 s; returns the body.
async fn wait_for_readiness(app: &TestApp, want: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = app.get("/readyz").await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the counter `name` in this process's metrics.
fn counter(name: &str) -> f64 {
    let text = orga_proxy::metrics::install().render();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |value| value.parse().unwrap())
}

#[tokio::test]
async fn a_credential_is_recorded_field_by_field_and_its_token_never() {
    let path = audit_path();
    let clock = Clock::manual(humantime::parse_rfc3339("2026-03-01T12:34:56.789Z").unwrap());
    let now = clock.wall().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    let app = spawn_app_with_clock(&upstream, clock, |c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt.secret = Secret::new(HS_SECRET);
        c.audit.sink = AuditSink::File(path.clone());
        c.audit.claims = ["org_id", "admin", "tier", "nested", "absent"]
            .map(String::from)
            .into();
        c.rate_limit.trusted_proxies = TrustedProxies::try_from(vec!["127.0.0.1".into()]).unwrap();
    })
    .await;
    let jwt = hs256(
        HS_SECRET.as_bytes(),
        &json!({"sub": "user-7", "exp": now + 600, "org_id": "acme", "admin": true,
                "tier": 3, "nested": {"role": "x"}}),
    );
    let response = app
        .client
        .get(app.url(&app.credentials_path))
        .bearer_auth(&jwt)
        .header("origin", "https://app.example.com")
        .header("user-agent", "audit-test/1.0")
        .header("x-request-id", "req-audit-1")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    let body = issued(response).await;
    let token = body["ephemeralToken"].as_str().unwrap();
    assert_eq!(
        records(&path),
        [json!({
            "time": "2026-03-01T12:34:56.789Z",
            "audit": "credential",
            "request_id": "req-audit-1",
            "outcome": "issued",
            "subject": "user-7",
            "claims": {"org_id": "acme", "admin": true, "tier": 3},
            "client_ip": "203.0.113.9",
            "origin": "https://app.example.com",
            "user_agent": "audit-test/1.0",
            "token_fingerprint": fingerprint(token),
            "expires_at": body["expiresAt"],
            "pool_hit": false,
        })]
    );
    assert!(
        body["expiresAt"].is_u64(),
        "the fake gives an expiry: {body}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let turn = body["iceServers"][1]["credential"].as_str().unwrap();
    for secret in [token, &jwt, turn, HS_SECRET, TEST_API_KEY] {
        assert!(!text.contains(secret), "{secret} is in the audit file");
    }
}

#[tokio::test]
async fn a_pool_hit_is_recorded_as_one() {
    let path = audit_path();
    let app = spawn_app_with(|c| {
        file_sink(&path)(c);
        c.pool.enabled = true;
        c.pool.size = orga_proxy::config::PoolSize::Fixed(1);
    })
    .await;
    let pool = app.state.pool.clone().expect("the pool is on");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.is_empty() {
        assert!(Instant::now() < deadline, "the pool never filled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = issued(app.get_credentials().await).await;
    let records = records(&path);
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record["pool_hit"], true);
    assert_eq!(record["outcome"], "issued");
    assert_eq!(record["subject"], Value::Null, "auth mode none");
    assert_eq!(record["client_ip"], "127.0.0.1");
    assert!(record.get("claims").is_none(), "{record}");
    assert_eq!(
        record["token_fingerprint"],
        fingerprint(body["ephemeralToken"].as_str().unwrap())
    );
    assert_eq!(record["expires_at"], body["expiresAt"]);
    assert!(
        record["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{record}"
    );
}

#[tokio::test]
async fn a_relayed_call_is_recorded_with_its_conversation_and_the_policys_decisions() {
    use crate::relay::{OFFER_SDP, call_answer, relay_app, sdk_body};
    let path = audit_path();
    let relay = relay_app(call_answer(), |c| {
        c.auth.mode = AuthMode::ApiKey;
        c.auth.api_keys = api_keys(&["web:audit-relay-key-0123456789"]);
        c.audit.sink = AuditSink::File(path.clone());
        c.relay.policy.voices = vec!["Sofía".into()];
        c.relay.on_violation = orga_proxy::config::OnViolation::Override;
    })
    .await;
    let credentials = relay
        .app
        .client
        .get(relay.app.url(&relay.app.credentials_path))
        .header("x-api-key", "audit-relay-key-0123456789")
        .send()
        .await
        .unwrap();
    let token = issued(credentials).await["ephemeralToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut body = sdk_body(OFFER_SDP);
    body["params"]["voice"] = json!("alloy");
    assert_eq!(relay.start(&token, &body).await.status(), 200);
    assert_eq!(relay.start(&token, &body).await.status(), 401, "a replay");

    let records = records(&path);
    assert_eq!(
        records.len(),
        2,
        "the credential and the one relayed call: {records:?}"
    );
    let call = &records[1];
    assert_eq!(call["audit"], "relay", "{call}");
    assert_eq!(call["outcome"], "ok", "{call}");
    assert_eq!(
        call["subject"], "api_key:web",
        "the subject the token was issued to"
    );
    assert_eq!(call["conversation_id"], "conv_recorded", "{call}");
    assert_eq!(call["policy"]["voice"], "overridden", "{call}");
    assert_eq!(call["token_fingerprint"], records[0]["token_fingerprint"]);
    assert_eq!(call["token_fingerprint"], fingerprint(&token));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&token), "the token itself is never written");
}

#[tokio::test]
async fn a_relayed_call_is_recorded_even_when_its_client_goes_away_mid_call() {
    use crate::relay::{CALLS, OFFER_SDP, call_answer, relay_app, sdk_body};
    // Orga takes 600 ms; the client gives up after 150 ms. The call Orga started is
    // billable all the same, so its record must be written.
    let path = audit_path();
    let relay = relay_app(call_answer().set_delay(Duration::from_millis(600)), |c| {
        c.audit.sink = AuditSink::File(path.clone());
    })
    .await;
    let token = relay.token().await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let gone = impatient
        .post(relay.app.url(CALLS))
        .bearer_auth(&token)
        .json(&sdk_body(OFFER_SDP))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up first");
    let deadline = Instant::now() + Duration::from_secs(10);
    while records(&path).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no relay record: {:?}",
            records(&path)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = &records(&path)[1];
    assert_eq!(call["audit"], "relay", "{call}");
    assert_eq!(call["outcome"], "ok", "{call}");
    assert_eq!(call["conversation_id"], "conv_recorded", "{call}");
}

#[tokio::test]
async fn a_hostile_user_agent_cannot_forge_a_record() {
    const HOSTILE: &str = r#"evil", "outcome":"forged"}{"audit":"credential","outcome":"issued","subject":"admin","x":""#;
    let path = audit_path();
    let app = spawn_app_with(file_sink(&path)).await;
    let response = app
        .client
        .get(app.url(&app.credentials_path))
        .header("user-agent", HOSTILE)
        .send()
        .await
        .unwrap();
    issued(response).await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let record = &records(&path)[0];
    assert_eq!(record["user_agent"], HOSTILE);
    assert_eq!(record["outcome"], "issued");
    assert_eq!(record["subject"], Value::Null);
}

#[tokio::test]
async fn a_deleted_directory_refuses_credentials_and_readiness_until_it_is_back() {
    let path = audit_path();
    let dir = path.parent().unwrap().to_owned();
    let app = spawn_app_with(file_sink(&path)).await;
    issued(app.get_credentials().await).await;
    assert_eq!(records(&path).len(), 1);
    let failures_before = counter("orga_proxy_audit_write_failures_total");

    std::fs::remove_dir_all(&dir).unwrap();
    let body = wait_for_readiness(&app, 503).await;
    assert_eq!(body["reasons"], json!(["audit"]));
    let refused = app.get_credentials().await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("audit"),
        "{body}"
    );
    assert!(
        body.get("ephemeralToken").is_none(),
        "the token is discarded"
    );
    assert!(counter("orga_proxy_audit_write_failures_total") > failures_before);

    std::fs::create_dir_all(&dir).unwrap();
    wait_for_readiness(&app, 200).await;
    let body = issued(app.get_credentials().await).await;
    assert_eq!(
        fingerprints(&path),
        [fingerprint(body["ephemeralToken"].as_str().unwrap())],
        "a new file at the path, holding the one credential issued since"
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().count() == 1,
        "no probe file left behind"
    );
}

#[tokio::test]
async fn a_full_disk_refuses_credentials_until_a_write_succeeds_again() {
    let path = audit_path();
    // Every write to /dev/full fails with ENOSPC, like a full disk.
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let app = spawn_app_with(file_sink(&path)).await;
    let refused = app.get_credentials().await;
    assert_eq!(refused.status(), 503);
    assert_eq!(error_code(refused).await, "unavailable");

    // Room again: the path is a plain file, and the next write reopens it.
    std::fs::remove_file(&path).unwrap();
    let body = issued(app.get_credentials().await).await;
    assert_eq!(
        fingerprints(&path),
        [fingerprint(body["ephemeralToken"].as_str().unwrap())]
    );
    wait_for_readiness(&app, 200).await;
}

#[tokio::test]
async fn under_load_every_credential_issued_is_recorded_exactly_once() {
    let path = audit_path();
    let app = spawn_app_with(file_sink(&path)).await;
    let url = app.url(&app.credentials_path);
    let mut calls = tokio::task::JoinSet::new();
    // 400 credentials, 40 at a time.
    for _ in 0..40 {
        let (client, url) = (app.client.clone(), url.clone());
        calls.spawn(async move {
            let mut tokens = Vec::new();
            for _ in 0..10 {
                let body: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                tokens.push(body["ephemeralToken"].as_str().unwrap().to_owned());
            }
            tokens
        });
    }
    let issued: Vec<String> = calls.join_all().await.into_iter().flatten().collect();
    assert_eq!(issued.len(), 400);
    let recorded = fingerprints(&path);
    assert_eq!(recorded.len(), issued.len(), "issued = records");
    let recorded: HashSet<String> = recorded.into_iter().collect();
    let expected: HashSet<String> = issued.iter().map(|t| fingerprint(t)).collect();
    assert_eq!(
        recorded, expected,
        "each credential's own record, none twice"
    );
}

/// The binary serving against `upstream`, with the audit trail in `sink`.
fn proxy(upstream: &str, sink: &str) -> Proxy {
    Proxy::start(
        serving_test_config_against(upstream)
            .env("ORGA_PROXY_RATE_LIMIT__ENABLED", "false")
            .env("ORGA_PROXY_AUDIT__SINK", sink),
    )
}

/// Gets `n` credentials from the binary one after the other; their tokens.
async fn tokens_from(proxy: &Proxy, n: usize) -> Vec<String> {
    let url = proxy.credentials_url();
    let mut tokens = Vec::new();
    for _ in 0..n {
        let body = issued(client().get(&url).send().await.unwrap()).await;
        tokens.push(body["ephemeralToken"].as_str().unwrap().to_owned());
    }
    tokens
}

/// Sends `n` credentials requests to the binary at once. Each task ends with the token
/// it was given, or `None` when it got no 200 (the process may be stopping).
fn requests_at_once(proxy: &Proxy, n: usize) -> tokio::task::JoinSet<Option<String>> {
    let url = proxy.credentials_url();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let url = url.clone();
        calls.spawn(async move {
            let response = client().get(&url).send().await.ok()?;
            if response.status() != 200 {
                return None;
            }
            let body: Value = response.json().await.ok()?;
            body["ephemeralToken"].as_str().map(str::to_owned)
        });
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_requests_in_flight_leaves_every_issued_credential_on_disk() {
    let upstream = slow_mock_upstream(Duration::from_millis(50)).await;
    let path = audit_path();
    let proxy = proxy(&upstream, path.to_str().unwrap());
    let calls = requests_at_once(&proxy, 200);
    tokio::time::sleep(Duration::from_millis(150)).await;
    proxy.signal("TERM");
    let issued: Vec<String> = calls.join_all().await.into_iter().flatten().collect();
    let (status, logs) = proxy.stop();
    assert_eq!(status, Some(0), "{logs}");
    assert!(!issued.is_empty(), "some requests were in flight");
    assert!(logs.contains("audit trail written and closed"), "{logs}");
    let recorded = fingerprints(&path);
    let expected: Vec<String> = issued.iter().map(|t| fingerprint(t)).collect();
    assert_eq!(recorded.len(), expected.len(), "issued = records");
    assert_eq!(
        recorded.into_iter().collect::<HashSet<_>>(),
        expected.into_iter().collect::<HashSet<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_the_answers_loses_no_record() {
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    let path = audit_path();
    let proxy = proxy(&upstream, path.to_str().unwrap());
    let calls = requests_at_once(&proxy, 50).join_all().await;
    let issued: Vec<String> = calls
        .into_iter()
        .map(|token| token.expect("every request is answered 200"))
        .collect();
    // No drain, no flush on the way out: what was acknowledged must already be written.
    proxy.signal("KILL");
    let _ = proxy.stop();
    let expected: HashSet<String> = issued.iter().map(|t| fingerprint(t)).collect();
    assert_eq!(
        fingerprints(&path).into_iter().collect::<HashSet<_>>(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_file_is_reopened_on_sighup_and_nothing_is_lost() {
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    let path = audit_path();
    let rotated = path.with_extension("log.1");
    let proxy = proxy(&upstream, path.to_str().unwrap());
    let before = tokens_from(&proxy, 3).await;
    std::fs::rename(&path, &rotated).unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.logs().contains("audit file reopened") {
        assert!(Instant::now() < deadline, "no reopen:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = tokens_from(&proxy, 3).await;
    let (status, logs) = proxy.stop();
    assert_eq!(status, Some(0), "SIGHUP did not end the process:\n{logs}");
    let of = |tokens: &[String]| tokens.iter().map(|t| fingerprint(t)).collect::<Vec<_>>();
    assert_eq!(
        fingerprints(&rotated),
        of(&before),
        "the old file kept its records"
    );
    assert_eq!(fingerprints(&path), of(&after), "the new file has the rest");
}

#[tokio::test]
async fn the_stdout_sink_writes_records_between_the_log_lines() {
    let upstream = spawn_mock_upstream(MockOptions::default()).await;
    let proxy = proxy(&upstream, "stdout");
    let tokens = tokens_from(&proxy, 2).await;
    let (status, logs) = proxy.stop();
    assert_eq!(status, Some(0));
    let recorded: Vec<Value> = logs
        .lines()
        .filter(|line| line.starts_with(r#"{"time""#) && line.contains(r#""audit":"credential""#))
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let fingerprints: Vec<&str> = recorded
        .iter()
        .map(|r| r["token_fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(
        fingerprints,
        tokens.iter().map(|t| fingerprint(t)).collect::<Vec<_>>()
    );
    for token in &tokens {
        assert!(!logs.contains(token.as_str()), "a token reached stdout");
    }
}

#[test]
fn a_sink_that_cannot_be_written_or_settings_that_cannot_work_do_not_start() {
    let output = run(command(&["serve"])
        .env("ORGA_API_KEY", TEST_API_KEY)
        .env(
            "ORGA_PROXY_AUDIT__SINK",
            "/nonexistent-orga-proxy/audit.log",
        )
        .env("ORGA_PROXY_AUDIT__CLAIMS", "org_id")
        .env("ORGA_PROXY_QUOTA__PER_SUBJECT_PER_DAY", "100"));
    let stderr = refused_configuration(&output);
    for key in [
        "audit.sink (ORGA_PROXY_AUDIT__SINK): the directory /nonexistent-orga-proxy does not exist",
        "audit.claims (ORGA_PROXY_AUDIT__CLAIMS)",
        "quota.per_subject_per_day (ORGA_PROXY_QUOTA__PER_SUBJECT_PER_DAY)",
    ] {
        assert!(stderr.contains(key), "missing {key:?} in:\n{stderr}");
    }
    assert!(
        String::from_utf8_lossy(&output.stdout).is_empty(),
        "nothing started"
    );
}
