//! Method-override parameters (part of stage 8, rewrite).
//!
//! Rails (`Rack::MethodOverride`), Laravel, Symfony and Express's `method-override` turn
//! a POST into the method a `_method` parameter names: in the query, a form or JSON body,
//! or a multipart field. The gateway judged the request by its real method, so a route
//! that allows POST would let a DELETE through to a path where no route allows one. The
//! headers that do the same are stripped ([`crate::rewrite`]); a `_method` naming another
//! method than the request's own is refused (400 `METHOD_OVERRIDE_REFUSED`) wherever the
//! gateway reads: the query on every route; JSON and form bodies, and multipart fields
//! ([`crate::multipart`]), on routes that identify their caller, whose bodies it reads,
//! and login bodies read for a per-username limit ([`crate::username`]). (Other bodies
//! on anonymous routes stream through unread.)
//!
//! Names are compared as [`tollgate_policy::param`] folds them (`_METHOD`, `%5Fmethod`,
//! PHP's `.method`, Rack's `_method]`, qs's `[_method]`), values trimmed and case-insensitively (Rack upper-cases them).

use http::Method;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use tollgate_policy::param;

use crate::errors::{GatewayError, RequestError};

/// The parameter the frameworks read.
pub const PARAM: &str = "_method";

/// Whether `value` leaves `method` as it is.
pub fn keeps(value: &str, method: &str) -> bool {
    value.trim().eq_ignore_ascii_case(method)
}

fn refused() -> GatewayError {
    RequestError::MethodOverride.into()
}

/// Judges every `_method` of a query or form body.
pub fn judge_params(text: &[u8], method: &Method) -> Result<(), GatewayError> {
    // Most requests name no such parameter: no decoding for them. (An escape could
    // spell the name: then they are decoded.)
    if !contains_method(text) && !text.contains(&b'%') {
        return Ok(());
    }
    for value in param::values_of(text, PARAM) {
        if !keeps(&value, method.as_str()) {
            return Err(refused());
        }
    }
    Ok(())
}

/// Judges every top-level `_method` member of a JSON body (Laravel merges a JSON body
/// into its input); a value that is not a string never names the request's method.
pub fn judge_json(body: &[u8], method: &Method) -> Result<(), GatewayError> {
    // An escape could spell the name; without one, the name must appear as it is.
    if !contains_method(body) && !body.contains(&b'\\') {
        return Ok(());
    }
    struct Members<'m>(&'m str);
    impl<'de> Visitor<'de> for Members<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut kept = true;
            while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if param::means(&name, PARAM) {
                    let value: serde_json::Value = map.next_value()?;
                    kept &= value.as_str().is_some_and(|v| keeps(v, self.0));
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(kept)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    // Not an object, or malformed: nothing a framework would take a method from (the
    // client-id rewrite refuses malformed JSON on its own).
    match de.deserialize_map(Members(method.as_str())) {
        Ok(false) => Err(refused()),
        _ => Ok(()),
    }
}

/// Whether `text` contains `method` in any case.
fn contains_method(text: &[u8]) -> bool {
    // `position` over bytes compiles to a fast scan; few bytes of a body are an `m`.
    let mut rest = text;
    while let Some(at) = rest.iter().position(|b| b | 0x20 == b'm') {
        if rest
            .get(at..at + 6)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"method"))
        {
            return true;
        }
        rest = &rest[at + 1..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::Problem;

    fn refused(r: Result<(), GatewayError>) -> bool {
        r.is_err_and(|e| e.code() == "METHOD_OVERRIDE_REFUSED")
    }

    #[test]
    fn a_parameter_naming_another_method_is_refused_in_every_spelling() {
        for text in [
            "_method=DELETE",
            "a=1&_method=delete",
            "_METHOD=PUT",
            "%5Fmethod=PATCH",
            "_m%65thod=DELETE",
            ".method=DELETE",
            "_method[]=DELETE",
            "a=1;_method=DELETE",
            "_method=POST&_method=DELETE",
        ] {
            assert!(
                refused(judge_params(text.as_bytes(), &Method::POST)),
                "{text}"
            );
        }
        for text in ["", "a=1", "_method=POST", "_method=+post+", "method=DELETE"] {
            assert!(
                judge_params(text.as_bytes(), &Method::POST).is_ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn a_json_member_naming_another_method_is_refused() {
        for body in [
            r#"{"_method":"DELETE"}"#,
            r#"{"a":1,"_METHOD":"put"}"#,
            r#"{"\u005fmethod":"DELETE"}"#,
            r#"{"_method":"POST","_method":"DELETE"}"#,
            r#"{"_method":["DELETE"]}"#,
        ] {
            assert!(
                refused(judge_json(body.as_bytes(), &Method::POST)),
                "{body}"
            );
        }
        for body in [
            r#"{"_method":"post"}"#,
            r#"{"a":{"_method":"DELETE"}}"#,
            r#"{"method":"DELETE"}"#,
            r#"[{"_method":"DELETE"}]"#,
            "{not json",
        ] {
            assert!(judge_json(body.as_bytes(), &Method::POST).is_ok(), "{body}");
        }
    }
}
