//! `[relay]` and `[relay.policy]`: the opt-in relay of the SDK's call start
//! (`POST /v1/realtime/calls`), the server-side session policy it applies, and how the
//! tokens it accepts are bound to the caller who got them. The values are parsed here
//! once (modalities, the temperature range, the instructions file's text); the relay
//! itself lives in `crate::relay`.

use super::parse;
use super::validate::{Problems, duration_within, within};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Largest instructions file read; Orga's prompt limit is not documented, and anything
/// larger is far more likely a wrong path (a binary, a log) than a prompt.
const MAX_INSTRUCTIONS_BYTES: usize = 64 * 1024;

/// `[relay]`: the call-start relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Serve `POST /v1/realtime/calls` on the public listener (the SDK's `baseUrl`
    /// points here).
    pub enabled: bool,
    /// Accept only ephemeral tokens this service issued, each for one call.
    pub bind_tokens: bool,
    /// What a session parameter outside `[relay.policy]` gets: a 403, or the policy's
    /// own value in its place.
    pub on_violation: OnViolation,
    /// How long a token's binding lives when Orga's answer carries no expiry.
    #[serde(with = "parse::duration")]
    pub token_ttl: Duration,
    /// Most tokens bound at once in this process's memory (without `[redis]`); past it
    /// the credentials route answers 503 until bindings expire or are used.
    pub max_bound_tokens: usize,
    /// What clients may ask of a session.
    pub policy: PolicyConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            bind_tokens: true,
            on_violation: OnViolation::Refuse,
            token_ttl: Duration::from_secs(600),
            max_bound_tokens: 100_000,
            policy: PolicyConfig::default(),
        }
    }
}

/// `relay.on_violation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Answer 403 `session_param_not_allowed`, naming the parameter and what is allowed.
    Refuse,
    /// Replace the value with the policy's first allowed one (or clamp it) and relay.
    Override,
}

/// `[relay.policy]`. An empty key allows anything for its parameter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Allowed `params.model` values; the first is the policy's default.
    #[serde(deserialize_with = "parse::string_list")]
    pub models: Vec<String>,
    /// Allowed `params.voice` values (exact UTF-8, as the SDK spells them: "Sofía").
    #[serde(deserialize_with = "parse::string_list")]
    pub voices: Vec<String>,
    /// Allowed members of `params.modalities`, a subset of `audio` and `video`.
    #[serde(deserialize_with = "parse::list")]
    pub modalities: Modalities,
    /// Allowed `params.temperature` range, inclusive.
    pub temperature: TemperatureRange,
    /// Instructions sent on every call in place of the client's; `""` leaves the
    /// client's.
    pub instructions: Instructions,
    /// The same, read from this file at start-up (trailing whitespace trimmed).
    #[serde(with = "parse::optional_text")]
    pub instructions_file: Option<InstructionsFile>,
}

impl RelayConfig {
    pub(super) fn check(&self, problems: &mut Problems) {
        problems.check(
            "relay.token_ttl",
            duration_within(
                self.token_ttl,
                Duration::from_secs(10),
                Duration::from_secs(3_600),
            ),
        );
        problems.check(
            "relay.max_bound_tokens",
            within(self.max_bound_tokens, 1, 10_000_000),
        );
        let policy = &self.policy;
        if !policy.instructions.0.is_empty() && policy.instructions_file.is_some() {
            problems.add(
                "relay.policy.instructions_file",
                "set either relay.policy.instructions or relay.policy.instructions_file, not both",
            );
        }
        // A decomposed "Sofía" (NFD, as some macOS editors write it) is other bytes
        // than the SDK's precomposed one and would never match.
        if let Some(voice) = policy.voices.iter().find(|v| has_combining_marks(v)) {
            problems.add(
                "relay.policy.voices",
                format!(
                    "{voice:?} is written with combining accents (Unicode NFD); write it precomposed (NFC), as the SDK sends it"
                ),
            );
        }
    }
}

impl PolicyConfig {
    /// The pinned instructions, inline or from the file, if any.
    pub fn pinned_instructions(&self) -> Option<Arc<str>> {
        match (&self.instructions_file, self.instructions.0.as_str()) {
            (Some(file), _) => Some(file.text.clone()),
            (None, "") => None,
            (None, text) => Some(text.into()),
        }
    }
}

fn has_combining_marks(text: &str) -> bool {
    text.chars().any(|c| ('\u{300}'..='\u{36f}').contains(&c))
}

/// A modality a session may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    /// `"audio"`.
    Audio,
    /// `"video"`.
    Video,
}

impl Modality {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
        }
    }
}

/// The parsed `relay.policy.modalities`, in the order written, without repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modalities(pub Vec<Modality>);

impl TryFrom<Vec<String>> for Modalities {
    type Error = String;

    fn try_from(entries: Vec<String>) -> Result<Self, String> {
        let mut parsed = Vec::new();
        for entry in &entries {
            let modality = match entry.as_str() {
                "audio" => Modality::Audio,
                "video" => Modality::Video,
                other => {
                    return Err(format!(
                        "{other:?} is not a modality the SDK knows; use \"audio\" and/or \"video\""
                    ));
                }
            };
            if !parsed.contains(&modality) {
                parsed.push(modality);
            }
        }
        Ok(Self(parsed))
    }
}

impl Serialize for Modalities {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        parse::entries(self.0.iter().map(|m| m.as_str()), serializer)
    }
}

/// The parsed `relay.policy.temperature`: `[]` (any) or `[min, max]` within the SDK's
/// own range, 0 to 1. Also read from `"min,max"` or `"[min, max]"`, as an environment
/// variable writes it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TemperatureRange(pub Option<(f64, f64)>);

impl TemperatureRange {
    fn parse(values: &[f64]) -> Result<Self, String> {
        let (min, max) = match values {
            [] => return Ok(Self(None)),
            [min, max] => (*min, *max),
            _ => return Err("write [] (any) or [min, max], e.g. [0.2, 0.8]".into()),
        };
        for value in [min, max] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!(
                    "{value} is outside 0 to 1, the range @orga-ai/core accepts"
                ));
            }
        }
        if min > max {
            return Err(format!("[{min}, {max}]: min is above max"));
        }
        Ok(Self(Some((min, max))))
    }
}

impl<'de> Deserialize<'de> for TemperatureRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "[] or [min, max], or \"min,max\"")]
        enum Written {
            List(Vec<f64>),
            Joined(String),
        }
        let values = match Written::deserialize(deserializer)? {
            Written::List(values) => values,
            Written::Joined(text) => parse::split_list(&text)
                .map_err(de::Error::custom)?
                .iter()
                .map(|part| part.trim())
                .filter(|part| !part.is_empty())
                .map(|part| {
                    part.parse::<f64>()
                        .map_err(|_| de::Error::custom(format!("{part:?} is not a number")))
                })
                .collect::<Result<_, _>>()?,
        };
        Self::parse(&values).map_err(de::Error::custom)
    }
}

impl Serialize for TemperatureRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some((min, max)) => [min, max].serialize(serializer),
            None => Vec::<f64>::new().serialize(serializer),
        }
    }
}

/// `relay.policy.instructions`: shown in `check-config` (the operator's own text), but
/// never in `Debug`, so it cannot slip into a log line.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Instructions(pub String);

impl<'de> Deserialize<'de> for Instructions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse::lenient_string(deserializer).map(Self)
    }
}

impl fmt::Debug for Instructions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instructions({} bytes)", self.0.len())
    }
}

/// `relay.policy.instructions_file`: the path, and the text read from it when the
/// configuration is loaded, so a missing or unreadable file stops start-up.
#[derive(Clone)]
pub struct InstructionsFile {
    /// The path as configured (relative to the working directory).
    pub path: String,
    /// The file's text, trailing whitespace trimmed.
    pub text: Arc<str>,
}

impl FromStr for InstructionsFile {
    type Err = String;

    fn from_str(path: &str) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        if bytes.len() > MAX_INSTRUCTIONS_BYTES {
            return Err(format!(
                "{path:?} is larger than {} KiB; is it the right file?",
                MAX_INSTRUCTIONS_BYTES / 1024
            ));
        }
        let text = String::from_utf8(bytes).map_err(|_| format!("{path:?} is not UTF-8 text"))?;
        let text = text.trim_end();
        if text.is_empty() {
            return Err(format!("{path:?} is empty"));
        }
        Ok(Self {
            path: path.to_owned(),
            text: text.into(),
        })
    }
}

impl fmt::Display for InstructionsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

impl fmt::Debug for InstructionsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "InstructionsFile({:?}, {} bytes)",
            self.path,
            self.text.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml: &str) -> Result<PolicyConfig, String> {
        toml::from_str(toml).map_err(|e| e.to_string())
    }

    fn problems(config: &RelayConfig) -> Vec<String> {
        let mut problems = Problems::default();
        config.check(&mut problems);
        problems.0
    }

    #[test]
    fn temperature_is_empty_or_an_ordered_pair_within_the_sdks_range() {
        assert_eq!(policy("temperature = []").unwrap().temperature.0, None);
        assert_eq!(
            policy("temperature = [0.2, 0.8]").unwrap().temperature.0,
            Some((0.2, 0.8))
        );
        assert_eq!(
            policy("temperature = [0, 1]").unwrap().temperature.0,
            Some((0.0, 1.0))
        );
        assert_eq!(
            policy(r#"temperature = "0.3, 0.4""#).unwrap().temperature.0,
            Some((0.3, 0.4)),
            "as an environment variable writes it"
        );
        for (bad, says) in [
            ("[0.8, 0.2]", "min is above max"),
            ("[0.5]", "[min, max]"),
            ("[0, 1.5]", "outside 0 to 1"),
            ("[-0.1, 0.5]", "outside 0 to 1"),
            (r#""low,high""#, "not a number"),
        ] {
            let error = policy(&format!("temperature = {bad}")).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn modalities_are_a_subset_of_audio_and_video() {
        let parsed = policy(r#"modalities = ["video", "audio", "video"]"#).unwrap();
        assert_eq!(parsed.modalities.0, [Modality::Video, Modality::Audio]);
        let error = policy(r#"modalities = ["audio", "text"]"#).unwrap_err();
        assert!(error.contains("\"text\" is not a modality"), "{error}");
    }

    #[test]
    fn inline_and_file_instructions_cannot_both_be_set() {
        let dir = std::env::temp_dir().join(format!("orga-proxy-relay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("instructions.txt");
        std::fs::write(&file, "Be brief.\n\n").unwrap();
        let mut config = RelayConfig::default();
        config.policy.instructions_file = Some(file.to_str().unwrap().parse().unwrap());
        assert!(problems(&config).is_empty());
        assert_eq!(
            config.policy.pinned_instructions().as_deref(),
            Some("Be brief."),
            "trailing whitespace trimmed"
        );
        config.policy.instructions = Instructions("Be long.".into());
        let found = problems(&config).join("\n");
        assert!(found.contains("not both"), "{found}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_or_empty_instructions_file_is_a_configuration_problem() {
        let missing = "/nonexistent/orga-proxy/instructions.txt"
            .parse::<InstructionsFile>()
            .unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
        let empty = std::env::temp_dir().join(format!("orga-proxy-empty-{}", std::process::id()));
        std::fs::write(&empty, " \n").unwrap();
        let error = empty
            .to_str()
            .unwrap()
            .parse::<InstructionsFile>()
            .unwrap_err();
        assert!(error.contains("is empty"), "{error}");
        std::fs::remove_file(&empty).unwrap();
    }

    #[test]
    fn a_decomposed_voice_name_is_refused_because_it_would_never_match() {
        let mut config = RelayConfig::default();
        config.policy.voices = vec!["Sofía".into(), "Victoria".into()];
        assert!(problems(&config).is_empty());
        config.policy.voices = vec!["Sofi\u{301}a".into()];
        let found = problems(&config).join("\n");
        assert!(found.contains("relay.policy.voices"), "{found}");
        assert!(found.contains("NFC"), "{found}");
    }

    #[test]
    fn instructions_never_show_in_debug() {
        let mut config = RelayConfig::default();
        config.policy.instructions = Instructions("secret-sauce prompt".into());
        let debug = format!("{config:?}");
        assert!(!debug.contains("secret-sauce"), "{debug}");
        assert!(debug.contains("19 bytes"), "{debug}");
    }

    #[test]
    fn on_violation_is_refuse_or_override() {
        let parsed: RelayConfig = toml::from_str(r#"on_violation = "override""#).unwrap();
        assert_eq!(parsed.on_violation, OnViolation::Override);
        assert!(toml::from_str::<RelayConfig>(r#"on_violation = "ignore""#).is_err());
    }
}
