//! The prefetch pool, end to end: served from the pool, each credential once.

use crate::helpers::*;
use orga_proxy::config::PoolSize;
use orga_proxy::pool::CredentialPool;
use std::collections::HashSet;
use std::time::Duration;

/// The proxy with a pool of `size`, against a fake that takes 20 ms a call (so the pool
/// has something to save); the proxy, the fake's URL and the pool.
async fn pooled(size: PoolSize) -> (TestApp, String, CredentialPool) {
    let upstream = slow_mock_upstream(Duration::from_millis(20)).await;
    let app = spawn_app_against(&upstream, |c| {
        c.pool.enabled = true;
        c.pool.size = size;
    })
    .await;
    let pool = app.state.pool.clone().expect("the pool is on");
    (app, upstream, pool)
}

#[tokio::test]
async fn with_the_pool_on_every_caller_still_gets_a_distinct_working_credential() {
    let (app, upstream, pool) = pooled(PoolSize::Fixed(4)).await;
    while pool.len() < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut tokens = HashSet::new();
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url(&app.credentials_path));
            tokio::spawn(async move { client.get(url).send().await.unwrap() })
        })
        .collect();
    for call in calls {
        let response = call.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: serde_json::Value = response.json().await.unwrap();
        let token = body["ephemeralToken"].as_str().unwrap().to_owned();
        // The fake accepts only tokens it minted: prove the pooled ones are real.
        let ice = client()
            .get(format!("{upstream}/v1/realtime/ice-config"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(ice.status(), 200);
        assert!(tokens.insert(token), "a credential was handed out twice");
    }
    let hits = pool.stats().hits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(hits >= 4, "the full pool served callers ({hits} hits)");
}

#[tokio::test]
async fn an_automatic_pool_starts_empty_and_serves_callers_once_demand_shows() {
    let (app, _, pool) = pooled(PoolSize::Auto).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pool.is_empty(), "nothing is minted before anyone asks");
    let mut tokens = HashSet::new();
    for _ in 0..40 {
        let response = app.get(&app.credentials_path).await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        let token = body["ephemeralToken"].as_str().unwrap().to_owned();
        assert!(tokens.insert(token), "a credential was handed out twice");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hits = pool.stats().hits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(hits >= 20, "demand filled the pool ({hits} hits of 40)");
}
