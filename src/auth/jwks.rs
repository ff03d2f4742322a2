//! The JWKS cache: the identity provider's public keys by `kid`, loaded at start-up,
//! refreshed on an interval and when an unknown `kid` arrives. Refreshes are
//! single-flight, and those caused by unknown `kid`s have a cooldown, so a flood of
//! made-up `kid`s costs the identity provider at most one request per cooldown.
//!
//! A fetch either succeeds, with a well-formed document, or fails. Well-formed means an
//! HTTP 2xx answer of at most 256 KiB whose body is a JSON object with a `keys` array;
//! the members of that array this proxy cannot use (other key types, encryption keys,
//! algorithms not pinned, broken parameters) are skipped with a debug line. A
//! well-formed document is the provider's word on which keys exist: it replaces the
//! cache, so a key it no longer lists is revoked at once, and one with no usable key
//! (`{"keys":[]}` included) leaves none. A failed fetch (network error, timeout, other
//! status, over-size, not JSON, no `keys` array) says nothing about the keys, so the
//! cached ones stay in use, but for no longer than `jwks_max_stale` after the last
//! well-formed document: past it they are dropped (an error line says so), because a
//! provider unreachable for that long may have revoked them meanwhile.
//!
//! With no usable key, for whatever reason (never loaded, none published, dropped as
//! stale), every token is answered 503 (fail closed: the token may be fine, the proxy
//! cannot tell), the `jwks` readiness dependency is not ready, and the refresher retries
//! soon (1 s, doubling up to `jwks_min_refresh`), woken early if the keys went while it
//! waited out a full `jwks_refresh`. Stale keys are dropped by the first lookup or
//! failed fetch past the deadline; while the provider is down the refresher tries at
//! least every `jwks_min_refresh`, so readiness turns 503 within that of the deadline.

use crate::clock::Clock;
use crate::config::JwtConfig;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Deadline of one JWKS fetch, connecting included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read; real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys kept from one document.
const MAX_KEYS: usize = 64;
/// First retry delay while no keys are loaded; doubles up to `min_refresh`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// A public key and the algorithms it may verify (its `alg`, else those its type
/// allows, always within the pinned list).
pub(super) struct VerifyingKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    /// The key, for `jsonwebtoken::decode`.
    pub key: DecodingKey,
}

/// What a lookup found.
pub(super) enum Lookup {
    Found(Arc<VerifyingKey>),
    /// The `kid` exists but its key may not verify this algorithm.
    WrongAlgorithm,
    /// No key for this `kid` (or, without a `kid`, not exactly one key for the algorithm).
    Missing,
    /// No keys loaded at all.
    Empty,
}

/// The keys of the last well-formed document and when it arrived.
#[derive(Default)]
struct Cached {
    /// The usable signing keys; empty before the first load and once dropped.
    keys: Arc<Vec<Arc<VerifyingKey>>>,
    /// When the last well-formed document arrived (by the injected clock); `None` before.
    fetched_at: Option<Instant>,
}

impl Cached {
    /// How long ago the keys were last confirmed, when that is longer than `max_stale`
    /// and there are keys to drop.
    fn stale_for(&self, now: Instant, max_stale: Duration) -> Option<Duration> {
        let age = now.saturating_duration_since(self.fetched_at?);
        (age > max_stale && !self.keys.is_empty()).then_some(age)
    }
}

/// Where the keys come from and the cached set.
pub(super) struct Jwks {
    url: reqwest::Url,
    http: reqwest::Client,
    pinned: Vec<Algorithm>,
    keys: RwLock<Cached>,
    /// Held for the whole of a fetch (single flight); holds when the last fetch
    /// caused by an unknown `kid` started.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    /// The readiness flag: true while usable keys are cached. Written only with the
    /// `keys` lock held, so it never disagrees with them for long.
    ready: Arc<AtomicBool>,
    /// Wakes the refresher when the keys go while it waits out a full interval.
    lost: Arc<Notify>,
    clock: Clock,
    interval: Duration,
    min_refresh: Duration,
    /// How long the keys outlive failed refreshes (`auth.jwt.jwks_max_stale`).
    max_stale: Duration,
    fetches: AtomicU64,
}

impl Jwks {
    /// Builds the cache (empty) for `url` with the timings of `config`, and starts its
    /// refresh task on the current Tokio runtime.
    pub fn start(
        url: reqwest::Url,
        config: &JwtConfig,
        http: reqwest::Client,
        ready: Arc<AtomicBool>,
        clock: Clock,
    ) -> Result<Arc<Self>, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the JWKS refresher needs a Tokio runtime".to_string())?;
        let jwks = Arc::new(Self {
            url,
            http,
            pinned: config.algorithms(),
            keys: RwLock::default(),
            refresh: tokio::sync::Mutex::new(None),
            ready,
            lost: Arc::default(),
            clock,
            interval: config.jwks_refresh,
            min_refresh: config.jwks_min_refresh,
            max_stale: config.jwks_max_stale,
            fetches: AtomicU64::new(0),
        });
        runtime.spawn(refresher(Arc::downgrade(&jwks)));
        Ok(jwks)
    }

    /// How many fetches were attempted (for tests and diagnostics).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// The key for a token's `kid` and `alg`, refreshing once (single flight, with
    /// cooldown) when the `kid` is unknown or nothing is loaded yet.
    pub async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        match self.lookup(kid, alg) {
            Lookup::Missing | Lookup::Empty => {}
            found => return found,
        }
        {
            let mut last = self.refresh.lock().await;
            // Whoever held the lock may have fetched the key already.
            match self.lookup(kid, alg) {
                Lookup::Missing | Lookup::Empty => {}
                found => return found,
            }
            let now = self.clock.now();
            let cooling =
                last.is_some_and(|at| now.saturating_duration_since(at) < self.min_refresh);
            if cooling {
                return self.lookup(kid, alg);
            }
            *last = Some(now);
            self.fetch_and_store("unknown kid").await;
        }
        self.lookup(kid, alg)
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let keys = self.current_keys(self.clock.now());
        if keys.is_empty() {
            return Lookup::Empty;
        }
        match kid {
            Some(kid) => match keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(key) if key.algorithms.contains(&alg) => Lookup::Found(key.clone()),
                Some(_) => Lookup::WrongAlgorithm,
                None => Lookup::Missing,
            },
            None => {
                let mut candidates = keys.iter().filter(|k| k.algorithms.contains(&alg));
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => Lookup::Found(key.clone()),
                    _ => Lookup::Missing,
                }
            }
        }
    }

    /// Fetches the document; a well-formed one replaces the cache, whatever it holds.
    /// True when the fetch succeeded and left usable keys.
    async fn fetch_and_store(&self, why: &'static str) -> bool {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let result = match self.fetch().await {
            Ok(body) => parse(&body, &self.pinned),
            Err(e) => Err(e),
        };
        let now = self.clock.now();
        match result {
            Ok(keys) if keys.is_empty() => {
                let had_keys = self.store(keys, now);
                tracing::error!(url = %self.url, accepted = %names(&self.pinned), reason = why, "the JWKS holds no usable signing key: every token is refused and readiness is 503 until it does");
                if had_keys {
                    self.lost.notify_waiters();
                }
                false
            }
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), reason = why, "JWKS loaded");
                self.store(keys, now);
                true
            }
            Err(error) => {
                // Drops the cached keys here when they have outlived `max_stale`.
                let cached = self.current_keys(now).len();
                if cached > 0 {
                    tracing::warn!(url = %self.url, %error, cached, reason = why, "JWKS refresh failed; the cached keys stay in use until auth.jwt.jwks_max_stale");
                } else {
                    tracing::error!(url = %self.url, %error, reason = why, "JWKS not loaded: every token is refused until it is");
                }
                false
            }
        }
    }

    /// Replaces the cached keys with a well-formed document's, fetched at `now`, and sets
    /// readiness to match under the same lock. True when keys were cached before.
    fn store(&self, keys: Vec<Arc<VerifyingKey>>, now: Instant) -> bool {
        let mut cached = self.keys.write().unwrap_or_else(|p| p.into_inner());
        self.ready.store(!keys.is_empty(), Ordering::SeqCst);
        let had_keys = !cached.keys.is_empty();
        *cached = Cached {
            keys: Arc::new(keys),
            fetched_at: Some(now),
        };
        had_keys
    }

    /// The cached keys, unless they have gone `max_stale` without a well-formed document:
    /// then they are dropped here, readiness turns off, an error line says why and the
    /// refresher is woken into its quick retries.
    fn current_keys(&self, now: Instant) -> Arc<Vec<Arc<VerifyingKey>>> {
        {
            let cached = self.keys.read().unwrap_or_else(|p| p.into_inner());
            if cached.stale_for(now, self.max_stale).is_none() {
                return cached.keys.clone();
            }
        }
        let mut cached = self.keys.write().unwrap_or_else(|p| p.into_inner());
        // Checked again: a fetch may have landed between the two locks.
        let Some(age) = cached.stale_for(now, self.max_stale) else {
            return cached.keys.clone();
        };
        cached.keys = Arc::default();
        self.ready.store(false, Ordering::SeqCst);
        drop(cached);
        tracing::error!(
            url = %self.url,
            since_last_good_fetch = %humantime::format_duration(Duration::from_secs(age.as_secs())),
            max_stale = %humantime::format_duration(self.max_stale),
            "JWKS keys dropped: no successful refresh within auth.jwt.jwks_max_stale; every token is refused and readiness is 503 until a fetch succeeds"
        );
        self.lost.notify_waiters();
        Arc::default()
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(self.url.clone())
            .timeout(FETCH_TIMEOUT)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("no answer within {FETCH_TIMEOUT:?}")
                } else {
                    format!("request failed: {}", e.without_url())
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered HTTP {status}"));
        }
        crate::outbound::read_capped(response, MAX_JWKS_BYTES)
            .await
            .map_err(|e| match e {
                crate::outbound::ReadError::TooLarge => {
                    format!("answer larger than {MAX_JWKS_BYTES} bytes")
                }
                crate::outbound::ReadError::Transport(e) => {
                    format!("reading the answer failed: {}", e.without_url())
                }
            })
    }
}

/// Loads at start, then refreshes every `interval`; while the last fetch failed or no
/// keys are loaded it retries sooner (1 s, doubling up to `min_refresh`), and keys lost
/// during a full interval cut it short. Ends when the cache is dropped.
async fn refresher(jwks: Weak<Jwks>) {
    let mut retry = FIRST_RETRY;
    loop {
        let Some(cache) = jwks.upgrade() else { return };
        let loaded = {
            let _single_flight = cache.refresh.lock().await;
            cache.fetch_and_store("scheduled").await
        };
        // Listening before looking at the keys: a loss after the look wakes us, one
        // before it is seen by the look.
        let lost = cache.lost.clone();
        let woken = lost.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let delay = if loaded && cache.ready.load(Ordering::SeqCst) {
            retry = FIRST_RETRY;
            cache.interval
        } else {
            let delay = retry;
            retry = (retry * 2).min(cache.min_refresh);
            delay.min(cache.interval)
        };
        drop(cache);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = woken => {}
        }
    }
}

/// The usable signing keys of a well-formed JWKS document (a JSON object with a `keys`
/// array), possibly none; an error when the document is not well-formed. Keys of other
/// types, for encryption, or for algorithms not pinned are skipped, never fatal:
/// providers publish such keys alongside the ones that matter.
fn parse(body: &[u8], pinned: &[Algorithm]) -> Result<Vec<Arc<VerifyingKey>>, String> {
    // Through `Value`, not a derived struct: serde would also read a struct from a JSON
    // array, and `[[]]` must not pass for an empty key set.
    let document: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Some(serde_json::Value::Array(members)) = document.as_object().and_then(|o| o.get("keys"))
    else {
        return Err("not a JWKS document: no `keys` array in a JSON object".into());
    };
    let mut keys = Vec::new();
    for value in members.iter().take(MAX_KEYS) {
        let kid = value.get("kid").and_then(|k| k.as_str()).unwrap_or("");
        match verifying_key(value.clone(), pinned) {
            Some(key) => keys.push(Arc::new(key)),
            None => tracing::debug!(
                kid,
                "JWKS key skipped: not a signing key for an accepted algorithm"
            ),
        }
    }
    if members.len() > MAX_KEYS {
        // Tokens signed with a skipped key (one appended late, say) are refused: say why.
        tracing::warn!(
            published = members.len(),
            "the JWKS lists more than {MAX_KEYS} keys: those past the first {MAX_KEYS} are skipped, and tokens signed with them get 401"
        );
    }
    Ok(keys)
}

fn verifying_key(value: serde_json::Value, pinned: &[Algorithm]) -> Option<VerifyingKey> {
    let text = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    if text("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let declared = match text("alg") {
        Some(alg) => Some(alg.parse::<Algorithm>().ok()?),
        None => None,
    };
    let kid = text("kid");
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        // Symmetric keys never come from a JWKS: that would let anyone who can read the
        // document sign tokens.
        _ => &[],
    };
    let algorithms: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|alg| pinned.contains(alg) && declared.is_none_or(|d| d == *alg))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(VerifyingKey {
        kid,
        algorithms,
        key,
    })
}

pub(super) fn names(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "jwks_tests.rs"]
mod tests;
