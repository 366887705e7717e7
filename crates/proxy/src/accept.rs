//! Stage 1 — accept: size limits and framing checks, before anything reads the request.
//!
//! hyper has already parsed the request head. What it lets through but a careful gateway
//! must not: oversized header blocks and targets (answered 431/414 with problem+json;
//! hyper's own hard limits sit above ours), a missing or repeated `Host`, an
//! absolute-form target that names another host or another scheme than the
//! connection's, any `Transfer-Encoding` but a single `chunked`, more than one
//! `Content-Type`, `*` outside OPTIONS, CONNECT, a method with lowercase letters, a
//! body on GET, HEAD or OPTIONS, and (when the operator says so) header names with `_`
//! or `.`. Each of these is a request-smuggling or routing-confusion shape.
//!
//! The checks follow the connection: an HTTP/2 request names its host in `:authority`
//! (the target's authority) and may carry no `Host`; an absolute target's scheme must
//! be the connection's (`https` on TLS). (`Transfer-Encoding` beside `Content-Length` is settled by
//! hyper as RFC 9112 §6.3 says: chunked wins, `Content-Length` is removed before we see
//! the request, and the connection is closed after the response.)

use http::header::{HeaderValue, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use http::{Method, Request, Uri, Version};
use tollgate_policy::snapshot::{Server, Underscores};

use crate::errors::{FramingError, GatewayError, RequestError};
use crate::exchange::Scheme;

/// The most header fields a request may have: hyper's HTTP/1.1 limit.
const MAX_HEADER_FIELDS: usize = 100;

/// Whether `method` has no lowercase letters. Methods are case-sensitive (RFC 9110
/// §9.1) and policies name them in upper case, so `post` matches no method list and no
/// cost; but Django, PHP-FPM setups and others upper-case the method, and would run it
/// as the POST the gateway never judged or charged.
pub fn method_is_canonical(method: &Method) -> bool {
    !method.as_str().bytes().any(|b| b.is_ascii_lowercase())
}

/// Refuses requests whose size or framing is not acceptable, for a request that came
/// over a connection of `scheme`.
pub fn check<B>(request: &Request<B>, limits: &Server, scheme: Scheme) -> Result<(), GatewayError> {
    let uri = request.uri();
    if target_len(uri) > limits.max_uri_bytes {
        return Err(RequestError::UriTooLong {
            limit: limits.max_uri_bytes,
        }
        .into());
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    // hyper refuses more than 100 fields in HTTP/1.1 (a bare 431); HTTP/2 has no such
    // count, and the backend, spoken to in HTTP/1.1, may well refuse them: the same
    // bound for both. HTTP/2 sends each cookie as a field of its own; they reach the
    // backend joined, as one.
    let cookies = request
        .headers()
        .get_all(http::header::COOKIE)
        .iter()
        .count();
    if request.headers().len() - cookies.saturating_sub(1) > MAX_HEADER_FIELDS {
        return Err(RequestError::TooManyHeaders {
            limit: MAX_HEADER_FIELDS,
        }
        .into());
    }
    if header_bytes > limits.max_header_bytes {
        return Err(RequestError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        }
        .into());
    }
    if request.method() == Method::CONNECT {
        return Err(FramingError::Connect.into());
    }
    if !method_is_canonical(request.method()) {
        return Err(FramingError::LowercaseMethod.into());
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(FramingError::RepeatedHost.into());
    }
    // HTTP/2 carries the host in `:authority`; HTTP/1.1 must send `Host`.
    if host.is_none() && !(request.version() == Version::HTTP_2 && uri.authority().is_some()) {
        return Err(FramingError::MissingHost.into());
    }
    // An HTTP/2 request may name its host in `:authority` alone, which becomes `Host`
    // (and `X-Forwarded-Host`) later: judged the same.
    let named = host.map(HeaderValue::as_bytes).or_else(|| {
        (request.version() == Version::HTTP_2)
            .then(|| uri.authority().map(|a| a.as_str().as_bytes()))
            .flatten()
    });
    if named.is_some_and(|h| !valid_host(h)) {
        return Err(FramingError::InvalidHost.into());
    }
    if let Some(authority) = uri.authority() {
        if uri.scheme_str() != Some(scheme.as_str()) {
            return Err(FramingError::UnsupportedScheme.into());
        }
        let same = host.is_none_or(|host| {
            host.to_str()
                .is_ok_and(|h| same_authority(h, authority.as_str(), scheme))
        });
        if !same {
            return Err(FramingError::HostMismatch.into());
        }
    }
    if uri.path() == "*" && request.method() != Method::OPTIONS {
        return Err(FramingError::AsteriskTarget.into());
    }
    // Servers disagree on which of two Content-Types counts; the gateway decides what to
    // inspect by it, so an ambiguous one is refused.
    if request.headers().get_all(CONTENT_TYPE).iter().count() > 1 {
        return Err(FramingError::RepeatedContentType.into());
    }
    if limits.headers_with_underscores == Underscores::Refuse
        && request
            .headers()
            .keys()
            .any(crate::headers::folds_into_another)
    {
        return Err(RequestError::HeaderName.into());
    }
    let mut encodings = request.headers().get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = encodings.next() {
        let chunked = first
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !chunked || encodings.next().is_some() {
            return Err(FramingError::UnsupportedTransferEncoding.into());
        }
    }
    Ok(())
}

/// Refuses a body on GET, HEAD and OPTIONS. Their content has no defined meaning (RFC
/// 9110 §9.3), and many handlers answer them without reading it (static files, health
/// checks, servers that assume no body): on a pooled upstream connection the body would
/// then be read as the next request, which no route judged and whose answer goes to
/// another caller (the "CL.0" desync). Over HTTP/2 the body is DATA frames; the backend
/// hears HTTP/1.1 either way. A body that turns out empty (chunked `0`, an empty DATA
/// frame, as HTTP/2 clients send) is no body: it is read to its end here, within
/// `timeout`, and the request goes on without one.
pub async fn refuse_body_on_bodiless_method(
    request: &mut Request<hyper::body::Incoming>,
    timeout: std::time::Duration,
) -> Result<(), GatewayError> {
    use http_body::Body as _;
    use http_body_util::BodyExt as _;
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => return Ok(()),
    };
    let refused = || GatewayError::from(FramingError::BodyOnBodilessMethod(method));
    if request.body().is_end_stream() {
        return Ok(());
    }
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > 0) {
        return Err(refused());
    }
    let body = request.body_mut();
    loop {
        match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => return Err(RequestError::BodyTooSlow.into()),
            Ok(None) => return Ok(()),
            Ok(Some(Err(_))) => return Err(RequestError::BodyInvalid.into()),
            Ok(Some(Ok(frame))) => {
                if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                    return Err(refused());
                }
            }
        }
    }
}

/// An HTTP/2 request names its host in `:authority` and may send no `Host`; the stages
/// after this one, and the backend (always spoken to in HTTP/1.1), read it as `Host`.
pub fn host_from_authority<B>(request: &mut Request<B>) {
    if request.version() != Version::HTTP_2 || request.headers().contains_key(HOST) {
        return;
    }
    let host = request
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        request.headers_mut().insert(HOST, host);
    }
}

/// Whether this is `OPTIONS *`, a question about the server itself.
pub fn is_server_options<B>(request: &Request<B>) -> bool {
    request.method() == Method::OPTIONS && request.uri().path() == "*"
}

fn target_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path_and_query = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    scheme + authority + path_and_query
}

/// A `Host` a backend reads as one host (RFC 9112 §3.2: anything else is 400): a DNS
/// name or IPv4 address, or an IPv6 literal in brackets, then an optional port. What
/// RFC 3986 also allows in a name (`%`, `,`, `;`, `!`…), and userinfo (`user@host`), no
/// client sends; a backend building links or checking origins from `X-Forwarded-Host`
/// would read them in its own way.
pub(crate) fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.strip_prefix(b"[") {
        Some(rest) => {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = &rest[..end];
            if literal.is_empty()
                || !literal
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            {
                return false;
            }
            (None, &rest[end + 1..])
        }
        None => {
            let end = host.iter().position(|&b| b == b':').unwrap_or(host.len());
            (Some(&host[..end]), &host[end..])
        }
    };
    let name_ok = name.is_none_or(|n| {
        !n.is_empty()
            && n.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    });
    let port_ok = match port.strip_prefix(b":") {
        None => port.is_empty(),
        Some(digits) => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<u32>().ok())
                    .is_some_and(|p| p <= 65_535)
        }
    };
    name_ok && port_ok
}

/// `Host` and an absolute-form authority name the same origin (case-insensitive; the
/// scheme's default port written out equals none).
fn same_authority(host: &str, authority: &str, scheme: Scheme) -> bool {
    let default_port = match scheme {
        Scheme::Http => ":80",
        Scheme::Https => ":443",
    };
    let strip = |s: &str| {
        s.strip_suffix(default_port)
            .unwrap_or(s)
            .to_ascii_lowercase()
    };
    strip(host) == strip(authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_host_is_a_name_or_address_with_an_optional_port() {
        for good in [
            "gw.test",
            "gw.test:8080",
            "127.0.0.1",
            "127.0.0.1:65535",
            "[::1]",
            "[::1]:8080",
            "[::ffff:127.0.0.1]",
            "my_host-1.internal",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "a b",
            "user@evil",
            "a,b",
            "[::1",
            "a/b?c#d",
            "evil.com:99999",
            "gw:",
            ":80",
            "gw:80:80",
            "[]",
            "[::1]x",
            "[::1]:",
            "gw:+80",
            "gw%2ftest",
            "gw;x",
            "gw\tx",
            "évil",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    fn limits() -> Server {
        Server {
            listen: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 1024,
            max_uri_bytes: 64,
            shutdown_grace: Duration::from_secs(1),
            drain_delay: Duration::ZERO,
            workers: 1,
            trusted_proxies: Vec::new(),
            headers_with_underscores: Underscores::Refuse,
            strip_request_headers: Vec::new(),
            bodies: tollgate_policy::snapshot::BodyLimits {
                timeout: Duration::from_secs(1),
                min_rate: 1,
                max_buffered: 1,
            },
            max_connections: 1,
            h2c: false,
            proxy_protocol_from: Vec::new(),
            tls: None,
        }
    }

    fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(target);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn accepts_a_plain_request() {
        let r = request("GET", "/a?b=c", &[("host", "gw")]);
        assert!(check(&r, &limits(), Scheme::Http).is_ok());
        // Extension methods in upper case pass (WebDAV, UPnP).
        for method in ["PROPFIND", "M-SEARCH", "VERSION-CONTROL"] {
            let r = request(method, "/a", &[("host", "gw")]);
            assert!(check(&r, &limits(), Scheme::Http).is_ok(), "{method}");
        }
        let r = request("GET", "http://GW:80/a", &[("host", "gw")]);
        assert!(check(&r, &limits(), Scheme::Http).is_ok());
        let r = request(
            "POST",
            "/a",
            &[("host", "gw"), ("transfer-encoding", "Chunked")],
        );
        assert!(check(&r, &limits(), Scheme::Http).is_ok());
    }

    #[test]
    fn the_checks_follow_the_connection() {
        // HTTP/2: the host is in `:authority`; no Host header needed.
        let mut r = request("GET", "https://gw/a", &[]);
        *r.version_mut() = Version::HTTP_2;
        assert!(check(&r, &limits(), Scheme::Https).is_ok());
        // ...but not an https target on a plain connection, nor the reverse.
        assert!(matches!(
            check(&r, &limits(), Scheme::Http),
            Err(GatewayError::Request(RequestError::Framing(
                FramingError::UnsupportedScheme
            )))
        ));
        let r = request("GET", "https://gw:443/a", &[("host", "GW")]);
        assert!(check(&r, &limits(), Scheme::Https).is_ok());
        let mut r = request("GET", "https://gw/a", &[("host", "other")]);
        *r.version_mut() = Version::HTTP_2;
        assert!(matches!(
            check(&r, &limits(), Scheme::Https),
            Err(GatewayError::Request(RequestError::Framing(
                FramingError::HostMismatch
            )))
        ));
        // HTTP/1.1 still needs Host.
        let r = request("GET", "https://gw/a", &[]);
        assert!(check(&r, &limits(), Scheme::Https).is_err());
    }

    #[test]
    fn an_http2_authority_becomes_the_host_the_later_stages_read() {
        let mut r = request("GET", "https://gw.example:8443/a", &[]);
        *r.version_mut() = Version::HTTP_2;
        host_from_authority(&mut r);
        assert_eq!(r.headers()[HOST], "gw.example:8443");
        // A Host the client sent (and `check` found equal) stays; HTTP/1.1 is untouched.
        let mut r = request("GET", "https://gw/a", &[("host", "GW")]);
        *r.version_mut() = Version::HTTP_2;
        host_from_authority(&mut r);
        assert_eq!(r.headers()[HOST], "GW");
        let mut r = request("GET", "https://gw/a", &[]);
        host_from_authority(&mut r);
        assert!(!r.headers().contains_key(HOST));
    }

    #[test]
    fn refuses_each_framing_shape() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], FramingError);
        let cases: &[Case] = &[
            ("GET", "/", &[], FramingError::MissingHost),
            (
                "GET",
                "/",
                &[("host", "a"), ("host", "a")],
                FramingError::RepeatedHost,
            ),
            (
                "GET",
                "http://evil/",
                &[("host", "gw")],
                FramingError::HostMismatch,
            ),
            (
                "GET",
                "ftp://gw/",
                &[("host", "gw")],
                FramingError::UnsupportedScheme,
            ),
            ("GET", "*", &[("host", "gw")], FramingError::AsteriskTarget),
            (
                "post",
                "/",
                &[("host", "gw")],
                FramingError::LowercaseMethod,
            ),
            ("Get", "/", &[("host", "gw")], FramingError::LowercaseMethod),
            (
                "m-search",
                "/",
                &[("host", "gw")],
                FramingError::LowercaseMethod,
            ),
            (
                "CONNECT",
                "gw:443",
                &[("host", "gw")],
                FramingError::Connect,
            ),
            (
                "POST",
                "/",
                &[("host", "gw"), ("transfer-encoding", "gzip, chunked")],
                FramingError::UnsupportedTransferEncoding,
            ),
            (
                "POST",
                "/",
                &[
                    ("host", "gw"),
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                FramingError::UnsupportedTransferEncoding,
            ),
        ];
        for (method, target, headers, want) in cases {
            match check(&request(method, target, headers), &limits(), Scheme::Http) {
                Err(GatewayError::Request(RequestError::Framing(got))) => {
                    assert_eq!(got, *want, "{method} {target}")
                }
                other => panic!("{method} {target}: {other:?}"),
            }
        }
    }

    #[test]
    fn underscored_header_names_are_refused_in_refuse_mode() {
        for name in ["x_client_id", "x-client.id", "x.http.method"] {
            let r = request("GET", "/", &[("host", "gw"), (name, "1002")]);
            assert!(
                matches!(
                    check(&r, &limits(), Scheme::Http),
                    Err(GatewayError::Request(RequestError::HeaderName))
                ),
                "{name}"
            );
            let mut dropping = limits();
            dropping.headers_with_underscores = Underscores::Drop;
            assert!(check(&r, &dropping, Scheme::Http).is_ok());
        }
    }

    #[test]
    fn enforces_size_limits() {
        let long = format!("/{}", "a".repeat(64));
        assert!(matches!(
            check(
                &request("GET", &long, &[("host", "gw")]),
                &limits(),
                Scheme::Http
            ),
            Err(GatewayError::Request(RequestError::UriTooLong {
                limit: 64
            }))
        ));
        let big = "v".repeat(1100);
        assert!(matches!(
            check(
                &request("GET", "/", &[("host", "gw"), ("x-big", &big)]),
                &limits(),
                Scheme::Http
            ),
            Err(GatewayError::Request(RequestError::HeadersTooLarge {
                limit: 1024
            }))
        ));
    }
}
