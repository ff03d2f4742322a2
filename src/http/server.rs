//! The accept loop and connection settings, on hyper (axum's own `serve` has no header
//! read timeout and no way to refuse HTTP/2).
//!
//! - HTTP/1.1 only by default: hyper's HTTP/1 connection, which answers an HTTP/2
//!   preface with an error and closes. hyper-util's `auto` builder would sniff the
//!   protocol and serve plaintext HTTP/2 even with `http1_only()`.
//! - With `server.http2`, prior-knowledge HTTP/2 (h2c) too, with keep-alive pings and
//!   their timeout, a cap on concurrent streams and on the header list, and an idle
//!   timeout: a connection with no open stream for `header_read_timeout` is sent GOAWAY.
//! - A connection must send its first byte within `header_read_timeout` (hyper's
//!   header timer starts with the first byte), and hyper cuts off a client that
//!   trickles its headers or idles between keep-alive requests for longer.
//! - An optional cap on open connections: past it a new connection is closed at once,
//!   so one listener (the metrics one) can never take every file descriptor.
//! - Shutdown stops accepting, asks every connection to finish (HTTP/1 keep-alive off,
//!   HTTP/2 GOAWAY) and waits for them. hyper-util's `GracefulShutdown` does the same
//!   but cannot be combined with the HTTP/2 idle timeout, so the few lines are here.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Most request headers hyper accepts (its default is 100); the JSON 431 of the edge
/// limits decides below that, by total size.
const MAX_HEADERS: usize = 128;
/// hyper's read buffer for a request head, and the HTTP/2 header list limit; larger
/// heads get the parser's bare 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// HTTP/2 streams a connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// How often an HTTP/2 connection is pinged, and how long the answer may take.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How a listener serves its connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// `server.header_read_timeout`: first byte, request head, and idle time.
    pub header_read_timeout: Duration,
    /// `server.http2`: also serve prior-knowledge HTTP/2.
    pub http2: bool,
    /// Connections open at once at most; `None` for no cap.
    pub max_connections: Option<usize>,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets every open
/// connection finish and returns. Requests carry the peer as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let connections = TaskTracker::new();
    let cap = options.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match &cap {
            Some(cap) => match cap.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    warn_full_once(&listener);
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let (router, stopped) = (router.clone(), stopped.clone());
        connections.spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, router, options, stopped).await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    connections.close();
    connections.wait().await;
    Ok(())
}

fn warn_full_once(listener: &TcpListener) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::warn!(listen = %addr, "connection cap reached: new connections are closed at once");
    }
}

/// Serves one connection until it closes, idles out, or shutdown asks it to finish.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    options: ServeOptions,
    stopped: watch::Receiver<bool>,
) {
    // hyper's header timer starts with the first byte: a connection that never sends
    // one would otherwise be held forever.
    let mut first = [0u8; 1];
    match tokio::time::timeout(options.header_read_timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let activity = Activity::default();
    let service = {
        let activity = activity.clone();
        tower::service_fn(move |mut request: axum::http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let open = activity.start();
            let answer = router.clone().oneshot(request);
            async move {
                let response = answer.await;
                drop(open);
                response
            }
        })
    };
    let service = TowerToHyperService::new(service);
    let io = TokioIo::new(stream);
    let result = if options.http2 {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEAD_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_header_list_size(MAX_HEAD_BYTES as u32);
        let idle = Some((activity, options.header_read_timeout));
        // Boxed: the HTTP/2-capable connection is several times the size of the
        // HTTP/1 one, and held inline it would make every connection's task that size.
        Box::pin(drive(builder.serve_connection(io, service), stopped, idle))
            .await
            .map_err(|e| e.to_string())
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEAD_BYTES);
        drive(builder.serve_connection(io, service), stopped, None)
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection closed with an error");
    }
}

/// Polls `connection` to its end, asking it to finish gracefully when shutdown starts,
/// or (HTTP/2) when it has had no request open for the idle timeout.
async fn drive<C: GracefulConnection>(
    connection: C,
    mut stopped: watch::Receiver<bool>,
    idle: Option<(Activity, Duration)>,
) -> Result<(), C::Error> {
    tokio::pin!(connection);
    let finishing = async {
        match &idle {
            Some((activity, timeout)) => tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => {}
                () = activity.idle_for(*timeout) => {}
            },
            None => {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        }
    };
    tokio::select! {
        result = &mut connection => return result,
        () = finishing => {}
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

/// Requests open on one connection, and since when it has had none.
#[derive(Debug, Clone, Default)]
struct Activity(Arc<Mutex<ActivityState>>);

#[derive(Debug)]
struct ActivityState {
    open: usize,
    idle_since: Instant,
}

impl Default for ActivityState {
    fn default() -> Self {
        Self {
            open: 0,
            idle_since: Instant::now(),
        }
    }
}

/// Held while a request is open on the connection.
#[derive(Debug)]
struct OpenRequest(Activity);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.open = state.open.saturating_sub(1);
        if state.open == 0 {
            state.idle_since = Instant::now();
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self) -> OpenRequest {
        self.lock().open += 1;
        OpenRequest(self.clone())
    }

    /// Resolves once no request has been open for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let wake = {
                let state = self.lock();
                if state.open == 0 && state.idle_since.elapsed() >= timeout {
                    return;
                }
                // While requests are open, look again after a full timeout.
                if state.open == 0 {
                    state.idle_since + timeout
                } else {
                    Instant::now() + timeout
                }
            };
            tokio::time::sleep_until(wake).await;
        }
    }
}
