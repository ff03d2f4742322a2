//! The SDP answer builder against a real offer: Chromium 156's for what `@orga-ai/react`
//! sets up (data channel, audio sendrecv, video sendonly).

use super::*;

/// Captured from Chromium 156 (`createDataChannel`, then an audio `sendrecv` and a video
/// `sendonly` transceiver): mids 0 audio, 1 video, 2 application.
const CHROMIUM_OFFER: &str = include_str!("testdata/chromium-156-offer.sdp");

fn keys() -> AnswerKeys {
    AnswerKeys {
        session_id: 42,
        ice_ufrag: "ufragUFRAGufrag1".into(),
        ice_pwd: "passwordPASSWORDpassword/+123456".into(),
        fingerprint: [0xAB; 32],
    }
}

fn answer_to(offer: &str) -> String {
    Offer::parse(offer).expect("a valid offer").answer(&keys())
}

/// The answer's media sections, each as its lines (the `m=` line first).
fn sections(answer: &str) -> Vec<Vec<&str>> {
    let mut sections: Vec<Vec<&str>> = Vec::new();
    for line in answer.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            sections.push(vec![line]);
        } else if let Some(section) = sections.last_mut() {
            section.push(line);
        }
    }
    sections
}

/// The answer's `m=` lines, in order.
fn m_lines(answer: &str) -> Vec<&str> {
    sections(answer).iter().map(|s| s[0]).collect()
}

fn session_lines(answer: &str) -> Vec<&str> {
    answer
        .split("\r\n")
        .take_while(|l| !l.starts_with("m="))
        .collect()
}

fn values<'a>(section: &[&'a str], prefix: &str) -> Vec<&'a str> {
    section
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .collect()
}

#[test]
fn the_answer_mirrors_the_offers_m_lines_in_order() {
    let answer = answer_to(CHROMIUM_OFFER);
    assert_eq!(
        m_lines(&answer),
        [
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        ]
    );
}

#[test]
fn the_answer_echoes_every_mid_and_the_bundle_group() {
    let answer = answer_to(CHROMIUM_OFFER);
    let mids: Vec<Vec<&str>> = sections(&answer)
        .iter()
        .map(|s| values(s, "a=mid:"))
        .collect();
    assert_eq!(mids, [["0"], ["1"], ["2"]]);
    assert!(session_lines(&answer).contains(&"a=group:BUNDLE 0 1 2"));
}

#[test]
fn directions_are_the_mirror_of_the_offers() {
    let answer = answer_to(CHROMIUM_OFFER);
    let sections = sections(&answer);
    assert_eq!(values(&sections[0], "a=sendrecv"), [""], "audio sendrecv");
    assert_eq!(values(&sections[1], "a=recvonly"), [""], "video sendonly");
    for (offered, answered) in [
        ("recvonly", "sendonly"),
        ("inactive", "inactive"),
        ("sendrecv", "sendrecv"),
    ] {
        let offer = CHROMIUM_OFFER.replace("a=sendonly", &format!("a={offered}"));
        let answer = answer_to(&offer);
        assert_eq!(
            values(&self::sections(&answer)[1], &format!("a={answered}")),
            [""],
            "{offered} is answered {answered}"
        );
    }
}

#[test]
fn a_section_without_a_direction_is_sendrecv_and_answered_so() {
    let offer = CHROMIUM_OFFER.replace("a=sendrecv\r\n", "");
    let answer = answer_to(&offer);
    assert_eq!(values(&sections(&answer)[0], "a=sendrecv"), [""]);
}

#[test]
fn each_rtp_section_keeps_the_first_real_codec_with_its_lines() {
    let answer = answer_to(CHROMIUM_OFFER);
    let sections = sections(&answer);
    let audio = &sections[0];
    assert_eq!(values(audio, "a=rtpmap:"), ["111 opus/48000/2"]);
    assert_eq!(values(audio, "a=fmtp:"), ["111 minptime=10;useinbandfec=1"]);
    assert_eq!(values(audio, "a=rtcp-fb:"), ["111 transport-cc"]);
    let video = &sections[1];
    assert_eq!(values(video, "a=rtpmap:"), ["96 VP8/90000"]);
    assert_eq!(
        values(video, "a=rtcp-fb:"),
        [
            "96 goog-remb",
            "96 transport-cc",
            "96 ccm fir",
            "96 nack",
            "96 nack pli"
        ]
    );
    assert!(values(video, "a=fmtp:").is_empty(), "VP8 has no fmtp");
}

#[test]
fn every_rtp_section_multiplexes_rtcp() {
    let answer = answer_to(CHROMIUM_OFFER);
    for section in &sections(&answer)[..2] {
        assert_eq!(values(section, "a=rtcp-mux"), [""], "{section:?}");
        assert_eq!(values(section, "a=rtcp-rsize"), [""], "offered, so kept");
    }
}

#[test]
fn auxiliary_codecs_are_never_the_one_picked() {
    let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 63 110 111\r\na=mid:0\r\n\
                 a=rtpmap:63 red/48000/2\r\na=rtpmap:110 telephone-event/48000\r\n\
                 a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:* nack\r\n";
    let answer = answer_to(offer);
    let audio = &sections(&answer)[0];
    assert_eq!(audio[0], "m=audio 9 UDP/TLS/RTP/SAVPF 111");
    assert_eq!(
        values(audio, "a=rtcp-fb:"),
        ["111 nack"],
        "wildcard feedback applies"
    );
}

#[test]
fn a_static_payload_type_needs_no_rtpmap() {
    let answer = answer_to("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:a\r\n");
    assert_eq!(sections(&answer)[0][0], "m=audio 9 UDP/TLS/RTP/SAVPF 0");
}

#[test]
fn the_data_channel_section_gets_an_sctp_port_and_a_message_size() {
    let answer = answer_to(CHROMIUM_OFFER);
    let application = &sections(&answer)[2];
    assert_eq!(values(application, "a=sctp-port:"), ["5000"]);
    assert_eq!(values(application, "a=max-message-size:"), ["262144"]);
    assert!(values(application, "a=rtcp-mux").is_empty());
}

#[test]
fn every_accepted_section_carries_the_fake_ice_and_dtls_credentials() {
    let answer = answer_to(CHROMIUM_OFFER);
    assert!(session_lines(&answer).contains(&"a=ice-lite"));
    assert!(session_lines(&answer).contains(&"o=- 42 2 IN IP4 127.0.0.1"));
    let fingerprint = ["AB"; 32].join(":");
    for section in sections(&answer) {
        assert_eq!(values(&section, "a=ice-ufrag:"), ["ufragUFRAGufrag1"]);
        assert_eq!(
            values(&section, "a=ice-pwd:"),
            ["passwordPASSWORDpassword/+123456"]
        );
        assert_eq!(
            values(&section, "a=fingerprint:sha-256 "),
            [fingerprint.as_str()]
        );
        assert_eq!(
            values(&section, "a=setup:"),
            ["active"],
            "the offer said actpass"
        );
        assert_eq!(values(&section, "c="), ["IN IP4 0.0.0.0"]);
    }
}

#[test]
fn random_keys_have_the_lengths_and_alphabet_ice_and_dtls_require() {
    let one = AnswerKeys::random().expect("the system has randomness");
    let two = AnswerKeys::random().expect("the system has randomness");
    assert_ne!(one, two);
    let ice_char = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    assert_eq!(one.ice_ufrag.len(), 16);
    assert!(one.ice_ufrag.chars().all(ice_char));
    assert_eq!(one.ice_pwd.len(), 32);
    assert!(one.ice_pwd.chars().all(ice_char));
    assert!(one.session_id < 1 << 63);
    let fingerprint = colon_hex(&one.fingerprint);
    assert_eq!(fingerprint.len(), 32 * 3 - 1);
    assert!(fingerprint.split(':').all(|byte| {
        byte.len() == 2
            && byte
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    }));
}

#[test]
fn an_offer_that_says_active_gets_a_passive_answer() {
    let offer = CHROMIUM_OFFER.replace("a=setup:actpass", "a=setup:active");
    let answer = answer_to(&offer);
    assert!(
        sections(&answer)
            .iter()
            .all(|s| values(s, "a=setup:") == ["passive"])
    );
}

#[test]
fn a_rejected_section_stays_rejected_and_leaves_the_bundle() {
    let offer = CHROMIUM_OFFER.replace(
        "m=video 9 UDP/TLS/RTP/SAVPF 96 ",
        "m=video 0 UDP/TLS/RTP/SAVPF 96 ",
    );
    let answer = answer_to(&offer);
    let video = &sections(&answer)[1];
    assert!(video[0].starts_with("m=video 0 UDP/TLS/RTP/SAVPF 96 97 "));
    assert_eq!(values(video, "a=mid:"), ["1"]);
    assert!(values(video, "a=ice-ufrag:").is_empty());
    assert!(session_lines(&answer).contains(&"a=group:BUNDLE 0 2"));
}

#[test]
fn a_bundle_only_section_with_port_zero_is_not_rejected() {
    let offer = CHROMIUM_OFFER
        .replace("m=video 9 UDP/TLS/RTP/SAVPF", "m=video 0 UDP/TLS/RTP/SAVPF")
        .replace("a=mid:1\r\n", "a=mid:1\r\na=bundle-only\r\n");
    let answer = answer_to(&offer);
    assert_eq!(sections(&answer)[1][0], "m=video 9 UDP/TLS/RTP/SAVPF 96");
}

#[test]
fn media_the_fake_cannot_answer_are_rejected() {
    let offer = "v=0\r\na=group:BUNDLE t d\r\nm=text 9 RTP/AVP 98\r\na=mid:t\r\n\
                 m=application 9 UDP/DTLS/SCTP bfcp\r\na=mid:d\r\n\
                 m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=rtpmap:97 rtx/90000\r\n";
    let answer = answer_to(offer);
    assert_eq!(
        m_lines(&answer),
        [
            "m=text 0 RTP/AVP 98",
            "m=application 0 UDP/DTLS/SCTP bfcp",
            "m=video 0 UDP/TLS/RTP/SAVPF 97"
        ]
    );
    assert!(
        !answer.contains("a=group:BUNDLE"),
        "an empty group is left out"
    );
}

#[test]
fn an_offer_with_bare_newlines_is_answered_with_crlf() {
    let answer = answer_to(&CHROMIUM_OFFER.replace("\r\n", "\n"));
    assert_eq!(answer, answer_to(CHROMIUM_OFFER));
    assert!(answer.ends_with("\r\n"));
    assert!(!answer.replace("\r\n", "").contains('\n'));
}

#[test]
fn malformed_offers_are_refused_with_the_reason() {
    let cases = [
        ("", SdpError::NoVersion),
        ("hello", SdpError::NoVersion),
        ("m=audio 9 RTP/AVP 0\r\n", SdpError::NoVersion),
        ("v=0\r\ns=-\r\nt=0 0\r\n", SdpError::NoMedia),
        ("v=0\r\nnot a line\r\n", SdpError::MalformedLine(2)),
        ("v=0\r\nX=upper\r\n", SdpError::MalformedLine(2)),
        ("v=0\r\nm=audio\r\n", SdpError::MalformedMedia(2)),
        (
            "v=0\r\nm=audio nine RTP/AVP 0\r\n",
            SdpError::MalformedMedia(2),
        ),
        ("v=0\r\nm=audio 9 RTP/AVP\r\n", SdpError::MalformedMedia(2)),
        (
            "v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
            SdpError::MalformedMedia(2),
        ),
    ];
    for (offer, expected) in cases {
        assert_eq!(Offer::parse(offer).err(), Some(expected), "{offer:?}");
    }
}

#[test]
fn non_ascii_input_is_refused_without_panicking() {
    assert_eq!(
        Offer::parse("v=0\r\né=x\r\n").err(),
        Some(SdpError::MalformedLine(2))
    );
    assert!(Offer::parse("v=0\r\nm=audio 9 RTP/AVP 0\r\na=mid:é\r\n").is_ok());
}
