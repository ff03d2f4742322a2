//! `[rate_limit]` and `[rate_limit.per_subject]`, and [`TrustedProxies`], the parsed
//! list of proxies whose `X-Forwarded-For` is believed.

use super::parse;
use super::validate::{Problems, duration_within, within};
use ipnet::IpNet;
use serde::{Deserialize, Serialize, Serializer};
use std::net::IpAddr;
use std::time::Duration;

/// Most requests per minute accepted in configuration: past this the GCRA
/// interval drops below 60 µs and the limit stops meaning anything.
const MAX_RATE: u32 = 1_000_000;
/// Largest burst accepted; a bigger burst is no limit at all.
const MAX_BURST: u32 = 100_000;
/// Largest table of tracked clients accepted: several gigabytes of memory when full, far
/// past any real deployment, so a larger value is a typo.
const MAX_TRACKED: usize = 100_000_000;

/// `[rate_limit]`: per-client limits on the credentials route. Every admitted
/// request mints an Orga token, so this guards the upstream spend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Turns the per-client (and per-subject) limits on or off.
    pub enabled: bool,
    /// Sustained rate per client IP (IPv6: per `/ipv6_prefix`).
    pub requests_per_minute: u32,
    /// Requests a client may make at once before the sustained rate applies.
    pub burst: u32,
    /// The proxies in front of this service whose `X-Forwarded-For` is believed.
    /// Empty: forwarded headers are ignored entirely.
    #[serde(deserialize_with = "parse::list")]
    pub trusted_proxies: TrustedProxies,
    /// IPv6 clients are keyed by this prefix length, so rotating addresses inside
    /// one allocation (usually a /64) shares one budget.
    pub ipv6_prefix: u8,
    /// Most clients tracked at once by the in-memory limiter.
    pub max_tracked_clients: usize,
    /// How often idle clients (whose budget is full again) are evicted from memory.
    #[serde(with = "parse::duration")]
    pub sweep_interval: Duration,
    /// Where budgets live: `memory` (per process) or `redis` (shared by replicas,
    /// through `[redis]`).
    pub backend: Backend,
    /// What happens to a request when Redis fails: `local` (the replica limits on
    /// its own in memory), `open` (admit), `closed` (answer 503).
    pub redis_failure: RedisFailure,
    /// An additional limit per authenticated subject (after auth), so one account
    /// cannot mint unlimited tokens from many addresses. Off by default.
    pub per_subject: PerSubjectConfig,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            requests_per_minute: 30,
            burst: 10,
            trusted_proxies: TrustedProxies::default(),
            ipv6_prefix: 64,
            max_tracked_clients: 100_000,
            sweep_interval: Duration::from_secs(30),
            backend: Backend::Memory,
            redis_failure: RedisFailure::Local,
            per_subject: PerSubjectConfig::default(),
        }
    }
}

/// `[rate_limit.per_subject]`: a budget per authenticated caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerSubjectConfig {
    /// Turns the per-subject limit on; it applies only to requests auth identified.
    pub enabled: bool,
    /// Sustained rate per subject.
    pub requests_per_minute: u32,
    /// Requests a subject may make at once.
    pub burst: u32,
}

impl Default for PerSubjectConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            requests_per_minute: 60,
            burst: 20,
        }
    }
}

/// Where rate-limit budgets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process: each replica has its own budgets.
    Memory,
    /// In Redis: every replica shares one budget per client.
    Redis,
}

/// What a request meets while Redis is failing (rate limits and quotas alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFailure {
    /// Each replica falls back to its own in-memory state (limits hold per replica).
    Local,
    /// Fail open: admit without limit until Redis answers again.
    Open,
    /// Fail closed: answer 503 `unavailable`; Redis is then required for readiness.
    Closed,
}

impl RedisFailure {
    /// The value as configured, for log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

impl RateLimitConfig {
    /// Takes the numbers a reload changes live (both budgets' rate and burst) from
    /// `loaded`; everything else stays.
    pub fn take_live_numbers(&mut self, loaded: &Self) {
        self.requests_per_minute = loaded.requests_per_minute;
        self.burst = loaded.burst;
        self.per_subject.requests_per_minute = loaded.per_subject.requests_per_minute;
        self.per_subject.burst = loaded.per_subject.burst;
    }

    pub(super) fn check(&self, problems: &mut Problems) {
        problems.check(
            "rate_limit.requests_per_minute",
            within(self.requests_per_minute, 1, MAX_RATE),
        );
        problems.check("rate_limit.burst", within(self.burst, 1, MAX_BURST));
        problems.check("rate_limit.ipv6_prefix", within(self.ipv6_prefix, 32, 128));
        problems.check(
            "rate_limit.max_tracked_clients",
            within(self.max_tracked_clients, 1, MAX_TRACKED),
        );
        problems.check(
            "rate_limit.sweep_interval",
            duration_within(
                self.sweep_interval,
                Duration::from_secs(1),
                Duration::from_secs(3_600),
            ),
        );
        let subject = &self.per_subject;
        problems.check(
            "rate_limit.per_subject.requests_per_minute",
            within(subject.requests_per_minute, 1, MAX_RATE),
        );
        problems.check(
            "rate_limit.per_subject.burst",
            within(subject.burst, 1, MAX_BURST),
        );
    }
}

/// The proxies whose `X-Forwarded-For` is believed: networks, each as written with its
/// host bits clear, that together never cover every address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TryFrom<Vec<String>> for TrustedProxies {
    type Error = String;

    /// Parses CIDRs or single addresses (`"10.0.0.0/8"`, `"192.0.2.7"`, `"fd00::/8"`).
    fn try_from(entries: Vec<String>) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in &entries {
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match entry.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(format!(
                            "{entry:?} is not an IP address or CIDR, e.g. \"10.0.0.0/8\" or \"192.0.2.7\""
                        ));
                    }
                },
            };
            if net.trunc() != net {
                return Err(format!(
                    "{entry:?} has host bits set: write the network {} or the single address {}",
                    net.trunc(),
                    IpNet::from(net.addr())
                ));
            }
            if let IpNet::V6(v6) = net {
                if v6.network().to_ipv4_mapped().is_some() {
                    return Err(format!(
                        "{entry:?} is an IPv4-mapped IPv6 range; write it in IPv4 form (peers are compared as IPv4)"
                    ));
                }
            }
            nets.push(net);
        }
        let everyone = IpNet::aggregate(&nets)
            .into_iter()
            .find(|net| net.prefix_len() == 0);
        if let Some(everyone) = everyone {
            return Err(format!(
                "{entries:?} together trust every address ({everyone}), so any client could choose its own rate-limit key; list only your proxies' ranges"
            ));
        }
        Ok(Self(nets))
    }
}

impl Serialize for TrustedProxies {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        parse::entries(&self.0, serializer)
    }
}

impl TrustedProxies {
    /// True when no proxy is trusted: forwarded headers are then never read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(entries: &[&str]) -> Result<TrustedProxies, String> {
        TrustedProxies::try_from(entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_defaults_are_valid() {
        let mut problems = Problems::default();
        RateLimitConfig::default().check(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn zero_rates_and_bursts_are_refused_with_their_keys() {
        let config = RateLimitConfig {
            requests_per_minute: 0,
            burst: 0,
            per_subject: PerSubjectConfig {
                burst: 0,
                ..PerSubjectConfig::default()
            },
            ..RateLimitConfig::default()
        };
        let mut problems = Problems::default();
        config.check(&mut problems);
        let text = problems.0.join("\n");
        for key in [
            "rate_limit.requests_per_minute",
            "rate_limit.burst",
            "rate_limit.per_subject.burst",
        ] {
            assert!(text.contains(key), "{text}");
        }
        assert_eq!(problems.0.len(), 3, "{text}");
    }

    #[test]
    fn trusted_proxy_entries_are_networks_or_addresses() {
        assert!(proxies(&["10.0.0.0/8", "192.0.2.7"]).is_ok());
        assert!(proxies(&["2001:db8::/32"]).is_ok());
        for bad in ["10.0.0.0/33", "proxy.example", "::ffff:10.0.0.0/104"] {
            assert!(proxies(&[bad]).is_err(), "{bad}");
        }
        assert!(
            proxies(&["10.1.2.3"])
                .unwrap()
                .contains("10.1.2.3".parse().unwrap())
        );
    }

    #[test]
    fn ranges_that_together_trust_everyone_are_refused() {
        for everyone in [
            &["0.0.0.0/0"][..],
            &["10.0.0.0/8", "0.0.0.0/0"],
            &["0.0.0.0/1", "128.0.0.0/1"],
            &["::/1", "8000::/1"],
        ] {
            let error = proxies(everyone).unwrap_err();
            assert!(error.contains("trust every address"), "{error}");
        }
    }

    #[test]
    fn host_bits_are_refused_naming_the_network_that_was_probably_meant() {
        let error = proxies(&["1.2.3.4/8"]).unwrap_err();
        assert!(error.contains("1.0.0.0/8"), "{error}");
        assert!(error.contains("1.2.3.4/32"), "{error}");
    }
}
