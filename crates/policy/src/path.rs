//! Request-path normalization, done once per request before routing.
//!
//! The normalized path is both what route matching sees and exactly what is forwarded
//! upstream, so a backend can never be shown a path that policy did not judge. The rules:
//!
//! - every character has one spelling, the one backends decode both to: percent-encoded
//!   *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) and the sub-delimiters no HTTP
//!   server treats as structure in a path (`: @ ! $ ' ( ) * ,`) are decoded, so `%2e%2e`
//!   is `..` and `%3A` is `:`; characters that may not stand raw in a path (non-ASCII,
//!   space, `" < > [ ] ^ \` { | }`) are encoded, so a raw `é` is `%C3%A9`; hex is upper
//!   case. Otherwise a pattern literal written one way (`/calls:bulk`) would miss the
//!   same path written the other (`/calls%3Abulk`), which nginx, Spring or Werkzeug
//!   serve alike. `; = & +` keep the spelling the client chose: servlet containers read
//!   a raw `;` as the start of parameters and `%3B` as a name's letter, forms read `+`
//!   as a space;
//! - duplicate slashes are merged and `.`/`..` segments resolved (RFC 3986 §5.2.4; `..`
//!   never climbs above `/`);
//! - an encoded `/` or `\`, any `\`, NUL or other control character, a broken escape,
//!   bytes that do not decode to UTF-8, a `..;`/`.;` segment (read as `..` by some
//!   servlet containers) and a segment of parameters only (`/;x/`, read as an empty
//!   segment by them) are refused outright.
//!
//! A segment's `;parameters` are otherwise kept: route patterns compare a literal segment
//! without them ([`crate::pattern`]), as servlet containers and Spring route.
//!
//! Case is significant: `/ADMIN` and `/admin` are different paths, as RFC 3986 says.

use thiserror::Error;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path contains an encoded '/' (%2F)")]
    EncodedSlash,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a NUL byte")]
    Nul,
    #[error("the path contains a control character")]
    ControlCharacter,
    #[error("the path contains an invalid percent-escape")]
    BadEscape,
    #[error("the path does not decode to valid UTF-8")]
    InvalidUtf8,
    #[error("the path contains a dot segment with parameters (`..;`)")]
    DotSegmentParameter,
    #[error("the path contains a segment of parameters only (`/;`)")]
    ParametersOnly,
}

/// Normalizes an origin-form path (without the query). See the module docs for the rules.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_already_normal(bytes) {
        return Ok(raw.to_owned());
    }
    // `decoded` holds every escape decoded, only to check that the path is UTF-8.
    let mut canonical = String::with_capacity(raw.len());
    let mut decoded = Vec::with_capacity(raw.len());
    let mut needs_utf8_check = false;
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes[i] == b'%';
        let value = if escaped {
            let value = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?))
                .ok_or(PathError::BadEscape)?;
            i += 3;
            value
        } else {
            i += 1;
            bytes[i - 1]
        };
        match value {
            b'/' if escaped => return Err(PathError::EncodedSlash),
            b'/' => canonical.push('/'),
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            v if v < 0x20 || v == 0x7f => return Err(PathError::ControlCharacter),
            v if is_plain(v) || (!escaped && keeps_spelling(v)) => canonical.push(char::from(v)),
            v => {
                // Raw bytes come from a `str`; escaped ones may not form UTF-8.
                needs_utf8_check |= escaped && v >= 0x80;
                canonical.push('%');
                canonical.push(char::from(HEX[usize::from(v >> 4)]));
                canonical.push(char::from(HEX[usize::from(v & 0xf)]));
            }
        }
        decoded.push(value);
    }
    if needs_utf8_check && std::str::from_utf8(&decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    remove_dot_segments(&canonical)
}

/// Most paths need no work: only characters written as they are meant (no escapes, no
/// characters to encode, no backslash or control bytes), no empty or dot segments, no
/// segment of parameters only. For them the full pass below would return the input
/// unchanged.
fn is_already_normal(bytes: &[u8]) -> bool {
    let plain = bytes
        .iter()
        .all(|&b| b == b'/' || is_plain(b) || keeps_spelling(b));
    plain
        && !bytes
            .windows(2)
            .any(|w| w == b"//" || w == b"/." || w == b"/;")
}

/// Characters written raw in a normal path, decoded when escaped: unreserved, and the
/// sub-delimiters that are never structure in an HTTP path.
fn is_plain(byte: u8) -> bool {
    is_unreserved(byte)
        || matches!(
            byte,
            b':' | b'@' | b'!' | b'$' | b'\'' | b'(' | b')' | b'*' | b','
        )
}

/// Characters whose raw and escaped spellings mean different things to some servers:
/// kept as the client wrote them.
fn keeps_spelling(byte: u8) -> bool {
    matches!(byte, b';' | b'=' | b'&' | b'+')
}

/// Merges duplicate slashes and resolves `.` and `..`; keeps a trailing slash.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s if s.starts_with("..;") || s.starts_with(".;") => {
                return Err(PathError::DotSegmentParameter)
            }
            s if s.starts_with(';') => return Err(PathError::ParametersOnly),
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_what_should_land_on_the_same_route() {
        let cases = [
            ("/", "/"),
            ("/admin", "/admin"),
            ("//admin", "/admin"),
            ("/admin/./", "/admin/"),
            ("/admin/.", "/admin/"),
            ("/pub/../admin", "/admin"),
            ("/pub/%2e%2e/admin", "/admin"),
            ("/pub/%2E%2E/admin", "/admin"),
            ("/pub/.%2e/admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/%61dmin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3ab", "/a:b"),
            ("/plivo/calls%3Abulk", "/plivo/calls:bulk"),
            ("/pub/%40internal", "/pub/@internal"),
            ("/a%21%24%27%28%29%2A%2C", "/a!$'()*,"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/na\u{ef}ve/x", "/na%C3%AFve/x"),
            (
                "/a{b}|c^d`e[f]\"<>",
                "/a%7Bb%7D%7Cc%5Ed%60e%5Bf%5D%22%3C%3E",
            ),
            ("/a%3Bb", "/a%3Bb"),
            ("/a;b=c&d+e", "/a;b=c&d+e"),
            ("/a%3b%3d%26%2b", "/a%3B%3D%26%2B"),
            ("/ADMIN", "/ADMIN"),
            ("/%252e%252e/admin", "/%252e%252e/admin"),
            ("/a;b/c", "/a;b/c"),
            ("/a///b//", "/a/b/"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refuses_ambiguous_paths() {
        let cases = [
            ("admin", PathError::NotAbsolute),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%5cb", PathError::Backslash),
            ("/a\\b", PathError::Backslash),
            ("/a%00b", PathError::Nul),
            ("/a%0ab", PathError::ControlCharacter),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("/a%ff", PathError::InvalidUtf8),
            ("/a%C3", PathError::InvalidUtf8),
            ("/pub/..;/admin", PathError::DotSegmentParameter),
            ("/pub/%2e%2e;x/admin", PathError::DotSegmentParameter),
            ("/;x/admin", PathError::ParametersOnly),
            ("/pub/;/admin", PathError::ParametersOnly),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_pass() {
        for raw in [
            "/",
            "/a",
            "/a/",
            "/a/b-c_d~e",
            "/a:b@c!$'()*,",
            "/a;b=c&d+e",
            "/a..b/c.",
            "/.a",
            "/a//b",
        ] {
            let full = remove_dot_segments(raw);
            assert_eq!(normalize(raw), full, "{raw}");
        }
    }

    /// Paths built from the pieces that have two spellings, in a fixed pseudo-random
    /// sequence (the fuzz target `path_and_route` checks the same without bounds).
    #[test]
    fn every_character_has_one_spelling() {
        const PIECES: &[&str] = &[
            "a", "/", ":", "%3A", "%3a", "@", "%40", "\u{e9}", "%C3%A9", "%c3%a9", ";", "%3B", "+",
            "%2B", "=", "%3D", "&", "%26", "%7E", "~", "%41", ".", "%2E", "{", "%7B", "|", "%7C",
            " ", "%20", "!", "%21", "*", "%2A", ",", "%2C", "'", "%27", "%25",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut raw = String::from("/");
            for _ in 0..6 {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                raw.push_str(PIECES[(seed >> 33) as usize % PIECES.len()]);
            }
            let Ok(judged) = normalize(&raw) else {
                continue;
            };
            assert_eq!(normalize(&judged).as_deref(), Ok(judged.as_str()), "{raw}");
            assert!(
                judged.is_ascii() && !judged.contains(['{', '|', ' ']),
                "{raw} -> {judged}"
            );
            for (at, _) in judged.match_indices('%') {
                let hex = &judged[at + 1..at + 3];
                assert_eq!(hex, hex.to_ascii_uppercase(), "{raw} -> {judged}");
                let byte = u8::from_str_radix(hex, 16).unwrap();
                assert!(!is_plain(byte), "{raw} -> {judged}");
            }
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for raw in [
            "/pub/%2e%2e/admin",
            "//a/./b/../c/",
            "/x%20y/%7e",
            "/caf%c3%a9",
        ] {
            let once = normalize(raw).unwrap();
            assert_eq!(normalize(&once).unwrap(), once);
        }
    }
}
