//! `JsonLines`: one JSON object per event, like tracing-subscriber's JSON format with
//! `flatten_event` and `with_current_span`, but cheaper on the hot path.
//!
//! tracing-subscriber's JSON fields build a map of `serde_json::Value`s for each span and
//! serialize it, and its JSON formatter parses the stored string back into a `Value` for
//! every event (together about a fifth of the proxy's instructions per request in a
//! callgrind profile). Here [`JsonSpanFields`] writes a span's fields as JSON members
//! once, and [`JsonLines`] splices them into each line as they are.

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter; use with `.fmt_fields(JsonSpanFields)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

/// A span's fields, stored as JSON members each with a leading comma
/// (`,"method":"GET","path":"/x"`), ready to splice into an object.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut members = String::with_capacity(128);
        fields.record(&mut JsonVisitor(&mut members));
        writer.write_str(&members)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        fields.record(&mut JsonVisitor(&mut current.fields));
        Ok(())
    }
}

impl<S> FormatEvent<S, JsonSpanFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonSpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = String::with_capacity(384);
        line.push_str("{\"timestamp\":\"");
        // RFC 3339 in UTC with microseconds, as tracing-subscriber writes it, without
        // going through `fmt` for each part.
        let _ = write!(
            line,
            "{}",
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
        );
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push('"');
        event.record(&mut JsonVisitor(&mut line));
        line.push_str(",\"target\":");
        push_json_str(&mut line, meta.target());
        if let Some(span) = ctx.lookup_current() {
            line.push_str(",\"span\":{\"name\":");
            push_json_str(&mut line, span.name());
            let extensions = span.extensions();
            if let Some(members) = extensions.get::<FormattedFields<JsonSpanFields>>() {
                line.push_str(&members.fields);
            }
            line.push('}');
        }
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

/// Writes `,"name":value` for each field of an event.
struct JsonVisitor<'a>(&'a mut String);

impl JsonVisitor<'_> {
    fn key(&mut self, field: &Field) {
        self.0.push(',');
        push_json_str(self.0, field.name());
        self.0.push(':');
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(self.0, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Escaped as it is written: no string of its own (the message is one of these).
        self.key(field);
        self.0.push('"');
        let _ = write!(Escaped(self.0), "{value:?}");
        self.0.push('"');
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            // ryu: the shortest exact form, several times cheaper than `Display`.
            self.0.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            push_json_str(self.0, &value.to_string());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }
}

/// Appends `value` as a JSON string literal.
fn push_json_str(out: &mut String, value: &str) {
    out.push('"');
    push_escaped(out, value);
    out.push('"');
}

/// A JSON string's contents, written through `fmt`.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

/// Appends `value` escaped for a JSON string. Runs of characters that need no escape
/// (nearly all of them) are copied whole.
fn push_escaped(out: &mut String, value: &str) {
    let mut plain = 0;
    for (i, byte) in value.bytes().enumerate() {
        // Only ASCII bytes are ever escaped, so `i` is always a character boundary here.
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&value[plain..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escaped);
        }
        plain = i + 1;
    }
    out.push_str(&value[plain..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonSpanFields)
            .event_format(JsonLines)
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).expect(l))
            .collect()
    }

    #[test]
    fn events_carry_their_fields_and_the_current_spans_fields_including_recorded_ones() {
        let out = lines(|| {
            let span =
                tracing::info_span!("request", method = "GET", subject = tracing::field::Empty);
            let _guard = span.enter();
            span.record("subject", "user-1");
            tracing::info!(
                status = 200u64,
                latency_ms = 1.5,
                ok = true,
                "request finished"
            );
        });
        let line = &out[0];
        assert_eq!(line["message"], "request finished");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["status"], 200);
        assert_eq!(line["latency_ms"], 1.5);
        assert_eq!(line["ok"], true);
        assert_eq!(line["span"]["name"], "request");
        assert_eq!(line["span"]["method"], "GET");
        assert_eq!(line["span"]["subject"], "user-1");
        let timestamp = line["timestamp"].as_str().unwrap();
        // RFC 3339, UTC, microseconds: 2026-11-21T09:04:25.468033Z
        assert_eq!(timestamp.len(), 27, "{timestamp}");
        assert!(timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T');
        assert!(humantime::parse_rfc3339(timestamp).is_ok(), "{timestamp}");
    }

    #[test]
    fn span_fields_and_numbers_stay_valid_json_whatever_their_value() {
        let out = lines(|| {
            let span = tracing::info_span!("request", path = "/a\"}\n{\"x\":\"", id = 7u64);
            let _guard = span.enter();
            tracing::info!(
                small = 0.000_001_234,
                large = 1.5e300,
                ms = 0.171_234_5,
                negative = -2.5,
                nan = f64::NAN,
                "numbers"
            );
        });
        let line = &out[0];
        assert_eq!(line["span"]["path"], "/a\"}\n{\"x\":\"");
        assert_eq!(line["span"]["id"], 7);
        assert_eq!(line["small"], 0.000_001_234);
        assert_eq!(line["large"], 1.5e300);
        assert_eq!(line["ms"], 0.171_234_5);
        assert_eq!(line["negative"], -2.5);
        assert_eq!(line["nan"], "NaN");
    }

    #[test]
    fn hostile_values_cannot_break_out_of_their_string() {
        let out = lines(|| {
            tracing::warn!(value = "a\"}\n{\"level\":\"ERROR\u{1}", "x");
        });
        assert_eq!(out.len(), 1, "one line, still valid JSON");
        assert_eq!(out[0]["value"], "a\"}\n{\"level\":\"ERROR\u{1}");
        assert_eq!(out[0]["level"], "WARN");
    }

    #[test]
    fn hostile_display_and_debug_values_and_messages_stay_in_their_string() {
        let hostile = "b\"}\n{\"level\":\"ERROR\u{1}\\";
        let out = lines(|| {
            tracing::error!(shown = %hostile, debugged = ?hostile, "say {hostile}");
        });
        assert_eq!(out.len(), 1, "one line, still valid JSON");
        assert_eq!(out[0]["shown"], hostile);
        assert_eq!(out[0]["debugged"], format!("{hostile:?}"));
        assert_eq!(out[0]["message"], format!("say {hostile}"));
        assert_eq!(out[0]["level"], "ERROR");
    }

    #[test]
    fn every_string_round_trips_through_push_json_str() {
        let mut value: String = (0u8..0x80).map(char::from).collect();
        value.push_str("é€😀\u{2028}\u{7f}end");
        let mut json = String::new();
        push_json_str(&mut json, &value);
        assert_eq!(serde_json::from_str::<String>(&json).unwrap(), value);
        let mut plain = String::new();
        push_json_str(&mut plain, "GET /api/orga/credentials");
        assert_eq!(plain, "\"GET /api/orga/credentials\"");
    }

    #[test]
    fn events_outside_a_span_have_no_span_key() {
        let out = lines(|| tracing::info!(n = -3i64, "plain"));
        assert!(out[0].get("span").is_none());
        assert_eq!(out[0]["n"], -3);
    }
}
