//! The command line: `serve` (default), `dev`, `mock-upstream`, `check-config`,
//! `healthcheck`. Exit status 2 means a configuration problem, 1 any other failure.
//!
//! Signals (registered before anything listens, so none of them kills the process):
//! SIGTERM, SIGINT and SIGQUIT drain and exit 0 (SIGQUIT is the graceful stop of nginx
//! and php-fpm, and the STOPSIGNAL of images built on them); SIGHUP reloads what can
//! change live ([`crate::reload`]); SIGUSR1 and SIGUSR2 are logged and ignored (logs go
//! to stdout: there is no file to reopen).

use crate::config::{self, BaseUrl, Config, Mode};
use crate::http::server::ServeOptions;
use crate::orga::mock::{self, MockOptions};
use crate::reload::{Prepare, Reloader};
use crate::secret::Secret;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Credential proxy for Orga AI realtime sessions: keeps the Orga API key server-side
/// and hands clients short-lived `{ephemeralToken, iceServers}`.
///
/// Configuration layers, later wins: built-in defaults; the TOML file (--config, else
/// ORGA_PROXY_CONFIG, else config/orga-proxy.toml if it exists); ORGA_API_KEY,
/// ORGA_API_KEY_FILE, ORGA_USER_EMAIL, ORGA_BASE_URL and PORT; then
/// ORGA_PROXY_<SECTION>__<KEY> variables (e.g. ORGA_PROXY_CORS__ALLOWED_ORIGINS).
#[derive(Debug, Parser)]
#[command(name = "orga-proxy", version, about, long_about)]
pub struct Cli {
    /// TOML configuration file (default: ORGA_PROXY_CONFIG, else config/orga-proxy.toml if present).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default). SIGTERM, SIGINT and SIGQUIT drain and exit; SIGHUP
    /// reloads what can change live (the Orga key, API keys, origins, rate-limit and quota
    /// numbers) and reopens the audit file, keeping the running configuration if the new
    /// one is invalid.
    Serve,
    /// Run the proxy on an embedded fake Orga Cloud: no API key needed, CORS open to
    /// http://localhost:* and http://127.0.0.1:*, listening on 127.0.0.1 only, with the
    /// call-start relay on (point the SDK's baseUrl at the proxy). The credentials it
    /// hands out are fake. For frontend work offline.
    Dev,
    /// Run only the fake Orga Cloud (client-secrets, ice-config and calls), for tests,
    /// benchmarks and docker compose.
    MockUpstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081", value_name = "ADDR")]
        listen: SocketAddr,
        /// Accept only this API key (default: any key of the form sk_orga_ai_*).
        #[arg(long, value_name = "KEY")]
        api_key: Option<String>,
        /// Delay every answer by this much, e.g. "100ms", to model a distant upstream.
        #[arg(long, value_name = "DURATION", value_parser = config::parse_duration, default_value = "0s")]
        latency: Duration,
    },
    /// Validate the configuration and print it with every secret redacted; exit 0 or 2.
    CheckConfig,
    /// Exit 0 if URL answers 200 within the timeout, else 1 (for a Docker HEALTHCHECK
    /// without curl).
    Healthcheck {
        /// Full URL to probe (default: /healthz on the configured listen port at 127.0.0.1).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Give up after this long.
        #[arg(long, value_name = "DURATION", value_parser = config::parse_duration, default_value = "3s")]
        timeout: Duration,
    },
}

/// Runs the parsed command line to an exit status.
pub fn run(cli: Cli) -> ExitCode {
    // Tokio reads this variable itself and panics on a bad value: refuse it first.
    if let Err(problem) = worker_threads_variable() {
        eprintln!("orga-proxy: invalid configuration:\n  {problem}");
        return ExitCode::from(2);
    }
    let command = cli.command.unwrap_or(Command::Serve);
    // The fake Orga Cloud's work per call is tiny: on one thread it leaves the CPU to what
    // it stands in front of (the proxy under a benchmark), with no cross-thread wake-ups.
    let mut builder = match command {
        Command::MockUpstream { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("orga-proxy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = cli.config.as_deref();
    let code = match command {
        Command::Serve => match load(path, Mode::Serve) {
            Ok(config) => runtime.block_on(serve(config, cli.config.clone())),
            Err(code) => code,
        },
        Command::Dev => match load(path, Mode::Dev) {
            Ok(config) => runtime.block_on(dev(config, cli.config.clone())),
            Err(code) => code,
        },
        Command::MockUpstream {
            listen,
            api_key,
            latency,
        } => {
            let options = MockOptions {
                api_key: api_key.map(Secret::new),
                latency,
            };
            runtime.block_on(mock_upstream(listen, options))
        }
        Command::CheckConfig => match config::load(path, Mode::Serve) {
            Ok((config, source)) => {
                let from = source
                    .file
                    .map_or("no file; defaults and environment".into(), |f| {
                        f.display().to_string()
                    });
                println!("# configuration OK (file: {from}); secrets redacted\n");
                print!("{}", config.to_redacted_toml());
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(&e),
        },
        Command::Healthcheck { url, timeout } => {
            let url = url.unwrap_or_else(|| {
                let port = config::load_lenient(path).server.listen.port();
                format!("http://127.0.0.1:{port}/healthz")
            });
            runtime.block_on(healthcheck(&url, timeout))
        }
    };
    // Blocking tasks (a DNS lookup that hangs, say) must not hold the exit past the drain
    // deadline: Docker kills the container 10 s after SIGTERM.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// `TOKIO_WORKER_THREADS`, when set, must be a whole number from 1 to 1024.
fn worker_threads_variable() -> Result<(), String> {
    let Some(value) = std::env::var_os("TOKIO_WORKER_THREADS") else {
        return Ok(());
    };
    match value.to_str().map(|v| v.trim().parse::<usize>()) {
        Some(Ok(1..=1024)) => Ok(()),
        _ => Err(format!(
            "TOKIO_WORKER_THREADS={:?}: the runtime's worker threads must be a whole number from 1 to 1024 (unset it to use one per CPU)",
            value.to_string_lossy()
        )),
    }
}

fn load(path: Option<&std::path::Path>, mode: Mode) -> Result<Config, ExitCode> {
    config::load(path, mode)
        .map(|(c, _)| c)
        .map_err(|e| config_failure(&e))
}

fn config_failure(error: &config::ConfigError) -> ExitCode {
    eprintln!("orga-proxy: invalid configuration:");
    for problem in &error.problems {
        eprintln!("  {problem}");
    }
    ExitCode::from(2)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ExitCode> {
    crate::http::server::listen(addr).map_err(|e| {
        tracing::error!(%addr, error = %e, "cannot listen");
        ExitCode::FAILURE
    })
}

async fn serve(config: Config, path: Option<PathBuf>) -> ExitCode {
    crate::telemetry::init(&config.log);
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let started = match Started::bind(config).await {
        Ok(started) => started,
        Err(code) => return code,
    };
    let config = started.state.config.clone();
    tracing::info!(
        listen = %local_addr(&started.listener),
        metrics_listen = %started.metrics.as_ref().map_or_else(|| "off".into(), local_addr),
        credentials_path = %config.server.credentials_path,
        orga_base_url = %config.orga.base_url,
        version = env!("CARGO_PKG_VERSION"),
        "orga-proxy listening"
    );
    let reloader = Reloader::new(path, Mode::Serve, config, Box::new(|_| {}));
    started.serve(signals, reloader).await
}

/// What `serve` and `dev` have once they may announce themselves: the listeners bound
/// and the app built, nothing served yet.
struct Started {
    /// The public listener.
    listener: TcpListener,
    /// The metrics listener, unless `server.metrics_listen` is `""`.
    metrics: Option<TcpListener>,
    /// The router that will serve the public listener.
    router: axum::Router,
    /// The app's state, shared by the router and the reloader.
    state: crate::state::AppState,
}

impl Started {
    /// Binds both listeners and builds the app for `config`; a failure is logged.
    async fn bind(config: Config) -> Result<Self, ExitCode> {
        let (listener, metrics) = bind_both(&config).await?;
        let (router, state) = crate::app(Arc::new(config)).map_err(|error| {
            tracing::error!(%error, "cannot start");
            ExitCode::FAILURE
        })?;
        Ok(Self {
            listener,
            metrics,
            router,
            state,
        })
    }

    /// Serves until a stop signal, then drains; each SIGHUP meanwhile goes to `reloader`.
    async fn serve(self, signals: Signals, reloader: Reloader) -> ExitCode {
        let stop = signals.until_stop(reloading(reloader, self.state.clone()));
        let served =
            crate::serve_with_metrics(self.router, self.state, self.listener, self.metrics, stop);
        finish(served.await)
    }
}

/// What SIGHUP does: reopen the audit file (logrotate's `postrotate`; whatever the
/// configuration says) and reload `state` (see [`crate::reload`]).
fn reloading(mut reloader: Reloader, state: crate::state::AppState) -> impl FnMut() + Send {
    move || {
        state.audit.reopen();
        tracing::info!("SIGHUP: reloading the configuration");
        reloader.reload(&state);
    }
}

/// Binds the public listener and, unless `server.metrics_listen` is `""`, the metrics one.
async fn bind_both(config: &Config) -> Result<(TcpListener, Option<TcpListener>), ExitCode> {
    let listener = bind(config.server.listen).await?;
    let metrics = match config.server.metrics_listen {
        None => None,
        Some(addr) => Some(bind(addr).await?),
    };
    Ok((listener, metrics))
}

/// The address actually bound (it differs from the configured one for port 0).
fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
}

async fn dev(mut config: Config, path: Option<PathBuf>) -> ExitCode {
    crate::telemetry::init(&config.log);
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(code) => return code,
    };
    let mock = match bind(SocketAddr::from(([127, 0, 0, 1], 0))).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mock_addr = local_addr(&mock);
    tokio::spawn(crate::http::server::serve(
        mock,
        mock::router(MockOptions::default()),
        MOCK_SERVE_OPTIONS,
        std::future::pending(),
    ));
    let Ok(base_url) = format!("http://{mock_addr}").parse::<BaseUrl>() else {
        tracing::error!(%mock_addr, "cannot address the embedded fake Orga Cloud");
        return ExitCode::FAILURE;
    };
    let prepare: Prepare = Box::new(move |config| dev_overrides(config, &base_url));
    prepare(&mut config);
    let started = match Started::bind(config).await {
        Ok(started) => started,
        Err(code) => return code,
    };
    let config = started.state.config.clone();
    let banner = "DEV MODE: credentials come from an embedded FAKE Orga Cloud and will not open real calls; never expose this";
    let addr = local_addr(&started.listener);
    tracing::warn!(listen = %addr, credentials_path = %config.server.credentials_path, "{banner}");
    eprintln!(
        "\n  *** {banner} ***\n  credentials: http://{addr}{}\n  call start (the SDK's baseUrl): http://{addr}\n",
        config.server.credentials_path
    );
    let reloader = Reloader::new(path, Mode::Dev, config, prepare);
    started.serve(signals, reloader).await
}

/// What `dev` changes in a loaded configuration, at start and on every reload: the
/// embedded fake Orga Cloud and its key, local origins, loopback listeners.
fn dev_overrides(config: &mut Config, fake_orga: &BaseUrl) {
    config.orga.base_url = fake_orga.clone();
    config.orga.api_key = Secret::new(format!("{}dev_fake", mock::API_KEY_PREFIX));
    config.cors.allowed_origins = config.cors.allowed_origins.with_local_development();
    // The SDK's whole call start runs offline with `baseUrl` set to the proxy.
    config.relay.enabled = true;
    config.server.listen.set_ip([127, 0, 0, 1].into());
    if let Some(metrics) = &mut config.server.metrics_listen {
        metrics.set_ip([127, 0, 0, 1].into());
    }
}

/// How the fake serves: a generous limit on silent or slow clients, HTTP/1.1 only.
const MOCK_SERVE_OPTIONS: ServeOptions = ServeOptions {
    header_read_timeout: Duration::from_secs(30),
    http2: false,
    max_connections: None,
};

async fn mock_upstream(listen: SocketAddr, options: MockOptions) -> ExitCode {
    crate::telemetry::init(&config::LogConfig::default());
    let listener = match bind(listen).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    tracing::warn!(listen = %local_addr(&listener), latency = ?options.latency, "fake Orga Cloud listening (tokens are fake)");
    let result = crate::http::server::serve(
        listener,
        mock::router(options),
        MOCK_SERVE_OPTIONS,
        shutdown_signal(),
    )
    .await;
    finish(result)
}

fn finish(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

async fn healthcheck(url: &str, timeout: Duration) -> ExitCode {
    let client = match crate::outbound::client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(url).timeout(timeout).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::OK => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("healthcheck: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("healthcheck: {url}: {}", e.without_url());
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM, SIGINT (Ctrl-C) or SIGQUIT; SIGHUP, SIGUSR1 and SIGUSR2 are
/// logged and ignored (nothing here to reload). Registers the signals when first polled.
pub async fn shutdown_signal() {
    match Signals::install() {
        Ok(signals) => {
            signals
                .until_stop(|| tracing::info!("SIGHUP ignored: nothing to reload"))
                .await
        }
        Err(_) => std::future::pending().await,
    }
}

/// The signals a server acts on. Registering one replaces its default action (for
/// SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2: ending the process and every request in flight)
/// for the rest of the process's life, so this happens before anything listens.
struct Signals {
    /// SIGTERM: drain (Docker, Kubernetes).
    terminate: Signal,
    /// SIGINT: drain (Ctrl-C).
    interrupt: Signal,
    /// SIGQUIT: drain (the graceful stop of nginx-style images).
    quit: Signal,
    /// SIGHUP: reload.
    hangup: Signal,
    /// SIGUSR1: logged, nothing else.
    user1: Signal,
    /// SIGUSR2: logged, nothing else (some supervisors send it for a binary upgrade).
    user2: Signal,
}

impl Signals {
    fn install() -> Result<Self, ExitCode> {
        let register = |kind: SignalKind| {
            signal(kind).map_err(|error| {
                tracing::error!(%error, "cannot register a signal handler");
                ExitCode::FAILURE
            })
        };
        Ok(Self {
            terminate: register(SignalKind::terminate())?,
            interrupt: register(SignalKind::interrupt())?,
            quit: register(SignalKind::quit())?,
            hangup: register(SignalKind::hangup())?,
            user1: register(SignalKind::user_defined1())?,
            user2: register(SignalKind::user_defined2())?,
        })
    }

    /// Resolves on SIGTERM, SIGINT or SIGQUIT (the caller drains); runs `on_hangup` on
    /// each SIGHUP meanwhile, and logs SIGUSR1 and SIGUSR2.
    async fn until_stop(mut self, mut on_hangup: impl FnMut() + Send) {
        let stop = loop {
            tokio::select! {
                _ = self.terminate.recv() => break "SIGTERM",
                _ = self.interrupt.recv() => break "SIGINT",
                _ = self.quit.recv() => break "SIGQUIT",
                _ = self.hangup.recv() => on_hangup(),
                _ = self.user1.recv() => {
                    tracing::info!("SIGUSR1 ignored: logs go to stdout, there is nothing to reopen");
                }
                _ = self.user2.recv() => {
                    tracing::info!("SIGUSR2 ignored: stop with SIGTERM, reload with SIGHUP");
                }
            }
        };
        tracing::info!(signal = stop, "shutdown requested");
    }
}
