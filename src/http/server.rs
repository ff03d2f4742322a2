//! The accept loop and connection settings, on hyper (axum's own `serve` has no header
//! read timeout and no way to refuse HTTP/2).
//!
//! - HTTP/1.1 only by default: hyper's HTTP/1 connection, which answers an HTTP/2
//!   preface with an error and closes. hyper-util's `auto` builder would sniff the
//!   protocol and serve plaintext HTTP/2 even with `http1_only()`.
//! - With `server.http2`, prior-knowledge HTTP/2 (h2c) too, with a cap on concurrent
//!   streams and on the header list, keep-alive pings, and an idle timeout: a connection
//!   with no request open for `header_read_timeout` is sent GOAWAY. The pings follow
//!   `header_read_timeout` too (see `h2_keep_alive`), so one setting bounds how long
//!   any silent peer is kept, of either protocol.
//! - After a GOAWAY (idle or shutdown) hyper waits for the client to acknowledge a ping
//!   before it closes, which a silent client never does: a connection that still has no
//!   request open `GOAWAY_GRACE` later is closed (Go's HTTP/2 server does the same).
//! - A connection must send its first byte within `header_read_timeout` (hyper's
//!   header timer starts with the first byte), and hyper cuts off a client that
//!   trickles its headers or idles between keep-alive requests for longer.
//! - An optional cap on open connections: past it a new connection is closed at once,
//!   so one listener (the metrics one) can never take every file descriptor.
//! - Shutdown stops accepting, asks every connection to finish (HTTP/1 keep-alive off,
//!   HTTP/2 GOAWAY) and waits for the requests still open. hyper-util's `GracefulShutdown` does the same
//!   but cannot be combined with the HTTP/2 idle timeout, so the few lines are here.

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
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
/// HTTP/2 streams a connection may have open at once; the next is refused.
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// After a GOAWAY, how long a connection with no request open is given to close by
/// itself: a round trip for the client to see it and for streams already on the wire.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// HTTP/2 keep-alive, from `header_read_timeout`: a connection that has sent nothing for
/// twice that is pinged, and closed if the answer takes longer than it (20 s and 10 s
/// by default). A peer that went away while a request was open is found this way.
fn h2_keep_alive(header_read_timeout: Duration) -> (Duration, Duration) {
    (header_read_timeout.saturating_mul(2), header_read_timeout)
}

/// Connections a listener's kernel queue holds before they are accepted (the kernel caps
/// it at `net.core.somaxconn`). tokio's default of 1,024 overflows when thousands of
/// callers connect at once, and each SYN dropped then costs its caller a 1 s retransmit.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` for serving, with [`LISTEN_BACKLOG`] and address reuse (a restart does
/// not wait out the previous process's TIME_WAIT connections).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

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
                let response = answer.await?;
                // Open until hyper has sent the whole answer, not just its head.
                Ok::<_, Infallible>(response.map(|body| Body::new(Answering { body, _open: open })))
            }
        })
    };
    let service = TowerToHyperService::new(service);
    let io = TokioIo::new(stream);
    let result = if options.http2 {
        let (ping_interval, ping_timeout) = h2_keep_alive(options.header_read_timeout);
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
            .keep_alive_interval(ping_interval)
            .keep_alive_timeout(ping_timeout)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_header_list_size(MAX_HEAD_BYTES as u32);
        let connection = builder.serve_connection(io, service);
        // Boxed: the HTTP/2-capable connection is several times the size of the HTTP/1
        // one, and held inline it would make every connection's task that size.
        Box::pin(drive(
            connection,
            stopped,
            activity,
            Some(options.header_read_timeout),
        ))
        .await
        .map_err(|e| e.to_string())
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEAD_BYTES);
        // hyper's own timers close an idle HTTP/1 connection.
        drive(
            builder.serve_connection(io, service),
            stopped,
            activity,
            None,
        )
        .await
        .map_err(|e| e.to_string())
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection closed with an error");
    }
}

/// Polls `connection` to its end. When shutdown starts, or (with `idle_timeout`) when it
/// has had no request open that long, asks it to finish gracefully (HTTP/1: keep-alive
/// off; HTTP/2: GOAWAY); one that then still has no request open after [`GOAWAY_GRACE`]
/// is dropped, which closes it.
async fn drive<C: GracefulConnection>(
    connection: C,
    mut stopped: watch::Receiver<bool>,
    activity: Activity,
    idle_timeout: Option<Duration>,
) -> Result<(), C::Error> {
    tokio::pin!(connection);
    let finishing = async {
        let idle = async {
            match idle_timeout {
                Some(timeout) => activity.idle_for(timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => {}
            () = idle => {}
        }
    };
    tokio::select! {
        result = &mut connection => return result,
        () = finishing => {}
    }
    connection.as_mut().graceful_shutdown();
    activity.restart_idle_clock();
    tokio::select! {
        result = &mut connection => result,
        () = activity.idle_for(GOAWAY_GRACE) => Ok(()),
    }
}

/// The requests open on one connection, and since when it has had none.
#[derive(Debug, Clone)]
struct Activity(Arc<watch::Sender<ActivityState>>);

#[derive(Debug, Clone, Copy)]
struct ActivityState {
    /// Requests whose answer is not yet fully sent.
    open: usize,
    /// When `open` last dropped to 0 (or the connection opened).
    idle_since: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(ActivityState {
            open: 0,
            idle_since: Instant::now(),
        })))
    }
}

impl Activity {
    /// Counts a request as open until the returned guard is dropped.
    fn start(&self) -> OpenRequest {
        self.0.send_modify(|state| state.open += 1);
        OpenRequest(self.clone())
    }

    /// Counts idle time from now, if the connection is idle.
    fn restart_idle_clock(&self) {
        self.0.send_if_modified(|state| {
            if state.open == 0 {
                state.idle_since = Instant::now();
            }
            false
        });
    }

    /// Resolves once no request has been open for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        let mut changes = self.0.subscribe();
        loop {
            let state = *changes.borrow_and_update();
            // A timeout too large to add is one that never passes.
            let idle_until = (state.open == 0)
                .then(|| state.idle_since.checked_add(timeout))
                .flatten();
            match idle_until {
                Some(at) => tokio::select! {
                    () = tokio::time::sleep_until(at) => return,
                    _ = changes.changed() => {}
                },
                None => {
                    // The sender lives in `self`, so this only ever waits for a change.
                    let _ = changes.changed().await;
                }
            }
        }
    }
}

/// Held while a request is open on the connection.
#[derive(Debug)]
struct OpenRequest(Activity);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.0.send_modify(|state| {
            state.open = state.open.saturating_sub(1);
            if state.open == 0 {
                state.idle_since = Instant::now();
            }
        });
    }
}

/// A response body that keeps its request counted as open until hyper has sent it all
/// (or dropped it), so a slow download is not taken for an idle connection.
struct Answering {
    /// The router's answer.
    body: Body,
    /// Dropped with the body.
    _open: OpenRequest,
}

impl hyper::body::Body for Answering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
