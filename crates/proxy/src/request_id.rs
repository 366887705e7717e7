//! Request ids: a well-formed `X-Request-Id` from the client is kept, otherwise one is made.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderMap;
use tollgate_policy::snapshot::RedactValues;

pub const HEADER: &str = "x-request-id";

/// The id for this request: the client's, if it is 1–128 characters of `[A-Za-z0-9._:-]`
/// (anything else could smuggle text into logs) and no credential (a JWT, a refresh
/// token, or one of `secrets`, the values the gateway keeps out of logs: an id is
/// logged, echoed and sent upstream as it is), or a fresh one.
pub fn from_headers(headers: &HeaderMap, secrets: &RedactValues) -> String {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable(v))
        .filter(|v| !crate::access_log::looks_like_credential(v) && !secrets.found_in(v.as_bytes()))
        .map_or_else(generate, str::to_owned)
}

fn is_acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A process-unique id: a random 64-bit prefix drawn once per process (so ids from
/// several instances do not collide) and a counter. Request ids and reservation ids
/// (`meter`) both come from here: neither costs a system call per request.
pub fn generate() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is seeded from the operating system's randomness.
    let prefix =
        PREFIX.get_or_init(|| format!("{:016x}-", RandomState::new().build_hasher().finish()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    push_hex(&mut id, n);
    id
}

/// `n` in lowercase hex, at least 8 digits: what `{n:08x}` writes, without the
/// formatting machinery (a tenth of the instructions, on every request).
fn push_hex(out: &mut String, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let significant = (64 - n.leading_zeros()).div_ceil(4);
    for i in (0..significant.max(8)).rev() {
        out.push(char::from(DIGITS[((n >> (4 * i)) & 0xf) as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn keeps_a_good_client_id_and_replaces_a_bad_one() {
        let none = RedactValues::default();
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("abc-123:x.y_z"));
        assert_eq!(from_headers(&h, &none), "abc-123:x.y_z");
        h.insert(HEADER, HeaderValue::from_static("bad id\" injected"));
        let made = from_headers(&h, &none);
        assert_ne!(made, "bad id\" injected");
        assert!(is_acceptable(&made));
        assert_ne!(generate(), generate());
    }

    /// An id is logged, echoed and forwarded as sent: a credential pasted into it (a
    /// JWT, a refresh token, a secret the gateway holds) is replaced, not kept.
    #[test]
    fn a_credential_is_no_request_id() {
        let secrets = RedactValues::new([b"demo-legacy-key-1002".to_vec()]);
        for sent in [
            "eyJhbGciOiJIUzI1NiJ9.eyJjbGllbnRJZCI6IjEwMDEifQ.c2lnbmF0dXJl",
            "AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
            "demo-legacy-key-1002",
            "ticket-4711:demo-legacy-key-1002",
        ] {
            let mut h = HeaderMap::new();
            h.insert(HEADER, HeaderValue::from_str(sent).unwrap());
            let id = from_headers(&h, &secrets);
            assert_ne!(id, sent);
            assert!(is_acceptable(&id));
        }
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("ticket-4711"));
        assert_eq!(from_headers(&h, &secrets), "ticket-4711");
    }

    #[test]
    fn counters_are_written_as_at_least_eight_hex_digits() {
        for n in [
            0,
            1,
            0xabc,
            0xffff_ffff,
            0x1_0000_0000,
            0x0123_4567_89ab_cdef,
            u64::MAX,
        ] {
            let mut out = String::new();
            push_hex(&mut out, n);
            assert_eq!(out, format!("{n:08x}"));
        }
        let id = generate();
        let (prefix, counter) = id.split_once('-').unwrap();
        assert_eq!(prefix.len(), 16, "{id}");
        assert!(counter.len() >= 8 && is_acceptable(&id), "{id}");
    }
}
