//! The audit trail (`[audit]`): one JSON line per credential issued and per relayed
//! call, to standard output or a file, written so that none is lost.
//!
//! - [`record`]: what a record holds ([`AuditRecord`], [`Caller`]), escaped by serde_json.
//! - [`sink`]: standard output or an append-only file (synced, reopened for logrotate).
//! - [`writer`]: the task that writes queued records in batches and acknowledges them.
//!
//! The guarantee, like Vault's audit devices: a credential is handed out only after its
//! record has been written. [`Audit::record`] queues the record (a bounded queue: a slow
//! sink makes requests wait, never drops records) and waits for the writer's answer;
//! the writer answers after its batch was written and, for a file, `fdatasync`ed. So
//! every credential a client received is on disk (or, with `stdout`, written into the
//! pipe to the log collector, whose durability is then the platform's) even if the
//! process or the machine dies right after. The converse does not hold: a record can
//! exist for a credential the client never got (its connection died after the write,
//! or a sync reported an error after the bytes were taken).
//!
//! If the sink fails (unwritable, disk full, directory deleted), the credentials
//! waiting on it are refused with 503 `unavailable` and their tokens discarded unused
//! (never handed out), `/readyz` turns 503 (`audit`), the failure is logged once and
//! counted; every second the sink is probed (readiness returns when a probe write
//! succeeds), and the first record written ends the outage. On shutdown the drain lets
//! in-flight requests finish (each waits for its record), then [`Audit::shutdown`] writes
//! whatever is still queued.
//!
//! For logrotate: the file is reopened on SIGHUP ([`Audit::reopen`], called by the
//! binary's SIGHUP handler) and, without one, within a second of being moved away.

mod record;
mod sink;
mod writer;

pub use record::{AuditRecord, Caller};

use crate::clock::Clock;
use crate::config::AuditConfig;
use crate::error::ApiError;
use crate::orga::SessionCredentials;
use crate::readiness::Readiness;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use writer::Submission;

/// Records waiting for the writer at most; past it, requests wait for room. The
/// concurrency limit keeps real queues far shorter.
const QUEUE_CAPACITY: usize = 4096;
/// Longest a credential waits for its record to be written before it is refused.
const WAIT_FOR_WRITE: Duration = Duration::from_secs(5);
/// How long the shutdown waits for the writer before giving up on it: a hung disk must
/// not hold the process past the container runtime's kill (Docker's 10 s after SIGTERM,
/// with `server.shutdown_timeout` at 8 s). What is still queued then belongs to
/// credentials never handed out, each refused when its wait ended.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// Why a record was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The sink failed to write it.
    #[error("the audit sink failed to write the record")]
    Failed,
    /// The writer has stopped (shutting down).
    #[error("the audit trail is closed")]
    Closed,
}

impl From<AuditError> for ApiError {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::Failed => ApiError::Unavailable {
                reason: "The audit trail cannot be written, so no credential is handed out; try again shortly.".into(),
                retry_after: Duration::from_secs(5),
            },
            AuditError::Closed => ApiError::Unavailable {
                reason: "The proxy is shutting down; try again.".into(),
                retry_after: Duration::from_secs(1),
            },
        }
    }
}

/// The audit trail, kept in `AppState`; a cheap clone. Off (`audit.sink = ""`), every
/// record is accepted at once and goes nowhere.
#[derive(Clone, Default)]
pub struct Audit {
    /// `None` when off.
    inner: Option<Arc<Inner>>,
}

/// The running audit trail.
struct Inner {
    /// The writer's queue.
    queue: mpsc::Sender<Submission>,
    /// Requests to the writer: reopen the file, shut down.
    control: Arc<Control>,
    /// Stamps each record's time.
    clock: Clock,
    /// The writer task, until shut down.
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the writer is asked to do besides writing.
#[derive(Default)]
struct Control {
    /// Reopen the file (SIGHUP).
    reopen: Notify,
    /// Write what is queued and stop.
    shutdown: Notify,
}

impl Audit {
    /// Starts the audit trail `config` describes: opens the sink (an error if a file
    /// cannot be opened for appending), registers the `audit` readiness dependency and
    /// starts the writer on the current Tokio runtime.
    pub fn start(
        config: &AuditConfig,
        readiness: &Readiness,
        clock: Clock,
    ) -> Result<Self, String> {
        let sink = match sink::Sink::open(&config.sink) {
            Ok(Some(sink)) => sink,
            Ok(None) => return Ok(Self::default()),
            Err(e) => {
                return Err(format!(
                    "audit.sink: {} cannot be opened for appending: {e}",
                    config.sink
                ));
            }
        };
        let ready = readiness.dependency("audit");
        ready.store(true, Ordering::SeqCst);
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let control = Arc::new(Control::default());
        let writer = tokio::spawn(writer::run(
            sink,
            config.sink.clone(),
            receiver,
            control.clone(),
            ready,
        ));
        Ok(Self {
            inner: Some(Arc::new(Inner {
                queue,
                control,
                clock,
                writer: Mutex::new(Some(writer)),
            })),
        })
    }

    /// True when records are written somewhere.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Stamps `record` with the time, queues it and waits until the writer has written
    /// it (see the module's guarantee). Hand out what the record describes only on `Ok`.
    pub async fn record(&self, mut record: AuditRecord) -> Result<(), AuditError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        record.time = rfc3339_millis(inner.clock.wall());
        let json = serde_json::to_vec(&record).map_err(|_| AuditError::Failed)?;
        let mut line = escape_line_separators(json);
        line.push(b'\n');
        let (ack, written) = oneshot::channel();
        let queued_and_written = async {
            inner
                .queue
                .send(Submission { line, ack })
                .await
                .map_err(|_| AuditError::Closed)?;
            match written.await {
                Ok(true) => Ok(()),
                Ok(false) => Err(AuditError::Failed),
                Err(_) => Err(AuditError::Closed),
            }
        };
        // A sink that hangs refuses the credential rather than holding the request until
        // its deadline (the record, if it is written later, describes a credential that
        // was never handed out, the one direction the guarantee allows).
        tokio::time::timeout(WAIT_FOR_WRITE, queued_and_written)
            .await
            .unwrap_or(Err(AuditError::Failed))
    }

    /// Records a credential about to be handed to `caller`; on `Err` the caller must
    /// answer the error and drop the credential unused.
    pub async fn credential_issued(
        &self,
        caller: Caller,
        credentials: &SessionCredentials,
        pool_hit: bool,
    ) -> Result<(), ApiError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let record = AuditRecord::credential(caller, credentials, pool_hit);
        self.record(record).await.map_err(ApiError::from)
    }

    /// Asks the writer to reopen the file at its path (after logrotate renamed it).
    /// Does nothing for standard output or when off.
    pub fn reopen(&self) {
        if let Some(inner) = &self.inner {
            inner.control.reopen.notify_one();
        }
    }

    /// Writes every record still queued, then stops the writer; later records are
    /// refused (`Closed`). Waits at most a few seconds for a sink that hangs.
    pub async fn shutdown(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        let writer = inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(writer) = writer else {
            return;
        };
        inner.control.shutdown.notify_one();
        if tokio::time::timeout(SHUTDOWN_WAIT, writer).await.is_err() {
            tracing::error!(
                "the audit writer did not finish within {} s; records still queued may be lost",
                SHUTDOWN_WAIT.as_secs()
            );
        }
    }
}

/// `wall` as RFC 3339 UTC to the millisecond. humantime panics outside 1970..=9999, which
/// only a broken system clock could reach: such a clock is clamped rather than allowed to
/// stop the audit trail.
fn rfc3339_millis(wall: std::time::SystemTime) -> String {
    let last = std::time::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_799);
    humantime::format_rfc3339_millis(wall.clamp(std::time::UNIX_EPOCH, last)).to_string()
}

/// `json` with U+2028 and U+2029 written as `\u2028` and `\u2029`. serde_json leaves them
/// raw, which is valid JSON, but readers that split on every Unicode line break (Python's
/// `splitlines`, some log shippers) would cut a record in two at a `User-Agent` holding
/// one. They can only occur inside strings, where the escape means the same.
fn escape_line_separators(json: Vec<u8>) -> Vec<u8> {
    const SEPARATORS: [(&[u8], &[u8]); 2] = [
        ("\u{2028}".as_bytes(), br"\u2028"),
        ("\u{2029}".as_bytes(), br"\u2029"),
    ];
    if !json
        .windows(3)
        .any(|w| SEPARATORS.iter().any(|(raw, _)| w == *raw))
    {
        return json;
    }
    let mut out = Vec::with_capacity(json.len() + 12);
    let mut rest = json.as_slice();
    while !rest.is_empty() {
        match SEPARATORS.iter().find(|(raw, _)| rest.starts_with(raw)) {
            Some((raw, escaped)) => {
                out.extend_from_slice(escaped);
                rest = &rest[raw.len()..];
            }
            None => {
                out.push(rest[0]);
                rest = &rest[1..];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_clock_outside_1970_to_9999_is_clamped_not_a_panic() {
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339_millis(far), "9999-12-31T23:59:59.000Z");
    }

    #[test]
    fn unicode_line_separators_are_escaped_so_no_reader_splits_a_record() {
        let agent = "evil\u{2028}{\"forged\":1}\u{2029}é";
        let json = serde_json::to_vec(&serde_json::json!({ "user_agent": agent })).unwrap();
        let line = escape_line_separators(json);
        let text = String::from_utf8(line).unwrap();
        assert!(
            !text.contains('\u{2028}') && !text.contains('\u{2029}'),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["user_agent"], agent, "the value is unchanged");
        let plain = br#"{"a":"b"}"#.to_vec();
        assert_eq!(escape_line_separators(plain.clone()), plain);
    }
}
