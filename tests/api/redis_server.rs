//! A real `redis-server` for the tests that need one (rate limits, quotas, relay token
//! binding, TLS and passwords): started on a free 127.0.0.1 port, killed when dropped.
//! Without `redis-server` a test prints a loud SKIPPED line, except in CI (`CI=true`),
//! where it fails.

use crate::helpers::find_tool;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    /// Serving TLS only (`rediss://`).
    tls: bool,
}

/// How a test's `redis-server` listens.
#[derive(Clone, Copy)]
pub enum Listen<'a> {
    /// Plain TCP (`redis://`).
    Plain,
    /// TLS only (`--port 0`), with this certificate and key; clients are not asked
    /// for a certificate.
    Tls {
        /// PEM certificate chain the server presents.
        cert: &'a Path,
        /// Its PEM private key.
        key: &'a Path,
        /// PEM CA file (redis-server wants one even when clients send no certificate).
        ca: &'a Path,
    },
}

impl RedisServer {
    /// Starts one on a free port, or explains why not (`None`: skipped).
    pub fn start(test: &str) -> Option<Self> {
        let binary = redis_server_binary(test)?;
        Some(Self::start_on(&binary, free_port()))
    }

    /// Starts one on `port` (a test that starts Redis late picks the port first).
    pub fn start_on(binary: &PathBuf, port: u16) -> Self {
        Self::spawn(binary, port, Listen::Plain, &[])
    }

    /// Starts one that listens as `listen` says, with `extra` arguments (such as
    /// `--requirepass`), or explains why not (`None`: skipped).
    pub fn start_with(test: &str, listen: Listen, extra: &[&str]) -> Option<Self> {
        let binary = redis_server_binary(test)?;
        Some(Self::spawn(&binary, free_port(), listen, extra))
    }

    fn spawn(binary: &PathBuf, port: u16, listen: Listen, extra: &[&str]) -> Self {
        let port_text = port.to_string();
        let mut command = Command::new(binary);
        match listen {
            Listen::Plain => command.args(["--port", &port_text]),
            Listen::Tls { cert, key, ca } => command
                .args(["--port", "0", "--tls-port", &port_text])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server starts");
        let tls = matches!(listen, Listen::Tls { .. });
        let server = Self { child, port, tls };
        server.wait_until_answering();
        server
    }

    /// `redis://` or `rediss://` (as it listens) on 127.0.0.1, database 0.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// [`RedisServer::url`] with a password.
    pub fn url_with_password(&self, password: &str) -> String {
        self.url().replacen("://", &format!("://:{password}@"), 1)
    }

    /// Waits until the server answers a plain `PING` (an error such as `NOAUTH` counts:
    /// it is up), or, serving TLS, until it accepts connections.
    fn wait_until_answering(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                if self.tls {
                    return;
                }
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut reply = [0u8; 1];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && matches!(&reply, b"+" | b"-")
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer within 10 s",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    /// Runs one command against this server (for tests inspecting what the proxy stored).
    pub async fn command<T: redis::FromRedisValue>(&self, name: &str, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd(name)
            .arg(args)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Every key stored, and the milliseconds each has left (`PTTL`).
    pub async fn keys_with_ttl(&self) -> Vec<(String, i64)> {
        let keys: Vec<String> = self.command("KEYS", &["*"]).await;
        let mut with_ttl = Vec::with_capacity(keys.len());
        for key in keys {
            let ttl = self.command("PTTL", &[&key]).await;
            with_ttl.push((key, ttl));
        }
        with_ttl
    }
}

/// `redis-server` from PATH; in CI its absence is a failure, elsewhere a loud skip.
pub fn redis_server_binary(test: &str) -> Option<PathBuf> {
    find_tool("redis-server", test, "apt-get install redis-server")
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
