//! HTTP/2 on the public port: refused by default (the contract's HTTP/1.1), served as
//! h2c with `server.http2 = true`, and then closed when idle, silent or stalled, with
//! a cap on concurrent streams.
//!
//! The misbehaving clients are written frame by frame: a real HTTP/2 client library
//! answers pings and respects the server's stream cap, which is what these tests must
//! not do. A few bytes of framing (RFC 9113 §4.1) and literal HPACK suffice.

use crate::gated_upstream::GatedUpstream;
use crate::helpers::*;
use orga_proxy::config::Config;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The connection preface of a prior-knowledge HTTP/2 client.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// `REFUSED_STREAM`: the stream was refused before any processing.
const REFUSED_STREAM: u32 = 0x7;
/// Bound for "closed": only a connection that is held open trips it.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

/// One frame as read.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut bytes = vec![length[1], length[2], length[3], kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// The preface and an empty SETTINGS frame: all a client must send to open a connection.
fn open() -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes
}

/// `GET path` on `stream`, complete (END_STREAM): HPACK's static `:method GET` and
/// `:scheme http`, then `:path` and `:authority` as literals with an indexed name.
fn get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    for (name_index, value) in [(4u8, path), (1, "localhost")] {
        let length = u8::try_from(value.len()).expect("short values only");
        assert!(length < 0x7f);
        block.extend([name_index, length]);
        block.extend_from_slice(value.as_bytes());
    }
    frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
}

/// Reads frames until the server closes the connection or `within` passes, answering
/// PINGs (and acknowledging SETTINGS) when `answer_pings`, like a live client. Returns
/// the frames and whether the connection was closed.
async fn read_frames(
    connection: &mut TcpStream,
    within: Duration,
    answer_pings: bool,
) -> (Vec<Frame>, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut frames = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if let Err(closed) = fill(connection, &mut head, deadline).await {
            return (frames, closed);
        }
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; length];
        if let Err(closed) = fill(connection, &mut payload, deadline).await {
            return (frames, closed);
        }
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        if answer_pings && frame.flags & ACK == 0 {
            let answer = match frame.kind {
                PING => Some(self::frame(PING, ACK, 0, &frame.payload)),
                SETTINGS => Some(self::frame(SETTINGS, ACK, 0, &[])),
                _ => None,
            };
            if let Some(answer) = answer {
                // The server may already be closing; what matters is what it does next.
                let _ = connection.write_all(&answer).await;
            }
        }
        frames.push(frame);
    }
}

/// Fills `buf` from `connection` before `deadline`; `Err(closed)` when it cannot: the
/// server closed the connection (`true`) or the deadline passed (`false`).
async fn fill(
    connection: &mut TcpStream,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
) -> Result<(), bool> {
    match tokio::time::timeout_at(deadline, connection.read_exact(buf)).await {
        Err(_) => Err(false),
        Ok(Err(_)) => Err(true),
        Ok(Ok(_)) => Ok(()),
    }
}

/// A setting's value from the server's first SETTINGS frame.
fn setting(frames: &[Frame], id: u16) -> Option<u32> {
    let settings = frames
        .iter()
        .find(|f| f.kind == SETTINGS && f.flags & ACK == 0)?;
    settings.payload.chunks_exact(6).find_map(|entry| {
        (u16::from_be_bytes([entry[0], entry[1]]) == id)
            .then(|| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]))
    })
}

/// A TCP connection to `app` that has sent the HTTP/2 preface and its SETTINGS.
async fn open_connection(app: &TestApp) -> TcpStream {
    let mut connection = TcpStream::connect(app.addr).await.unwrap();
    connection.write_all(&open()).await.unwrap();
    connection
}

/// h2c on, with a 300 ms `server.header_read_timeout`, which also bounds how long an
/// HTTP/2 connection may stay idle and how long a ping may go unanswered.
fn h2c_with_short_timeouts(c: &mut Config) {
    c.server.http2 = true;
    c.server.header_read_timeout = Duration::from_millis(300);
}

fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test]
async fn by_default_an_http2_preface_gets_no_credentials_and_the_connection_is_closed() {
    let app = spawn_app().await;
    let mut connection = open_connection(&app).await;
    connection
        .write_all(&get(1, &app.credentials_path))
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(CLOSED_WITHIN, connection.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "the HTTP/2 connection was still open after {CLOSED_WITHIN:?}"
    );
    assert!(
        answer.is_empty(),
        "the server answered the preface: {:?}",
        String::from_utf8_lossy(&answer)
    );

    let refused = h2_client().get(app.url(&app.credentials_path)).send().await;
    assert!(
        refused.is_err(),
        "an h2c client was served: {:?}",
        refused.map(|r| r.status())
    );
    // HTTP/1.1 on the same port is unaffected.
    assert_eq!(app.get_credentials().await.status(), 200);
}

#[tokio::test]
async fn with_server_http2_an_h2c_client_gets_credentials() {
    let app = spawn_app_with(|c| c.server.http2 = true).await;
    let response = h2_client()
        .get(app.url(&app.credentials_path))
        .send()
        .await
        .expect("h2c is served");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["ephemeralToken"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    // HTTP/1.1 clients share the port.
    assert_eq!(app.get_credentials().await.status(), 200);
}

#[tokio::test]
async fn a_silent_http2_connection_is_closed() {
    let app = spawn_app_with(h2c_with_short_timeouts).await;
    let mut connection = open_connection(&app).await;
    // It sends nothing more and answers nothing, not even pings.
    let (frames, closed) = read_frames(&mut connection, CLOSED_WITHIN, false).await;
    assert!(
        closed,
        "the silent connection was still open after {CLOSED_WITHIN:?}: {frames:?}"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_that_answers_pings_is_sent_goaway_and_closed() {
    let app = spawn_app_with(h2c_with_short_timeouts).await;
    let mut connection = open_connection(&app).await;
    connection.write_all(&get(1, "/healthz")).await.unwrap();
    // A live client: it answers every ping, so only the idle timeout can end this.
    let started = Instant::now();
    let (frames, closed) = read_frames(&mut connection, CLOSED_WITHIN, true).await;
    assert!(
        frames.iter().any(|f| f.kind == HEADERS && f.stream == 1),
        "the request was answered: {frames:?}"
    );
    assert!(
        frames.iter().any(|f| f.kind == GOAWAY),
        "no GOAWAY: {frames:?}"
    );
    assert!(
        closed,
        "the idle connection was still open after {CLOSED_WITHIN:?}: {frames:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the idle timeout"
    );
}

#[tokio::test]
async fn an_http2_client_that_stops_answering_pings_is_cut_off_mid_request() {
    let upstream = GatedUpstream::start().await;
    let app = spawn_app_against(&upstream.url, h2c_with_short_timeouts).await;
    let mut connection = open_connection(&app).await;
    connection
        .write_all(&get(1, &app.credentials_path))
        .await
        .unwrap();
    upstream.arrived().await;
    // The request is open (held upstream), so the idle timeout does not apply; the
    // request deadline (15 s) is far off. Only the unanswered pings can close this.
    let (frames, closed) = read_frames(&mut connection, CLOSED_WITHIN, false).await;
    assert!(
        frames.iter().any(|f| f.kind == PING),
        "no ping was sent: {frames:?}"
    );
    assert!(
        closed,
        "a peer that answers no ping was still connected after {CLOSED_WITHIN:?}: {frames:?}"
    );
    assert!(
        !frames.iter().any(|f| f.kind == DATA),
        "the held request was answered: {frames:?}"
    );
    upstream.release(1);
}

#[tokio::test]
async fn the_stream_past_the_concurrent_stream_cap_is_refused() {
    const CAP: u32 = 100;
    let upstream = GatedUpstream::start().await;
    let app = spawn_app_against(&upstream.url, |c| c.server.http2 = true).await;
    let mut connection = open_connection(&app).await;
    // CAP requests held upstream, then one more on the same connection.
    let mut requests = Vec::new();
    for n in 0..=CAP {
        requests.extend(get(2 * n + 1, &app.credentials_path));
    }
    connection.write_all(&requests).await.unwrap();
    for _ in 0..CAP {
        upstream.arrived().await;
    }
    let (frames, _) = read_frames(&mut connection, Duration::from_millis(500), true).await;
    assert_eq!(
        setting(&frames, MAX_CONCURRENT_STREAMS),
        Some(CAP),
        "{frames:?}"
    );
    let past_the_cap = 2 * CAP + 1;
    let refused = frames
        .iter()
        .find(|f| f.kind == RST_STREAM && f.stream == past_the_cap)
        .unwrap_or_else(|| panic!("stream {past_the_cap} was not refused: {frames:?}"));
    assert_eq!(
        u32::from_be_bytes(refused.payload[..4].try_into().unwrap()),
        REFUSED_STREAM
    );
    assert!(
        !frames
            .iter()
            .any(|f| f.kind == RST_STREAM && f.stream < past_the_cap),
        "a stream under the cap was refused: {frames:?}"
    );
    upstream.release(CAP as usize);
}
