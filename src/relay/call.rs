//! The call-start body as `@orga-ai/core`'s `connectToRealtime` builds it, parsed
//! strictly into the fields the relay forwards (`offer {sdp, type, candidates}` and
//! `params {voice, model, temperature, return_transcription, instructions, modalities,
//! history}`), and Orga's answer, checked before it is passed on.
//!
//! Hand-checked over a `serde_json::Value` rather than derived: a 400 has to name the
//! field that is wrong in words a frontend developer can act on, and serde's messages
//! quote the offending input. Unknown fields are dropped: the forwarded body is built
//! from the parsed fields alone. Null counts as "not sent" (the SDK sends
//! `instructions: null`), and a field not sent is not forwarded, so Orga applies its own
//! default unless the session policy fills one in.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

/// Longest SDP offer accepted. A Chromium offer with every codec is under 10 KiB; the
/// route's body limit (64 KiB) leaves room for candidates and params beside it.
pub const MAX_SDP_BYTES: usize = 48 * 1024;
/// Most ICE candidates accepted; the SDK gathers for at most 5 s, which yields a few
/// dozen on a busy multi-homed host.
const MAX_CANDIDATES: usize = 256;
/// Longest `model` or `voice` accepted; real names are a few characters.
const MAX_NAME_BYTES: usize = 256;
/// Most `modalities` entries accepted (the SDK knows two).
const MAX_MODALITIES: usize = 8;

/// The call start forwarded to Orga: exactly these fields, in the SDK's order.
#[derive(Serialize)]
pub struct CallStart {
    /// The browser's offer.
    pub offer: Offer,
    /// The session parameters, after the session policy.
    pub params: Params,
}

/// The SDP offer and the candidates gathered with it.
#[derive(Serialize)]
pub struct Offer {
    /// The SDP session description; never logged.
    pub sdp: String,
    /// Always `"offer"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The gathered candidates, when the client sent the field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<Candidate>>,
}

/// One gathered ICE candidate, as the SDK's React hook collects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// The `candidate:` line.
    pub candidate: String,
    /// The media stream identification tag, when known.
    #[serde(rename = "sdpMid", skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The index of the m-line, when known.
    #[serde(rename = "sdpMLineIndex", skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u32>,
}

/// `params`: each field optional, forwarded only when set.
#[derive(Clone, Default, PartialEq, Serialize)]
pub struct Params {
    /// The voice name (exact UTF-8, e.g. "Sofía").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// The model name (e.g. "orga-1-beta").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling temperature; the SDK allows 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Whether Orga sends transcriptions over the data channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_transcription: Option<bool>,
    /// The system instructions; never logged.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "text")]
    pub instructions: Option<Arc<str>>,
    /// `"audio"` and/or `"video"` (other strings pass to Orga unless the policy limits them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Vec<String>>,
    /// Whether earlier interactions are part of the conversation's context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<bool>,
}

/// Shared text as a JSON string (serde's own `Arc` support is a feature this crate
/// does not turn on for one field).
fn text<S: serde::Serializer>(value: &Option<Arc<str>>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(text) => serializer.serialize_str(text),
        None => serializer.serialize_none(),
    }
}

/// Without the instructions' text: they must never reach a log line.
impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Params")
            .field("voice", &self.voice)
            .field("model", &self.model)
            .field("temperature", &self.temperature)
            .field("return_transcription", &self.return_transcription)
            .field(
                "instructions",
                &self
                    .instructions
                    .as_ref()
                    .map(|i| format!("{} bytes", i.len())),
            )
            .field("modalities", &self.modalities)
            .field("history", &self.history)
            .finish()
    }
}

/// Parses a call-start body; the error is the 400's message, naming every field that is
/// wrong (never quoting a value).
pub fn parse(bytes: &[u8]) -> Result<CallStart, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "The body is not JSON ({} at line {}, column {}).",
            json_problem(&e),
            e.line(),
            e.column()
        )
    })?;
    let Value::Object(body) = value else {
        return Err(
            "The body must be a JSON object: {\"offer\": {...}, \"params\": {...}}.".into(),
        );
    };
    let mut problems = Vec::new();
    let offer = match body.get("offer") {
        None | Some(Value::Null) => {
            problems.push("offer is missing".to_owned());
            None
        }
        Some(Value::Object(offer)) => parse_offer(offer, &mut problems),
        Some(_) => {
            problems.push("offer must be an object".to_owned());
            None
        }
    };
    let params = match body.get("params") {
        None | Some(Value::Null) => Params::default(),
        Some(Value::Object(params)) => parse_params(params, &mut problems),
        Some(_) => {
            problems.push("params must be an object".to_owned());
            Params::default()
        }
    };
    match offer {
        Some(offer) if problems.is_empty() => Ok(CallStart { offer, params }),
        _ => Err(format!(
            "The call start is malformed: {}.",
            problems.join("; ")
        )),
    }
}

fn parse_offer(offer: &Map<String, Value>, problems: &mut Vec<String>) -> Option<Offer> {
    let before = problems.len();
    if offer.get("type").and_then(Value::as_str) != Some("offer") {
        problems.push("offer.type must be \"offer\"".to_owned());
    }
    let sdp = match offer.get("sdp") {
        Some(Value::String(sdp)) if sdp.is_empty() => {
            problems.push("offer.sdp is empty".to_owned());
            None
        }
        Some(Value::String(sdp)) if sdp.len() > MAX_SDP_BYTES => {
            problems.push(format!(
                "offer.sdp is longer than {} KiB",
                MAX_SDP_BYTES / 1024
            ));
            None
        }
        // Every SDP starts with its version line (RFC 8866 §5): a cheap check that
        // catches a sent object or a wrong field before Orga is called.
        Some(Value::String(sdp)) if !sdp.starts_with("v=0") => {
            problems.push("offer.sdp is not an SDP description (it must start with v=0)".into());
            None
        }
        Some(Value::String(sdp)) => Some(sdp.clone()),
        None | Some(Value::Null) => {
            problems.push("offer.sdp is missing".to_owned());
            None
        }
        Some(_) => {
            problems.push("offer.sdp must be a string".to_owned());
            None
        }
    };
    let candidates = match offer.get("candidates") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) if list.len() > MAX_CANDIDATES => {
            problems.push(format!(
                "offer.candidates has more than {MAX_CANDIDATES} entries"
            ));
            None
        }
        Some(Value::Array(list)) => Some(
            list.iter()
                .enumerate()
                .filter_map(|(i, c)| parse_candidate(i, c, problems))
                .collect(),
        ),
        Some(_) => {
            problems.push("offer.candidates must be an array".to_owned());
            None
        }
    };
    (problems.len() == before).then(|| Offer {
        sdp: sdp.unwrap_or_default(),
        kind: "offer",
        candidates,
    })
}

fn parse_candidate(i: usize, value: &Value, problems: &mut Vec<String>) -> Option<Candidate> {
    let Value::Object(fields) = value else {
        problems.push(format!("offer.candidates[{i}] must be an object"));
        return None;
    };
    let candidate = match fields.get("candidate") {
        Some(Value::String(line)) => Some(line.clone()),
        _ => {
            problems.push(format!("offer.candidates[{i}].candidate must be a string"));
            None
        }
    };
    let sdp_mid = match fields.get("sdpMid") {
        None | Some(Value::Null) => None,
        Some(Value::String(mid)) => Some(mid.clone()),
        Some(_) => {
            problems.push(format!(
                "offer.candidates[{i}].sdpMid must be a string or null"
            ));
            None
        }
    };
    let sdp_m_line_index = match fields.get("sdpMLineIndex") {
        None | Some(Value::Null) => None,
        Some(index) => match index.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(index) => Some(index),
            None => {
                problems.push(format!(
                    "offer.candidates[{i}].sdpMLineIndex must be a non-negative integer or null"
                ));
                None
            }
        },
    };
    Some(Candidate {
        candidate: candidate?,
        sdp_mid,
        sdp_m_line_index,
    })
}

fn parse_params(params: &Map<String, Value>, problems: &mut Vec<String>) -> Params {
    let name = |field: &str, problems: &mut Vec<String>| match params.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.len() > MAX_NAME_BYTES => {
            problems.push(format!(
                "params.{field} is longer than {MAX_NAME_BYTES} bytes"
            ));
            None
        }
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            problems.push(format!("params.{field} must be a string"));
            None
        }
    };
    let flag = |field: &str, problems: &mut Vec<String>| match params.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(flag)) => Some(*flag),
        Some(_) => {
            problems.push(format!("params.{field} must be true or false"));
            None
        }
    };
    let voice = name("voice", problems);
    let model = name("model", problems);
    let temperature = match params.get("temperature") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64().filter(|t| t.is_finite()),
        Some(_) => {
            problems.push("params.temperature must be a number".to_owned());
            None
        }
    };
    let return_transcription = flag("return_transcription", problems);
    let instructions = match params.get("instructions") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(Arc::from(text.as_str())),
        Some(_) => {
            problems.push("params.instructions must be a string or null".to_owned());
            None
        }
    };
    let modalities = match params.get("modalities") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) if list.len() <= MAX_MODALITIES => {
            let names: Option<Vec<String>> = list
                .iter()
                .map(|m| m.as_str().filter(|m| m.len() <= 32).map(str::to_owned))
                .collect();
            if names.is_none() {
                problems.push("params.modalities must be an array of strings".to_owned());
            }
            names
        }
        Some(_) => {
            problems.push(format!(
                "params.modalities must be an array of at most {MAX_MODALITIES} strings"
            ));
            None
        }
    };
    let history = flag("history", problems);
    Params {
        voice,
        model,
        temperature,
        return_transcription,
        instructions,
        modalities,
        history,
    }
}

/// What kind of JSON problem, without serde_json's message.
fn json_problem(error: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match error.classify() {
        Category::Eof => "it ends too soon",
        Category::Syntax | Category::Io | Category::Data => "syntax error",
    }
}

/// Orga's answer, passed on as `{answer: {type, sdp}, conversation_id}` and nothing else.
#[derive(Deserialize, Serialize)]
pub struct CallAnswer {
    /// The SDP answer for the browser's `setRemoteDescription`.
    pub answer: Answer,
    /// Orga's id for the conversation; logged.
    pub conversation_id: String,
}

/// The SDP answer.
#[derive(Deserialize, Serialize)]
pub struct Answer {
    /// `"answer"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The SDP session description; never logged.
    pub sdp: String,
}

impl crate::orga::UpstreamAnswer for CallAnswer {
    /// Whether the answer can start the call and its id is fit for a log line.
    fn check(&self) -> Result<(), String> {
        if self.answer.kind != "answer" {
            return Err("answer.type is not \"answer\"".into());
        }
        if !self.answer.sdp.starts_with("v=0") {
            return Err("answer.sdp is not an SDP description".into());
        }
        let id = &self.conversation_id;
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("conversation_id is empty, too long or not plain text".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "call_tests.rs"]
mod tests;
