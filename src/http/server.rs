//! The accept loop. A connection must send its first byte within
//! `server.header_read_timeout`, and hyper (given a timer, which `axum::serve` does not
//! set) cuts off a client that trickles its headers or idles between keep-alive
//! requests for longer; otherwise silent connections would pile up until file
//! descriptors ran out. HTTP/1 only: browsers speak HTTP/2 only over TLS, which a load
//! balancer or ingress terminates in front of this service, and plaintext HTTP/2 would
//! bring its own idle-connection rules. Shutdown is graceful: stop accepting, let
//! in-flight requests finish, close idle connections.
//!
//! [`serve`] runs connections on the caller's runtime (tests, embedding).
//! [`serve_on_workers`] is what the binary runs: one thread per core, each with its own
//! single-threaded runtime, its own router and its own upstream connection pool, and
//! each connection lives on one thread from accept to close. A request then never
//! hands work to another thread: its inbound connection, its two upstream calls and
//! their connection tasks all run where it started. On a loopback benchmark that cut
//! the CPU per request by about a quarter against tokio's work-stealing runtime, which
//! pays futex wake-ups whenever a connection task and its caller sit on different
//! threads.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;

/// Most request headers hyper accepts (its default is 100); the JSON 431 of the limits
/// middleware decides below that, by total size.
const MAX_HEADERS: usize = 128;
/// hyper's read buffer for a request head; larger heads get hyper's bare 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long a worker's runtime waits for stray blocking tasks once it has drained.
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener`, on the current runtime, until `shutdown` resolves,
/// then drains gracefully. Requests carry the peer as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let connections = Connections::new(router, header_read_timeout);
    accept_loop(listener, shutdown, |stream, peer| {
        connections.spawn(stream, peer, ());
        Ok(())
    })
    .await?;
    connections.graceful.shutdown().await;
    Ok(())
}

/// Serves on one thread per router (see the module notes): the caller's runtime only
/// accepts, and hands each connection to the thread with the fewest open ones. When
/// `shutdown` resolves it stops accepting and returns once every thread has drained.
pub async fn serve_on_workers(
    listener: TcpListener,
    routers: Vec<Router>,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut workers = routers
        .into_iter()
        .enumerate()
        .map(|(index, router)| Worker::start(index, router, header_read_timeout))
        .collect::<io::Result<Vec<_>>>()?;
    let accepted = accept_loop(listener, shutdown, |stream, peer| {
        dispatch(&mut workers, stream, peer)
    })
    .await;
    // Closing the queues is the workers' signal to drain.
    let finished: Vec<_> = workers.into_iter().map(Worker::close).collect();
    for done in finished {
        // An error means the thread is already gone, which is as finished as it gets.
        let _ = done.await;
    }
    accepted
}

/// Accepts until `shutdown` resolves, handing each connection to `handle`; an error
/// from `handle` ends the loop.
async fn accept_loop(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    mut handle: impl FnMut(TcpStream, SocketAddr) -> io::Result<()>,
) -> io::Result<()> {
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
            () = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        handle(stream, peer)?;
    }
}

/// What serves connections on one runtime: the router, hyper's settings and the
/// graceful-shutdown watcher.
struct Connections {
    router: Router,
    builder: Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    header_read_timeout: Duration,
}

impl Connections {
    fn new(router: Router, header_read_timeout: Duration) -> Self {
        let mut builder = Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEAD_BYTES);
        Self {
            router,
            builder,
            graceful: GracefulShutdown::new(),
            header_read_timeout,
        }
    }

    /// Serves one connection on the current runtime; `guard` is dropped when it closes.
    fn spawn(&self, stream: TcpStream, peer: SocketAddr, guard: impl Send + 'static) {
        let service =
            self.router
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let (builder, watcher) = (self.builder.clone(), self.graceful.watcher());
        let header_read_timeout = self.header_read_timeout;
        tokio::spawn(async move {
            let _guard = guard;
            // hyper's header timer starts with the first byte: a connection that never
            // sends one would otherwise be held forever.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_read_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%error, "connection closed with an error");
            }
        });
    }
}

/// A serving thread, as the accepting side sees it.
struct Worker {
    queue: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    /// Connections handed to it and not yet closed.
    open: Arc<AtomicUsize>,
    finished: oneshot::Receiver<()>,
}

/// Decrements a worker's open-connection count when its connection closes.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Worker {
    fn start(index: usize, router: Router, header_read_timeout: Duration) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (queue, mut incoming) = mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
        let (done, finished) = oneshot::channel();
        let open = Arc::new(AtomicUsize::new(0));
        let counter = open.clone();
        std::thread::Builder::new()
            .name(format!("orga-proxy-worker-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let connections = Connections::new(router, header_read_timeout);
                    while let Some((stream, peer)) = incoming.recv().await {
                        let guard = OpenConnection(counter.clone());
                        match TcpStream::from_std(stream) {
                            Ok(stream) => connections.spawn(stream, peer, guard),
                            Err(error) => tracing::warn!(%error, "cannot take over a connection"),
                        }
                    }
                    connections.graceful.shutdown().await;
                });
                runtime.shutdown_timeout(WORKER_EXIT_GRACE);
                let _ = done.send(());
            })?;
        Ok(Self {
            queue,
            open,
            finished,
        })
    }

    /// Closes the queue (the worker drains and stops); resolves when it has.
    fn close(self) -> oneshot::Receiver<()> {
        self.finished
    }
}

/// Hands the connection to the live worker with the fewest open connections. Fails
/// only when no worker is left.
fn dispatch(workers: &mut Vec<Worker>, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let mut stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            // This one connection is lost; the server goes on.
            tracing::warn!(%error, "cannot hand a connection to a serving thread");
            return Ok(());
        }
    };
    loop {
        let Some((index, worker)) = workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.open.load(Ordering::Relaxed))
        else {
            return Err(io::Error::other("every serving thread has stopped"));
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        match worker.queue.send((stream, peer)) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::SendError((returned, _))) => {
                // The thread is gone (it can only have panicked): serve without it.
                tracing::error!(
                    worker = index,
                    "a serving thread stopped; continuing without it"
                );
                stream = returned;
                workers.swap_remove(index);
            }
        }
    }
}
