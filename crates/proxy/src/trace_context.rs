//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the trace a request
//! belongs to, continued to the backend.
//!
//! A valid `traceparent` from the client is continued: the backend gets the same trace
//! id and sampled flag, with the gateway's own span id as the parent, and the client's
//! `tracestate` as it came (several header lines joined with commas). The sampled flag
//! is the client's only where `[tracing] follow_sampled` trusts it; otherwise it is
//! decided as a new trace's, so an anonymous client cannot force spans. A missing or
//! malformed `traceparent` starts a new trace, sampled for `[tracing] sample_new` of
//! them (none by default: the backend may decide), and its `tracestate` is dropped, as
//! the specification asks. A sampled request's span is exported by [`crate::otlp`].
//! Either way the trace id is in the access line, so a request can be followed from the
//! client's trace through the gateway into the backend's logs.
//!
//! New ids come from a per-thread SplitMix64 generator seeded once from the operating
//! system's randomness: unique enough for tracing, with no system call per request.
//! All of it costs about 2,900 instructions a request (callgrind,
//! `tests/bench/instructions.sh`: 70,749 → 73,670 anonymous), most of it the extra
//! header on the way upstream and the log field.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use http::{HeaderMap, HeaderName, HeaderValue};

// Names, not strings: a `&str` key is parsed and validated on every lookup.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The sampled flag, the only one version 00 defines.
const SAMPLED: u8 = 0x01;

/// The trace of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The gateway's own span: the parent the backend sees.
    pub span_id: [u8; 8],
    /// The client's span, from its `traceparent`.
    pub parent: Option<[u8; 8]>,
    pub flags: u8,
    /// The client's `tracestate`, kept only with a valid `traceparent`.
    pub state: Option<HeaderValue>,
}

impl TraceContext {
    /// Continues the client's trace, or starts one, sampled for `sample_new` (0 to 1)
    /// of new traces. A continued trace keeps the client's sampled flag when
    /// `follow_sampled`, else it is decided as a new one's.
    pub fn from_headers(
        headers: &HeaderMap,
        sample_new: f64,
        follow_sampled: bool,
    ) -> TraceContext {
        let mut parents = headers.get_all(&TRACEPARENT).iter();
        let parsed = match (parents.next(), parents.next()) {
            (Some(value), None) => parse(value.as_bytes()),
            _ => None,
        };
        match parsed {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id: span_id(),
                parent: Some(parent),
                flags: match follow_sampled {
                    true => flags,
                    false => flags & !SAMPLED | sample(sample_new),
                },
                state: joined(headers, &TRACESTATE),
            },
            None => TraceContext {
                trace_id: trace_id(),
                span_id: span_id(),
                parent: None,
                flags: sample(sample_new),
                state: None,
            },
        }
    }

    /// Whether the trace is sampled (its spans are recorded).
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The `traceparent` the backend gets.
    pub fn traceparent(&self) -> HeaderValue {
        let mut text = [b'-'; 55];
        text[..2].copy_from_slice(b"00");
        hex_into(&mut text[3..35], &self.trace_id);
        hex_into(&mut text[36..52], &self.span_id);
        hex_into(&mut text[53..55], &[self.flags]);
        // Hex digits and dashes only: always a valid header value.
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The sampled flag for `share` (0 to 1) of the traces this gateway decides.
fn sample(share: f64) -> u8 {
    match share > 0.0 && (next() as f64) < share * u64::MAX as f64 {
        true => SAMPLED,
        false => 0,
    }
}

/// An id as lowercase hex (the access line's `trace_id`).
pub fn hex(id: &[u8]) -> String {
    let mut text = vec![0; 2 * id.len()];
    hex_into(&mut text, id);
    String::from_utf8(text).unwrap_or_default()
}

/// A `traceparent`'s trace id, parent span and flags (only the sampled bit is kept:
/// the gateway speaks version 00), or `None` when it is not valid.
fn parse(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let version = hex_byte(value.get(0..2)?)?;
    // Version 255 is invalid; 00 has exactly 55 characters; a later version may add
    // fields after a dash, and its first four are read as version 00's.
    let length_ok = match version {
        0xff => false,
        0x00 => value.len() == 55,
        _ => value.len() == 55 || (value.len() > 55 && value[55] == b'-'),
    };
    if !length_ok || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, byte) in trace_id.iter_mut().enumerate() {
        *byte = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent = [0u8; 8];
    for (i, byte) in parent.iter_mut().enumerate() {
        *byte = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&value[53..55])?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags & SAMPLED))
}

/// Two lowercase hex digits (the specification allows no uppercase).
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    match pair {
        [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
        _ => None,
    }
}

/// Writes `bytes` as lowercase hex into `out` (twice their length). A table, not
/// `fmt`: formatting byte by byte cost thousands of instructions a request.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// Every line of header `name`, joined with commas.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(first.clone());
    };
    let mut all = first.as_bytes().to_vec();
    for value in std::iter::once(second).chain(values) {
        all.push(b',');
        all.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&all).ok()
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish());
}

/// The next number of this thread's SplitMix64 sequence.
fn next() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn nonzero(mut draw: impl FnMut() -> u64) -> u64 {
    loop {
        let n = draw();
        if n != 0 {
            return n;
        }
    }
}

fn trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&nonzero(next).to_be_bytes());
    id[8..].copy_from_slice(&next().to_be_bytes());
    id
}

fn span_id() -> [u8; 8] {
    nonzero(next).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn context(lines: &[(&str, &str)]) -> TraceContext {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        TraceContext::from_headers(&headers, 0.0, true)
    }

    #[test]
    fn a_valid_traceparent_is_continued_under_the_gateways_own_span() {
        let t = context(&[
            ("traceparent", VALID),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ]);
        assert_eq!(hex(&t.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        assert_eq!(
            t.parent.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let parent = t.traceparent();
        let parent = parent.to_str().unwrap();
        assert!(parent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(parent.ends_with("-01"));
        assert_eq!(parent.len(), 55);
        assert_ne!(&parent[36..52], "00f067aa0ba902b7");
        assert_ne!(&parent[36..52], "0000000000000000");
        assert_eq!(t.state.unwrap(), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        // A later version's first four fields are read; unknown flags are dropped.
        let later = context(&[(
            "traceparent",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-comes-next",
        )]);
        assert_eq!(hex(&later.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(later.flags, 1);
    }

    #[test]
    fn anything_malformed_starts_a_new_trace_and_drops_the_state() {
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "",
        ] {
            let t = context(&[("traceparent", bad), ("tracestate", "a=1")]);
            assert_ne!(
                hex(&t.trace_id),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad:?}"
            );
            assert_eq!(t.state, None, "{bad:?}");
            assert_eq!(t.flags, 0);
        }
        // Two traceparent lines: which one is meant cannot be known.
        let two = context(&[("traceparent", VALID), ("traceparent", VALID)]);
        assert_ne!(hex(&two.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn new_traces_differ() {
        let a = context(&[]);
        let b = context(&[]);
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        assert_ne!(a.trace_id, [0; 16]);
        assert!(a.traceparent().to_str().unwrap().ends_with("-00"));
        assert_eq!(a.parent, None);
    }

    #[test]
    fn new_traces_are_sampled_at_the_configured_share_and_a_client_s_flag_is_followed() {
        let none = HeaderMap::new();
        let sampled = |share: f64| {
            (0..2000)
                .filter(|_| TraceContext::from_headers(&none, share, true).sampled())
                .count()
        };
        assert_eq!(sampled(0.0), 0);
        assert_eq!(sampled(1.0), 2000);
        let quarter = sampled(0.25);
        assert!((400..600).contains(&quarter), "{quarter}");
        // The client decided: sampling new traces never overrides it.
        let mut unsampled = HeaderMap::new();
        unsampled.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        assert!(!TraceContext::from_headers(&unsampled, 1.0, true).sampled());
    }

    #[test]
    fn a_client_s_flag_not_followed_is_decided_like_a_new_trace_s() {
        let mut sampled = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        sampled.insert(TRACEPARENT, HeaderValue::from_static(parent));
        let followed = TraceContext::from_headers(&sampled, 0.0, true);
        assert!(followed.sampled());
        let decided = TraceContext::from_headers(&sampled, 0.0, false);
        assert!(!decided.sampled());
        // The trace itself is still continued: same trace, the client's span as parent.
        assert_eq!(decided.trace_id, followed.trace_id);
        assert_eq!(decided.parent, followed.parent);
        assert!(decided.traceparent().to_str().unwrap().ends_with("-00"));
        let mut unsampled = HeaderMap::new();
        unsampled.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        assert!(TraceContext::from_headers(&unsampled, 1.0, false).sampled());
    }
}
