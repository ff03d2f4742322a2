//! The fake's SDP: reads a browser's offer just far enough to answer it with an SDP that
//! `setRemoteDescription` accepts (same m-lines, mids and BUNDLE group, one codec per
//! media, fake ICE and DTLS credentials). Media never flows: nothing listens behind it.
//!
//! The answer follows JSEP (RFC 8829 §5.3) for what a browser checks: m-lines in the
//! offer's order with the same kind and protocol, every mid echoed, a rejected section
//! kept rejected (port 0) and left out of BUNDLE, `a=rtcp-mux` on every RTP section
//! (browsers require it), and a DTLS role that complements the offer's.

use std::fmt::Write as _;

/// Why an offer cannot be answered; becomes the message of the fake's 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The first line is not `v=0`.
    #[error("an SDP starts with the line v=0")]
    NoVersion,
    /// A line is not `<letter>=<value>`.
    #[error("line {0} is not of the form <type>=<value>")]
    MalformedLine(usize),
    /// An `m=` line lacks its port, protocol or formats.
    #[error("line {0} is not a valid m= line (m=<media> <port> <proto> <fmt> ...)")]
    MalformedMedia(usize),
    /// The offer has no `m=` line at all.
    #[error("the offer has no media section (m= line)")]
    NoMedia,
}

/// The answerer's side of the transport: fake, but shaped like real credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerKeys {
    /// `o=` session id.
    pub session_id: u64,
    /// `a=ice-ufrag` (16 ice-chars; RFC 8839 wants 4 to 256).
    pub ice_ufrag: String,
    /// `a=ice-pwd` (32 ice-chars; RFC 8839 wants 22 to 256).
    pub ice_pwd: String,
    /// The bytes of the `a=fingerprint:sha-256` (a SHA-256 digest is 32 bytes).
    pub fingerprint: [u8; 32],
}

/// RFC 8839's ice-char set: 64 characters, so a random byte masked to 6 bits picks one
/// without bias.
const ICE_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl AnswerKeys {
    /// Fresh random keys for one answer; `None` only if the system's random source fails.
    pub fn random() -> Option<Self> {
        let mut bytes = [0u8; 8 + 16 + 32 + 32];
        aws_lc_rs::rand::fill(&mut bytes).ok()?;
        let (id, rest) = bytes.split_at(8);
        let (ufrag, rest) = rest.split_at(16);
        let (pwd, fingerprint) = rest.split_at(32);
        let ice = |raw: &[u8]| {
            raw.iter()
                .map(|b| char::from(ICE_CHARS[usize::from(b & 63)]))
                .collect()
        };
        let mut id_bytes = [0u8; 8];
        id_bytes.copy_from_slice(id);
        Some(Self {
            // Kept below 2^63: some SDP parsers read the session id as a signed integer.
            session_id: u64::from_be_bytes(id_bytes) >> 1,
            ice_ufrag: ice(ufrag),
            ice_pwd: ice(pwd),
            fingerprint: fingerprint.try_into().ok()?,
        })
    }
}

/// A parsed offer, borrowing from its text.
#[derive(Debug)]
pub struct Offer<'a> {
    /// The mids of the offer's `a=group:BUNDLE`, in order; `None` when it has none.
    bundle: Option<Vec<&'a str>>,
    /// The media sections, in order.
    media: Vec<Media<'a>>,
}

/// One `m=` section of the offer.
#[derive(Debug)]
struct Media<'a> {
    /// `audio`, `video`, `application`...
    kind: &'a str,
    /// 0 means rejected (unless `a=bundle-only`).
    port: u16,
    /// e.g. `UDP/TLS/RTP/SAVPF`, echoed in the answer.
    proto: &'a str,
    /// Payload types, or `webrtc-datachannel`, in the offerer's order of preference.
    formats: Vec<&'a str>,
    /// `a=` lines as (name, value); the value is empty for flags such as `a=rtcp-mux`.
    attributes: Vec<(&'a str, &'a str)>,
}

/// Codecs that ride along another one (retransmission, redundancy, FEC) or carry no
/// media of their own (DTMF, comfort noise): never the one codec the answer picks.
const AUXILIARY_CODECS: &[&str] = &[
    "rtx",
    "red",
    "ulpfec",
    "flexfec-03",
    "telephone-event",
    "cn",
];

impl<'a> Offer<'a> {
    /// Reads an offer; accepts `\r\n` or bare `\n` line ends, as browsers' parsers do.
    pub fn parse(sdp: &'a str) -> Result<Self, SdpError> {
        let mut lines = sdp
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| !l.is_empty());
        if lines.next().map(|(_, l)| l) != Some("v=0") {
            return Err(SdpError::NoVersion);
        }
        let mut offer = Offer {
            bundle: None,
            media: Vec::new(),
        };
        for (number, line) in lines {
            let (kind, value) = split_line(line).ok_or(SdpError::MalformedLine(number))?;
            match (kind, offer.media.last_mut()) {
                ('m', _) => offer
                    .media
                    .push(Media::parse(value).ok_or(SdpError::MalformedMedia(number))?),
                ('a', Some(media)) => media.attributes.push(attribute(value)),
                ('a', None) => {
                    if let Some(mids) = value.strip_prefix("group:BUNDLE") {
                        offer.bundle = Some(mids.split_whitespace().collect());
                    }
                }
                _ => {}
            }
        }
        if offer.media.is_empty() {
            return Err(SdpError::NoMedia);
        }
        Ok(offer)
    }

    /// The answer, with `\r\n` line ends as RFC 8866 requires.
    pub fn answer(&self, keys: &AnswerKeys) -> String {
        let accepted: Vec<Option<Accepted<'_>>> = self.media.iter().map(Media::accept).collect();
        let mut sdp = String::with_capacity(1024 + 512 * self.media.len());
        let mut line = |text: &str| {
            sdp.push_str(text);
            sdp.push_str("\r\n");
        };
        line("v=0");
        line(&format!("o=- {} 2 IN IP4 127.0.0.1", keys.session_id));
        line("s=-");
        line("t=0 0");
        // A lite agent only answers checks and never starts them: the honest mode for a
        // fake that has no candidates to offer.
        line("a=ice-lite");
        if let Some(bundle) = &self.bundle {
            // Only mids of sections the answer accepts may stay in the group.
            let mids: Vec<&str> = bundle
                .iter()
                .copied()
                .filter(|mid| {
                    self.media
                        .iter()
                        .zip(&accepted)
                        .any(|(m, a)| a.is_some() && m.mid() == Some(*mid))
                })
                .collect();
            if !mids.is_empty() {
                line(&format!("a=group:BUNDLE {}", mids.join(" ")));
            }
        }
        let fingerprint = colon_hex(&keys.fingerprint);
        for (media, accepted) in self.media.iter().zip(&accepted) {
            match accepted {
                None => media.write_rejected(&mut line),
                Some(accepted) => {
                    media.write_accepted(accepted, keys, &fingerprint, &mut line);
                }
            }
        }
        sdp
    }
}

/// What the answer keeps of an accepted section.
#[derive(Debug)]
enum Accepted<'a> {
    /// An RTP section with the one codec (payload type) chosen.
    Rtp { payload_type: &'a str },
    /// A data channel section (`webrtc-datachannel` over SCTP).
    DataChannel,
}

impl<'a> Media<'a> {
    fn parse(value: &'a str) -> Option<Self> {
        let mut fields = value.split_whitespace();
        let kind = fields.next()?;
        // `<port>/<count>` is legal; the count does not matter to the answer.
        let port = fields.next()?.split('/').next()?.parse().ok()?;
        let proto = fields.next()?;
        let formats: Vec<&str> = fields.collect();
        if formats.is_empty() {
            return None;
        }
        Some(Self {
            kind,
            port,
            proto,
            formats,
            attributes: Vec::new(),
        })
    }

    fn attr(&self, name: &str) -> Option<&'a str> {
        self.attributes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    fn mid(&self) -> Option<&'a str> {
        self.attr("mid")
    }

    /// Port 0 rejects a section, except that `a=bundle-only` sections ride on the
    /// bundle's transport with port 0 (RFC 8843 §6).
    fn is_rejected(&self) -> bool {
        self.port == 0 && self.attr("bundle-only").is_none()
    }

    /// Whether and how the answer accepts this section; `None` rejects it.
    fn accept(&self) -> Option<Accepted<'a>> {
        if self.is_rejected() {
            return None;
        }
        match self.kind {
            "audio" | "video" if self.proto.contains("RTP") => self
                .primary_codec()
                .map(|payload_type| Accepted::Rtp { payload_type }),
            "application" if self.proto.contains("SCTP") => {
                (self.formats == ["webrtc-datachannel"]).then_some(Accepted::DataChannel)
            }
            _ => None,
        }
    }

    /// The offerer's most preferred codec that carries media itself.
    fn primary_codec(&self) -> Option<&'a str> {
        self.formats.iter().copied().find(|pt| {
            match self.codec_line("rtpmap", pt) {
                Some(map) => {
                    let name = map.split('/').next().unwrap_or_default();
                    !AUXILIARY_CODECS
                        .iter()
                        .any(|aux| aux.eq_ignore_ascii_case(name))
                }
                // Static payload types (below 96) need no rtpmap; dynamic ones do.
                None => pt.parse::<u8>().is_ok_and(|n| n < 96),
            }
        })
    }

    /// The value after `<pt> ` of the first `a=<name>:<pt> ...` line.
    fn codec_line(&self, name: &str, payload_type: &str) -> Option<&'a str> {
        self.codec_lines(name, payload_type).next()
    }

    fn codec_lines<'s>(
        &'s self,
        name: &'s str,
        payload_type: &'s str,
    ) -> impl Iterator<Item = &'a str> + 's {
        self.attributes.iter().filter_map(move |(n, v)| {
            let rest = v.strip_prefix(payload_type)?.strip_prefix(' ')?;
            (*n == name).then_some(rest)
        })
    }

    /// The answer's direction: the mirror of the offer's (RFC 3264 §6.1).
    fn answer_direction(&self) -> &'static str {
        let offered = ["sendrecv", "sendonly", "recvonly", "inactive"]
            .into_iter()
            .find(|d| self.attr(d).is_some())
            .unwrap_or("sendrecv");
        match offered {
            "sendonly" => "recvonly",
            "recvonly" => "sendonly",
            "inactive" => "inactive",
            _ => "sendrecv",
        }
    }

    /// The answer's DTLS role (RFC 5763 §5): active unless the offerer insists on it.
    fn answer_setup(&self) -> &'static str {
        match self.attr("setup") {
            Some("active") => "passive",
            _ => "active",
        }
    }

    fn write_rejected(&self, line: &mut impl FnMut(&str)) {
        line(&format!(
            "m={} 0 {} {}",
            self.kind,
            self.proto,
            self.formats.join(" ")
        ));
        line("c=IN IP4 0.0.0.0");
        if let Some(mid) = self.mid() {
            line(&format!("a=mid:{mid}"));
        }
        if self.proto.contains("RTP") {
            line("a=inactive");
        }
    }

    fn write_accepted(
        &self,
        accepted: &Accepted<'a>,
        keys: &AnswerKeys,
        fingerprint: &str,
        line: &mut impl FnMut(&str),
    ) {
        let format = match accepted {
            Accepted::Rtp { payload_type } => payload_type,
            Accepted::DataChannel => "webrtc-datachannel",
        };
        line(&format!("m={} 9 {} {format}", self.kind, self.proto));
        line("c=IN IP4 0.0.0.0");
        line(&format!("a=ice-ufrag:{}", keys.ice_ufrag));
        line(&format!("a=ice-pwd:{}", keys.ice_pwd));
        line(&format!("a=fingerprint:sha-256 {fingerprint}"));
        line(&format!("a=setup:{}", self.answer_setup()));
        if let Some(mid) = self.mid() {
            line(&format!("a=mid:{mid}"));
        }
        match accepted {
            Accepted::Rtp { payload_type } => {
                line(&format!("a={}", self.answer_direction()));
                line("a=rtcp-mux");
                if self.attr("rtcp-rsize").is_some() {
                    line("a=rtcp-rsize");
                }
                if let Some(map) = self.codec_line("rtpmap", payload_type) {
                    line(&format!("a=rtpmap:{payload_type} {map}"));
                }
                for feedback in self
                    .codec_lines("rtcp-fb", payload_type)
                    .chain(self.codec_lines("rtcp-fb", "*"))
                {
                    line(&format!("a=rtcp-fb:{payload_type} {feedback}"));
                }
                if let Some(parameters) = self.codec_line("fmtp", payload_type) {
                    line(&format!("a=fmtp:{payload_type} {parameters}"));
                }
            }
            Accepted::DataChannel => {
                line("a=sctp-port:5000");
                line("a=max-message-size:262144");
            }
        }
    }
}

/// `x=value` → (`x`, `value`), for a lowercase letter `x` (RFC 8866 §5).
fn split_line(line: &str) -> Option<(char, &str)> {
    let mut chars = line.chars();
    let kind = chars.next().filter(char::is_ascii_lowercase)?;
    let value = chars.as_str().strip_prefix('=')?;
    Some((kind, value))
}

/// `name:value` → (`name`, `value`); a flag such as `rtcp-mux` → (`rtcp-mux`, ``).
fn attribute(value: &str) -> (&str, &str) {
    value.split_once(':').unwrap_or((value, ""))
}

/// `AB:CD:...`, the fingerprint notation of RFC 8122.
fn colon_hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 3);
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        let _ = write!(text, "{byte:02X}");
    }
    text
}

#[cfg(test)]
#[path = "sdp_tests.rs"]
mod tests;
