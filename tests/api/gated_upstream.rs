//! A fake Orga Cloud that holds every client-secrets call until the test lets it go,
//! so tests can act while a request is provably in flight, without sleeping.

use crate::helpers::TestApp;
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

/// Starts a credentials request on `app` and returns once `upstream` holds it.
pub async fn hold_a_request(
    app: &TestApp,
    upstream: &GatedUpstream,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let (client, url) = (app.client.clone(), app.url(&app.credentials_path));
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    upstream.arrived().await;
    in_flight
}

async fn client_secrets(State(shared): State<Shared>) -> axum::Json<serde_json::Value> {
    let _ = shared.arrived.send(());
    shared.gate.acquire().await.expect("gate open").forget();
    axum::Json(json!({"ephemeral_token": "ek_gated"}))
}
