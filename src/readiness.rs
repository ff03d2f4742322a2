//! `Readiness`: whether this process should receive new traffic. Not ready while
//! draining, or while a registered dependency (JWKS keys, Redis, the audit sink) says it
//! cannot serve. It also holds the switch that ends the requests still open when the
//! drain deadline passes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// What `/readyz` reports; shared by every component that can make the process unready.
#[derive(Debug)]
pub struct Readiness {
    /// Set once shutdown has begun.
    draining: AtomicBool,
    /// Each registered dependency and whether it can serve now.
    dependencies: RwLock<Vec<(&'static str, Arc<AtomicBool>)>>,
    /// Flips once, when the drain deadline passes (see [`Readiness::cut_open_requests`]).
    cut: watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            dependencies: RwLock::default(),
            cut: watch::Sender::new(false),
        }
    }
}

impl Readiness {
    /// Marks the process as draining: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Registers a dependency that starts not ready; the component sets the returned
    /// flag to `true` once it can serve (and back to `false` if it no longer can).
    pub fn dependency(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.dependencies
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((name, flag.clone()));
        flag
    }

    /// The reasons the process is not ready; empty when ready.
    pub fn problems(&self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if self.is_draining() {
            problems.push("draining");
        }
        let dependencies = self.dependencies.read().unwrap_or_else(|p| p.into_inner());
        problems.extend(
            dependencies
                .iter()
                .filter(|(_, ready)| !ready.load(Ordering::SeqCst))
                .map(|(name, _)| *name),
        );
        problems
    }

    /// Answers every request still open 503 `unavailable` now (the drain deadline has
    /// passed), and every later one at once.
    pub fn cut_open_requests(&self) {
        self.cut.send_replace(true);
    }

    /// Resolves once [`Readiness::cut_open_requests`] has been called.
    pub async fn requests_cut(&self) {
        let mut cut = self.cut.subscribe();
        // The sender lives as long as `self`, so this cannot fail while it is borrowed.
        let _ = cut.wait_for(|cut| *cut).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dependency_blocks_readiness_until_it_reports_ready() {
        let readiness = Readiness::default();
        let jwks = readiness.dependency("jwks");
        assert_eq!(readiness.problems(), ["jwks"]);
        jwks.store(true, Ordering::SeqCst);
        assert!(readiness.problems().is_empty());
        readiness.start_draining();
        assert_eq!(readiness.problems(), ["draining"]);
    }

    #[tokio::test]
    async fn cutting_open_requests_wakes_every_waiter() {
        let readiness = Arc::new(Readiness::default());
        let waiter = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.requests_cut().await }
        });
        readiness.cut_open_requests();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("no panic");
    }
}
