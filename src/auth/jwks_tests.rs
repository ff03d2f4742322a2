//! Unit tests of `jwks`.

use super::*;
use serde_json::json;
use std::io;
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

const PINNED: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

fn rsa(kid: &str) -> serde_json::Value {
    // A syntactically valid modulus; these tests never verify a signature.
    json!({"kty": "RSA", "kid": kid, "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"})
}

#[test]
fn signing_keys_are_kept_and_the_rest_skipped() {
    let body = json!({"keys": [
        rsa("sig-key"),
        {"kty": "oct", "kid": "symmetric", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "XYZ", "kid": "future"},
        {"kty": "RSA", "kid": "hs-labelled", "alg": "HS256", "n": "AQAB", "e": "AQAB"},
    ]});
    let keys = parse(body.to_string().as_bytes(), PINNED).unwrap();
    let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
    assert_eq!(kids, [Some("sig-key")]);
    assert_eq!(keys[0].algorithms, [Algorithm::RS256]);
}

#[test]
fn a_well_formed_document_without_usable_keys_is_an_empty_set() {
    for body in [
        json!({"keys": []}),
        json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
        json!({"keys": [], "other": "members are ignored"}),
    ] {
        let keys = parse(body.to_string().as_bytes(), PINNED);
        assert!(keys.is_ok_and(|keys| keys.is_empty()), "{body}");
    }
}

#[test]
fn an_answer_that_is_not_an_object_with_a_keys_array_is_an_error() {
    for body in [
        &b"<html>"[..],
        b"",
        b"{\"keys\": [",
        b"{}",
        b"{\"keys\": null}",
        b"{\"keys\": {}}",
        b"{\"Keys\": []}",
        b"[]",
        b"[[]]",
        b"\"keys\"",
    ] {
        let shown = String::from_utf8_lossy(body);
        assert!(parse(body, PINNED).is_err(), "{shown}");
    }
}

#[test]
fn a_declared_alg_narrows_what_the_key_verifies() {
    let mut key = rsa("k");
    key["alg"] = json!("RS256");
    let pinned = [Algorithm::RS256, Algorithm::PS256];
    let keys = parse(json!({"keys": [key]}).to_string().as_bytes(), &pinned).unwrap();
    assert_eq!(keys[0].algorithms, [Algorithm::RS256]);
}

const HOUR: Duration = Duration::from_secs(3600);

/// A cache whose provider never answers (a closed port), with no refresher running.
fn unreachable_cache(clock: Clock, max_stale: Duration) -> Jwks {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    Jwks {
        url: reqwest::Url::parse(&url).unwrap(),
        http: crate::outbound::client().unwrap(),
        pinned: PINNED.to_vec(),
        keys: RwLock::default(),
        refresh: tokio::sync::Mutex::new(None),
        ready: Arc::default(),
        lost: Arc::default(),
        clock,
        interval: Duration::from_secs(300),
        min_refresh: Duration::from_secs(30),
        max_stale,
        fetches: AtomicU64::new(0),
    }
}

fn one_key() -> Vec<Arc<VerifyingKey>> {
    parse(json!({"keys": [rsa("k")]}).to_string().as_bytes(), PINNED).unwrap()
}

/// Log lines written while `run` runs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn logs_of<T>(run: impl Future<Output = T>) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let output = {
        let _guard = tracing::subscriber::set_default(subscriber);
        run.await
    };
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    (output, text)
}

#[tokio::test]
async fn cached_keys_outlive_failed_fetches_until_max_stale_then_are_dropped() {
    let clock = Clock::manual(UNIX_EPOCH + 1_000 * HOUR);
    let jwks = unreachable_cache(clock.clone(), HOUR);
    jwks.store(one_key(), clock.now());
    assert!(jwks.ready.load(Ordering::SeqCst));

    clock.advance(HOUR);
    let (loaded, logs) = logs_of(jwks.fetch_and_store("scheduled")).await;
    assert!(!loaded);
    assert!(matches!(
        jwks.lookup(Some("k"), Algorithm::RS256),
        Lookup::Found(_)
    ));
    assert!(jwks.ready.load(Ordering::SeqCst), "still within max_stale");
    assert!(
        logs.contains("WARN") && logs.contains("stay in use"),
        "{logs}"
    );

    clock.advance(Duration::from_secs(1));
    let (loaded, logs) = logs_of(jwks.fetch_and_store("scheduled")).await;
    assert!(!loaded);
    assert!(matches!(
        jwks.lookup(Some("k"), Algorithm::RS256),
        Lookup::Empty
    ));
    assert!(!jwks.ready.load(Ordering::SeqCst), "readiness turns off");
    assert!(
        logs.contains("ERROR") && logs.contains("JWKS keys dropped"),
        "{logs}"
    );
    assert!(logs.contains("since_last_good_fetch=1h 1s"), "{logs}");

    // The next well-formed document brings keys and readiness back.
    jwks.store(one_key(), clock.now());
    assert!(jwks.ready.load(Ordering::SeqCst));
    assert!(matches!(
        jwks.lookup(Some("k"), Algorithm::RS256),
        Lookup::Found(_)
    ));
}

#[tokio::test]
async fn stale_keys_are_dropped_by_a_lookup_too_without_waiting_for_a_fetch() {
    let clock = Clock::manual(UNIX_EPOCH + 1_000 * HOUR);
    let jwks = unreachable_cache(clock.clone(), HOUR);
    jwks.store(one_key(), clock.now());
    clock.advance(2 * HOUR);
    let (lookup, logs) = logs_of(async { jwks.lookup(Some("k"), Algorithm::RS256) }).await;
    assert!(matches!(lookup, Lookup::Empty));
    assert!(!jwks.ready.load(Ordering::SeqCst));
    assert_eq!(logs.matches("JWKS keys dropped").count(), 1, "{logs}");
    let (_, logs) = logs_of(async { jwks.lookup(Some("k"), Algorithm::RS256) }).await;
    assert!(!logs.contains("dropped"), "said once:\n{logs}");
}

#[tokio::test]
async fn an_empty_document_drops_the_keys_says_so_and_wakes_the_refresher() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let idp = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": []})))
        .mount(&idp)
        .await;
    let clock = Clock::manual(UNIX_EPOCH + 1_000 * HOUR);
    let mut jwks = unreachable_cache(clock.clone(), HOUR);
    jwks.url = reqwest::Url::parse(&format!("{}/jwks.json", idp.uri())).unwrap();
    jwks.store(one_key(), clock.now());
    let lost = jwks.lost.clone();
    let woken = lost.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();

    let (loaded, logs) = logs_of(jwks.fetch_and_store("scheduled")).await;
    assert!(!loaded);
    assert!(matches!(
        jwks.lookup(Some("k"), Algorithm::RS256),
        Lookup::Empty
    ));
    assert!(!jwks.ready.load(Ordering::SeqCst));
    assert!(
        logs.contains("ERROR") && logs.contains("no usable signing key"),
        "{logs}"
    );
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("the refresher is woken");
}

#[test]
fn staleness_counts_from_the_last_well_formed_document() {
    let at = Instant::now();
    let cached = Cached {
        keys: Arc::new(one_key()),
        fetched_at: Some(at),
    };
    assert_eq!(cached.stale_for(at + HOUR, HOUR), None, "exactly max_stale");
    assert_eq!(
        cached.stale_for(at + HOUR + Duration::from_secs(1), HOUR),
        Some(HOUR + Duration::from_secs(1))
    );
    let empty = Cached {
        fetched_at: Some(at),
        ..Cached::default()
    };
    assert_eq!(
        empty.stale_for(at + 10 * HOUR, HOUR),
        None,
        "nothing to drop"
    );
    assert_eq!(Cached::default().stale_for(at, HOUR), None, "never loaded");
}
