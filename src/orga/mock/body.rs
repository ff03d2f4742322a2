//! The body of `POST /v1/realtime/calls`, checked the way Orga's FastAPI app checks it:
//! decoded like FastAPI decodes JSON, then validated like pydantic, every problem reported
//! at once with its `loc`.
//!
//! The model it mirrors is what `@orga-ai/core`'s `connectToRealtime` sends:
//! `{offer: {sdp, type: "offer", candidates?}, params?: {voice, model, temperature,
//! return_transcription, instructions, modalities, history}}`. Unknown fields are
//! ignored, as pydantic ignores them; known ones are type-checked strictly (the SDK never
//! sends a number as a string, so the fake need not coerce like pydantic's lax mode).

use super::detail;
use super::sdp::Offer;
use serde_json::{Map, Value};

/// Why a body cannot start a call, before or during validation.
#[derive(Debug)]
pub(super) enum Refusal {
    /// 422 with FastAPI's `detail` entries.
    Unprocessable(Vec<Value>),
    /// 400: bytes that are not UTF-8, which FastAPI refuses before validation.
    Unreadable,
}

/// The body as JSON, or why FastAPI would not get that far.
pub(super) fn decode(content_type: Option<&str>, bytes: &[u8]) -> Result<Value, Refusal> {
    if bytes.is_empty() {
        return Err(Refusal::Unprocessable(vec![missing("")]));
    }
    // FastAPI parses JSON when the type says JSON or is absent; any other type leaves
    // the raw bytes, which then fail validation as "not an object".
    if content_type.is_some_and(|t| !crate::http::limits::is_json(t)) {
        return Err(Refusal::Unprocessable(vec![not_an_object("")]));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Refusal::Unreadable)?;
    serde_json::from_str(text).map_err(|e| {
        let position = char_position(text, e.line(), e.column());
        let mut loc = loc("");
        if let Value::Array(parts) = &mut loc {
            parts.push(position.into());
        }
        Refusal::Unprocessable(vec![detail(loc, "json_invalid", "JSON decode error")])
    })
}

/// The checked body's offer, ready to answer; or every problem found.
pub(super) fn validate(body: &Value) -> Result<Offer<'_>, Vec<Value>> {
    let Some(fields) = body.as_object() else {
        return Err(vec![not_an_object("")]);
    };
    let mut errors = Vec::new();
    let offer = match fields.get("offer") {
        None => {
            errors.push(missing("offer"));
            None
        }
        Some(offer) => check_offer(offer, &mut errors),
    };
    match fields.get("params") {
        None | Some(Value::Null) => {}
        Some(Value::Object(params)) => check_params(params, &mut errors),
        Some(_) => errors.push(not_an_object("params")),
    }
    match offer {
        Some(offer) if errors.is_empty() => Ok(offer),
        _ => Err(errors),
    }
}

fn check_offer<'a>(value: &'a Value, errors: &mut Vec<Value>) -> Option<Offer<'a>> {
    let Some(offer) = value.as_object() else {
        errors.push(not_an_object("offer"));
        return None;
    };
    let sdp = match offer.get("sdp") {
        None => {
            errors.push(missing("offer.sdp"));
            None
        }
        Some(Value::String(sdp)) if sdp.is_empty() => {
            errors.push(detail(
                loc("offer.sdp"),
                "string_too_short",
                "String should have at least 1 character",
            ));
            None
        }
        Some(Value::String(sdp)) => Some(sdp.as_str()),
        Some(_) => {
            errors.push(not_a_string("offer.sdp"));
            None
        }
    };
    match offer.get("type") {
        None => errors.push(missing("offer.type")),
        Some(kind) if kind == "offer" => {}
        Some(_) => errors.push(detail(
            loc("offer.type"),
            "literal_error",
            "Input should be 'offer'",
        )),
    }
    match offer.get("candidates") {
        None | Some(Value::Null) => {}
        Some(Value::Array(candidates)) => {
            for (i, candidate) in candidates.iter().enumerate() {
                check_candidate(&format!("offer.candidates.{i}"), candidate, errors);
            }
        }
        Some(_) => errors.push(not_a_list("offer.candidates")),
    }
    // Like a pydantic field validator: the SDP is read only once it is a string.
    match Offer::parse(sdp?) {
        Ok(offer) => Some(offer),
        Err(e) => {
            errors.push(detail(
                loc("offer.sdp"),
                "value_error",
                &format!("Value error, {e}"),
            ));
            None
        }
    }
}

/// `{candidate, sdpMid, sdpMLineIndex}`, each optional and nullable as in the SDK's
/// `RTCIceCandidateInit`.
fn check_candidate(at: &str, value: &Value, errors: &mut Vec<Value>) {
    let Some(candidate) = value.as_object() else {
        errors.push(not_an_object(at));
        return;
    };
    for field in ["candidate", "sdpMid"] {
        if candidate
            .get(field)
            .is_some_and(|v| !v.is_null() && !v.is_string())
        {
            errors.push(not_a_string(&format!("{at}.{field}")));
        }
    }
    if candidate
        .get("sdpMLineIndex")
        .is_some_and(|v| !v.is_null() && !v.is_u64())
    {
        errors.push(detail(
            loc(&format!("{at}.sdpMLineIndex")),
            "int_type",
            "Input should be a valid integer",
        ));
    }
}

/// The session parameters: each optional (Orga has defaults), each of its type when sent.
fn check_params(params: &Map<String, Value>, errors: &mut Vec<Value>) {
    for field in ["voice", "model"] {
        if params.get(field).is_some_and(|v| !v.is_string()) {
            errors.push(not_a_string(&format!("params.{field}")));
        }
    }
    if params.get("temperature").is_some_and(|v| !v.is_number()) {
        errors.push(detail(
            loc("params.temperature"),
            "float_type",
            "Input should be a valid number",
        ));
    }
    for field in ["return_transcription", "history"] {
        if params.get(field).is_some_and(|v| !v.is_boolean()) {
            errors.push(detail(
                loc(&format!("params.{field}")),
                "bool_type",
                "Input should be a valid boolean",
            ));
        }
    }
    if params
        .get("instructions")
        .is_some_and(|v| !v.is_null() && !v.is_string())
    {
        errors.push(not_a_string("params.instructions"));
    }
    match params.get("modalities") {
        None => {}
        Some(Value::Array(modalities)) => {
            for (i, modality) in modalities.iter().enumerate() {
                if !modality.is_string() {
                    errors.push(not_a_string(&format!("params.modalities.{i}")));
                }
            }
        }
        Some(_) => errors.push(not_a_list("params.modalities")),
    }
}

/// FastAPI's `loc` for a dotted path under the body: `"offer.candidates.0"` →
/// `["body", "offer", "candidates", 0]` (list indices are numbers, as pydantic's).
fn loc(path: &str) -> Value {
    let parts = std::iter::once(Value::from("body")).chain(
        path.split('.')
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u64>().map_or_else(|_| p.into(), Value::from)),
    );
    Value::Array(parts.collect())
}

fn missing(path: &str) -> Value {
    detail(loc(path), "missing", "Field required")
}

fn not_an_object(path: &str) -> Value {
    detail(
        loc(path),
        "model_attributes_type",
        "Input should be a valid dictionary or object to extract fields from",
    )
}

fn not_a_string(path: &str) -> Value {
    detail(loc(path), "string_type", "Input should be a valid string")
}

fn not_a_list(path: &str) -> Value {
    detail(loc(path), "list_type", "Input should be a valid list")
}

/// serde_json's 1-based line and column as the 0-based character offset Python's
/// `JSONDecodeError.pos` gives, which FastAPI puts in the `loc`.
fn char_position(text: &str, line: usize, column: usize) -> usize {
    let before: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(|l| l.chars().count())
        .sum();
    let on_line = text
        .split_inclusive('\n')
        .nth(line.saturating_sub(1))
        .unwrap_or_default();
    // serde_json counts the column in bytes; stop at the character holding that byte.
    let within = on_line
        .char_indices()
        .take_while(|(i, _)| *i < column.saturating_sub(1))
        .count();
    before + within
}
