//! What kind of body a request carries, on a route that identifies its caller (part of
//! stage 8, rewrite).
//!
//! Identity checks fail closed: a body is JSON, a form, multipart, or a type the route
//! declares opaque (`opaque_body_types`), and each of those is handled — JSON and form
//! rewritten, multipart watched as it streams, opaque bodies passed as the route says.
//! Anything else is refused with 415 before the backend is called: a body sent as
//! `text/plain` or with no `Content-Type` at all may still be parsed as JSON by a PHP or
//! Express backend, and a `Content-Type` the gateway cannot read (a non-ASCII byte, a
//! repeated parameter, a charset other than UTF-8) may be read differently by it. So is
//! a compressed body (`Content-Encoding`), which the gateway cannot inspect.

use http::header::{HeaderMap, CONTENT_ENCODING, CONTENT_TYPE};
use tollgate_policy::media::{MediaError, MediaType, FIELD_PARSER_WORDS};
use tollgate_policy::Route;

use crate::errors::{GatewayError, MediaRefusal};

/// A body's kind, and so how the gateway treats it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyClass {
    /// No body.
    Empty,
    Json,
    Form,
    Multipart {
        boundary: String,
    },
    /// A type the route declares opaque: streamed untouched.
    Opaque,
}

/// Classifies the body of a request on a route that identifies its caller.
pub fn classify(
    headers: &HeaderMap,
    has_body: bool,
    route: &Route,
) -> Result<BodyClass, GatewayError> {
    // A declared length of 0 is no body, however it is framed: an HTTP/2 request that
    // ends with an empty DATA frame reads as having one until the frame arrives.
    let declared_empty = headers
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    if !has_body || declared_empty {
        return Ok(BodyClass::Empty);
    }
    refuse_encoded(headers)?;
    let value = headers
        .get(CONTENT_TYPE)
        .ok_or(GatewayError::from(MediaRefusal::Missing))?;
    let media = MediaType::parse(value.as_bytes()).map_err(refusal)?;
    let essence = media.essence();
    // A multipart body is inspected whatever its boundary says, and its parameters are
    // held to `boundary` and `charset` below; a random browser boundary may well spell
    // `json` (`----WebKitFormBoundaryAbJsoN…`).
    if essence != "multipart/form-data" {
        refuse_other_type_named(value.as_bytes())?;
    }
    let utf8 = |media: &MediaType| match media.is_utf8() {
        Ok(true) => Ok(()),
        Ok(false) => Err(GatewayError::from(MediaRefusal::Charset(
            media.essence().to_owned(),
        ))),
        Err(e) => Err(refusal(e)),
    };
    if is_json(essence) {
        utf8(&media)?;
        return Ok(BodyClass::Json);
    }
    if essence == "application/x-www-form-urlencoded" {
        utf8(&media)?;
        return Ok(BodyClass::Form);
    }
    if essence == "multipart/form-data" {
        // A charset could make a backend decode field names and values differently
        // from the scanner (UTF-16); a repeated one is ambiguous.
        utf8(&media)?;
        // Only `boundary` and `charset`, as every client sends: PHP takes the boundary
        // from the first text `boundary` anywhere in the header (`xboundary=AAA;
        // boundary=BBB` is AAA to it), and ends it at `,` or `;` even in quotes; a
        // boundary of RFC 2046 characters, unquoted or quoted, reads alike everywhere.
        if media
            .param_names()
            .any(|n| n != "boundary" && n != "charset")
            || !boundary_where_php_looks(value.as_bytes())
        {
            return Err(GatewayError::from(MediaRefusal::NoBoundary));
        }
        return match media.param("boundary").map_err(refusal)? {
            Some(boundary) if is_boundary(boundary) => Ok(BodyClass::Multipart {
                boundary: boundary.to_owned(),
            }),
            _ => Err(GatewayError::from(MediaRefusal::NoBoundary)),
        };
    }
    if route.opaque_body_types.iter().any(|r| r.matches(&media)) {
        // `text/*` declared opaque takes `text/json` too, which such a backend parses;
        // `application/octet-stream`, the usual upload, yields no fields and passes.
        if let Some(word) = FIELD_PARSER_WORDS.iter().find(|w| essence.contains(**w)) {
            return Err(MediaRefusal::NamesAnotherType(word).into());
        }
        return Ok(BodyClass::Opaque);
    }
    Err(GatewayError::from(MediaRefusal::NotAccepted(
        essence.to_owned(),
    )))
}

/// Refuses (415) a body the gateway reads itself as JSON unless it is said to be JSON
/// (UTF-8, not compressed): `text/plain` or a form is not parsed as JSON on a guess.
pub fn require_json(headers: &HeaderMap) -> Result<(), GatewayError> {
    refuse_encoded(headers)?;
    let value = headers
        .get(CONTENT_TYPE)
        .ok_or(GatewayError::from(MediaRefusal::Missing))?;
    let media = MediaType::parse(value.as_bytes()).map_err(refusal)?;
    if !is_json(media.essence()) {
        return Err(MediaRefusal::JsonOnly(media.essence().to_owned()).into());
    }
    match media.is_utf8() {
        Ok(true) => Ok(()),
        Ok(false) => Err(MediaRefusal::Charset(media.essence().to_owned()).into()),
        Err(e) => Err(refusal(e)),
    }
}

/// What some backends search the whole `Content-Type` for to pick a body parser:
/// formidable (Node) matches `/json/i`, `/urlencoded/i`, `/multipart/i` and
/// `/octet-stream/i` anywhere in the header, so `text/csv; x=multipart; boundary=B`
/// passed as an opaque CSV and was parsed as a form carrying another client's id. In
/// parameters even `octet-stream` is refused: no client sends it there, and it would
/// change how such a backend reads the body.
const PARSER_WORDS: &[&str] = &[
    "json",
    "urlencoded",
    "multipart",
    "form-data",
    "octet-stream",
];

/// Refuses a `Content-Type` whose parameters name a kind of body: the gateway reads the
/// type, such a backend the whole header.
fn refuse_other_type_named(raw: &[u8]) -> Result<(), GatewayError> {
    let Some(at) = raw.iter().position(|b| *b == b';') else {
        return Ok(());
    };
    let params = raw[at..].to_ascii_lowercase();
    match PARSER_WORDS
        .iter()
        .find(|w| params.windows(w.len()).any(|s| s == w.as_bytes()))
    {
        Some(word) => Err(MediaRefusal::NamesAnotherType(word).into()),
        None => Ok(()),
    }
}

/// Whether PHP finds the boundary where the parameter is: it takes the text after the
/// first `boundary` (case-sensitive) and its `=`, quoted or to `,`/`;`, and keeps a
/// backslash that unquoting drops. So the parameter must be spelled `boundary`, that
/// must be the first such text, and no backslash may appear.
fn boundary_where_php_looks(raw: &[u8]) -> bool {
    let Some(at) = raw.windows(8).position(|w| w == b"boundary") else {
        return false;
    };
    let before = raw[..at].trim_ascii_end();
    !raw.contains(&b'\\') && before.ends_with(b";") && raw[at + 8..].starts_with(b"=")
}

/// A boundary as RFC 2046 writes it: 1 to 70 of `bchars`, not ending in a space (and
/// without `,` or `;`, where PHP would end it).
fn is_boundary(b: &str) -> bool {
    (1..=70).contains(&b.len())
        && !b.ends_with(' ')
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"'()+_-./:=? ".contains(&c))
}

/// `application/json` and every `application/*+json`.
pub fn is_json(essence: &str) -> bool {
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn refusal(e: MediaError) -> GatewayError {
    GatewayError::from(MediaRefusal::Unreadable(e))
}

fn refuse_encoded(headers: &HeaderMap) -> Result<(), GatewayError> {
    for value in headers.get_all(CONTENT_ENCODING) {
        let identity = value.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|e| e.trim().eq_ignore_ascii_case("identity"))
        });
        if !identity {
            return Err(GatewayError::from(MediaRefusal::Encoded));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tollgate_policy::media::MediaRange;

    fn route(opaque: &[&str]) -> Route {
        let mut r = crate::testing::route("/x/*");
        r.opaque_body_types = opaque
            .iter()
            .map(|t| MediaRange::parse(t).unwrap())
            .collect();
        r
    }

    fn class(headers: &[(&str, &[u8])], opaque: &[&str]) -> Result<BodyClass, GatewayError> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        classify(&h, true, &route(opaque))
    }

    fn refused(r: Result<BodyClass, GatewayError>) -> bool {
        matches!(
            r,
            Err(GatewayError::Request(
                crate::errors::RequestError::MediaType(_)
            ))
        )
    }

    #[test]
    fn the_kinds_the_gateway_inspects() {
        let ct = |v: &'static [u8]| [("content-type", v)];
        assert_eq!(
            class(&ct(b"application/json"), &[]).unwrap(),
            BodyClass::Json
        );
        assert_eq!(
            class(&ct(b"Application/Problem+JSON; charset=UTF-8"), &[]).unwrap(),
            BodyClass::Json
        );
        assert_eq!(
            class(&ct(b"application/x-www-form-urlencoded;charset=utf-8"), &[]).unwrap(),
            BodyClass::Form
        );
        assert_eq!(
            class(&ct(b"multipart/form-data; boundary=\"ab\""), &[]).unwrap(),
            BodyClass::Multipart {
                boundary: "ab".into()
            }
        );
        for value in [
            &b"multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW"[..],
            b"multipart/form-data; boundary=---------------------------9051914041544843365972754266",
            b"multipart/form-data; charset=utf-8; boundary=\"a'(b)+c_d-e.f/g:h=i?j k\"",
        ] {
            assert!(
                matches!(class(&ct(value), &[]), Ok(BodyClass::Multipart { .. })),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        assert_eq!(
            class(&ct(b"text/csv"), &["text/csv"]).unwrap(),
            BodyClass::Opaque
        );
        assert_eq!(
            class(&ct(b"image/png"), &["image/*"]).unwrap(),
            BodyClass::Opaque
        );
        // The usual upload type, as the docs' example lists it: it yields no fields to
        // any backend (`check` accepts it, so the gateway must too).
        assert_eq!(
            class(
                &ct(b"application/octet-stream"),
                &["application/octet-stream"]
            )
            .unwrap(),
            BodyClass::Opaque
        );
        // In parameters it is still refused: no client sends it there.
        assert!(refused(class(
            &ct(b"text/csv; x=octet-stream"),
            &["text/csv"]
        )));
        let h = HeaderMap::new();
        assert_eq!(classify(&h, false, &route(&[])).unwrap(), BodyClass::Empty);
    }

    /// formidable picks its parser by a search of the whole header: a form, an opaque
    /// CSV or a multipart body whose parameters name another kind was parsed as that
    /// kind, with a client id the gateway never saw (found against formidable 3.5.4).
    #[test]
    fn a_type_whose_parameters_name_another_kind_is_refused() {
        let ct = |v: &'static [u8]| [("content-type", v)];
        for value in [
            &b"application/x-www-form-urlencoded; x=multipart; boundary=XyZ"[..],
            b"text/csv; x=multipart; boundary=XyZ",
            b"text/csv; charset=\"multipart\"; boundary=XyZ",
            b"text/csv; x=json",
            b"text/csv; x=URLENCODED",
            b"application/json; profile=form-data",
        ] {
            let r = class(&ct(value), &["text/csv"]);
            assert!(
                matches!(
                    r,
                    Err(GatewayError::Request(
                        crate::errors::RequestError::MediaType(MediaRefusal::NamesAnotherType(_))
                    ))
                ),
                "{}: {r:?}",
                String::from_utf8_lossy(value)
            );
        }
        // A wildcard declared opaque does not take a type named for a parser.
        assert!(refused(class(&ct(b"text/json"), &["text/*"])));
        assert!(refused(class(&ct(b"text/x-urlencoded"), &["text/*"])));
        // What clients send passes.
        assert_eq!(
            class(
                &ct(b"text/csv; charset=utf-8; header=present"),
                &["text/csv"]
            )
            .unwrap(),
            BodyClass::Opaque
        );
        assert_eq!(
            class(&ct(b"application/json; charset=utf-8"), &[]).unwrap(),
            BodyClass::Json
        );
        // A browser's random boundary may spell a word: multipart is inspected anyway.
        assert_eq!(
            class(
                &ct(b"multipart/form-data; boundary=----WebKitFormBoundaryAbJsoNcd12345678"),
                &[]
            )
            .unwrap(),
            BodyClass::Multipart {
                boundary: "----WebKitFormBoundaryAbJsoNcd12345678".into()
            }
        );
    }

    #[test]
    fn a_declared_length_of_zero_is_no_body() {
        // As an HTTP/2 request that ends with an empty DATA frame looks at first.
        assert_eq!(
            class(&[("content-length", b"0")], &[]).unwrap(),
            BodyClass::Empty
        );
        assert!(refused(class(&[("content-length", b"1")], &[])));
    }

    #[test]
    fn everything_else_is_refused() {
        for value in [
            &b"application/json; charset=\xff"[..],
            b"application/json; charset=utf-16",
            b"application/x-www-form-urlencoded; charset=utf-7",
            b"text/plain",
            b"text/json",
            b"application/octet-stream",
            b"multipart/form-data",
            b"multipart/form-data; boundary=a; boundary=b",
            // Found by the request_head fuzzer: a repeated charset on multipart.
            b"multipart/form-data; charset=utf-8; boundary=a; charset=latin1",
            b"multipart/form-data; charset=utf-16; boundary=a",
            b"multipart/mixed; boundary=a",
            // PHP takes the first `boundary` text in the header, wherever it is.
            b"multipart/form-data; xboundary=AAA; boundary=BBB",
            b"multipart/form-data; name=boundary; boundary=BBB",
            // PHP finds `boundary` case-sensitively, and keeps a backslash.
            b"multipart/form-data; BOUNDARY=\"boundary=X\"",
            b"multipart/form-data; boundary=\"a\\b\"",
            // PHP ends a boundary at `,` or `;`, even quoted.
            b"multipart/form-data; boundary=\"AAA;x\"",
            b"multipart/form-data; boundary=\"AAA,x\"",
            b"multipart/form-data; boundary=\"a\\\"b\"",
            b"multipart/form-data; boundary=\"AAA \"",
            b"application/json; charset=utf-8; charset=latin1",
            b"json",
        ] {
            assert!(
                refused(class(&[("content-type", value)], &["text/csv"])),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        assert!(refused(class(&[], &["text/csv"])));
        assert!(refused(class(
            &[
                ("content-type", b"application/json"),
                ("content-encoding", b"gzip")
            ],
            &[]
        )));
        assert!(class(
            &[
                ("content-type", b"application/json"),
                ("content-encoding", b"identity")
            ],
            &[]
        )
        .is_ok());
    }
}
