//! Request ids: a well-formed `X-Request-Id` from the client is kept, otherwise one is made.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderMap;

pub const HEADER: &str = "x-request-id";

/// The id for this request: the client's, if it is 1–128 characters of `[A-Za-z0-9._:-]`
/// (anything else could smuggle text into logs), or a fresh one.
pub fn from_headers(headers: &HeaderMap) -> String {
    headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable(v))
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
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_static("abc-123:x.y_z"));
        assert_eq!(from_headers(&h), "abc-123:x.y_z");
        h.insert(HEADER, HeaderValue::from_static("bad id\" injected"));
        let made = from_headers(&h);
        assert_ne!(made, "bad id\" injected");
        assert!(is_acceptable(&made));
        assert_ne!(generate(), generate());
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
