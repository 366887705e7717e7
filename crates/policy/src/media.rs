//! Media types (`Content-Type` values), parsed strictly: the gateway decides by them
//! which bodies it inspects, so a value that two parsers could read differently is
//! refused rather than guessed at.
//!
//! Grammar (RFC 9110 §8.3.1): `type "/" subtype *( OWS ";" OWS name "=" value )`, where
//! type, subtype and names are tokens and a value is a token or a quoted string. Names
//! and the type are compared case-insensitively. Anything else — non-ASCII bytes, empty
//! parts, a parameter without `=`, an unterminated quote — is an error.

use std::fmt;

use thiserror::Error;

/// Words by which some backends pick a parser that yields fields (a client id among
/// them) from a search of the whole type: formidable (Node) matches `/json/i`,
/// `/urlencoded/i` and `/multipart/i` anywhere in `Content-Type`. A type declared opaque
/// (streamed unread) must name none of them; `check` and the gateway judge it by this one
/// list. (`octet-stream`, formidable's fourth, yields one file and no fields: an opaque
/// `application/octet-stream` is what uploads send.)
pub const FIELD_PARSER_WORDS: &[&str] = &["json", "urlencoded", "multipart", "form-data"];

/// Why a media type was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MediaError {
    #[error("the media type is not printable ASCII")]
    NotAscii,
    #[error("the media type is not `type/subtype`")]
    Malformed,
    #[error("a media type parameter is malformed")]
    BadParameter,
    #[error("the media type names the parameter `{0}` more than once")]
    Repeated(&'static str),
}

/// A parsed media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    /// `type/subtype`, lower case.
    essence: String,
    /// Parameters in order; names lower case, values unquoted.
    params: Vec<(String, String)>,
}

impl MediaType {
    /// Parses a header value's bytes.
    pub fn parse(value: &[u8]) -> Result<MediaType, MediaError> {
        if !value
            .iter()
            .all(|b| (0x20..0x7f).contains(b) || *b == b'\t')
        {
            return Err(MediaError::NotAscii);
        }
        // Checked: ASCII only.
        let text = std::str::from_utf8(value).map_err(|_| MediaError::NotAscii)?;
        let mut rest = text.trim_matches([' ', '\t']);
        let end = rest.find(';').unwrap_or(rest.len());
        let (essence, after) = rest.split_at(end);
        let essence = essence.trim_end_matches([' ', '\t']);
        let (kind, subtype) = essence.split_once('/').ok_or(MediaError::Malformed)?;
        if !is_token(kind) || !is_token(subtype) {
            return Err(MediaError::Malformed);
        }
        rest = after;
        let mut params = Vec::new();
        while let Some(after_semicolon) = rest.strip_prefix(';') {
            rest = after_semicolon.trim_start_matches([' ', '\t']);
            if rest.is_empty() || rest.starts_with(';') {
                continue;
            }
            let eq = rest.find('=').ok_or(MediaError::BadParameter)?;
            let name = &rest[..eq];
            if !is_token(name) {
                return Err(MediaError::BadParameter);
            }
            rest = &rest[eq + 1..];
            let value = if let Some(quoted) = rest.strip_prefix('"') {
                let (value, used) = unquote(quoted).ok_or(MediaError::BadParameter)?;
                rest = &quoted[used..];
                value
            } else {
                let end = rest.find([';', ' ', '\t']).unwrap_or(rest.len());
                let value = &rest[..end];
                if !is_token(value) {
                    return Err(MediaError::BadParameter);
                }
                rest = &rest[end..];
                value.to_owned()
            };
            rest = rest.trim_start_matches([' ', '\t']);
            if !rest.is_empty() && !rest.starts_with(';') {
                return Err(MediaError::BadParameter);
            }
            params.push((name.to_ascii_lowercase(), value));
        }
        Ok(MediaType {
            essence: essence.to_ascii_lowercase(),
            params,
        })
    }

    /// `type/subtype`, lower case.
    pub fn essence(&self) -> &str {
        &self.essence
    }

    /// The value of parameter `name` (lower case), refusing one given twice: parsers
    /// disagree on which copy counts.
    pub fn param(&self, name: &'static str) -> Result<Option<&str>, MediaError> {
        let mut found = self.params.iter().filter(|(n, _)| n == name);
        let first = found.next().map(|(_, v)| v.as_str());
        if found.next().is_some() {
            return Err(MediaError::Repeated(name));
        }
        Ok(first)
    }

    /// The parameters' names (lower case), in order, repeats included.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _)| n.as_str())
    }

    /// Whether the `charset` parameter is absent or UTF-8 (or its ASCII subset).
    pub fn is_utf8(&self) -> Result<bool, MediaError> {
        Ok(self.param("charset")?.is_none_or(|c| {
            c.eq_ignore_ascii_case("utf-8")
                || c.eq_ignore_ascii_case("utf8")
                || c.eq_ignore_ascii_case("us-ascii")
        }))
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.essence)
    }
}

/// A media range written in a policy: `type/subtype` or `type/*`, lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRange(String);

impl MediaRange {
    /// Parses `type/subtype` or `type/*` (no parameters).
    pub fn parse(text: &str) -> Result<MediaRange, MediaError> {
        let (kind, subtype) = text.split_once('/').ok_or(MediaError::Malformed)?;
        if !is_token(kind) || kind == "*" || !(subtype == "*" || is_token(subtype)) {
            return Err(MediaError::Malformed);
        }
        Ok(MediaRange(text.to_ascii_lowercase()))
    }

    pub fn matches(&self, media: &MediaType) -> bool {
        match self.0.strip_suffix("/*") {
            Some(kind) => media
                .essence
                .strip_prefix(kind)
                .is_some_and(|rest| rest.starts_with('/')),
            None => self.0 == media.essence,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MediaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The value of a quoted string that `text` starts just after the opening quote of, and
/// the bytes used (the closing quote included).
fn unquote(text: &str) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, i + 1)),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn essence(v: &str) -> Result<String, MediaError> {
        MediaType::parse(v.as_bytes()).map(|m| m.essence().to_owned())
    }

    #[test]
    fn parses_what_clients_send() {
        assert_eq!(essence("application/json").unwrap(), "application/json");
        assert_eq!(
            essence(" Application/JSON ; charset=UTF-8").unwrap(),
            "application/json"
        );
        let m = MediaType::parse(b"multipart/form-data; boundary=\"a b\\\"c\"; x=1").unwrap();
        assert_eq!(m.param("boundary"), Ok(Some("a b\"c")));
        assert_eq!(m.param("x"), Ok(Some("1")));
        assert_eq!(m.param("charset"), Ok(None));
        assert!(MediaType::parse(b"text/csv;").is_ok());
    }

    #[test]
    fn refuses_what_parsers_could_read_differently() {
        for bad in [
            &b"application/json; charset=\xff"[..],
            b"application/json\x00",
            b"application",
            b"/json",
            b"application/",
            b"application/json; charset",
            b"application/json; charset=\"utf-8",
            b"application/json; charset=utf-8 x",
            b"application/js on",
            b"",
        ] {
            assert!(
                MediaType::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let m = MediaType::parse(b"multipart/form-data; boundary=a; BOUNDARY=b").unwrap();
        assert_eq!(m.param("boundary"), Err(MediaError::Repeated("boundary")));
    }

    #[test]
    fn charsets() {
        let utf8 = |v: &str| MediaType::parse(v.as_bytes()).unwrap().is_utf8().unwrap();
        assert!(utf8("application/json"));
        assert!(utf8("application/json; charset=utf-8"));
        assert!(utf8("application/json; charset=\"UTF-8\""));
        assert!(!utf8("application/json; charset=utf-7"));
        assert!(!utf8("application/json; charset=latin1"));
    }

    #[test]
    fn ranges() {
        let m = MediaType::parse(b"image/png").unwrap();
        assert!(MediaRange::parse("image/*").unwrap().matches(&m));
        assert!(MediaRange::parse("IMAGE/PNG").unwrap().matches(&m));
        assert!(!MediaRange::parse("image/jpeg").unwrap().matches(&m));
        assert!(!MediaRange::parse("imag/*").unwrap().matches(&m));
        assert!(MediaRange::parse("*/*").is_err());
        assert!(MediaRange::parse("text/csv; x=1").is_err());
    }
}
