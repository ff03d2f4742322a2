//! The binary's `dev` mode relays the SDK's call start to its embedded fake, and the
//! relayed call's log line says who, which conversation and what the policy did, with
//! no token, SDP or instructions anywhere in the output.

use super::*;
use crate::cli::{Proxy, command};

const WEB_KEY: &str = "relay-logs-web-key-0123456789abcdef";
const INSTRUCTIONS: &str = "instructions-canary: answer as a pirate";

#[tokio::test]
async fn dev_mode_relays_the_call_start_and_logs_its_facts_but_never_its_secrets() {
    let proxy = Proxy::start(
        command(&["dev"])
            .env("ORGA_PROXY_SERVER__LISTEN", "127.0.0.1:0")
            .env("ORGA_PROXY_AUTH__MODE", "api_key")
            .env("ORGA_PROXY_AUTH__API_KEYS", format!("web:{WEB_KEY}"))
            .env("ORGA_PROXY_RELAY__ON_VIOLATION", "override")
            .env("ORGA_PROXY_RELAY__POLICY__VOICES", "Victoria,Sofía")
            .env("ORGA_PROXY_RELAY__POLICY__TEMPERATURE", "0.2,0.4")
            .env("ORGA_PROXY_RELAY__POLICY__INSTRUCTIONS", INSTRUCTIONS)
            .env("RUST_LOG", "trace"),
    );
    let client = client();
    let base = format!("http://{}", proxy.addr);
    let credentials = json_of(
        client
            .post(format!("{base}/api/orga/credentials"))
            .bearer_auth(WEB_KEY),
    )
    .await;
    let token = credentials["ephemeralToken"].as_str().unwrap().to_owned();
    let start_call = || {
        client
            .post(format!("{base}{CALLS}"))
            .bearer_auth(&token)
            .json(&sdk_body(CHROMIUM_OFFER))
            .send()
    };
    let call = start_call().await.unwrap();
    assert_eq!(call.status(), 200, "dev mode relays to its fake");
    let answer: Value = call.json().await.unwrap();
    let conversation = answer["conversation_id"].as_str().unwrap().to_owned();
    let answer_sdp = answer["answer"]["sdp"].as_str().unwrap().to_owned();
    let replay = start_call().await.unwrap();
    assert_eq!(replay.status(), 401);

    let (status, logs) = proxy.stop();
    assert_eq!(status, Some(0), "{logs}");
    let relayed: Value = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["span"]["path"] == CALLS && line["status"] == 200)
        .unwrap_or_else(|| panic!("no log line for the relayed call:\n{logs}"));
    assert_eq!(relayed["subject"], "api_key:web", "{relayed}");
    assert_eq!(
        relayed["conversation_id"],
        conversation.as_str(),
        "{relayed}"
    );
    assert_eq!(
        relayed["policy"], "voice=kept temperature=overridden instructions=pinned",
        "{relayed}"
    );
    assert!(relayed["upstream_call_ms"].as_f64().is_some(), "{relayed}");
    assert!(
        relayed["span"]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let offer_ufrag = CHROMIUM_OFFER
        .lines()
        .find(|l| l.starts_with("a=ice-ufrag:"))
        .unwrap();
    let answer_fingerprint = answer_sdp
        .lines()
        .find(|l| l.starts_with("a=fingerprint:"))
        .unwrap();
    for secret in [
        token.as_str(),
        WEB_KEY,
        "instructions-canary",
        offer_ufrag,
        answer_fingerprint,
        "m=audio",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}
