//! A fake Orga Cloud that holds every client-secrets call until the test lets it go,
//! so tests can act while a request is provably in flight, without sleeping.

use crate::binary::{Proxy, serving_test_config_against};
use crate::helpers::{TestApp, client};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore, mpsc};

/// The running fake.
pub struct GatedUpstream {
    /// Its base URL.
    pub url: String,
    arrivals: Mutex<mpsc::UnboundedReceiver<()>>,
    gate: Arc<Semaphore>,
}

#[derive(Clone)]
struct Shared {
    arrived: mpsc::UnboundedSender<()>,
    gate: Arc<Semaphore>,
}

impl GatedUpstream {
    /// Starts the fake on 127.0.0.1:0.
    pub async fn start() -> Self {
        let (arrived, arrivals) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let shared = Shared {
            arrived,
            gate: gate.clone(),
        };
        let router = Router::new()
            .route("/v1/realtime/client-secrets", post(client_secrets))
            .route(
                "/v1/realtime/ice-config",
                get(|| async {
                    axum::Json(json!({"iceServers": [{"urls": "stun:s.example:3478"}]}))
                }),
            )
            .with_state(shared);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url,
            arrivals: Mutex::new(arrivals),
            gate,
        }
    }

    /// Waits until one more client-secrets call has reached the fake.
    pub async fn arrived(&self) {
        self.arrivals
            .lock()
            .await
            .recv()
            .await
            .expect("fake is running");
    }

    /// Lets `n` held (or future) client-secrets calls answer.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

/// A request held by the fake: the answer it gets once released.
pub type InFlight = tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>;

/// Starts a credentials request on `app` and returns once `upstream` holds it.
pub async fn hold_a_request(app: &TestApp, upstream: &GatedUpstream) -> InFlight {
    hold_a_request_to(app.url(&app.credentials_path), upstream).await
}

/// Starts a `GET url` (a credentials route in front of `upstream`) and returns once
/// `upstream` holds it.
pub async fn hold_a_request_to(url: String, upstream: &GatedUpstream) -> InFlight {
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    upstream.arrived().await;
    in_flight
}

/// The binary serving against `upstream`, with a drain deadline (30 s) that no held
/// request reaches before the test releases it.
pub fn binary_against(upstream: &GatedUpstream) -> Proxy {
    Proxy::start(
        serving_test_config_against(&upstream.url)
            .env("ORGA_PROXY_SERVER__SHUTDOWN_TIMEOUT", "30s"),
    )
}

async fn client_secrets(State(shared): State<Shared>) -> axum::Json<serde_json::Value> {
    let _ = shared.arrived.send(());
    shared.gate.acquire().await.expect("gate open").forget();
    axum::Json(json!({"ephemeral_token": "ek_gated"}))
}
