//! The audit writer: one task that takes the queued records in batches, writes each
//! batch with one blocking write and one sync (on Tokio's blocking pool), and only then
//! acknowledges every record in it, so concurrent credentials share one `fdatasync`.
//!
//! Once a second it checks whether the file was moved (logrotate's default rename) and
//! reopens the path, and while the sink fails it probes it; a SIGHUP reopens at once. A
//! write that fails refuses the records waiting on it, turns readiness 503 and is
//! logged once per outage; the next write that succeeds ends the outage.

use super::Control;
use super::sink::Sink;
use crate::config::AuditSink;
use crate::metrics::{AUDIT_QUEUE_DEPTH, AUDIT_RECORDS, AUDIT_WRITE_FAILURES};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most records written in one batch.
const MAX_BATCH: usize = 1024;
/// How often the file is checked for a move, and a failed sink probed.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);
/// A write still running after this long turns readiness 503 until it returns (a hung
/// disk or a log reader that stopped reading standard output).
const STALL: Duration = Duration::from_secs(5);

/// One record waiting for the writer.
pub(super) struct Submission {
    /// The record's JSON line, newline included.
    pub line: Vec<u8>,
    /// Told `true` once the line is written (and synced), `false` if the write failed.
    pub ack: oneshot::Sender<bool>,
}

/// The writer task's state.
struct Writer {
    /// The sink; `None` only after a blocking task panicked, until rebuilt.
    sink: Option<Sink>,
    /// `audit.sink`, to rebuild the sink.
    spec: AuditSink,
    /// The `audit` readiness flag.
    ready: Arc<AtomicBool>,
    /// In an outage: from a failed write until a write succeeds.
    failing: bool,
}

/// Runs the writer until [`Control::shutdown`] is notified (then writes everything
/// still queued) or every sender is gone.
pub(super) async fn run(
    sink: Sink,
    spec: AuditSink,
    mut queue: mpsc::Receiver<Submission>,
    control: Arc<Control>,
    ready: Arc<AtomicBool>,
) {
    let mut writer = Writer {
        sink: Some(sink),
        spec,
        ready,
        failing: false,
    };
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Upkeep before records, so a steady stream of records cannot starve it.
        tokio::select! {
            biased;
            () = control.shutdown.notified() => break,
            () = control.reopen.notified() => writer.reopen().await,
            _ = upkeep.tick() => writer.upkeep().await,
            first = queue.recv() => match first {
                Some(first) => writer.write_batch(first, &mut queue).await,
                None => break,
            },
        }
        metrics::gauge!(AUDIT_QUEUE_DEPTH).set(queue.len() as f64);
    }
    // Shutting down: nothing new is accepted; what is queued is written, then we stop.
    queue.close();
    while let Some(first) = queue.recv().await {
        writer.write_batch(first, &mut queue).await;
    }
    metrics::gauge!(AUDIT_QUEUE_DEPTH).set(0.0);
    tracing::info!("audit trail written and closed");
}

impl Writer {
    /// Writes `first` and whatever else is queued (up to [`MAX_BATCH`]) in one go, then
    /// acknowledges each record with the outcome.
    async fn write_batch(&mut self, first: Submission, queue: &mut mpsc::Receiver<Submission>) {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // A request that gave up waiting (its deadline passed, its client left) handed
        // nothing out: its record would describe a credential nobody received.
        batch.retain(|submission| !submission.ack.is_closed());
        if batch.is_empty() {
            return;
        }
        let mut lines = Vec::with_capacity(batch.iter().map(|s| s.line.len()).sum());
        for submission in &batch {
            lines.extend_from_slice(&submission.line);
        }
        let written = self.blocking(move |sink| sink.write(&lines)).await;
        match &written {
            Ok(()) => {
                metrics::counter!(AUDIT_RECORDS).increment(batch.len() as u64);
                self.recovered();
            }
            Err(error) => {
                metrics::counter!(AUDIT_WRITE_FAILURES).increment(1);
                self.failed(error);
            }
        }
        for submission in batch {
            let _ = submission.ack.send(written.is_ok());
        }
    }

    /// Every second: a failing sink is probed (readiness comes back when the probe
    /// writes, see [`Sink::probe`]; the outage ends at the next successful write); a
    /// healthy file is reopened if its path now names another file.
    async fn upkeep(&mut self) {
        if self.failing {
            if self.blocking(Sink::probe).await.is_ok() {
                self.ready.store(true, Ordering::SeqCst);
            }
            return;
        }
        match self.blocking(Sink::reopen_if_moved).await {
            Ok(true) => tracing::info!(
                path = %self.path(),
                "audit file moved or deleted: a new one is open at its path"
            ),
            Ok(false) => {}
            Err(error) => self.failed(&error),
        }
    }

    /// SIGHUP: reopens the file at its path.
    async fn reopen(&mut self) {
        match self.blocking(Sink::reopen).await {
            Ok(true) => tracing::info!(path = %self.path(), "audit file reopened"),
            Ok(false) => {}
            Err(error) => self.failed(&error),
        }
    }

    /// The file's path for a log line, or `stdout`.
    fn path(&self) -> String {
        match self.sink.as_ref().and_then(|sink| sink.path()) {
            Some(path) => path.display().to_string(),
            None => "stdout".to_owned(),
        }
    }

    fn failed(&mut self, error: &io::Error) {
        self.ready.store(false, Ordering::SeqCst);
        if !std::mem::replace(&mut self.failing, true) {
            tracing::error!(
                %error,
                path = %self.path(),
                "audit sink failed: credentials are refused (503) and /readyz is 503 until a write succeeds"
            );
        }
    }

    fn recovered(&mut self) {
        self.ready.store(true, Ordering::SeqCst);
        if std::mem::replace(&mut self.failing, false) {
            tracing::info!(path = %self.path(), "audit sink writes again: credentials are issued");
        }
    }

    /// Runs `op` on the sink on the blocking pool. A run past [`STALL`] turns readiness
    /// 503 (and starts an outage) while it is waited for.
    async fn blocking<T, F>(&mut self, op: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Sink) -> io::Result<T> + Send + 'static,
    {
        let mut sink = match self.sink.take() {
            Some(sink) => sink,
            None => match Sink::closed(&self.spec) {
                Some(sink) => sink,
                None => return Err(io::Error::other("the audit trail is off")),
            },
        };
        let mut task = tokio::task::spawn_blocking(move || {
            let result = op(&mut sink);
            (sink, result)
        });
        let joined = match tokio::time::timeout(STALL, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                self.failed(&io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("a write has not returned for {} s", STALL.as_secs()),
                ));
                task.await
            }
        };
        match joined {
            Ok((sink, result)) => {
                self.sink = Some(sink);
                result
            }
            Err(join_error) => Err(io::Error::other(format!(
                "the audit write task failed: {join_error}"
            ))),
        }
    }
}
