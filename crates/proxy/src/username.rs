//! The usernames a login body submits, for limits counted per account.
//!
//! The gateway and the backend must not disagree on who is logging in, or one account's
//! limit could be dodged by spelling its name differently. So every candidate counts:
//! each member or field named like one of the route's `username_fields` (names compared
//! case-insensitively; repeated JSON members and repeated form fields all included),
//! each value trimmed, NFKC-normalised and case-folded. The body is read both as JSON and
//! as a form whatever its `Content-Type` says, since a backend may parse it either way
//! (a multipart or compressed body, which would hide it, is refused with 415),
//! and the query's parameters count as well (PHP's `$_REQUEST`, Spring's `@RequestParam`).
//! A body that opens like JSON (`{` or `[`, after whitespace or a byte-order mark) must
//! be JSON the gateway reads whole, or it is refused (400 `INVALID_JSON`): backends take
//! what serde_json refuses (`1e400`, a byte-order mark, a lone surrogate, deep nesting,
//! trailing bytes), and a body the gateway gave up on named nobody while the backend
//! still checked the victim's password. A charset other than UTF-8 is refused (415), as
//! a backend would decode the names differently.
//! A JSON value that is not a string still names someone to a backend that coerces it
//! (`5551234` is a phone number, `["alice"]` is `"alice"` to JavaScript's `String`): a
//! number counts as its digits (a whole one however it is written), an array as each
//! of its elements, anything else as its JSON text.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use http::Request;
use http_body_util::Either;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize as _;
use sha2::{Digest, Sha256};
use tollgate_policy::media::MediaType;
use tollgate_policy::param;
use unicode_normalization::UnicodeNormalization;

use crate::body::{self, Reading, RequestBody};
use crate::errors::{GatewayError, JsonProblem, MediaRefusal, RequestError};
use crate::method_override;

/// Login bodies are small; this much is read to find the username.
const MAX_LOGIN_BODY_BYTES: u64 = 64 * 1024;
/// A login naming more accounts than this at once is refused.
pub const MAX_USERNAMES: usize = 4;

/// Reads the body (bounded in size, time and memory) and returns the request, its body
/// intact, with the hashed usernames it names (none: an empty list).
pub async fn submitted(
    request: Request<RequestBody>,
    fields: &[String],
    reading: &Reading,
) -> Result<(Request<RequestBody>, Vec<String>), GatewayError> {
    let (parts, body) = request.into_parts();
    // What the gateway reads here must be what the backend reads: a multipart or a
    // compressed body would hide the account (and a `_method`) from it.
    let multipart = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        });
    if multipart || parts.headers.contains_key(http::header::CONTENT_ENCODING) {
        return Err(MediaRefusal::LoginUnreadable.into());
    }
    if let Some(value) = parts.headers.get(http::header::CONTENT_TYPE) {
        // A type the gateway cannot parse is one no backend parses either: its body is
        // still read both ways below. A charset names other bytes for the same names.
        if let Ok(media) = MediaType::parse(value.as_bytes()) {
            if !media.is_utf8().unwrap_or(false) {
                return Err(MediaRefusal::Charset(media.essence().to_owned()).into());
            }
        }
    }
    let held = body::hold(
        &parts,
        body,
        MAX_LOGIN_BODY_BYTES,
        &reading.for_pool(body::Pool::Session),
    )
    .await?;
    let bytes = held.bytes();
    // Read anyway, so judged as an identified caller's body would be: a `_method` here
    // would turn the login's POST into a method no route allows on its path.
    method_override::judge_json(&bytes, &parts.method)?;
    method_override::judge_params(&bytes, &parts.method)?;
    let mut values = json_values(&bytes, fields)?;
    // The query too: PHP's $_REQUEST and Spring's @RequestParam read it beside the form.
    let query = parts.uri.query().unwrap_or_default().as_bytes();
    values.extend(
        param::pairs(&bytes)
            .into_iter()
            .chain(param::pairs(query))
            .filter(|(name, _)| is_field(fields, name))
            .map(|(_, value)| value),
    );
    let names: BTreeSet<String> = values
        .iter()
        .map(|v| normalize(v))
        .filter(|v| !v.is_empty())
        .collect();
    if names.len() > MAX_USERNAMES {
        return Err(RequestError::LoginAmbiguous { max: MAX_USERNAMES }.into());
    }
    let hashed = names.iter().map(|n| hash(n)).collect();
    Ok((Request::from_parts(parts, Either::Right(held)), hashed))
}

fn is_field(fields: &[String], name: &str) -> bool {
    fields.iter().any(|f| param::means(name, f))
}

/// How accounts compare: `Alice `, `alice`, `ａｌｉｃｅ` (fullwidth) and `Alïce` are
/// one. Accents go because the legacy stack's database compares names without them:
/// MariaDB's `utf8mb4_general_ci` and MySQL 8's `utf8mb4_0900_ai_ci` find
/// `demo@acme.test` for `dëmo@acmé.test`, so each accented spelling would otherwise
/// have had a fresh count of its own. Letters those collations fold whole (`ß`, `æ`,
/// `ø`, `ł`…) are spelled out as they compare. Two names that differ only so share a
/// count, which errs on the safe side.
pub fn normalize(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value
        .trim()
        .nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        // What a collation ignores (MySQL 8's `utf8mb4_0900_ai_ci`): control characters
        // and the invisible ones (soft hyphen, zero-width joiners, the BOM...), anywhere
        // in the name, where each would otherwise have opened a count of its own.
        .filter(|c| !c.is_control() && !is_default_ignorable(*c))
        .flat_map(char::to_lowercase)
    {
        match c {
            'ß' => out.push_str("ss"),
            'æ' => out.push_str("ae"),
            'œ' => out.push_str("oe"),
            'þ' => out.push_str("th"),
            'ø' => out.push('o'),
            'đ' | 'ð' => out.push('d'),
            'ł' => out.push('l'),
            'ħ' => out.push('h'),
            'ŧ' => out.push('t'),
            'ı' => out.push('i'),
            c => out.push(c),
        }
    }
    out
}

/// Unicode's Default_Ignorable_Code_Point: characters that are drawn as nothing and that
/// collations give no weight.
fn is_default_ignorable(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

/// No usernames in Redis or memory dumps: a hash names the count.
fn hash(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let mut hex = String::with_capacity(32);
    for b in &digest[..16] {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Every string value of a top-level member named like a field, repeats included; none
/// when the body does not open like JSON, an error when it does but is not JSON whole.
fn json_values(bytes: &[u8], fields: &[String]) -> Result<Vec<String>, JsonProblem> {
    // The first byte after a byte-order mark and JSON's white space.
    let first = bytes
        .strip_prefix(b"\xef\xbb\xbf")
        .unwrap_or(bytes)
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if !matches!(first, Some(b'{' | b'[')) {
        return Ok(Vec::new());
    }
    struct Members<'f>(&'f [String]);
    impl<'de> Visitor<'de> for Members<'_> {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                let value: serde_json::Value = map.next_value()?;
                if is_field(self.0, &name) {
                    candidates(value, &mut out);
                }
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let values = if first == Some(&b'[') {
        serde::de::IgnoredAny::deserialize(&mut de).map(|_| Vec::new())
    } else {
        de.deserialize_map(Members(fields))
    };
    values
        .and_then(|values| de.end().map(|()| values))
        .map_err(|_| JsonProblem::Malformed)
}

/// A number as the backends that coerce it read it: a whole number written with a
/// fraction or an exponent (`5551234.0`, `5551234e0`) is its digits, as JavaScript's
/// `String(5551234.0)` and PHP's `(string)` give (a backend reading the literal text
/// reads another name, one no account has). Only below 2^53, where every whole number
/// is exact: larger ones spell differently per language.
fn number_name(n: &serde_json::Number) -> String {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match n.as_f64() {
        Some(v) if !n.is_i64() && !n.is_u64() && v.fract() == 0.0 && v.abs() < EXACT => {
            // Whole and below 2^53: the cast is exact.
            (v as i64).to_string()
        }
        _ => n.to_string(),
    }
}

/// The names one JSON value stands for (see the module docs).
fn candidates(value: serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match value {
        Value::String(s) => out.push(s),
        Value::Number(n) => out.push(number_name(&n)),
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Array(_) => out.push(item.to_string()),
                    item => candidates(item, out),
                }
            }
        }
        Value::Null => {}
        other => out.push(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<String> {
        vec!["username".into(), "email".into()]
    }

    #[test]
    fn every_spelling_of_one_account_is_one_name() {
        for v in [
            "alice",
            " Alice ",
            "ALICE",
            "ａｌｉｃｅ",
            "Alïce",
            "ÀLİCE",
            "a\u{301}lice",
        ] {
            assert_eq!(normalize(v), "alice", "{v}");
        }
        // As an accent-insensitive collation compares them (MariaDB's default).
        for v in [
            "démo@acme.test",
            "DÊMO@ACMÉ.TEST",
            "dëmo@acmé.tëst",
            "dēmo@acme.test",
        ] {
            assert_eq!(normalize(v), "demo@acme.test", "{v}");
        }
        assert_eq!(normalize("Straße"), "strasse");
        // Invisible and control characters, which collations ignore, anywhere.
        for v in [
            "vic\u{ad}tim",
            "vic\u{200b}tim",
            "victim\u{200d}",
            "\u{feff}victim",
            "vic\u{2060}tim",
            "vic\u{0}tim",
            "vic\u{1}tim",
            "vict\u{fe0f}im",
        ] {
            assert_eq!(normalize(v), "victim", "{v:?}");
        }
        assert_eq!(normalize("Søren Łukasz Æsir"), "soren lukasz aesir");
        assert_ne!(normalize("alice"), normalize("alicf"));
    }

    #[test]
    fn json_members_count_whatever_their_case_and_however_often_they_repeat() {
        let body = br#"{"username":"r1","UserName":"victim","username":"r2","email":"e","other":"x","password":"p"}"#;
        assert_eq!(
            json_values(body, &fields()).unwrap(),
            ["r1", "victim", "r2", "e"]
        );
        assert!(json_values(b" [1,2]", &fields()).unwrap().is_empty());
        assert!(json_values(b"username=a", &fields()).unwrap().is_empty());
        assert!(json_values(br#"{"username":null}"#, &fields())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_body_that_opens_like_json_but_is_not_json_whole_is_refused() {
        // Each of these is JSON to Express, PHP or Python, which read the username the
        // gateway would otherwise not have counted.
        let deep_member = format!(
            r#"{{"username":"v","x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for body in [
            r#"{"username":"victim","x":1e400}"#,
            r#"{"x":1e400,"username":"victim"}"#,
            "\u{feff}{\"username\":\"victim\"}",
            r#"{"username":"victim","x":"\ud800"}"#,
            r#"{"username":"victim"} trailing"#,
            r#"{"username":"victim"}{"username":"other"}"#,
            "{not json",
            " \n[1,",
            &deep_member,
        ] {
            assert_eq!(
                json_values(body.as_bytes(), &fields()),
                Err(JsonProblem::Malformed),
                "{body}"
            );
        }
    }

    #[test]
    fn values_a_backend_would_coerce_name_someone_too() {
        let values = |body: &str| json_values(body.as_bytes(), &fields()).unwrap();
        assert_eq!(values(r#"{"username":5551234}"#), ["5551234"]);
        for whole in [
            "5551234.0",
            "5551234.00",
            "5551234e0",
            "5551234E+0",
            "55512340e-1",
        ] {
            let body = format!(r#"{{"username":{whole}}}"#);
            assert_eq!(values(&body), ["5551234"], "{whole}");
        }
        assert_eq!(values(r#"{"username":-0.0}"#), ["0"]);
        assert_eq!(values(r#"{"username":5551234.5}"#), ["5551234.5"]);
        assert_eq!(values(r#"{"username":1e300}"#), ["1e+300"]);
        assert_eq!(values(r#"{"username":["victim"]}"#), ["victim"]);
        assert_eq!(
            values(r#"{"username":["a",7,["b"]]}"#),
            ["a", "7", r#"["b"]"#]
        );
        assert_eq!(values(r#"{"username":{"$ne":""}}"#), [r#"{"$ne":""}"#]);
        assert_eq!(values(r#"{"username":true}"#), ["true"]);
    }
}
