//! Who the client is: the TCP peer, or, only when the peer is a trusted proxy, the
//! rightmost untrusted hop of `X-Forwarded-For`; then the key its budget lives under
//! (IPv4 address, or IPv6 network of `ipv6_prefix` bits).

use crate::config::TrustedProxies;
use axum::http::HeaderMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack socket reports
/// for an IPv4 peer) is that IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The client's address. `X-Forwarded-For` is read only when the TCP peer is a trusted
/// proxy; it is walked right to left (each proxy appends the address it saw), trusted
/// hops are skipped, and the first untrusted address is the client. An unparsable entry
/// stops the walk at the last address known to be good, so a garbled header can only
/// make a client share its proxy's budget, never pick a fresh one. `X-Real-IP` and
/// `Forwarded` are never read: a client can send them through any proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = canonical(peer);
    if trusted.is_empty() || !trusted.contains(client) {
        return client;
    }
    // Several X-Forwarded-For lines mean the same as one comma-joined line, in order.
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for entry in value.rsplit(',') {
            let Some(hop) = parse_hop(entry) else {
                return client;
            };
            client = canonical(hop);
            if !trusted.contains(client) {
                return client;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`) as some load balancers write it.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// The key a client's budget lives under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 network: the address with only its first `prefix` bits kept.
    V6(Ipv6Addr, u8),
}

impl ClientKey {
    /// Keys `ip` (canonicalised) by address for IPv4 and by `/ipv6_prefix` for IPv6.
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Self::V6(Ipv6Addr::from(u128::from(v6) & mask), prefix)
            }
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(ip) => write!(f, "{ip}"),
            Self::V6(net, prefix) => write!(f, "{net}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::try_from(entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-real-ip", "198.51.100.2"),
            ("forwarded", "for=198.51.100.3"),
        ]);
        let peer = ip("203.0.113.9");
        assert_eq!(client_ip(peer, &h, &TrustedProxies::default()), peer);
        assert_eq!(client_ip(peer, &h, &trusted(&["10.0.0.0/8"])), peer);
    }

    #[test]
    fn a_trusted_chain_yields_the_rightmost_untrusted_hop() {
        let h = headers(&[(
            "x-forwarded-for",
            "1.1.1.1, 198.51.100.7, 10.0.0.5, 10.0.0.6",
        )]);
        let got = client_ip(ip("10.0.0.1"), &h, &trusted(&["10.0.0.0/8"]));
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn several_forwarded_for_lines_are_read_as_one_list() {
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1, 198.51.100.7"),
            ("x-forwarded-for", "10.0.0.5"),
        ]);
        let got = client_ip(ip("10.0.0.1"), &h, &trusted(&["10.0.0.0/8"]));
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn an_unparsable_hop_stops_the_walk_at_the_last_good_address() {
        let h = headers(&[("x-forwarded-for", "198.51.100.7, unknown, 10.0.0.5")]);
        let got = client_ip(ip("10.0.0.1"), &h, &trusted(&["10.0.0.0/8"]));
        assert_eq!(got, ip("10.0.0.5"));
    }

    #[test]
    fn garbage_forwarded_headers_never_panic_and_fall_back_to_a_known_address() {
        let proxies = trusted(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        for garbage in [
            "",
            ",",
            " , , ",
            "999.1.1.1",
            "[::1",
            "::1]:80",
            "1.2.3.4:99999",
            "\u{7f}",
            "a,b,c,d,e,f",
            "for=1.2.3.4",
        ] {
            let Ok(value) = HeaderValue::from_str(garbage) else {
                continue;
            };
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-for", value);
            assert_eq!(client_ip(peer, &h, &proxies), peer, "{garbage:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap(),
        );
        assert_eq!(client_ip(peer, &h, &proxies), peer);
    }

    #[test]
    fn hops_with_ports_and_brackets_are_understood() {
        assert_eq!(parse_hop(" 192.0.2.1:4711 "), Some(ip("192.0.2.1")));
        assert_eq!(parse_hop("[2001:db8::1]:4711"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_hop("unknown"), None);
    }

    #[test]
    fn a_chain_of_only_trusted_hops_yields_the_leftmost_hop() {
        let h = headers(&[("x-forwarded-for", "10.0.0.9, 10.0.0.5")]);
        let got = client_ip(ip("10.0.0.1"), &h, &trusted(&["10.0.0.0/8"]));
        assert_eq!(got, ip("10.0.0.9"));
    }

    #[test]
    fn an_ipv4_mapped_peer_is_the_ipv4_client() {
        let mapped = ip("::ffff:203.0.113.9");
        assert_eq!(canonical(mapped), ip("203.0.113.9"));
        assert_eq!(
            ClientKey::new(mapped, 64),
            ClientKey::new(ip("203.0.113.9"), 64)
        );
        // A mapped peer still matches an IPv4 trusted range.
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        let got = client_ip(ip("::ffff:10.0.0.1"), &h, &trusted(&["10.0.0.0/8"]));
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix() {
        let a = ClientKey::new(ip("2001:db8:1:2:aaaa::1"), 64);
        let b = ClientKey::new(ip("2001:db8:1:2:bbbb::2"), 64);
        let c = ClientKey::new(ip("2001:db8:1:3::1"), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            ClientKey::new(ip("2001:db8::1"), 128),
            ClientKey::V6("2001:db8::1".parse().unwrap(), 128)
        );
    }
}
