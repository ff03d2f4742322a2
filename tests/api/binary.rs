//! The binary under test: commands with a clean environment, and [`Proxy`], a running
//! `serve` whose output is collected (waiting for lines, signals, exit status).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_orga-proxy");

/// The binary with a clean environment: no inherited ORGA_* or PORT, and a working
/// directory without a config/orga-proxy.toml.
pub(crate) fn command(args: &[&str]) -> Command {
    clean(Command::new(BIN), args)
}

/// As [`command`], run under a shell that first lowers the open-file limit to `limit`.
pub(crate) fn command_under_fd_limit(limit: u32, args: &[&str]) -> Command {
    let mut shell = Command::new("sh");
    shell.args([
        "-c",
        &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
        BIN,
    ]);
    clean(shell, args)
}

fn clean(mut command: Command, args: &[&str]) -> Command {
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

/// The stderr of a run that refused its configuration, asserting that it did (exit 2).
pub(crate) fn refused_configuration(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    stderr
}

/// The problem lines of such a stderr: one per problem, indented by two spaces.
pub(crate) fn problem_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("  ")).collect()
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

/// `serve` against `upstream` with the key and email of `helpers::test_config`, on a
/// free port: a complete configuration, for tests about something else.
pub(crate) fn serving_test_config_against(upstream: &str) -> Command {
    let mut serve = command(&["serve"]);
    serve
        .env("ORGA_API_KEY", crate::helpers::TEST_API_KEY)
        .env("ORGA_USER_EMAIL", crate::helpers::TEST_EMAIL)
        .env("ORGA_BASE_URL", upstream)
        .env("ORGA_PROXY_SERVER__LISTEN", "127.0.0.1:0");
    serve
}

/// Starts `command` with no stdin and its stdout and stderr piped to the test.
pub(crate) fn spawn_piped(command: &mut Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts")
}

/// The binary running `serve` (or `dev`), with its stdout and stderr collected.
pub(crate) struct Proxy {
    child: Child,
    output: Arc<Mutex<String>>,
    /// The public listener's address.
    pub(crate) addr: String,
    /// The metrics listener's address, when it is on.
    pub(crate) metrics_addr: Option<String>,
}

/// A field of the "orga-proxy listening" line, JSON or text (`key=value`, read past
/// any colour codes, which a test of their absence must get far enough to see).
fn listening_field(line: &str, key: &str) -> Option<String> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return json[key].as_str().map(str::to_owned);
    }
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // `ESC [ ... m`: skip to the final letter.
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    let value = plain
        .split(' ')
        .find_map(|field| field.strip_prefix(&format!("{key}=")))?;
    Some(value.to_owned())
}

impl Proxy {
    /// Starts `command` and waits until it logs that it listens.
    pub(crate) fn start(command: &mut Command) -> Proxy {
        let mut child = spawn_piped(command);
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
        let line = loop {
            let text = output.lock().unwrap().clone();
            // `serve` says "orga-proxy listening", `dev` its warning banner (as a log line).
            let listening = text.lines().find(|l| {
                l.contains("orga-proxy listening") || (l.starts_with('{') && l.contains("DEV MODE"))
            });
            if let Some(line) = listening {
                break line.to_owned();
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("proxy did not start:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Proxy {
            child,
            output,
            addr: listening_field(&line, "listen").unwrap_or_default(),
            metrics_addr: listening_field(&line, "metrics_listen").filter(|a| a != "off"),
        }
    }

    /// The URL of its credentials route (at the default path).
    pub(crate) fn credentials_url(&self) -> String {
        format!("http://{}/api/orga/credentials", self.addr)
    }

    /// `GET` its credentials route.
    pub(crate) async fn get_credentials(&self) -> reqwest::Response {
        crate::helpers::client()
            .get(self.credentials_url())
            .send()
            .await
            .expect("the proxy answers")
    }

    /// Everything it printed so far.
    pub(crate) fn logs(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until it has printed `needle` `times` times in all; panics if it exits
    /// first, or after 20 s.
    pub(crate) fn wait_for_log(&mut self, needle: &str, times: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let logs = self.logs();
            if logs.matches(needle).count() >= times {
                return logs;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "it exited ({status}) before logging {needle:?}:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} was not logged {times} time(s):\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal, by name (`HUP`, `TERM`...).
    pub(crate) fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{name} failed");
    }

    /// True while the process has not exited.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and returns the exit status and everything it printed.
    pub(crate) fn stop(mut self) -> (Option<i32>, String) {
        if self.is_running() {
            self.signal("TERM");
        }
        self.wait()
    }

    /// Waits for the process to exit (it has been told to); its status and output.
    pub(crate) fn wait(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not exit:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reader threads take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        (status.code(), self.logs())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // A failed test must not leave the process behind; after a wait this is a no-op.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
