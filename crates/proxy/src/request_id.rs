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
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is seeded from the operating system's randomness.
    let prefix = *PREFIX.get_or_init(|| RandomState::new().build_hasher().finish());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:016x}-{n:08x}")
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
}
