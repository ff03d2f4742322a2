//! A real `redis-server` for the tests of the shared backends (rate limits, quotas):
//! each test starts one on a free 127.0.0.1 port and it is killed when dropped. Without
//! `redis-server` the tests print a loud SKIPPED line, except in CI (`CI=true`), where
//! they fail.

use crate::helpers::find_tool;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one on a free port, or explains why not (`None`: skipped).
    pub fn start(test: &str) -> Option<Self> {
        let binary = redis_server_binary(test)?;
        Some(Self::start_on(&binary, free_port()))
    }

    /// Starts one on `port` (a test that starts it late, after the proxy).
    pub fn start_on(binary: &PathBuf, port: u16) -> Self {
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server starts");
        let server = Self { child, port };
        server.wait_until_answering();
        server
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn wait_until_answering(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut reply = [0u8; 7];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
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

/// `redis-server` from PATH; in CI its absence is a failure, elsewhere a loud skip.
pub fn redis_server_binary(test: &str) -> Option<PathBuf> {
    find_tool("redis-server", test, "apt-get install redis-server")
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
