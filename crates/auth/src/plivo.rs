//! Plivo's V3 callback signatures (`X-Plivo-Signature-V3`, `X-Plivo-Signature-Ma-V3`,
//! `X-Plivo-Signature-V3-Nonce`), computed the way Plivo's SDKs compute them.
//!
//! The signed text is the callback URL rebuilt from scheme, host and path, then:
//! - POST: `?` + the URL's query pairs sorted as `k=v&k=v`, then `.` + the body's form
//!   parameters sorted and concatenated as `kv kv` with no separators (without a query,
//!   just `?` + those parameters);
//! - GET: `?` + the query and form parameters merged, sorted, as `k=v&k=v`;
//!
//! followed by `.` and the nonce. The MAC is HMAC-SHA256 keyed with the account's auth
//! token, base64-encoded; the header may carry several signatures separated by commas.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret;

/// The text Plivo signs, before the nonce.
pub fn signed_url(url: &str, method: &str, params: &[(String, String)]) -> String {
    let (without_fragment, _) = url.split_once('#').unwrap_or((url, ""));
    let (base, raw_query) = without_fragment
        .split_once('?')
        .unwrap_or((without_fragment, ""));
    let params: BTreeMap<&str, &str> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut out = base.to_owned();
    if !params.is_empty() || !raw_query.is_empty() {
        out.push('?');
    }
    let query = query_map(raw_query);
    let joined = |map: &BTreeMap<&str, &str>| {
        map.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let concatenated = |map: &BTreeMap<&str, &str>| {
        map.iter()
            .map(|(k, v)| format!("{k}{v}"))
            .collect::<String>()
    };
    if method.eq_ignore_ascii_case("GET") {
        let mut merged = query;
        merged.extend(params.iter().map(|(k, v)| (*k, *v)));
        out.push_str(&joined(&merged));
    } else if raw_query.is_empty() {
        out.push_str(&concatenated(&params));
    } else {
        out.push_str(&joined(&query));
        out.push('.');
        out.push_str(&concatenated(&params));
        while out.ends_with('.') {
            out.pop();
        }
    }
    out
}

/// `k=v` pairs of a raw query, as the SDKs read them: undecoded, only pairs with exactly
/// one `=`, later keys (in sorted order) winning.
fn query_map(raw: &str) -> BTreeMap<&str, &str> {
    let mut pairs: Vec<&str> = raw.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs
        .into_iter()
        .filter_map(|pair| {
            let mut parts = pair.split('=');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(k), Some(v), None) => Some((k, v)),
                _ => None,
            }
        })
        .collect()
}

/// The base64 V3 signature of a callback.
pub fn signature(
    auth_token: &[u8],
    url: &str,
    method: &str,
    params: &[(String, String)],
    nonce: &str,
) -> String {
    let text = format!("{}.{}", signed_url(url, method, params), nonce);
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(auth_token) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(text.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether any of the comma-separated signatures in `header` was made with any of the
/// `auth_tokens` (several, for rotation). Every comparison runs in constant time.
pub fn verify(
    auth_tokens: &[Vec<u8>],
    url: &str,
    method: &str,
    params: &[(String, String)],
    nonce: &str,
    header: &str,
) -> bool {
    let mut ok = false;
    for token in auth_tokens {
        let expected = signature(token, url, method, params, nonce);
        for presented in header.split(',') {
            ok |= secret::equal(presented.trim().as_bytes(), expected.as_bytes());
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published vectors of plivo-go's utils_test.go.
    const TOKEN: &[u8] = b"Y2Q2ZDgxZmY5YWRiOTI5YmQ1Njg0MTAxZWIyOTc4";
    const NONCE: &str = "31627761595286130198";

    fn params() -> Vec<(String, String)> {
        [
            ("Direction", "outbound"),
            ("From", "19792014278"),
            ("ALegUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
            ("CallStatus", "in-progress"),
            ("BillRate", "0.002"),
            ("ParentAuthID", "MANWVLYTK4ZWU1YTY4QA"),
            (
                "To",
                "sip:PlivoSignature382029104058171078704104@phone-qa.voice.plivodev.com",
            ),
            ("ALegRequestUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
            ("CallUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
            ("RequestUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
            (
                "SIP-H-To",
                "<sip:PlivoSignature382029104058171078704104@52.9.11.55;transport=udp>;tag=1",
            ),
            ("SessionStart", "2020-04-08 11:34:33.238707"),
            ("Event", "StartApp"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn post_with_query_matches_plivos_vector() {
        let url = "https://plivobin.non-prod.plivops.com/api/v1/validate_signature03.xml/?a=b&c=d";
        assert_eq!(
            signature(TOKEN, url, "POST", &params(), NONCE),
            "k7Pusd4OxCIjR5IfA9iedDNu/h/gbdYqdzG/MiYtd1c="
        );
    }

    #[test]
    fn post_without_query_matches_plivos_vector() {
        let url = "https://plivobin.non-prod.plivops.com/api/v1/validate_signature03.xml";
        assert_eq!(
            signature(TOKEN, url, "POST", &params(), NONCE),
            "iAjE5QqI37mbkYe4w3jTMudqEzbDufdqi7sYwTu64e0="
        );
    }

    #[test]
    fn get_signs_sorted_pairs() {
        let url = "https://example.test/cb?b=2&a=1";
        assert_eq!(
            signed_url(url, "GET", &[]),
            "https://example.test/cb?a=1&b=2"
        );
        let merged = signed_url(url, "GET", &[("c".into(), "3".into())]);
        assert_eq!(merged, "https://example.test/cb?a=1&b=2&c=3");
    }

    #[test]
    fn verify_accepts_any_listed_signature_and_any_token() {
        let url = "https://plivobin.non-prod.plivops.com/api/v1/validate_signature03.xml";
        let good = "iAjE5QqI37mbkYe4w3jTMudqEzbDufdqi7sYwTu64e0=";
        let tokens = vec![b"old-token".to_vec(), TOKEN.to_vec()];
        assert!(verify(
            &tokens,
            url,
            "POST",
            &params(),
            NONCE,
            &format!("bogus=, {good}")
        ));
        assert!(!verify(
            &tokens,
            url,
            "POST",
            &params(),
            "other-nonce",
            good
        ));
        assert!(!verify(
            &[b"old-token".to_vec()],
            url,
            "POST",
            &params(),
            NONCE,
            good
        ));
    }
}
