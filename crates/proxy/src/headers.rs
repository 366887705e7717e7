//! Header helpers shared by the request and response directions, and the one reading
//! of a whole number that headers and queries share.

use http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers (RFC 9110 §7.6.1) and their common non-standard relatives.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether a backend may read `name` as another header: CGI, WSGI, PHP and many Java
/// containers turn `-` into `_` in the variable they expose (`HTTP_X_CLIENT_ID`), and
/// PHP turns `.` into `_` as well, so `X_Client_Id` and `X-Client.Id` both arrive as
/// `X-Client-Id`. (nginx drops both by default.)
pub fn folds_into_another(name: &HeaderName) -> bool {
    name.as_str().bytes().any(|b| b == b'_' || b == b'.')
}

/// End-to-end headers that say what the request is: `Connection` cannot name them away.
/// (`Connection: Host` left the backend without `Host`'s `X-Forwarded-Host`; the body's
/// length, type and coding were judged by the gateway and must arrive as judged.)
const NOT_HOP_BY_HOP: [HeaderName; 4] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
];

/// Removes every header named in `Connection` (but those of [`NOT_HOP_BY_HOP`]), then
/// the hop-by-hop headers themselves.
///
/// This runs before anything is injected, so a client cannot name an injected header in
/// `Connection` to have it stripped on the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !NOT_HOP_BY_HOP.contains(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A whole number written as HTTP writes one (`1*DIGIT`, RFC 9110 §5.6.1 and the
/// `Content-Length` grammar): digits only. Rust's `parse` also takes `+5`, which a
/// backend or a client reading the same text as a field name or a string would not.
pub fn whole_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_whole_number_is_digits_only() {
        for (text, read) in [
            ("0", Some(0)),
            ("01", Some(1)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("+1", None),
            ("-0", None),
            (" 1", None),
            ("1 ", None),
            ("", None),
            ("1e3", None),
            ("１", None),
        ] {
            assert_eq!(whole_number(text), read, "{text:?}");
        }
    }

    #[test]
    fn strips_connection_named_and_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret ,x-other"),
        );
        h.append("connection", HeaderValue::from_static("x-third"));
        for name in [
            "x-secret",
            "x-other",
            "x-third",
            "keep-alive",
            "te",
            "upgrade",
            "x-kept",
        ] {
            h.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn connection_cannot_name_away_what_the_request_is() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Host, content-length, Content-Type, content-encoding, x-a"),
        );
        for name in [
            "host",
            "content-length",
            "content-type",
            "content-encoding",
            "x-a",
        ] {
            h.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["content-encoding", "content-length", "content-type", "host"]
        );
    }
}
