//! Tests of [`super`]: the SDK's body forwarded field for field, every malformed field
//! named, nothing quoted, and Orga's answer checked.

use super::*;
use crate::orga::UpstreamAnswer;
use serde_json::json;

const SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

/// The body `connectToRealtime` sends, with the SDK's defaults.
fn sdk_body() -> Value {
    json!({
        "offer": {"sdp": SDP, "type": "offer", "candidates": [
            {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host", "sdpMid": "0", "sdpMLineIndex": 0},
            {"candidate": "candidate:2 1 udp 2122260223 192.0.2.1 54322 typ host"}
        ]},
        "params": {"voice": "Sofía", "model": "orga-1-beta", "temperature": 0.5,
                   "return_transcription": false, "instructions": null,
                   "modalities": ["audio", "video"], "history": true}
    })
}

fn parse_value(value: &Value) -> Result<CallStart, String> {
    parse(&serde_json::to_vec(value).unwrap())
}

#[test]
fn the_sdks_body_is_forwarded_field_for_field_without_the_nulls() {
    let call = parse_value(&sdk_body()).unwrap();
    let forwarded = serde_json::to_value(&call).unwrap();
    let mut expected = sdk_body();
    expected["params"]
        .as_object_mut()
        .unwrap()
        .remove("instructions");
    assert_eq!(forwarded, expected);
}

#[test]
fn unknown_fields_anywhere_are_dropped() {
    let mut body = sdk_body();
    body["extra"] = json!("x");
    body["offer"]["extra"] = json!(1);
    body["offer"]["candidates"][0]["usernameFragment"] = json!("abc");
    body["params"]["tools"] = json!([{"type": "function"}]);
    let forwarded = serde_json::to_value(parse_value(&body).unwrap()).unwrap();
    let text = forwarded.to_string();
    for dropped in ["extra", "usernameFragment", "tools"] {
        assert!(!text.contains(dropped), "{dropped} survived: {text}");
    }
}

#[test]
fn every_malformed_field_is_named_and_no_value_is_quoted() {
    let cases = [
        (json!({"params": {}}), "offer is missing"),
        (json!({"offer": "v=0"}), "offer must be an object"),
        (
            json!({"offer": {"sdp": SDP, "type": "answer"}}),
            "offer.type must be \"offer\"",
        ),
        (json!({"offer": {"type": "offer"}}), "offer.sdp is missing"),
        (
            json!({"offer": {"sdp": "", "type": "offer"}}),
            "offer.sdp is empty",
        ),
        (
            json!({"offer": {"sdp": 7, "type": "offer"}}),
            "offer.sdp must be a string",
        ),
        (
            json!({"offer": {"sdp": "hello-canary", "type": "offer"}}),
            "must start with v=0",
        ),
        (
            json!({"offer": {"sdp": format!("v=0{}", "a".repeat(MAX_SDP_BYTES)), "type": "offer"}}),
            "longer than 48 KiB",
        ),
        (
            json!({"offer": {"sdp": SDP, "type": "offer", "candidates": {}}}),
            "offer.candidates must be an array",
        ),
        (
            json!({"offer": {"sdp": SDP, "type": "offer", "candidates": ["x"]}}),
            "offer.candidates[0] must be an object",
        ),
        (
            json!({"offer": {"sdp": SDP, "type": "offer", "candidates": [{"candidate": 1}]}}),
            "offer.candidates[0].candidate must be a string",
        ),
        (
            json!({"offer": {"sdp": SDP, "type": "offer", "candidates": [{"candidate": "c", "sdpMLineIndex": -1}]}}),
            "sdpMLineIndex must be a non-negative integer",
        ),
        (
            json!({"offer": {"sdp": SDP, "type": "offer"}, "params": []}),
            "params must be an object",
        ),
        (
            json!({"offer": {"sdp": SDP, "type": "offer"}, "params": {"voice": 3}}),
            "params.voice must be a string",
        ),
        (
            json!({"offer": {"sdp": SDP, "type": "offer"}, "params": {"temperature": "hot-canary"}}),
            "params.temperature must be a number",
        ),
        (
            json!({"offer": {"sdp": SDP, "type": "offer"}, "params": {"history": "yes"}}),
            "params.history must be true or false",
        ),
        (
            json!({"offer": {"sdp": SDP, "type": "offer"}, "params": {"modalities": "audio"}}),
            "params.modalities must be an array",
        ),
        (
            json!({"offer": {"sdp": SDP, "type": "offer"}, "params": {"modalities": [1]}}),
            "params.modalities must be an array of strings",
        ),
        (
            json!({"offer": {"sdp": SDP, "type": "offer"}, "params": {"instructions": 5}}),
            "params.instructions must be a string or null",
        ),
        (json!([1, 2]), "must be a JSON object"),
    ];
    for (body, says) in cases {
        let error = parse_value(&body)
            .err()
            .unwrap_or_else(|| panic!("accepted {body}"));
        assert!(error.contains(says), "{body}: {error}");
        assert!(!error.contains("canary"), "a value was quoted: {error}");
    }
    let error = parse(b"{\"offer\": ").err().unwrap();
    assert!(error.starts_with("The body is not JSON"), "{error}");
}

#[test]
fn two_problems_are_both_named() {
    let error = parse_value(&json!({"offer": {"type": "offer"}, "params": {"voice": 1}}))
        .err()
        .unwrap();
    assert!(error.contains("offer.sdp is missing"), "{error}");
    assert!(error.contains("params.voice must be a string"), "{error}");
}

#[test]
fn debug_never_shows_the_instructions() {
    let params = Params {
        instructions: Some("prompt-canary".into()),
        ..Params::default()
    };
    let debug = format!("{params:?}");
    assert!(!debug.contains("prompt-canary"), "{debug}");
    assert!(debug.contains("13 bytes"), "{debug}");
}

#[test]
fn an_answer_must_be_an_sdp_answer_with_a_plain_conversation_id() {
    let answer = |kind: &str, sdp: &str, id: &str| CallAnswer {
        answer: Answer {
            kind: kind.into(),
            sdp: sdp.into(),
        },
        conversation_id: id.into(),
    };
    assert!(answer("answer", SDP, "conv_1").check().is_ok());
    assert!(answer("offer", SDP, "conv_1").check().is_err());
    assert!(answer("answer", "", "conv_1").check().is_err());
    assert!(answer("answer", SDP, "").check().is_err());
    assert!(answer("answer", SDP, "conv 1\n").check().is_err());
}
