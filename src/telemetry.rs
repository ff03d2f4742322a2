//! Logging: the tracing subscriber (tracing-subscriber's JSON or text lines on
//! stdout, filtered by `RUST_LOG` or `log.level`), and the facts each request's one log
//! line reports (subject, pool hit, upstream timings), gathered while it runs.
//!
//! The facts live in a task-local record that the HTTP stack opens around each request
//! ([`with_request_facts`]) and reads when it writes the log line. Components note what
//! they know ([`note_subject`], [`note_upstream`], ...) without passing anything up or
//! down: outside a request (the pool's refill, tests) the notes go nowhere. Span fields
//! would do the same, but tracing-subscriber's JSON formatter re-serializes a span's
//! fields on every `Span::record`.

use crate::config::{LogConfig, LogFormat};
use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops),
/// which tests that start several servers rely on.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // Colour codes only for a terminal: in a file or a log pipeline they are noise.
        LogFormat::Text => builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
    };
}

/// What one request's log line reports beyond its span's fields.
#[derive(Debug, Default, Clone)]
pub struct RequestFacts {
    /// The authenticated caller, never a key or a token.
    pub subject: Option<String>,
    /// The answer came from the prefetch pool.
    pub pool_hit: bool,
    /// Each upstream call's last attempt, by call name, in milliseconds.
    pub upstream: Vec<(&'static str, Duration)>,
    /// The relay: Orga's conversation id for the call started.
    pub conversation_id: Option<String>,
    /// The relay: what the session policy did (`voice=replaced model=kept ...`).
    pub policy: Option<String>,
}

tokio::task_local! {
    static FACTS: RefCell<RequestFacts>;
}

/// Runs `request` with an empty record of facts; `finish` reads it when the request's
/// future completes (inside the scope).
pub async fn with_request_facts<F: Future>(request: F) -> F::Output {
    FACTS
        .scope(RefCell::new(RequestFacts::default()), request)
        .await
}

/// Runs `work` with a record of facts of its own and returns it with the output: for
/// work a request hands to another task, whose notes would otherwise go nowhere. The
/// request then [`adopt`]s them.
pub async fn gathering<F: Future>(work: F) -> (F::Output, RequestFacts) {
    let work = async {
        let output = work.await;
        (output, request_facts().unwrap_or_default())
    };
    FACTS
        .scope(RefCell::new(RequestFacts::default()), work)
        .await
}

/// Adds facts [`gathering`] brought back from another task to the current request's.
pub fn adopt(gathered: RequestFacts) {
    update(|facts| {
        facts.subject = gathered.subject.or(facts.subject.take());
        facts.pool_hit |= gathered.pool_hit;
        facts.upstream.extend(gathered.upstream);
        facts.conversation_id = gathered.conversation_id.or(facts.conversation_id.take());
        facts.policy = gathered.policy.or(facts.policy.take());
    });
}

/// The facts noted so far in the current request, if there is one.
pub fn request_facts() -> Option<RequestFacts> {
    FACTS.try_with(|facts| facts.borrow().clone()).ok()
}

fn update(change: impl FnOnce(&mut RequestFacts)) {
    // Outside a request there is no line to write them to: nothing to do.
    let _ = FACTS.try_with(|facts| change(&mut facts.borrow_mut()));
}

/// The request's authenticated caller.
pub fn note_subject(subject: &str) {
    update(|facts| facts.subject = Some(subject.to_owned()));
}

/// The request was answered from the prefetch pool.
pub fn note_pool_hit() {
    update(|facts| facts.pool_hit = true);
}

/// How long an attempt of the upstream call `call` took (the last attempt wins).
pub fn note_upstream(call: &'static str, took: Duration) {
    update(
        |facts| match facts.upstream.iter_mut().find(|(c, _)| *c == call) {
            Some(entry) => entry.1 = took,
            None => facts.upstream.push((call, took)),
        },
    );
}

/// The relay: the conversation id of the call started.
pub fn note_conversation(id: &str) {
    update(|facts| facts.conversation_id = Some(id.to_owned()));
}

/// The relay: what the session policy did.
pub fn note_policy(decisions: String) {
    update(|facts| facts.policy = Some(decisions));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn facts_gathered_on_another_task_are_adopted_by_the_request() {
        let facts = with_request_facts(async {
            note_subject("user-1");
            let (answer, gathered) = tokio::spawn(gathering(async {
                note_conversation("conv_2");
                note_upstream("calls", Duration::from_millis(9));
                42
            }))
            .await
            .unwrap();
            assert_eq!(answer, 42);
            adopt(gathered);
            request_facts()
        })
        .await
        .unwrap();
        assert_eq!(facts.subject.as_deref(), Some("user-1"));
        assert_eq!(facts.conversation_id.as_deref(), Some("conv_2"));
        assert_eq!(facts.upstream, [("calls", Duration::from_millis(9))]);
    }

    #[tokio::test]
    async fn facts_noted_inside_a_request_are_read_back_and_outside_go_nowhere() {
        note_subject("outside");
        assert!(request_facts().is_none());
        let facts = with_request_facts(async {
            note_subject("user-1");
            note_upstream("client-secrets", Duration::from_millis(3));
            note_upstream("client-secrets", Duration::from_millis(5));
            note_pool_hit();
            note_conversation("conv_1");
            request_facts()
        })
        .await
        .expect("inside a request");
        assert_eq!(facts.subject.as_deref(), Some("user-1"));
        assert_eq!(
            facts.upstream,
            [("client-secrets", Duration::from_millis(5))]
        );
        assert!(facts.pool_hit);
        assert_eq!(facts.conversation_id.as_deref(), Some("conv_1"));
    }
}
