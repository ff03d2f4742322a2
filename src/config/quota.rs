//! `[quota]` (credentials per UTC day) and `[audit]` (the record of every credential
//! issued), with [`AuditSink`], the parsed `audit.sink`.

use super::parse;
use super::validate::{Problems, within};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Largest daily quota accepted: far above any real need, and low enough that the
/// counters' arithmetic (in Rust and in Redis's Lua) is exact.
const MAX_PER_DAY: u32 = 1_000_000_000;
/// Most claims copied into each audit record.
const MAX_CLAIMS: usize = 16;
/// Longest claim name accepted.
const MAX_CLAIM_NAME: usize = 64;

/// `[quota]`: credentials per UTC day. 0 turns a quota off; all are off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Credentials per authenticated subject per day (needs `auth.mode` other than "none").
    pub per_subject_per_day: u32,
    /// Credentials per client per day, the client keyed as the rate limiter keys it (its
    /// address through trusted proxies, IPv6 per `rate_limit.ipv6_prefix`).
    pub per_client_per_day: u32,
    /// Credentials per day for all callers together: a cap on the Orga spend.
    pub global_per_day: u32,
}

impl QuotaConfig {
    /// True when at least one quota is on.
    pub fn any(&self) -> bool {
        self.per_subject_per_day > 0 || self.per_client_per_day > 0 || self.global_per_day > 0
    }

    pub(super) fn check(&self, problems: &mut Problems) {
        for (key, value) in [
            ("quota.per_subject_per_day", self.per_subject_per_day),
            ("quota.per_client_per_day", self.per_client_per_day),
            ("quota.global_per_day", self.global_per_day),
        ] {
            problems.check(key, within(value, 0, MAX_PER_DAY));
        }
    }
}

/// `[audit]`: one JSON line per credential issued (and per relayed call).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Where records go: off, stdout, or a file (appended to, created if missing).
    #[serde(with = "parse::text")]
    pub sink: AuditSink,
    /// JWT claims copied into each record (string, number and boolean values only).
    #[serde(deserialize_with = "parse::string_list")]
    pub claims: Vec<String>,
}

impl AuditConfig {
    pub(super) fn check(&self, problems: &mut Problems) {
        if let AuditSink::File(path) = &self.sink {
            problems.check("audit.sink", probe(path));
        }
        if self.claims.len() > MAX_CLAIMS {
            problems.add(
                "audit.claims",
                format!(
                    "{} claims listed; at most {MAX_CLAIMS} are copied into a record",
                    self.claims.len()
                ),
            );
        }
        for name in &self.claims {
            if name.len() > MAX_CLAIM_NAME || name.chars().any(char::is_control) {
                problems.add(
                    "audit.claims",
                    format!(
                        "{name:?} is not a claim name (at most {MAX_CLAIM_NAME} bytes, no control characters)"
                    ),
                );
            }
        }
    }
}

/// `audit.sink`: where audit records are written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AuditSink {
    /// `""`: no audit trail.
    #[default]
    Off,
    /// `"stdout"`: interleaved with the log lines, for the platform's log pipeline.
    Stdout,
    /// A file path: JSON lines appended to it.
    File(PathBuf),
}

impl FromStr for AuditSink {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "" => Ok(Self::Off),
            "stdout" => Ok(Self::Stdout),
            path if path.chars().any(char::is_control) => {
                Err("a file path must not contain control characters".into())
            }
            path if path.ends_with('/') => Err(format!(
                "{path:?} names a directory; name the file, e.g. \"/var/log/orga-proxy/audit.log\""
            )),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for AuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => Ok(()),
            Self::Stdout => f.write_str("stdout"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The start-up check of a file sink: its directory exists and the file can be opened
/// for appending. It opens the file exactly as the writer will (creating it, empty, if
/// missing), because only the open itself answers for permissions, read-only mounts and
/// the like.
fn probe(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "the directory {} does not exist; create it (writable by this process) first",
            dir.display()
        ));
    }
    if path.is_dir() {
        return Err(format!("{} is a directory; name a file", path.display()));
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map(drop)
        .map_err(|e| format!("{} cannot be opened for appending: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_is_off_stdout_or_a_file() {
        assert_eq!("".parse::<AuditSink>(), Ok(AuditSink::Off));
        assert_eq!("stdout".parse::<AuditSink>(), Ok(AuditSink::Stdout));
        assert_eq!(
            "/var/log/a.log".parse::<AuditSink>(),
            Ok(AuditSink::File("/var/log/a.log".into()))
        );
        assert!("/var/log/".parse::<AuditSink>().is_err());
        assert!("/var/log/a\n.log".parse::<AuditSink>().is_err());
        for text in ["", "stdout", "/var/log/a.log"] {
            assert_eq!(text.parse::<AuditSink>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn a_sink_in_a_missing_or_unwritable_directory_is_refused() {
        let missing = AuditConfig {
            sink: AuditSink::File("/nonexistent-orga-proxy-dir/audit.log".into()),
            claims: vec![],
        };
        let mut problems = Problems::default();
        missing.check(&mut problems);
        let text = problems.0.join("\n");
        assert!(
            text.contains("audit.sink (ORGA_PROXY_AUDIT__SINK)"),
            "{text}"
        );
        assert!(text.contains("does not exist"), "{text}");

        // /proc refuses new files whoever runs the test (root included).
        let unwritable = AuditConfig {
            sink: AuditSink::File("/proc/orga-proxy-audit.log".into()),
            claims: vec![],
        };
        let mut problems = Problems::default();
        unwritable.check(&mut problems);
        assert!(
            problems.0.join("\n").contains("cannot be opened"),
            "{problems:?}"
        );
    }

    #[test]
    fn claim_names_are_few_and_short() {
        let config = AuditConfig {
            sink: AuditSink::Off,
            claims: (0..17)
                .map(|i| format!("c{i}"))
                .chain(["x".repeat(65)])
                .collect(),
        };
        let mut problems = Problems::default();
        config.check(&mut problems);
        assert_eq!(problems.0.len(), 2, "{problems:?}");
    }
}
