//! Who the client is, and the `X-Forwarded-*` headers that tell the upstream (part of
//! stage 8, rewrite; the client address is decided when the request arrives).
//!
//! `X-Forwarded-For` and friends are believed only when the peer that sent them is a
//! configured trusted proxy; otherwise they are the client's own claims and are replaced.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use tollgate_policy::cidr::Cidr;

use crate::exchange::Scheme;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Whether `addr` is one of `[server] trusted_proxies`.
pub fn trusted(addr: IpAddr, proxies: &[Cidr]) -> bool {
    proxies.iter().any(|c| c.contains(addr))
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    if !trusted(peer, proxies) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        // `::ffff:a.b.c.d` from a dual-stack proxy is the IPv4 client it names.
        match hop(entry.trim()).map(|addr| addr.to_canonical()) {
            Some(addr) if trusted(addr, proxies) => client = addr,
            Some(addr) => return addr,
            // A hop we trust passed on garbage: believe no further.
            None => return client,
        }
    }
    client
}

/// One `X-Forwarded-For` entry's address: a bare address, or as some proxies write it
/// (Azure's and IIS ARR's `1.2.3.4:8080`, `[2001:db8::1]:443`, a zone `fe80::1%eth0`).
/// Anything else is garbage, and the walk stops there.
fn hop(entry: &str) -> Option<IpAddr> {
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    let (v6, zone) = entry.split_once('%')?;
    let zone_ok = !zone.is_empty()
        && zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    zone_ok
        .then(|| v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6))
        .flatten()
}

/// Replaces the forwarding headers with what the gateway vouches for; the protocol is
/// the connection's (`scheme`) unless a trusted proxy said otherwise.
pub fn set_headers(
    headers: &mut HeaderMap,
    peer: IpAddr,
    client: IpAddr,
    proxies: &[Cidr],
    scheme: Scheme,
) {
    let from_trusted = trusted(peer, proxies);
    let prior_for = from_trusted
        .then(|| joined(headers, &X_FORWARDED_FOR))
        .flatten();
    let xff = match prior_for {
        Some(prior) => format!("{prior}, {peer}"),
        None => peer.to_string(),
    };
    let host = headers.get(HOST).cloned();
    if !from_trusted {
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
    }
    headers.remove(&X_FORWARDED_FOR);
    headers.remove(&FORWARDED);
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if let Ok(value) = HeaderValue::from_str(&client.to_string()) {
        headers.insert(X_REAL_IP, value);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme.as_str()));
    }
    if let (false, Some(host)) = (headers.contains_key(&X_FORWARDED_HOST), host) {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn untrusted_peers_cannot_claim_an_address() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_addr(ip("192.0.2.1"), &xff("1.2.3.4"), &proxies),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn mapped_addresses_from_a_trusted_proxy_are_their_ipv4_client() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = xff("198.51.100.7, ::ffff:10.0.0.2");
        assert_eq!(
            client_addr(ip("10.0.0.1"), &h, &proxies),
            ip("198.51.100.7"),
            "the mapped trusted hop is skipped"
        );
        assert_eq!(
            client_addr(ip("10.0.0.1"), &xff("::ffff:198.51.100.9"), &proxies),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn hops_written_with_a_port_or_a_zone_are_read() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        for (entry, want) in [
            ("198.51.100.7:8080", "198.51.100.7"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("2001:db8::1%eth0", "2001:db8::1"),
        ] {
            assert_eq!(
                client_addr(ip("10.0.0.1"), &xff(entry), &proxies),
                ip(want),
                "{entry}"
            );
        }
        // Garbage still stops the walk at the last hop believed.
        for entry in ["unknown", "011.012.013.007", "1.2.3.4:x", "::1%"] {
            assert_eq!(
                client_addr(ip("10.0.0.1"), &xff(entry), &proxies),
                ip("10.0.0.1"),
                "{entry}"
            );
        }
    }

    #[test]
    fn trusted_chains_are_walked_from_the_right() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = xff("6.6.6.6, 198.51.100.7, 10.0.0.2");
        assert_eq!(
            client_addr(ip("10.0.0.1"), &h, &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_addr(ip("10.0.0.1"), &xff("10.0.0.3"), &proxies),
            ip("10.0.0.3")
        );
        assert_eq!(
            client_addr(ip("10.0.0.1"), &xff("junk, 10.0.0.3"), &proxies),
            ip("10.0.0.3")
        );
        assert_eq!(
            client_addr(ip("10.0.0.1"), &HeaderMap::new(), &proxies),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarding_headers_are_replaced_for_untrusted_peers() {
        let mut h = xff("1.2.3.4");
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(HOST, HeaderValue::from_static("gw.example"));
        set_headers(&mut h, ip("192.0.2.1"), ip("192.0.2.1"), &[], Scheme::Http);
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "gw.example");
        assert_eq!(h[&X_REAL_IP], "192.0.2.1");
    }

    #[test]
    fn the_protocol_follows_the_connection() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        set_headers(&mut h, ip("192.0.2.1"), ip("192.0.2.1"), &[], Scheme::Https);
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn trusted_proxies_extend_the_chain() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = xff("198.51.100.7");
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        set_headers(
            &mut h,
            ip("10.0.0.1"),
            ip("198.51.100.7"),
            &proxies,
            Scheme::Http,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "198.51.100.7, 10.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_REAL_IP], "198.51.100.7");
    }
}
