//! Watching a `multipart/form-data` body for client ids as it streams (part of stage 8,
//! rewrite).
//!
//! Multipart bodies are never buffered or rewritten, yet PHP, Express (multer, busboy)
//! and most frameworks merge their fields into the same parameters as the query string,
//! often ahead of it: a field `clientId=1002` would undo the id the gateway put in the
//! query. So the stream is scanned as it passes, in bounded memory:
//!
//! - the body must be framed as browsers and HTTP clients frame it, since every other
//!   framing is read differently by some backend (PHP, Werkzeug, python-multipart,
//!   busboy and formidable were tested): nothing but line breaks before the first
//!   delimiter and after the closing one; a delimiter followed by CRLF or `--`; CRLF
//!   part headers with token names, lines under 4 KiB, continuations only after SP or
//!   HTAB, a `Content-Disposition` written `type; key=token` or `key="quoted"` (see
//!   [`disposition_params`]) and no `Content-Transfer-Encoding` but `8bit` or `binary`;
//! - a line that starts with `--boundary` after CRLF, a bare LF or a bare CR (Werkzeug
//!   breaks lines there) is a delimiter, in content too;
//! - each part's `Content-Disposition` names (`name`, RFC 5987 `name*`, quoted, escaped
//!   or percent-encoded) are folded as [`tollgate_policy::param`] folds names;
//! - the content of a part named like the client id is held back (at most 1 KiB) until
//!   the part ends, then released if it is the caller's own id, and otherwise the body
//!   is cut off there: the backend gets an incomplete request it cannot act on, and the
//!   client 403 `CLIENT_ID_MISMATCH`. A part named `_method` is held and judged the same
//!   way against the request's own method ([`crate::method_override`]; 400
//!   `METHOD_OVERRIDE_REFUSED`). A part whose `Content-Type` some backend binds as JSON
//!   (a `Blob` of type `application/json` in a `FormData`, which Spring binds to an
//!   object with `@RequestPart`; `text/json` and the others of [`read_as_json`]) is
//!   held the same way, up to 64 KiB, and its members named like
//!   the client id, at any depth, judged as a JSON body's are ([`ids_in_json`]); a
//!   larger one is refused (400 `MULTIPART_INVALID`), since it could not be judged
//!   without holding it. A part of an XML type (Spring binds it the same way where
//!   Jackson's XML module is) is held alike and judged strictly ([`ids_in_xml`]).
//!   Every other byte passes through at once.
//!
//! A part header block that cannot be parsed also cuts the body off (400
//! `MULTIPART_INVALID`), and so does a part of a `multipart/*` type (Commons FileUpload
//! reads nested parts, then looks for the outer delimiter mid-line) or a
//! `Content-Disposition` that parsers would split differently (see
//! [`disposition_params`]): what the gateway cannot read as every
//! backend would, it does not vouch for.

use bytes::{Bytes, BytesMut};
use tollgate_policy::param;

use crate::method_override;

const MAX_HEADER_BLOCK: usize = 16 * 1024;
const MAX_HEADER_LINES: usize = 64;
/// PHP reads part headers in 5,120-byte pieces, and a longer line's rest as a line of
/// its own: no header line may come near that.
const MAX_HEADER_LINE: usize = 4096;
/// A client id is at most 128 bytes; a held value longer than this cannot be one.
const MAX_HELD_VALUE: usize = 1024;
/// The most of a JSON part held to be judged: a DTO a page sends is far smaller; a
/// JSON file that large is uploaded as a file type (`application/octet-stream`).
const MAX_HELD_JSON: usize = 64 * 1024;
/// How deep a JSON part's values may nest (as a JSON body's).
const MAX_JSON_DEPTH: usize = 64;

/// Why the scan cut the body off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A field named like the client id holds another id.
    ClientIdMismatch,
    /// A part's headers could not be read.
    Malformed,
    /// A field named `_method` names another method than the request's.
    MethodOverride,
}

/// Which watched field a held part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    ClientId,
    Method,
    /// A part of a JSON type: its members named like the client id are judged.
    Json,
    /// A part of an XML type (Spring binds one with `@RequestPart` where Jackson's XML
    /// module is present): its elements and attributes named like the client id are
    /// judged.
    Xml,
}

#[derive(Debug)]
enum State {
    /// At the start of a line, `matched` bytes of `--boundary` seen so far.
    LineStart { matched: usize },
    /// Inside a line that is not a delimiter.
    Line,
    /// Just after `--boundary`: `seen` bytes of what must follow, CRLF (a part) or
    /// `--` and CRLF or the end (the close). Anything else is refused: PHP takes a
    /// delimiter followed by other text as one and reads on line by line.
    DelimiterTail { seen: u8, closing: bool },
    /// A part's header block, until a blank line; `line` counts the current line's bytes.
    Headers { line: usize },
    /// After the closing delimiter: line breaks only (PHP does not stop at the close).
    Epilogue,
}

/// The scanner for one body.
#[derive(Debug)]
pub struct Scanner {
    needle: Vec<u8>,
    names: Vec<String>,
    caller: String,
    /// The request's method, which a `_method` field must not change.
    method: String,
    state: State,
    /// The header block being read (it is also passed on as it arrives).
    header: Vec<u8>,
    /// Content held back from a watched part, and which one it is.
    held: Option<BytesMut>,
    held_for: Watched,
    /// A delimiter has been seen: what comes before the first one (the preamble) may be
    /// line breaks only.
    started: bool,
}

impl Scanner {
    /// A scanner for parts delimited by `boundary`, judging fields named like `names`
    /// (configured names, unfolded) against `caller`, and `_method` fields against
    /// `method`.
    pub fn new(boundary: &str, names: &[String], caller: &str, method: &str) -> Scanner {
        let mut needle = b"--".to_vec();
        needle.extend_from_slice(boundary.as_bytes());
        Scanner {
            needle,
            names: names.to_vec(),
            caller: caller.to_owned(),
            method: method.to_owned(),
            state: State::LineStart { matched: 0 },
            header: Vec::new(),
            held: None,
            held_for: Watched::ClientId,
            started: false,
        }
    }

    /// Scans one chunk; returns the bytes that may go on now (possibly some held earlier).
    pub fn feed(&mut self, chunk: Bytes) -> Result<Vec<Bytes>, Refusal> {
        let mut out = Vec::new();
        // Start of the part of `chunk` not yet released or held.
        let mut from = 0;
        let mut i = 0;
        while i < chunk.len() {
            let byte = chunk[i];
            match self.state {
                State::Line => {
                    // Text before the first delimiter: Werkzeug finds a delimiter
                    // anywhere in it, mid-line included. No client sends one.
                    if !self.started {
                        return Err(Refusal::Malformed);
                    }
                    // The hot path: skip to the end of the line. A bare CR ends one
                    // too, for Werkzeug: `\r--boundary` is a delimiter to it.
                    match chunk[i..].iter().position(|b| *b == b'\n' || *b == b'\r') {
                        Some(at) => {
                            i += at + 1;
                            self.state = State::LineStart { matched: 0 };
                        }
                        None => i = chunk.len(),
                    }
                    continue;
                }
                State::LineStart { matched } => {
                    if byte == self.needle[matched] {
                        if matched + 1 == self.needle.len() {
                            self.started = true;
                            self.state = State::DelimiterTail {
                                seen: 0,
                                closing: false,
                            };
                            if let Some(held) = self.held.take() {
                                // The held part ends where this delimiter's line began.
                                let mut held = held;
                                held.extend_from_slice(&chunk[from..=i]);
                                let value_len = held.len() - self.needle.len();
                                self.judge(&held[..value_len])?;
                                out.push(held.freeze());
                                from = i + 1;
                            }
                        } else {
                            self.state = State::LineStart {
                                matched: matched + 1,
                            };
                        }
                    } else if byte == b'\n' || byte == b'\r' {
                        self.state = State::LineStart { matched: 0 };
                    } else {
                        self.state = State::Line;
                        continue;
                    }
                }
                State::DelimiterTail { seen, closing } => {
                    // `\r\n` after the boundary opens a part, `--\r\n` closes the body.
                    let expected: &[u8] = match (seen, closing) {
                        (0, _) if byte == b'-' => b"--\r\n",
                        (0, _) => b"\r\n",
                        (_, true) => b"--\r\n",
                        (_, false) => b"\r\n",
                    };
                    let closing = expected.len() == 4;
                    if expected.get(usize::from(seen)) != Some(&byte) {
                        return Err(Refusal::Malformed);
                    }
                    let seen = seen + 1;
                    self.state = if usize::from(seen) < expected.len() {
                        State::DelimiterTail { seen, closing }
                    } else if closing {
                        State::Epilogue
                    } else {
                        // A part's headers are held until they end: a body that stops
                        // inside them must not reach the backend whole.
                        out.extend(slice(&chunk, from, i + 1));
                        from = i + 1;
                        self.header.clear();
                        State::Headers { line: 0 }
                    };
                }
                State::Headers { line } => {
                    // CRLF only, as every client writes it: Werkzeug ends a header line
                    // at a bare CR and a block at `\r\r`, python-multipart and
                    // formidable only at CR; PHP reads lines in 5 KiB pieces.
                    let previous = self.header.last().copied();
                    let ok = match byte {
                        b'\n' => previous == Some(b'\r'),
                        _ => previous != Some(b'\r'),
                    };
                    if !ok || line >= MAX_HEADER_LINE || self.header.len() >= MAX_HEADER_BLOCK {
                        return Err(Refusal::Malformed);
                    }
                    self.header.push(byte);
                    self.state = State::Headers {
                        line: if byte == b'\n' { 0 } else { line + 1 },
                    };
                    if byte == b'\n' && self.header.ends_with(b"\r\n\r\n") {
                        self.state = State::LineStart { matched: 0 };
                        let watched = self.watched()?;
                        out.push(Bytes::copy_from_slice(&self.header));
                        from = i + 1;
                        if let Some(watched) = watched {
                            // Hold this part's content, from the next byte on.
                            self.held = Some(BytesMut::new());
                            self.held_for = watched;
                        }
                    } else if self.header == b"\r\n" {
                        // A part without headers: without a Content-Disposition, PHP
                        // and Werkzeug differ on where its headers end.
                        return Err(Refusal::Malformed);
                    }
                }
                State::Epilogue => {
                    if byte != b'\r' && byte != b'\n' {
                        return Err(Refusal::Malformed);
                    }
                }
            }
            i += 1;
        }
        match &mut self.held {
            Some(held) => {
                held.extend_from_slice(&chunk[from..]);
                // Bounded per chunk: a held value this long cannot be a client id (or
                // a method), and a JSON part this long is not judged.
                let most = match self.held_for {
                    Watched::Json | Watched::Xml => MAX_HELD_JSON,
                    Watched::ClientId | Watched::Method => MAX_HELD_VALUE,
                };
                if held.len() > most + self.needle.len() + 2 {
                    return Err(self.refusal());
                }
            }
            // What is left of a header block is in `self.header`, held.
            None if matches!(self.state, State::Headers { .. }) => {}
            None => out.extend(slice(&chunk, from, chunk.len())),
        }
        Ok(out)
    }

    /// The end of the body. Refused when it ends inside a part's headers (PHP registers
    /// a field named there with an empty value, Werkzeug reads on), after a delimiter
    /// that is not whole, or while a watched part is held (no delimiter closed it).
    pub fn finish(&mut self) -> Result<Vec<Bytes>, Refusal> {
        let unfinished = match self.state {
            State::Headers { .. } => true,
            State::DelimiterTail { seen, closing } => !(closing && seen == 2),
            _ => false,
        };
        if unfinished || self.held.is_some() {
            return Err(Refusal::Malformed);
        }
        Ok(Vec::new())
    }

    /// A held value (the part's content with the line break before its delimiter),
    /// which must be CRLF: most parsers read `1001\r--boundary` as the value going on.
    fn judge(&self, value: &[u8]) -> Result<(), Refusal> {
        let value = value.strip_suffix(b"\r\n").ok_or(Refusal::Malformed)?;
        let kept = match self.held_for {
            Watched::ClientId => value == self.caller.as_bytes(),
            Watched::Method => {
                std::str::from_utf8(value).is_ok_and(|v| method_override::keeps(v, &self.method))
            }
            // Held past the limit only when the part ended in the same chunk: the
            // limit holds all the same.
            Watched::Json if value.len() > MAX_HELD_JSON => return Err(Refusal::Malformed),
            Watched::Json => return ids_in_json(value, &self.names, &self.caller),
            Watched::Xml if value.len() > MAX_HELD_JSON => return Err(Refusal::Malformed),
            Watched::Xml => return ids_in_xml(value, &self.names, &self.caller),
        };
        if kept {
            Ok(())
        } else {
            Err(self.refusal())
        }
    }

    fn refusal(&self) -> Refusal {
        match self.held_for {
            Watched::ClientId => Refusal::ClientIdMismatch,
            Watched::Method => Refusal::MethodOverride,
            Watched::Json | Watched::Xml => Refusal::Malformed,
        }
    }

    /// Which watched field, if any, the header block just read names. A part must have
    /// a `Content-Disposition`, and no `Content-Transfer-Encoding` but an identity one.
    /// A part named both like the client id and `_method` is refused: it could be judged
    /// as only one of them.
    fn watched(&self) -> Result<Option<Watched>, Refusal> {
        let (mut client_id, mut method, mut disposed) = (false, false, false);
        let (mut json, mut xml) = (false, false);
        let headers = parse_headers(&self.header)?;
        // Rack 2 searches the whole header block for `Content-Disposition:` (or, for a
        // part without a name, `Content-ID:`), so that text inside another header's
        // value would name the part to it.
        let block = String::from_utf8_lossy(&self.header).to_ascii_lowercase();
        let mentions = |needle: &str| block.matches(needle).count();
        let named_lines = headers
            .iter()
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case("content-disposition"))
            .count();
        if mentions("content-disposition:") > named_lines || mentions("content-id:") > 0 {
            return Err(Refusal::Malformed);
        }
        for (name, value) in headers {
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-disposition") {
                disposed = true;
                let names = disposition_names(&value)?;
                // RFC 7578: every part is named. Rack 2 names a part without a name, or
                // with an empty one, by its `Content-ID`, its filename, or its
                // `Content-Type` (found anywhere in the header block); others drop it.
                if names.iter().all(|n| n.is_empty()) {
                    return Err(Refusal::Malformed);
                }
                for candidate in names {
                    client_id |= self.names.iter().any(|n| param::means(&candidate, n));
                    method |= param::means(&candidate, method_override::PARAM);
                }
            } else if name.eq_ignore_ascii_case("content-type") {
                // A type is read whatever its parameters, even ones that cannot be:
                // Spring's `MimeTypeUtils` skips a parameter without `=`
                // (`application/json; x`) and binds the part as JSON all the same.
                let essence = value.split(';').next().unwrap_or_default();
                let essence = essence.trim().to_ascii_lowercase();
                // A multipart part in a form (RFC 7578 forbids it; no browser sends
                // one): Commons FileUpload, and Tomcat's copy of it, read its inner
                // parts and then look for the outer delimiter anywhere, mid-line
                // included, so `x--boundary` after it opens a part the scan never saw.
                if essence.starts_with("multipart/") {
                    return Err(Refusal::Malformed);
                }
                json |= read_as_json(&essence);
                if read_as_xml(&essence) {
                    // Spring decodes an XML part by its `charset`: in ISO-2022-JP the
                    // bytes the scan reads as `<?` and `?>` are letters, and what they
                    // seemed to enclose is markup. Only UTF-8 is judged.
                    let other_charset = value.split(';').skip(1).any(|param| {
                        param.split_once('=').is_some_and(|(name, charset)| {
                            name.trim().eq_ignore_ascii_case("charset")
                                && !charset
                                    .trim()
                                    .trim_matches('"')
                                    .eq_ignore_ascii_case("utf-8")
                        })
                    });
                    if other_charset {
                        return Err(Refusal::Malformed);
                    }
                    xml = true;
                }
            } else if name.eq_ignore_ascii_case("content-transfer-encoding") {
                // Apache HttpClient, Symfony and Dart's http send `8bit` or `binary`
                // (identity: every parser reads the bytes as they are). Anything else
                // could spell a name or value the gateway does not see, and formidable's
                // process dies on `7bit`.
                let identity = ["8bit", "binary"]
                    .iter()
                    .any(|e| value.trim().eq_ignore_ascii_case(e));
                if !identity {
                    return Err(Refusal::Malformed);
                }
            }
        }
        match (disposed, client_id, method) {
            (false, _, _) | (_, true, true) => Err(Refusal::Malformed),
            (_, true, false) => Ok(Some(Watched::ClientId)),
            (_, false, true) => Ok(Some(Watched::Method)),
            (_, false, false) if json => Ok(Some(Watched::Json)),
            (_, false, false) if xml => Ok(Some(Watched::Xml)),
            (_, false, false) => Ok(None),
        }
    }
}

/// Whether some backend binds a part of this type (lower case, without parameters) as
/// JSON: the JSON types (`application/json`, `+json`), and what Jackson's JAX-RS
/// provider takes besides (Jersey's `@FormDataParam` into an object): any main type
/// with the subtype `json`, `x-json`, `javascript` or `x-javascript`, or a `+json`
/// one (`text/json`, `text/javascript`). FastJson's provider reads a
/// `x-www-form-urlencoded` part as JSON too.
fn read_as_json(essence: &str) -> bool {
    let subtype = essence.split_once('/').map_or(essence, |(_, sub)| sub);
    crate::classify::is_json(essence)
        || matches!(subtype, "json" | "x-json" | "javascript" | "x-javascript")
        || subtype.ends_with("+json")
        || subtype.ends_with("x-www-form-urlencoded")
}

/// Whether some backend binds a part of this type as XML: `xml` or `x-xml` under any
/// main type, or a `+xml` subtype (what Jackson's XML module and JAXB providers take).
fn read_as_xml(essence: &str) -> bool {
    let subtype = essence.split_once('/').map_or(essence, |(_, sub)| sub);
    matches!(subtype, "xml" | "x-xml") || subtype.ends_with("+xml")
}

/// Judges an XML part without an XML parser, so strictly: it must be UTF-8 (declared
/// so, or not declared, in the part's `charset` and in the XML declaration) without
/// control characters, with no document type declaration (an internal entity can
/// expand to elements the bytes do not show), and every element or attribute whose
/// local name (after any prefix) is named like the client id must hold exactly the
/// caller's id as its text: `<clientId>1001</clientId>` or `clientId="1001"`. Anything
/// else so named (another id, an escape, nested elements, whitespace) is
/// [`Refusal::ClientIdMismatch`]; bytes that cannot be read that way are
/// [`Refusal::Malformed`]. Comments, CDATA sections and processing instructions are
/// skipped: none of them makes an element.
fn ids_in_xml(value: &[u8], names: &[String], caller: &str) -> Result<(), Refusal> {
    // No control character but TAB, CR and LF (XML 1.0 allows no other): UTF-16 or
    // UCS-4 text is valid UTF-8 when its characters are ASCII (its NULs included), and
    // a parser that detects it from the first bytes reads characters whose bytes the
    // scan takes for `<?` and `?>` (U+3F3C, U+3E3F) around a real element.
    if value
        .iter()
        .any(|b| b.is_ascii_control() && !matches!(b, b'\t' | b'\r' | b'\n'))
    {
        return Err(Refusal::Malformed);
    }
    let text = std::str::from_utf8(value).map_err(|_| Refusal::Malformed)?;
    let lower = text.to_ascii_lowercase();
    if lower.contains("<!doctype") || lower.contains("<!entity") {
        return Err(Refusal::Malformed);
    }
    if let Some(declaration) = lower.trim_start_matches('\u{feff}').strip_prefix("<?xml") {
        let declaration = &declaration[..declaration.find("?>").ok_or(Refusal::Malformed)?];
        if let Some(at) = declaration.find("encoding") {
            let named = declaration[at + "encoding".len()..]
                .trim_start()
                .strip_prefix('=')
                .map(|rest| rest.trim_start().trim_start_matches(['"', '\'']))
                .ok_or(Refusal::Malformed)?;
            if !(named.starts_with("utf-8") || named.starts_with("utf8")) {
                return Err(Refusal::Malformed);
            }
        }
    }
    let named_like_id = |name: &str| {
        let local = name.rsplit(':').next().unwrap_or(name);
        names.iter().any(|n| param::means(local, n))
    };
    let mut rest = text;
    while let Some(at) = rest.find('<') {
        rest = &rest[at + 1..];
        // Markup that makes no element: skipped whole.
        let markup = [("!--", "-->"), ("![CDATA[", "]]>"), ("?", "?>")]
            .iter()
            .find_map(|(open, close)| Some((rest.strip_prefix(open)?, close)));
        if let Some((after, close)) = markup {
            let end = after.find(close).ok_or(Refusal::Malformed)?;
            rest = &after[end + close.len()..];
            continue;
        }
        if rest.starts_with('!') {
            return Err(Refusal::Malformed);
        }
        let closing = rest.starts_with('/');
        let tag_end = rest.find('>').ok_or(Refusal::Malformed)?;
        let tag = &rest[usize::from(closing)..tag_end];
        rest = &rest[tag_end + 1..];
        let name_end = tag
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(tag.len());
        let (name, attributes) = tag.split_at(name_end);
        if closing {
            continue;
        }
        if named_like_id(name) {
            let self_closing = attributes.trim_end().ends_with('/');
            let content = rest.split('<').next().unwrap_or_default();
            let closed_by = rest[content.len()..].strip_prefix("</");
            let closes = closed_by.is_some_and(|after| {
                after
                    .strip_prefix(name)
                    .is_some_and(|t| t.trim_start().starts_with('>'))
            });
            if self_closing || content != caller || !closes {
                return Err(Refusal::ClientIdMismatch);
            }
        }
        attributes_hold_only(
            attributes.trim_end().trim_end_matches('/'),
            &named_like_id,
            caller,
        )?;
    }
    Ok(())
}

/// The attributes of a start tag: each named like the client id must hold exactly the
/// caller's id.
fn attributes_hold_only(
    mut attributes: &str,
    named_like_id: &dyn Fn(&str) -> bool,
    caller: &str,
) -> Result<(), Refusal> {
    loop {
        attributes = attributes.trim_start();
        if attributes.is_empty() {
            return Ok(());
        }
        let (name, after) = attributes.split_once('=').ok_or(Refusal::Malformed)?;
        let after = after.trim_start();
        let quote = after
            .chars()
            .next()
            .filter(|q| *q == '"' || *q == '\'')
            .ok_or(Refusal::Malformed)?;
        let inner = &after[1..];
        let end = inner.find(quote).ok_or(Refusal::Malformed)?;
        if named_like_id(name.trim()) && &inner[..end] != caller {
            return Err(Refusal::ClientIdMismatch);
        }
        attributes = &inner[end + 1..];
    }
}

/// Judges a JSON part: every member named like the client id (`names`, folded as
/// [`param::means`] folds them), at any depth and however often, must hold the
/// caller's id (a string, or a number with the same digits); else
/// [`Refusal::ClientIdMismatch`]. A part that is not JSON (UTF-8), or nests deeper than
/// a JSON body may, is [`Refusal::Malformed`]: it is not judged, so it does not pass.
fn ids_in_json(value: &[u8], names: &[String], caller: &str) -> Result<(), Refusal> {
    let mismatch = std::cell::Cell::new(false);
    let walk = IdsIn {
        names,
        caller,
        depth: 0,
        mismatch: &mismatch,
    };
    let mut reader = serde_json::Deserializer::from_slice(value);
    let read =
        serde::de::DeserializeSeed::deserialize(walk, &mut reader).and_then(|()| reader.end());
    match read {
        Ok(()) => Ok(()),
        Err(_) if mismatch.get() => Err(Refusal::ClientIdMismatch),
        Err(_) => Err(Refusal::Malformed),
    }
}

/// One value of a JSON part, walked for client-id members (see [`ids_in_json`]).
#[derive(Clone, Copy)]
struct IdsIn<'a> {
    names: &'a [String],
    caller: &'a str,
    depth: usize,
    mismatch: &'a std::cell::Cell<bool>,
}

impl IdsIn<'_> {
    fn deeper(self) -> Self {
        IdsIn {
            depth: self.depth + 1,
            ..self
        }
    }

    fn too_deep<E: serde::de::Error>(&self) -> Result<(), E> {
        match self.depth >= MAX_JSON_DEPTH {
            true => Err(E::custom("nested too deep")),
            false => Ok(()),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for IdsIn<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for IdsIn<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        self.too_deep()?;
        while items.next_element_seed(self.deeper())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut members: A) -> Result<(), A::Error> {
        self.too_deep()?;
        while let Some(name) = members.next_key::<String>()? {
            if !self.names.iter().any(|n| param::means(&name, n)) {
                members.next_value_seed(self.deeper())?;
                continue;
            }
            // A number's digits must be the id's own, and a number a double holds
            // exactly (JavaScript reads 9007199254740993 as another client), as in a
            // JSON body.
            let held = match members.next_value::<serde_json::Value>()? {
                serde_json::Value::String(text) => text == self.caller,
                serde_json::Value::Number(n) => {
                    n.to_string() == self.caller && crate::client_id::exact_as_double(self.caller)
                }
                _ => false,
            };
            if !held {
                self.mismatch.set(true);
                return Err(serde::de::Error::custom("another client's id"));
            }
        }
        Ok(())
    }
}

fn slice(chunk: &Bytes, from: usize, to: usize) -> Option<Bytes> {
    (to > from).then(|| chunk.slice(from..to))
}

/// The `name: value` headers of a block, folded lines joined.
///
/// Refused: a bare CR (Werkzeug ends a line there), a control byte, a line that starts
/// with other whitespace than SP or HTAB (PHP takes any `isspace` byte, `\x0b` or
/// `\x0c`, as a continuation), and a name that is not a token.
fn parse_headers(block: &[u8]) -> Result<Vec<(String, String)>, Refusal> {
    let bare_cr = block
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\r' && block.get(i + 1) != Some(&b'\n'));
    let control = block
        .iter()
        .any(|b| (*b < 0x20 && !b"\t\r\n".contains(b)) || *b == 0x7f);
    if bare_cr || control {
        return Err(Refusal::Malformed);
    }
    let text = std::str::from_utf8(block).map_err(|_| Refusal::Malformed)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let last = headers.last_mut().ok_or(Refusal::Malformed)?;
            last.1.push(' ');
            last.1.push_str(line.trim());
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(Refusal::Malformed)?;
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.chars().all(is_tchar) {
            return Err(Refusal::Malformed);
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
        if headers.len() > MAX_HEADER_LINES {
            return Err(Refusal::Malformed);
        }
    }
    Ok(headers)
}

/// Every name a `Content-Disposition` value could mean to some parser: each `name` and
/// `name*` parameter, unquoted with and without backslash escapes, and percent-decoded.
///
/// The value must be written as browsers and HTTP clients write it (a type, then
/// `; key=token` or `; key="quoted"` parameters): parsers split anything else
/// differently. PHP takes `'` as a quote and ends an unquoted value at whitespace;
/// busboy does neither. So `name='clientId'`, `name=clientId x`, `name="clientId"x` or a
/// `'` that hides a `;` from one parser and not the other would let a backend read a
/// field the gateway never saw. Such a value is refused (`MULTIPART_INVALID`).
fn disposition_names(value: &str) -> Result<Vec<String>, Refusal> {
    let params = disposition_params(value)?;
    // formidable takes the first `name=` after a word boundary anywhere in the value
    // (`x-name=`, inside a quoted filename): that one must be a `name` key of its own.
    // (Browsers write `name` first, so `filename="first name=x.txt"` after it passes.)
    let lower = value.to_ascii_lowercase();
    let keys: Vec<usize> = params
        .iter()
        .filter(|(key, _, _)| key.eq_ignore_ascii_case("name"))
        .map(|(key, _, _)| key.as_ptr() as usize - value.as_ptr() as usize)
        .collect();
    for (at, _) in lower.match_indices("name=") {
        let word_before = lower[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !word_before {
            if !keys.contains(&at) {
                return Err(Refusal::Malformed);
            }
            break;
        }
    }
    // Rack 2 takes the *last* `;` + whitespace + `name=` of the line, quotes or not
    // (`name="note;name=clientId"`, `filename="a;name=clientId"`): every such place must
    // be a `name` key of its own.
    for (semicolon, _) in lower.match_indices(';') {
        let after = &lower[semicolon + 1..];
        let key = after.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
        if key.starts_with("name=") && !keys.contains(&(lower.len() - key.len())) {
            return Err(Refusal::Malformed);
        }
    }
    let mut out = Vec::new();
    for (key, raw, quoted) in params {
        let key = key.to_ascii_lowercase();
        if key == "name" {
            // An RFC 2047 encoded word (`=?UTF-8?B?Y2xpZW50SWQ=?=` is `clientId`):
            // Tomcat and Commons FileUpload decode every one in a disposition's values,
            // so the name they see is not the one written here.
            if raw.contains("=?") {
                return Err(Refusal::Malformed);
            }
            let (escaped, literal) = if quoted {
                (unescape(raw), raw.to_owned())
            } else {
                (raw.to_owned(), raw.to_owned())
            };
            out.push(param::decode(escaped.as_bytes()));
            out.push(param::decode(literal.as_bytes()));
            out.push(escaped);
            out.push(literal);
        } else if key == "name*" {
            out.push(extended_name(raw)?);
        }
    }
    Ok(out)
}

/// The name an RFC 5987 `name*` value (`charset'language'percent-encoded`) gives.
/// Django and Tomcat decode it in the charset it declares, so `UTF-16BE''%00c%00l%00i…`
/// or an EBCDIC `cp037''%83%93…` is `clientId` to them: only charsets whose reading is
/// known here are taken (UTF-8, US-ASCII, ISO-8859-1), and only what decodes in them.
fn extended_name(raw: &str) -> Result<String, Refusal> {
    let mut parts = raw.splitn(3, '\'');
    let (Some(charset), Some(_language), Some(encoded)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    if encoded.contains('\'') {
        return Err(Refusal::Malformed);
    }
    let bytes = param::unescape_exact(encoded.as_bytes()).ok_or(Refusal::Malformed)?;
    match charset.to_ascii_lowercase().as_str() {
        "utf-8" => String::from_utf8(bytes).map_err(|_| Refusal::Malformed),
        "us-ascii" if bytes.is_ascii() => String::from_utf8(bytes).map_err(|_| Refusal::Malformed),
        "iso-8859-1" => Ok(bytes.into_iter().map(char::from).collect()),
        _ => Err(Refusal::Malformed),
    }
}

/// A `Content-Disposition` value's parameters: (key, value, quoted), the value without
/// its quotes. Refuses anything outside `type *(OWS ";" OWS key OWS "=" OWS value)`,
/// where a value is a token without `'` (an RFC 5987 `key*` value: exactly two), or a
/// quoted string with no `\` at its end (PHP takes only the last backslash before a
/// quote as an escape, others take pairs: they would disagree on where it ends).
fn disposition_params(value: &str) -> Result<Vec<(&str, &str, bool)>, Refusal> {
    let is_ows = |c: char| c == ' ' || c == '\t';
    let token_end = |text: &str| text.find(|c: char| !is_tchar(c)).unwrap_or(text.len());
    let mut rest = value.trim_start_matches(is_ows);
    let end = token_end(rest);
    if end == 0 {
        return Err(Refusal::Malformed);
    }
    rest = &rest[end..];
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches(is_ows);
        if rest.is_empty() {
            return Ok(params);
        }
        rest = rest.strip_prefix(';').ok_or(Refusal::Malformed)?;
        rest = rest.trim_start_matches(is_ows);
        if rest.is_empty() || rest.starts_with(';') {
            continue;
        }
        // No space around `=`: Werkzeug, failing to read `x ="…"`, looks for the next
        // `;` inside the quotes.
        let end = token_end(rest);
        let key = &rest[..end];
        rest = rest[end..].strip_prefix('=').ok_or(Refusal::Malformed)?;
        // `name*0=client; name*1=Id` is `name=clientId` to Python's email parser and
        // Werkzeug (RFC 2231 continuations).
        let continued = key.len() > 5 && key[..5].eq_ignore_ascii_case("name*");
        if key.is_empty() || key.contains('\'') || continued {
            return Err(Refusal::Malformed);
        }
        if let Some(quoted) = rest.strip_prefix('"') {
            let close = closing_quote(quoted).ok_or(Refusal::Malformed)?;
            let inner = &quoted[..close];
            // `\` last (an escaped backslash before the closing quote): PHP's splitter
            // takes only the last backslash before a quote as an escape, so it reads on.
            // (`\"` inside, as Go and Ruby escape a quote in a file name, every parser
            // reads alike, and a `name=` hidden behind one is refused below.)
            if inner.ends_with('\\') {
                return Err(Refusal::Malformed);
            }
            params.push((key, inner, true));
            rest = &quoted[close + 1..];
        } else {
            let end = token_end(rest);
            let raw = &rest[..end];
            let quotes = raw.matches('\'').count();
            let allowed = if key.ends_with('*') { 2 } else { 0 };
            if raw.is_empty() || quotes != allowed {
                return Err(Refusal::Malformed);
            }
            params.push((key, raw, false));
            rest = &rest[end..];
        }
    }
}

/// Where the quoted string `text` starts just after the opening quote of ends: the
/// first `"` not escaped by a backslash.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// An RFC 9110 token character.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["clientId".into(), "client_id".into()]
    }

    /// Feeds `body` in chunks of `size`; the bytes released, or the refusal.
    fn scan(body: &[u8], size: usize) -> Result<Vec<u8>, Refusal> {
        let mut scanner = Scanner::new("XyZ", &names(), "1001", "POST");
        let mut out = Vec::new();
        for chunk in body.chunks(size.max(1)) {
            for b in scanner.feed(Bytes::copy_from_slice(chunk))? {
                out.extend_from_slice(&b);
            }
        }
        for b in scanner.finish()? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    fn part(disposition: &str, value: &str) -> String {
        format!("--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n")
    }

    fn body(parts: &[String]) -> Vec<u8> {
        let mut b = parts.concat();
        b.push_str("--XyZ--\r\n");
        b.into_bytes()
    }

    fn json_part(json: &str) -> String {
        format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"campaign\"; filename=\"blob\"\r\nContent-Type: application/json\r\n\r\n{json}\r\n"
        )
    }

    fn xml_part(content_type: &str, xml: &str) -> String {
        format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"campaign\"; filename=\"c.xml\"\r\nContent-Type: {content_type}\r\n\r\n{xml}\r\n"
        )
    }

    /// Spring binds an XML part to an object where Jackson's XML module is present: an
    /// element or attribute named like the client id must hold the caller's own.
    #[test]
    fn an_xml_part_names_no_other_client() {
        for xml in [
            "<campaign><clientId>1002</clientId></campaign>",
            "<campaign clientId=\"1002\"><name>x</name></campaign>",
            "<c><a:client_id xmlns:a=\"u\">1002</a:client_id></c>",
            "<c><ClientID>1002</ClientID></c>",
            "<c><clientId>&#49;001</clientId></c>",
            "<c><clientId> 1001</clientId></c>",
            "<c><clientId><v>1001</v></clientId></c>",
            "<c><clientId/></c>",
            "<c><x clientId='1002'/></c>",
            "<c><clientId>1001</clientId><clientId>1002</clientId></c>",
        ] {
            for content_type in [
                "application/xml",
                "text/xml; charset=utf-8",
                "application/vnd.c+xml",
            ] {
                let b = body(&[xml_part(content_type, xml)]);
                for size in [1, 4096] {
                    assert_eq!(
                        scan(&b, size),
                        Err(Refusal::ClientIdMismatch),
                        "{content_type}: {xml}"
                    );
                }
            }
        }
        // Its own id, or none, passes byte for byte; comments and CDATA make no element.
        for xml in [
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><c><clientId>1001</clientId><name>x</name></c>",
            "<c clientId=\"1001\"><n a='1'/></c>",
            "<c><!-- <clientId>1002</clientId> --><name>clientId</name></c>",
            "<c><![CDATA[<clientId>1002</clientId>]]></c>",
        ] {
            let b = body(&[xml_part("application/xml", xml)]);
            assert_eq!(scan(&b, 5).as_deref(), Ok(&b[..]), "{xml}");
        }
        // What cannot be read that way: a document type (entities can expand to
        // elements), another encoding, broken markup, not UTF-8, too large to hold.
        let large = format!("<c>{}</c>", "x".repeat(MAX_HELD_JSON));
        for xml in [
            "<!DOCTYPE c [<!ENTITY e \"<clientId>1002</clientId>\">]><c>&e;</c>",
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><c/>",
            "<c><name>x</name",
            "<c a=\"1></c>",
            &large,
        ] {
            let b = body(&[xml_part("application/xml", xml)]);
            assert_eq!(
                scan(&b, 4096).map(drop),
                Err(Refusal::Malformed),
                "{}",
                &xml[..xml.len().min(40)]
            );
        }
        // UTF-16 text of ASCII characters is valid UTF-8; U+3F3C and U+3E3F are `<?`
        // and `?>` to a byte scan, around an element a parser sees (found by review).
        let doc: Vec<u8> = "<?x?><c>\u{3f3c}<clientId>1002</clientId></c><!--\u{3e3f}-->"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert!(std::str::from_utf8(&doc).is_ok());
        let mut b = b"--XyZ\r\nContent-Disposition: form-data; name=\"c\"\r\nContent-Type: application/xml\r\n\r\n".to_vec();
        b.extend_from_slice(&doc);
        b.extend_from_slice(b"\r\n--XyZ--\r\n");
        assert_eq!(scan(&b, 4096).map(drop), Err(Refusal::Malformed));
        // A part decoded by another charset (ISO-2022-JP: ESC sequences), refused by its
        // type's parameter before anything is read.
        for content_type in [
            "application/xml; charset=ISO-2022-JP",
            "text/xml; charset=\"utf-16\"",
        ] {
            let b = body(&[xml_part(
                content_type,
                "<c>\u{1b}$B<?\u{1b}(B<clientId>1002</clientId></c><!--\u{1b}$B?>\u{1b}(B-->",
            )]);
            assert_eq!(
                scan(&b, 4096).map(drop),
                Err(Refusal::Malformed),
                "{content_type}"
            );
        }
        let mut utf16 = b"--XyZ\r\nContent-Disposition: form-data; name=\"c\"\r\nContent-Type: text/xml\r\n\r\n\xff\xfe<\x00c\x00/\x00>\x00\r\n".to_vec();
        utf16.extend_from_slice(b"--XyZ--\r\n");
        assert_eq!(scan(&utf16, 4096).map(drop), Err(Refusal::Malformed));
    }

    #[test]
    fn a_json_part_is_judged_like_a_json_body() {
        // Spring binds a JSON part to an object (`@RequestPart`): a `clientId` member
        // anywhere in it is the caller's own, or the body is cut off.
        for json in [
            r#"{"name":"x","clientId":"1002"}"#,
            r#"{"name":"x","clientId":1002}"#,
            r#"{"a":{"b":[{"client_id":"1002"}]}}"#,
            r#"{"client\u0049d":"1002"}"#,
            r#"{"clientId":"1001","clientId":"1002"}"#,
            r#"{"ClientID":"1002"}"#,
            r#"{"clientId":null}"#,
            r#"{"clientId":["1001"]}"#,
        ] {
            let b = body(&[part(r#"form-data; name="a""#, "1"), json_part(json)]);
            for size in [1, 7, 4096] {
                assert_eq!(scan(&b, size), Err(Refusal::ClientIdMismatch), "{json}");
            }
        }
        // Its own id, or none: passed through, byte for byte.
        for json in [
            r#"{"name":"x","clientId":"1001"}"#,
            r#"{"clientId":1001,"nested":{"client_id":"1001"}}"#,
            r#"{"name":"clientId","list":[1,2,{"x":null}]}"#,
            "[]",
        ] {
            let b = body(&[json_part(json), part(r#"form-data; name="a""#, "1")]);
            assert_eq!(scan(&b, 5).as_deref(), Ok(&b[..]), "{json}");
        }
        // Not JSON, nested too deep, or too large to hold: not judged, so not passed.
        let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
        let large = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_HELD_JSON));
        for json in ["{\"clientId\":", "", "{} {}", &deep, &large] {
            let b = body(&[json_part(json)]);
            let scanned = scan(&b, 4096).map(|out| out.len());
            assert_eq!(
                scanned,
                Err(Refusal::Malformed),
                "{}",
                &json[..json.len().min(20)]
            );
        }
        // A JSON type is JSON whatever its parameters say, even ones that cannot be read
        // (Spring skips `; x` and binds the part as JSON).
        for content_type in [
            "application/json; x",
            "Application/JSON;;",
            "application/json; charset=\"utf-8",
            "application/vnd.campaign+json; =x",
            " application/json ; a=b=c",
            // What Jackson's JAX-RS provider binds as JSON too, and FastJson's.
            "text/json",
            "application/x-json",
            "text/x-json",
            "application/javascript",
            "application/x-javascript",
            "text/javascript",
            "text/vnd.campaign+json",
            "application/x-www-form-urlencoded",
        ] {
            let b = body(&[format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"campaign\"\r\nContent-Type: {content_type}\r\n\r\n{{\"clientId\":\"1002\"}}\r\n"
            )]);
            assert_eq!(
                scan(&b, 4096),
                Err(Refusal::ClientIdMismatch),
                "{content_type}"
            );
        }
        // A part of another type streams unread, at any size.
        let csv = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.csv\"\r\nContent-Type: text/csv\r\n\r\nclientId\n1002\n{}\r\n",
            "y".repeat(3 * MAX_HELD_JSON)
        );
        let b = body(&[csv]);
        assert!(scan(&b, 4096).is_ok_and(|out| out == b));
        // A multipart part (RFC 7578 forbids it): Commons FileUpload reads its inner parts,
        // then finds the outer delimiter anywhere, so `x--XyZ` here opens a `clientId`
        // field to it that the scan saw as content.
        let nested = "--XyZ\r\nContent-Disposition: form-data; name=\"data\"\r\nContent-Type: multipart/mixed; boundary=INN\r\n\r\n--INN\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\n\r\nhello\r\n--INN--\r\nx--XyZ\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--XyZ--\r\n";
        for content_type in ["multipart/mixed; boundary=INN", "Multipart/Form-Data"] {
            let b = nested.replace("multipart/mixed; boundary=INN", content_type);
            for size in [1, 4096] {
                assert_eq!(
                    scan(b.as_bytes(), size),
                    Err(Refusal::Malformed),
                    "{content_type}"
                );
            }
        }
    }

    #[test]
    fn a_method_field_may_only_name_the_requests_own_method() {
        for (disposition, value) in [
            (r#"form-data; name="_method""#, "DELETE"),
            (r#"form-data; name="_METHOD""#, "put"),
            ("form-data; name*=UTF-8''%5Fmethod", "PATCH"),
            (r#"form-data; name=".method""#, "DELETE"),
            (r#"form-data; name="_method]""#, "DELETE"),
            (r#"form-data; name="[_method]""#, "DELETE"),
        ] {
            let b = body(&[
                part(r#"form-data; name="a""#, "1"),
                part(disposition, value),
            ]);
            for size in [1, 7, b.len()] {
                assert_eq!(
                    scan(&b, size),
                    Err(Refusal::MethodOverride),
                    "{disposition} = {value}, chunks of {size}"
                );
            }
        }
        // The request's own method, in any case, passes with every byte.
        let b = body(&[part(r#"form-data; name="_method""#, " post ")]);
        assert_eq!(scan(&b, 3).unwrap(), b);
    }

    #[test]
    fn uploads_pass_byte_for_byte_in_any_chunking() {
        let b = body(&[
            part("form-data; name=\"title\"", "Spring"),
            part(
                "form-data; name=\"file\"; filename=\"c.csv\"",
                "name,phone\r\n--XyZa not a delimiter? it is one\r\nAda,1",
            ),
            part("form-data; name=\"clientId\"", "1001"),
        ]);
        let b2 = body(&[
            part("form-data; name=\"title\"", "Spring"),
            part("form-data; name=\"file\"; filename=\"c.csv\"", "a,b\r\n1,2"),
            part("form-data; name=\"clientId\"", "1001"),
        ]);
        for size in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(scan(&b2, size).unwrap(), b2, "chunks of {size}");
        }
        // A line starting with "--XyZ" is a delimiter to some parser, so it is taken as
        // one: here the "headers" after it cannot be read, and the upload is refused.
        assert_eq!(scan(&b, 5), Err(Refusal::Malformed));
        // After the closing delimiter, line breaks only: PHP does not stop there, and
        // reads on line by line.
        let mut epilogue = b2.clone();
        epilogue.extend_from_slice(b"\r\n\r\n");
        assert_eq!(scan(&epilogue, 3).unwrap(), epilogue);
        epilogue.extend_from_slice(b"an epilogue line\r\n");
        assert_eq!(scan(&epilogue, 3), Err(Refusal::Malformed));
    }

    #[test]
    fn a_foreign_id_in_any_spelling_is_refused_in_any_chunking() {
        for disposition in [
            "form-data; name=\"clientId\"",
            "form-data; name=clientId",
            "form-data; NAME=\"CLIENTID\"",
            "form-data; name=\"client\\Id\"",
            "form-data; name=\"client%49d\"",
            "form-data; name=\"client.id\"",
            "form-data; name=\"clientId[]\"",
            "form-data; name*=UTF-8''client%49d",
            "form-data; name*=utf-8'en'clientId",
            "form-data; name*=US-ASCII''client%49d",
            "form-data; name*=iso-8859-1''client%49d",
            "form-data; filename=\"x\"; name=\"client_id\"",
            "form-data; name=\"clientId]\"",
            "form-data; name=\"[clientId]\"",
            "form-data; name=\"campaign[clientId]\"",
            "form-data; name=\"clıentId\"",
        ] {
            let b = body(&[
                part("form-data; name=\"a\"", "1"),
                part(disposition, "1002"),
            ]);
            for size in [1, 3, 16, 4096] {
                assert_eq!(
                    scan(&b, size),
                    Err(Refusal::ClientIdMismatch),
                    "{disposition} in chunks of {size}"
                );
            }
        }
    }

    #[test]
    fn a_disposition_parsers_would_split_differently_is_refused() {
        // Each of these reaches PHP as a field `clientId` (a quote PHP takes and busboy
        // does not, a name PHP ends at whitespace, text after a closing quote, a `'`
        // hiding a `;`), or splits at an escaped quote some parsers do not honour, while
        // a stricter reading sees another name or none.
        for disposition in [
            r#"form-data; name='clientId'"#,
            r#"form-data; name=clientId x"#,
            r#"form-data; name="clientId"x"#,
            r#"form-data; x='"'; name=clientId; y='"'"#,
            r#"form-data; x="a\"; name=clientId; y=""#,
            r#"form-data; x="a\\"; name=clientId"#,
            r#"form-data; x="a\\"; y="; name=clientId; z=""#,
            r#"form-data; name"#,
            r#"form-data; name="#,
            r#"form-data; na'me=clientId"#,
            r#"form-data; name*=UTF-8'client%49d"#,
            // A name in a charset a backend decodes it in (Django, Tomcat): UTF-16 and
            // EBCDIC spellings of `clientId`; and what is not UTF-8 or ASCII as said.
            r#"form-data; name*=UTF-16BE''%00c%00l%00i%00e%00n%00t%00I%00d"#,
            r#"form-data; name*=utf-16le''c%00l%00i%00e%00n%00t%00I%00d%00"#,
            r#"form-data; name*=cp037''%83%93%89%85%95%A3%C9%84"#,
            r#"form-data; name*=''clientId"#,
            r#"form-data; name*=UTF-8''client%C9d"#,
            r#"form-data; name*=US-ASCII''client%C9d"#,
            r#"form-data; name*=UTF-8''client%4"#,
            r#"form-data; name="clientId"#,
            r#"; name=clientId"#,
            // Werkzeug, failing to read a key with a space before `=`, resyncs at the
            // next `;` even inside quotes; formidable takes any `name=` after a word
            // boundary, a key's tail or a quoted filename included.
            r#"form-data; x ="; name=clientId""#,
            r#"form-data; x-name=clientId; name="a""#,
            r#"form-data; filename="; name=clientId"; name="a""#,
            // RFC 2047 encoded words, which Tomcat and Commons FileUpload decode:
            // `clientId`, and `_method`.
            r#"form-data; name="=?UTF-8?B?Y2xpZW50SWQ=?=""#,
            r#"form-data; name="=?UTF-8?Q?client=49d?=""#,
            r#"form-data; name==?utf-8?q?clientId?="#,
            r#"form-data; name="x =?UTF-8?B?X21ldGhvZA==?=""#,
        ] {
            let b = body(&[
                part(r#"form-data; name="a""#, "1"),
                part(disposition, "1002"),
            ]);
            for size in [1, 4096] {
                assert_eq!(
                    scan(&b, size),
                    Err(Refusal::Malformed),
                    "{disposition} in chunks of {size}"
                );
            }
        }
        // What browsers and HTTP clients send passes, byte for byte.
        for disposition in [
            "form-data; name=\"file\"; filename=\"l'\u{e9}t\u{e9} 2024; final.csv\"",
            "form-data; name=\"file\"; filename*=UTF-8''na%C3%AFve.csv",
            "form-data;name=title",
            "form-data; name=\"title\" ;; ",
            r#"form-data; name="file"; filename="C:\Users\ada\c.csv""#,
            // Go's mime/multipart and Ruby escape a quote in a file name.
            r#"form-data; name="file"; filename="q\"uote.txt""#,
            r#"form-data; name="file"; filename="first name=John.txt""#,
            // A file name is not a field's name: an encoded word there passes.
            r#"form-data; name="file"; filename="=?UTF-8?B?w6l0w6k=?=.csv""#,
        ] {
            let b = body(&[part(disposition, "x")]);
            assert_eq!(scan(&b, 3).unwrap(), b, "{disposition}");
        }
        // Apache HttpClient 4.5, Symfony and Dart's http mark parts `8bit` or `binary`.
        for encoding in ["8bit", "binary", "BINARY"] {
            let b = format!("--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Type: text/plain; charset=ISO-8859-1\r\nContent-Transfer-Encoding: {encoding}\r\n\r\nx\r\n--XyZ--\r\n");
            assert_eq!(scan(b.as_bytes(), 3).unwrap(), b.as_bytes(), "{encoding}");
        }
    }

    /// PHP's reading of a `Content-Disposition` value (`main/rfc1867.c`: the pairs
    /// `php_ap_getword` splits at `;`, the key before `=`, the value
    /// `php_ap_getword_conf` unquotes): the name it registers (the last `name=`), if any.
    fn php_name(value: &str) -> Option<String> {
        fn getword<'a>(line: &mut &'a [u8], stop: u8) -> &'a [u8] {
            let mut pos = 0;
            while pos < line.len() && line[pos] != stop {
                let quote = line[pos];
                if quote == b'"' || quote == b'\'' {
                    pos += 1;
                    while pos < line.len() && line[pos] != quote {
                        if line[pos] == b'\\' && line.get(pos + 1) == Some(&quote) {
                            pos += 2;
                        } else {
                            pos += 1;
                        }
                    }
                    if pos < line.len() {
                        pos += 1;
                    }
                } else {
                    pos += 1;
                }
            }
            let pos = pos.min(line.len());
            let word = &line[..pos];
            let mut rest = &line[pos..];
            while rest.first() == Some(&stop) {
                rest = &rest[1..];
            }
            *line = rest;
            word
        }
        fn getword_conf(word: &[u8]) -> Vec<u8> {
            let start = word
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(word.len());
            let word = &word[start..];
            let (text, quote) = match word.first() {
                Some(&q) if q == b'"' || q == b'\'' => (&word[1..], Some(q)),
                _ => {
                    let end = word
                        .iter()
                        .position(|b| b.is_ascii_whitespace())
                        .unwrap_or(word.len());
                    (&word[..end], None)
                }
            };
            let mut out = Vec::new();
            let mut i = 0;
            while i < text.len() && Some(text[i]) != quote {
                let next = text.get(i + 1).copied();
                if text[i] == b'\\' && (next == Some(b'\\') || (quote.is_some() && next == quote)) {
                    i += 1;
                }
                out.push(text[i]);
                i += 1;
            }
            out
        }
        let mut cd = value.as_bytes();
        while cd.first().is_some_and(u8::is_ascii_whitespace) {
            cd = &cd[1..];
        }
        let mut name = None;
        while !cd.is_empty() {
            let mut pair = getword(&mut cd, b';');
            while cd.first().is_some_and(u8::is_ascii_whitespace) {
                cd = &cd[1..];
            }
            if pair.contains(&b'=') {
                let key = getword(&mut pair, b'=');
                if key.eq_ignore_ascii_case(b"name") {
                    name = Some(String::from_utf8_lossy(&getword_conf(pair)).into_owned());
                }
            }
        }
        name
    }

    /// Every `Content-Disposition` of up to six pieces the scanner accepts names, for
    /// PHP, a field the scanner also sees: no spelling PHP reads as `clientId` (or any
    /// other name) passes unseen.
    #[test]
    fn every_name_php_would_read_is_one_the_scan_saw() {
        const PIECES: [&str; 8] = [";", " ", "name", "=", "\"", "'", "\\", "clientId"];
        fn walk(value: &mut String, left: usize, checked: &mut usize) {
            if let (Ok(seen), Some(php)) = (disposition_names(value), php_name(value)) {
                let php = param::fold(&php);
                assert!(
                    seen.iter().any(|n| param::fold(n) == php),
                    "PHP reads {php:?} in {value:?}; the scan saw {seen:?}"
                );
                *checked += 1;
            }
            if left == 0 {
                return;
            }
            for piece in PIECES {
                value.push_str(piece);
                walk(value, left - 1, checked);
                value.truncate(value.len() - piece.len());
            }
        }
        let mut checked = 0;
        walk(&mut String::from("form-data"), 6, &mut checked);
        assert!(
            checked > 100,
            "only {checked} accepted values named a field"
        );
        // Longer ones, drawn at random (a fixed seed: the same ones every run).
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300_000 {
            let mut value = String::from("form-data");
            for _ in 0..8 + next() % 16 {
                value.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            walk(&mut value, 0, &mut checked);
        }
    }

    #[test]
    fn framings_some_parser_reads_otherwise_are_refused() {
        let refused = |body: &[u8], why: Refusal| {
            for size in [1, 5, body.len()] {
                assert_eq!(
                    scan(body, size),
                    Err(why),
                    "{} in chunks of {size}",
                    String::from_utf8_lossy(body).escape_debug()
                );
            }
        };
        // PHP takes a line starting with any `isspace` byte as a continuation of
        // Content-Disposition.
        for first in ["\x0b", "\x0c", "\r"] {
            let body = format!(
                "--XyZ\r\nContent-Disposition: form-data\r\n{first}; name=clientId;:x\r\n\r\n1002\r\n--XyZ--\r\n"
            );
            refused(body.as_bytes(), Refusal::Malformed);
        }
        // Werkzeug ends a header line, and a content line, at a bare CR.
        refused(
            b"--XyZ\r\nX-Foo: bar\rContent-Disposition: form-data; name=clientId\r\n\r\n1002\r\n--XyZ--\r\n",
            Refusal::Malformed,
        );
        refused(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\r\nname,phone\r--XyZ\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--XyZ--\r\n",
            Refusal::ClientIdMismatch,
        );
        refused(
            b"--XyZ\rContent-Disposition: form-data; name=clientId\r\r1002\r--XyZ--\r",
            Refusal::Malformed,
        );
        // Werkzeug finds the first delimiter anywhere in the preamble.
        refused(
            b"preamble--XyZ\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--XyZ--\r\n",
            Refusal::Malformed,
        );
        // RFC 2231 continuations: `name=clientId` to Python's email package.
        refused(
            b"--XyZ\r\nContent-Disposition: form-data; name*0=client; name*1=Id\r\n\r\n1002\r\n--XyZ--\r\n",
            Refusal::Malformed,
        );
        // A header name that is not a token, or a control byte in a value.
        refused(
            b"--XyZ\r\nContent Disposition: form-data; name=a\r\n\r\nx\r\n--XyZ--\r\n",
            Refusal::Malformed,
        );
        refused(
            b"--XyZ\r\nContent-Disposition: form-data; name=a\x0b\r\n\r\nx\r\n--XyZ--\r\n",
            Refusal::Malformed,
        );
        // Line breaks inside content are content, CR alone included, and a blank
        // preamble is no preamble.
        let body = b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.csv\"\r\n\r\nname,phone\rAda,1\r\n\rGrace,2\n\r\n--XyZ--\r\n";
        assert_eq!(scan(body, 3).unwrap(), body);
    }

    #[test]
    fn what_a_differential_run_against_six_parsers_found_is_refused() {
        // Found by sending mutated bodies to PHP 8.2, Werkzeug, python-multipart,
        // busboy, multer and formidable, straight and through the gateway. With
        // boundary XyZ; each would have reached a backend as a field the scan missed.
        let pad = "a".repeat(5113);
        let tail = "y".repeat(5120);
        for (body, why) in [
            // LF then CRLF ends the block for the scan only; an empty header block.
            ("--XyZ\r\nX: 1\n\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\n\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\nContent-Disposition: form-data; name=\"a\"\nX: ; name=clientId\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            // PHP's 5,120-byte line pieces: a header line, the epilogue, a padded
            // delimiter.
            (format!("--XyZ\r\nX-Pad: {pad}Content-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--XyZ--\r\n"), Refusal::Malformed),
            (format!("--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--XyZ--\r\n{tail}--XyZ\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--XyZ--\r\n"), Refusal::Malformed),
            (format!("--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--XyZ \r\nX: 1\r\n\r\n{tail}--XyZ\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--XyZ--\r\n"), Refusal::Malformed),
            // A body that ends in a part's headers (PHP: clientId=""), `\r\r`.
            ("--XyZ\r\nContent-Disposition: form-data; name=\"clientId\"\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\nContent-Disposition: form-data; name=\"clientId\"\r\r1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            // A value most parsers read on past `\r--XyZ`.
            ("--XyZ\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1001\r--XyZ\r\nX: 1\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            // One part named both ways; an encoding formidable dies on; a name=
            // formidable would take before the real key.
            ("--XyZ\r\nContent-Disposition: form-data; name=\"clientId\"\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\n1001\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\nx\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\nContent-Disposition: form-data; filename=\"x\\\"; name=clientId\"; name=\"a\"\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            // Rack 2.2 (a second round, on WEBrick): the last `;name=` of the line,
            // inside quotes too; a nameless part named by its `Content-ID`; the header
            // block searched for `Content-Disposition:` anywhere.
            ("--XyZ\r\nContent-Disposition: form-data; name=\"note;name=clientId\"\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\nContent-Disposition: form-data; name=\"x\"; foo=\"a; NAME=clientId\"\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\nContent-Disposition: form-data; name=\"x\"; filename=\"a;name=_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\nContent-Disposition: form-data\r\nContent-ID: clientId\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\nContent-Disposition: form-data; name=\"\"\r\nContent-Type: clientId\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\nContent-Disposition: form-data; name=\"\"; filename=\"client%49d\"\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\nContent-ID: x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
            ("--XyZ\r\nContent-Type: text/plain; x=\"Content-Disposition: ; name=clientId\"\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1002\r\n--XyZ--\r\n".to_owned(), Refusal::Malformed),
        ] {
            for size in [1, 7, body.len()] {
                assert_eq!(
                    scan(body.as_bytes(), size),
                    Err(why),
                    "{} in chunks of {size}",
                    body.escape_debug()
                );
            }
        }
    }

    #[test]
    fn what_is_released_before_a_refusal_never_holds_the_value() {
        let b = body(&[part("form-data; name=\"clientId\"", "1002")]);
        let mut scanner = Scanner::new("XyZ", &names(), "1001", "POST");
        let mut released = Vec::new();
        for chunk in b.chunks(1) {
            match scanner.feed(Bytes::copy_from_slice(chunk)) {
                Ok(parts) => parts.iter().for_each(|p| released.extend_from_slice(p)),
                Err(_) => break,
            }
        }
        let text = String::from_utf8(released).unwrap();
        assert!(!text.contains("1002"), "{text}");
    }

    #[test]
    fn variants_of_framing() {
        // Folded headers and header case pass; bare LF line endings (parsers disagree
        // on where such a block ends) and a watched part no delimiter closes do not.
        let folded = "--XyZ\r\nContent-Disposition: form-data;\r\n name=\"clientId\"\r\n\r\n1002\r\n--XyZ--\r\n";
        assert_eq!(scan(folded.as_bytes(), 2), Err(Refusal::ClientIdMismatch));
        let lf = "--XyZ\nContent-Disposition: form-data;\n name=\"clientId\"\n\n1002\n--XyZ--\n";
        assert_eq!(scan(lf.as_bytes(), 2), Err(Refusal::Malformed));
        let unclosed = "--XyZ\r\ncontent-disposition: form-data; name=clientId\r\n\r\n1002";
        assert_eq!(scan(unclosed.as_bytes(), 4), Err(Refusal::Malformed));
        let own = "--XyZ\r\ncontent-disposition: form-data; name=clientId\r\n\r\n1001\r\n--XyZ--";
        assert_eq!(scan(own.as_bytes(), 4).unwrap(), own.as_bytes());
        let long = body(&[part("form-data; name=clientId", &"1".repeat(5000))]);
        assert_eq!(scan(&long, 100), Err(Refusal::ClientIdMismatch));
        let encoded = "--XyZ\r\nContent-Disposition: form-data; name=a\r\nContent-Transfer-Encoding: base64\r\n\r\nMTAwMg==\r\n--XyZ--\r\n";
        assert_eq!(scan(encoded.as_bytes(), 4096), Err(Refusal::Malformed));
        let no_colon = "--XyZ\r\nnonsense\r\n\r\nx\r\n--XyZ--\r\n";
        assert_eq!(scan(no_colon.as_bytes(), 4096), Err(Refusal::Malformed));
        let huge = format!("--XyZ\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(scan(huge.as_bytes(), 4096), Err(Refusal::Malformed));
    }
}
