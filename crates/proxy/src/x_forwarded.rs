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
    let entries = chain(headers);
    let mut client = peer;
    for entry in entries.iter().rev() {
        // `::ffff:a.b.c.d` from a dual-stack proxy is the IPv4 client it names.
        match hop(entry).map(|addr| addr.to_canonical()) {
            Some(addr) if trusted(addr, proxies) => client = addr,
            Some(addr) => return addr,
            // A hop we trust passed on garbage: believe no further.
            None => return client,
        }
    }
    client
}

/// The `X-Forwarded-For` entries, every header line in order, split at commas. An
/// entry holding a byte that is not visible ASCII is `unknown`, garbage in its place:
/// nginx and others append the real client to the client's own line, so a line
/// dropped whole for one `\x80` would take the real client with it and leave the proxy
/// itself as the client.
fn chain(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|entry| {
            let entry = entry.trim_ascii();
            match std::str::from_utf8(entry) {
                Ok(text) if entry.iter().all(|b| (0x20..0x7f).contains(b)) => text.to_owned(),
                _ => "unknown".to_owned(),
            }
        })
        .collect()
}

/// One `X-Forwarded-For` entry's address: a bare address, or as some proxies write it
/// (Azure's and IIS ARR's `1.2.3.4:8080`, `[2001:db8::1]:443`, a zone `fe80::1%eth0`).
/// Anything else is garbage, and the walk stops there.
fn hop(entry: &str) -> Option<IpAddr> {
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Some(addr);
    }
    // `[2001:db8::1]` without a port, as some proxies bracket every IPv6 address.
    if let Some(v6) = entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
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
        .then(|| chain(headers))
        .filter(|entries| !entries.is_empty());
    let xff = match prior_for {
        Some(prior) => format!("{}, {peer}", prior.join(", ")),
        None => peer.to_string(),
    };
    let host = headers.get(HOST).cloned();
    // A trusted proxy's word on the scheme and host is kept when it is one readable
    // value: `http` or `https`, and a host a backend reads as one host. Anything else
    // (two values, `javascript`, `evil.test/x`) is replaced by what this hop saw: a
    // backend builds links and judges `Secure` from them.
    let proto_ok = from_trusted
        && single(headers, &X_FORWARDED_PROTO)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"http") || v.eq_ignore_ascii_case(b"https"));
    let host_ok =
        from_trusted && single(headers, &X_FORWARDED_HOST).is_some_and(crate::accept::valid_host);
    if proto_ok {
        let https = headers
            .get(&X_FORWARDED_PROTO)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        let value = if https { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(value));
    } else {
        headers.remove(&X_FORWARDED_PROTO);
    }
    if !host_ok {
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

/// The header's one value (none when absent or repeated).
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h [u8]> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(only), None) => Some(only.as_bytes()),
        _ => None,
    }
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
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1%eth0", "2001:db8::1"),
        ] {
            assert_eq!(
                client_addr(ip("10.0.0.1"), &xff(entry), &proxies),
                ip(want),
                "{entry}"
            );
        }
        // Garbage still stops the walk at the last hop believed.
        for entry in [
            "unknown",
            "011.012.013.007",
            "1.2.3.4:x",
            "::1%",
            "[1.2.3.4]",
            "[::1",
        ] {
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

    /// nginx appends the real client to the client's own line: one byte that is not
    /// visible ASCII used to drop the line whole, real client and all, and the trusted
    /// proxy itself became the client (past an allowlist of internal addresses).
    #[test]
    fn an_unreadable_entry_is_garbage_in_its_place_not_the_whole_line() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        for raw in [
            &b"\x80, 198.51.100.7"[..],
            b"a\xffb,198.51.100.7",
            b"\xc3\xa9, 198.51.100.7",
        ] {
            let mut h = HeaderMap::new();
            h.insert(X_FORWARDED_FOR, HeaderValue::from_bytes(raw).unwrap());
            let client = client_addr(ip("10.0.0.1"), &h, &proxies);
            assert_eq!(client, ip("198.51.100.7"), "{raw:?}");
            set_headers(&mut h, ip("10.0.0.1"), client, &proxies, Scheme::Http);
            assert_eq!(h[&X_FORWARDED_FOR], "unknown, 198.51.100.7, 10.0.0.1");
            assert_eq!(h[&X_REAL_IP], "198.51.100.7");
        }
        // Garbage to the right of the client stops the walk there, as `unknown` does.
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"198.51.100.7, \x80").unwrap(),
        );
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &proxies), ip("10.0.0.1"));
    }

    /// A trusted proxy's scheme and host are kept only as one readable value; a backend
    /// builds links (password resets) and judges `Secure` from them.
    #[test]
    fn a_trusted_proxys_scheme_and_host_are_kept_only_when_readable() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let forwarded = |pairs: &[(&HeaderName, &str)]| {
            let mut h = HeaderMap::new();
            h.insert(HOST, HeaderValue::from_static("gw.example"));
            for (name, value) in pairs {
                h.append(*name, HeaderValue::from_str(value).unwrap());
            }
            set_headers(
                &mut h,
                ip("10.0.0.1"),
                ip("198.51.100.7"),
                &proxies,
                Scheme::Http,
            );
            (
                h[&X_FORWARDED_PROTO].to_str().unwrap().to_owned(),
                h[&X_FORWARDED_HOST].to_str().unwrap().to_owned(),
                h.get_all(&X_FORWARDED_HOST).iter().count(),
            )
        };
        let kept = forwarded(&[
            (&X_FORWARDED_PROTO, "HTTPS"),
            (&X_FORWARDED_HOST, "app.example:8443"),
        ]);
        assert_eq!(kept, ("https".into(), "app.example:8443".into(), 1));
        for bad in [
            &[
                (&X_FORWARDED_PROTO, "javascript"),
                (&X_FORWARDED_HOST, "evil.test/x"),
            ][..],
            &[
                (&X_FORWARDED_PROTO, "https"),
                (&X_FORWARDED_PROTO, "http"),
                (&X_FORWARDED_HOST, "a"),
                (&X_FORWARDED_HOST, "b"),
            ],
            &[
                (&X_FORWARDED_PROTO, "https, http"),
                (&X_FORWARDED_HOST, "a, b"),
            ],
            &[(&X_FORWARDED_HOST, "user@evil.test")],
        ] {
            assert_eq!(
                forwarded(bad),
                ("http".into(), "gw.example".into(), 1),
                "{bad:?}"
            );
        }
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
