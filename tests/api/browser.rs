//! The proxy as browsers see it: headless Chromium (Debian's, through chromedriver)
//! loads `examples/browser/index.html` from one origin and fetches credentials from the
//! proxy on another, then builds an `RTCPeerConnection` from them and, given a call base
//! URL, runs the SDK's call start against the fake Orga Cloud on a third, or through the
//! proxy's relay.
//!
//! Needs `chromium` and `chromium-driver`. CI installs them; elsewhere, without them, each
//! test prints a loud SKIPPED line (and fails when CI=true).

use crate::helpers::*;
use axum::Router;
use axum::response::Html;
use axum::routing::get;
use orga_proxy::orga::mock::MockOptions;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXAMPLE_PAGE: &str = include_str!("../../examples/browser/index.html");
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver process and a WebDriver session on it; both end on drop.
pub struct Browser {
    driver: Child,
    pub client: fantoccini::Client,
    _profile: tempfile_dir::TempDir,
}

mod tempfile_dir {
    /// A scratch directory removed on drop (the Chromium profile).
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group, which holds the Chromium it started:
        // killing the group leaves no orphaned browser behind, even after a panic.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Starts headless Chromium, or explains loudly why it cannot (failing in CI).
pub async fn browser(test: &str) -> Option<Browser> {
    let install = "apt-get install chromium chromium-driver";
    let driver_path = find_tool("chromedriver", test, install)?;
    if !std::path::Path::new(CHROMIUM).is_file() {
        find_tool("chromium", test, install)?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Command::new(driver_path)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let profile =
        std::env::temp_dir().join(format!("orga-proxy-chromium-{}-{port}", std::process::id()));
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.display()),
            ]
        }
    }))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        let attempt = fantoccini::ClientBuilder::rustls()
            .expect("rustls connector")
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match attempt {
            Ok(client) => break client,
            Err(e) if Instant::now() > deadline => panic!("{test}: cannot start Chromium: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    Some(Browser {
        driver,
        client,
        _profile: tempfile_dir::TempDir(profile),
    })
}

/// Serves the example page on 127.0.0.1:0 (its own origin); returns its address.
pub async fn serve_page(extra: Router) -> SocketAddr {
    let app = Router::new()
        .route("/", get(|| async { Html(EXAMPLE_PAGE) }))
        .merge(extra);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the example page is asked to do.
#[derive(Debug, Default, Clone, Copy)]
pub struct Example<'a> {
    /// Where the example page is served (its origin).
    pub page: &'a str,
    /// The credentials URL.
    pub endpoint: &'a str,
    /// A Bearer token for the proxy.
    pub token: Option<&'a str>,
    /// Send cookies (`credentials: 'include'`).
    pub cookies: bool,
    /// The SDK's `baseUrl`: where the page starts the call; `None` stops after the offer
    /// (sent as an empty `baseUrl`, which the page would otherwise default to the
    /// credentials URL's origin).
    pub base_url: Option<&'a str>,
}

impl<'a> Example<'a> {
    /// The page at `page` fetches credentials from `endpoint` and stops after the offer.
    pub fn new(page: &'a str, endpoint: &'a str) -> Self {
        Self {
            page,
            endpoint,
            ..Self::default()
        }
    }

    /// Send `token` as the Bearer.
    pub fn with_token(self, token: &'a str) -> Self {
        Self {
            token: Some(token),
            ..self
        }
    }

    /// Send cookies (`credentials: 'include'`).
    pub fn with_cookies(self) -> Self {
        Self {
            cookies: true,
            ..self
        }
    }

    /// Go on to start the call on `base_url`.
    pub fn calling(self, base_url: &'a str) -> Self {
        Self {
            base_url: Some(base_url),
            ..self
        }
    }
}

impl Browser {
    /// Opens the example page with its query parameters and waits for its result object.
    pub async fn run(&self, example: Example<'_>) -> Value {
        let mut url = format!(
            "{}/?auto=1&endpoint={}",
            example.page,
            encode(example.endpoint)
        );
        if let Some(token) = example.token {
            url.push_str(&format!("&token={}", encode(token)));
        }
        if example.cookies {
            url.push_str("&cookies=1");
        }
        url.push_str(&format!(
            "&baseUrl={}",
            encode(example.base_url.unwrap_or(""))
        ));
        self.client.goto(&url).await.expect("page loads");
        self.wait_for_result().await
    }

    /// Waits for the page's result object.
    pub async fn wait_for_result(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let result = self
                .client
                .execute("return window.orgaProxyResult || null", vec![])
                .await
                .expect("script runs");
            if !result.is_null() {
                return result;
            }
            assert!(Instant::now() < deadline, "the page produced no result");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn an_allowed_origin_gets_credentials_that_rtc_peer_connection_accepts() {
    let Some(browser) = browser("an_allowed_origin_gets_credentials").await else {
        return;
    };
    let page = serve_page(Router::new()).await;
    let app =
        spawn_app_with(|c| c.cors.allowed_origins = origins(&[&format!("http://{page}")])).await;
    let result = browser
        .run(Example::new(
            &format!("http://{page}"),
            &app.url(&app.credentials_path),
        ))
        .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["offerType"], "offer", "createOffer works: {result}");
    assert!(
        result["iceServers"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{result}"
    );
}

#[tokio::test]
async fn a_page_on_an_origin_that_is_not_allowed_cannot_read_the_response() {
    let Some(browser) = browser("a_page_on_an_origin_that_is_not_allowed").await else {
        return;
    };
    let page = serve_page(Router::new()).await;
    let app =
        spawn_app_with(|c| c.cors.allowed_origins = origins(&["https://app.example.com"])).await;
    let result = browser
        .run(Example::new(
            &format!("http://{page}"),
            &app.url(&app.credentials_path),
        ))
        .await;
    assert_eq!(result["ok"], false, "{result}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("TypeError"),
        "the browser blocked it as a CORS failure: {result}"
    );
    assert!(
        result["status"].is_null(),
        "no status was readable: {result}"
    );
}

/// The proxy requiring `api_key` or `jwt`, with the page's origin allowed.
async fn app_requiring(page: SocketAddr, mode: &str) -> TestApp {
    let mode = mode.to_owned();
    spawn_app_with(move |c| {
        c.cors.allowed_origins = origins(&[&format!("http://{page}")]);
        if mode == "api_key" {
            c.auth.mode = orga_proxy::config::AuthMode::ApiKey;
            c.auth.api_keys = api_keys(&[BROWSER_API_KEY]);
        } else {
            c.auth.mode = orga_proxy::config::AuthMode::Jwt;
            c.auth.jwt.secret = orga_proxy::secret::Secret::new(crate::auth::HS_SECRET);
        }
    })
    .await
}

const BROWSER_API_KEY: &str = "browser-test-api-key-0123456789";

#[tokio::test]
async fn with_api_key_auth_the_preflighted_authorization_header_is_accepted_and_its_absence_refused()
 {
    let Some(browser) = browser("with_api_key_auth").await else {
        return;
    };
    let page = serve_page(Router::new()).await;
    let app = app_requiring(page, "api_key").await;
    let (page_url, endpoint) = (format!("http://{page}"), app.url(&app.credentials_path));
    let with = browser
        .run(Example::new(&page_url, &endpoint).with_token(BROWSER_API_KEY))
        .await;
    assert_eq!(with["ok"], true, "{with}");
    let without = browser.run(Example::new(&page_url, &endpoint)).await;
    assert_eq!(
        without["status"], 401,
        "the 401 is readable cross-origin: {without}"
    );
    assert_eq!(without["code"], "unauthorized", "{without}");
    let wrong = browser
        .run(Example::new(&page_url, &endpoint).with_token("not-the-key"))
        .await;
    assert_eq!(wrong["status"], 401, "{wrong}");
}

#[tokio::test]
async fn with_jwt_auth_the_users_bearer_token_is_accepted_and_its_absence_refused() {
    let Some(browser) = browser("with_jwt_auth").await else {
        return;
    };
    let page = serve_page(Router::new()).await;
    let app = app_requiring(page, "jwt").await;
    let token = crate::auth::hs256(
        crate::auth::HS_SECRET.as_bytes(),
        &crate::auth::claims("user-42"),
    );
    let (page_url, endpoint) = (format!("http://{page}"), app.url(&app.credentials_path));
    let with = browser
        .run(Example::new(&page_url, &endpoint).with_token(&token))
        .await;
    assert_eq!(with["ok"], true, "{with}");
    assert_eq!(with["offerType"], "offer", "{with}");
    let without = browser.run(Example::new(&page_url, &endpoint)).await;
    assert_eq!(without["status"], 401, "{without}");
}

#[tokio::test]
async fn a_same_site_page_with_a_jwt_cookie_succeeds_with_credentials_include() {
    let Some(browser) = browser("a_same_site_page_with_a_jwt_cookie").await else {
        return;
    };
    let token = crate::auth::hs256(
        crate::auth::HS_SECRET.as_bytes(),
        &crate::auth::claims("user-7"),
    );
    // The page's own "login" sets the session cookie, as the site's auth would.
    let login = Router::new().route(
        "/login",
        get(move || async move {
            (
                [(
                    "set-cookie",
                    format!("orga_session={token}; Path=/; SameSite=Lax; HttpOnly"),
                )],
                "logged in",
            )
        }),
    );
    let page = serve_page(login).await;
    // Both on localhost: different ports are different origins but the same site.
    let page_origin = format!("http://localhost:{}", page.port());
    let app = spawn_app_with({
        let page_origin = page_origin.clone();
        move |c| {
            c.cors.allowed_origins = origins(&[&page_origin]);
            c.cors.allow_credentials = true;
            c.auth.mode = orga_proxy::config::AuthMode::Jwt;
            c.auth.jwt.secret = orga_proxy::secret::Secret::new(crate::auth::HS_SECRET);
            c.auth.jwt.cookie = Some("orga_session".parse().unwrap());
        }
    })
    .await;
    let endpoint = format!(
        "http://localhost:{}{}",
        app.addr.port(),
        app.credentials_path
    );
    browser
        .client
        .goto(&format!("{page_origin}/login"))
        .await
        .unwrap();
    let with = browser
        .run(Example::new(&page_origin, &endpoint).with_cookies())
        .await;
    assert_eq!(with["ok"], true, "the cookie went along: {with}");
    let without = browser.run(Example::new(&page_origin, &endpoint)).await;
    assert_eq!(
        without["status"], 401,
        "without credentials: 'include' no cookie is sent: {without}"
    );
}

/// The proxy against a fake it shares with the test, the page's origin allowed.
async fn app_and_fake(page: SocketAddr) -> (TestApp, String) {
    let fake = spawn_mock_upstream(MockOptions::default()).await;
    let app = spawn_app_against(&fake, |c| {
        c.cors.allowed_origins = origins(&[&format!("http://{page}")]);
    })
    .await;
    (app, fake)
}

#[tokio::test]
async fn the_example_page_starts_a_call_on_the_fake_and_chromium_accepts_its_answer() {
    let Some(browser) = browser("the_example_page_starts_a_call").await else {
        return;
    };
    let page = serve_page(Router::new()).await;
    let (app, fake) = app_and_fake(page).await;
    let endpoint = app.url(&app.credentials_path);
    let result = browser
        .run(Example::new(&format!("http://{page}"), &endpoint).calling(&fake))
        .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(
        result["signalingState"], "stable",
        "setRemoteDescription took the answer: {result}"
    );
    let conversation = result["conversationId"].as_str().unwrap_or_default();
    assert!(conversation.starts_with("conv_"), "{result}");
    let status = browser
        .client
        .find(fantoccini::Locator::Id("status"))
        .await
        .expect("a status line")
        .text()
        .await
        .expect("its text");
    assert!(
        status.contains(conversation),
        "the page shows the conversation: {status}"
    );
}

#[tokio::test]
async fn a_call_refused_by_the_fake_is_readable_by_the_page() {
    let Some(browser) = browser("a_call_refused_by_the_fake").await else {
        return;
    };
    let page = serve_page(Router::new()).await;
    let (app, _) = app_and_fake(page).await;
    // Another fake instance has another key: the proxy's tokens are not its own.
    let stranger = spawn_mock_upstream(MockOptions::default()).await;
    let endpoint = app.url(&app.credentials_path);
    let result = browser
        .run(Example::new(&format!("http://{page}"), &endpoint).calling(&stranger))
        .await;
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["stage"], "call", "{result}");
    assert_eq!(
        result["status"], 401,
        "the 401 is readable cross-origin: {result}"
    );
    assert_eq!(
        result["body"]["error"]["message"], "Invalid ephemeral token",
        "{result}"
    );
}

/// The page's origin allowed, the relay on, against the embedded fake; the policy allows
/// the page's non-ASCII voice, so the name survives the trip as exact UTF-8.
async fn relaying_app(page: SocketAddr) -> TestApp {
    spawn_app_with(move |c| {
        c.cors.allowed_origins = origins(&[&format!("http://{page}")]);
        c.relay.enabled = true;
        c.relay.policy.voices = vec!["Victoria".into(), "Sofía".into()];
    })
    .await
}

#[tokio::test]
async fn the_example_page_starts_its_call_through_the_proxys_relay_and_chromium_accepts_the_answer()
{
    let Some(browser) = browser("the_example_page_starts_its_call_through_the_relay").await else {
        return;
    };
    let page = serve_page(Router::new()).await;
    let app = relaying_app(page).await;
    let proxy = format!("http://{}", app.addr);
    let result = browser
        .run(
            Example::new(&format!("http://{page}"), &app.url(&app.credentials_path))
                .calling(&proxy),
        )
        .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["signalingState"], "stable", "{result}");
    assert!(
        result["conversationId"]
            .as_str()
            .is_some_and(|c| c.starts_with("conv_")),
        "{result}"
    );
    assert!(result["candidates"].as_u64().is_some(), "{result}");
}

#[tokio::test]
async fn by_default_the_example_page_starts_the_call_through_the_proxy_it_got_credentials_from() {
    let Some(browser) = browser("by_default_the_example_page_uses_the_relay").await else {
        return;
    };
    let page = serve_page(Router::new()).await;
    let app = relaying_app(page).await;
    let endpoint = app.url(&app.credentials_path);
    browser
        .client
        .goto(&format!("http://{page}/?endpoint={}", encode(&endpoint)))
        .await
        .expect("page loads");
    let base_url = browser
        .client
        .execute("return document.getElementById('baseUrl').value", vec![])
        .await
        .expect("script runs");
    assert_eq!(
        base_url,
        format!("http://{}", app.addr),
        "the proxy's origin"
    );
    browser
        .client
        .find(fantoccini::Locator::Css("button[type=submit]"))
        .await
        .expect("a Start button")
        .click()
        .await
        .expect("it clicks");
    let result = browser.wait_for_result().await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["signalingState"], "stable", "{result}");
}
