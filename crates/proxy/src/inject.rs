//! The caller's client id, as the backend will see it (part of stage 8, rewrite).
//!
//! Strip, then set: every client-supplied occurrence is found first — repeated query
//! parameters, the header in any case, the JSON member (duplicates included), form
//! fields — under the canonical name or any alias, compared case-insensitively. A value
//! that differs from the authenticated caller's is refused (403 `CLIENT_ID_MISMATCH`) or
//! dropped, per route; then the caller's own id is set where the route says. Multipart
//! and other bodies are never read: for them the id travels in the query and header.

use std::fmt;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use tollgate_policy::snapshot::{ClientIdPolicy, Mismatch};

use crate::form;
use crate::problem::GatewayError;

/// The identity header the gateway sets by default; removed from every request that
/// does not get it from the gateway.
pub const DEFAULT_HEADER: &str = "x-client-id";

/// What kind of body a request carries, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
    /// Streamed through untouched (multipart, binary, CSV, none).
    Other,
}

/// `application/json`, any `application/*+json`, with or without parameters.
pub fn body_kind(headers: &HeaderMap) -> BodyKind {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return BodyKind::Other;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        BodyKind::Json
    } else if essence == "application/x-www-form-urlencoded" {
        BodyKind::Form
    } else {
        BodyKind::Other
    }
}

/// A client-supplied value: the same as the caller's, or not.
fn judge(policy: &ClientIdPolicy, supplied: &str, client: &str) -> Result<(), GatewayError> {
    if supplied == client || policy.on_mismatch == Mismatch::Overwrite {
        Ok(())
    } else {
        Err(GatewayError::ClientIdMismatch)
    }
}

/// The query with client-supplied ids judged and removed, and ours added if injected.
pub fn query(
    raw: Option<&str>,
    policy: &ClientIdPolicy,
    client: &str,
) -> Result<Option<String>, GatewayError> {
    let mut kept: Vec<&str> = Vec::new();
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if policy.is_name(&form::decode(name.as_bytes())) {
            judge(policy, &form::decode(value.as_bytes()), client)?;
        } else {
            kept.push(pair);
        }
    }
    let mut out = kept.join("&");
    if policy.query {
        if !out.is_empty() {
            out.push('&');
        }
        // Client ids are restricted to characters that need no escaping.
        out.push_str(policy.name());
        out.push('=');
        out.push_str(client);
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Judges and removes client-supplied id headers (the configured header and any header
/// named like the id), then sets ours if the route injects a header.
pub fn headers(
    headers: &mut HeaderMap,
    policy: &ClientIdPolicy,
    client: &str,
) -> Result<(), GatewayError> {
    let suspects: Vec<http::header::HeaderName> = headers
        .keys()
        .filter(|name| {
            policy.header.as_ref() == Some(*name)
                || name.as_str() == DEFAULT_HEADER
                || policy.is_name(name.as_str())
        })
        .cloned()
        .collect();
    for name in suspects {
        for value in headers.get_all(&name) {
            judge(policy, &String::from_utf8_lossy(value.as_bytes()), client)?;
        }
        headers.remove(&name);
    }
    if let Some(name) = &policy.header {
        let value = HeaderValue::from_str(client).map_err(|_| GatewayError::ClientIdMismatch)?;
        headers.insert(name.clone(), value);
    }
    Ok(())
}

/// A form body with client-supplied ids judged and removed, and ours added if injected.
pub fn form_body(
    body: &[u8],
    policy: &ClientIdPolicy,
    client: &str,
) -> Result<Bytes, GatewayError> {
    let mut kept: Vec<&[u8]> = Vec::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let mut parts = pair.splitn(2, |b| *b == b'=');
        let name = form::decode(parts.next().unwrap_or_default());
        if policy.is_name(&name) {
            judge(
                policy,
                &form::decode(parts.next().unwrap_or_default()),
                client,
            )?;
        } else {
            kept.push(pair);
        }
    }
    let mut out = kept.join(&b'&');
    if policy.form {
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(policy.name().as_bytes());
        out.push(b'=');
        out.extend_from_slice(client.as_bytes());
    }
    Ok(Bytes::from(out))
}

/// A JSON body rewritten, or `None` when it is to pass unchanged (not an object, and the
/// route allows that). Malformed JSON is refused before the backend is called.
///
/// Only the objects on the way to the target are parsed into members; every other value
/// is copied verbatim (`RawValue`), so a large body costs little more than a scan.
pub fn json_body(
    body: &[u8],
    policy: &ClientIdPolicy,
    client: &str,
) -> Result<Option<Bytes>, GatewayError> {
    let text = std::str::from_utf8(body).map_err(|_| GatewayError::InvalidJson)?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if !trimmed.starts_with('{') {
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|_| GatewayError::InvalidJson)?;
        return if policy.allow_non_object_json {
            Ok(None)
        } else {
            Err(GatewayError::JsonNotObject)
        };
    }
    let rewritten = rewrite_object(text, &policy.json_pointer, policy, client)?;
    Ok(Some(Bytes::from(rewritten)))
}

/// Re-emits the object in `raw`, with the client id judged and set in the object at
/// `pointer` (created when missing).
fn rewrite_object(
    raw: &str,
    pointer: &[String],
    policy: &ClientIdPolicy,
    client: &str,
) -> Result<String, GatewayError> {
    let RawObject(members) = serde_json::from_str(raw).map_err(|_| GatewayError::InvalidJson)?;
    let mut out = String::with_capacity(raw.len() + 32);
    out.push('{');
    let mut first = true;
    let mut push = |out: &mut String, key: &str, value: &str| {
        if !std::mem::take(&mut first) {
            out.push(',');
        }
        // Keys are re-escaped: serializing a string cannot fail.
        out.push_str(&serde_json::to_string(key).unwrap_or_default());
        out.push(':');
        out.push_str(value);
    };
    match pointer.split_first() {
        None => {
            for (key, value) in &members {
                if policy.is_name(key) {
                    let value: Value =
                        serde_json::from_str(value.get()).map_err(|_| GatewayError::InvalidJson)?;
                    judge(policy, &as_text(&value), client)?;
                } else {
                    push(&mut out, key, value.get());
                }
            }
            if policy.json {
                push(&mut out, policy.name(), &format!("\"{client}\""));
            }
        }
        Some((segment, rest)) => {
            let mut found = false;
            for (key, value) in &members {
                if policy.is_name(key) {
                    // An id beside the target object is judged too, and never forwarded.
                    let value: Value =
                        serde_json::from_str(value.get()).map_err(|_| GatewayError::InvalidJson)?;
                    judge(policy, &as_text(&value), client)?;
                } else if key == segment && !found {
                    found = true;
                    if !value.get().trim_start().starts_with('{') {
                        return Err(GatewayError::JsonNotObject);
                    }
                    let nested = rewrite_object(value.get(), rest, policy, client)?;
                    push(&mut out, key, &nested);
                } else if key != segment {
                    push(&mut out, key, value.get());
                }
            }
            if !found && policy.json {
                let nested = rewrite_object("{}", rest, policy, client)?;
                push(&mut out, segment, &nested);
            }
        }
    }
    out.push('}');
    Ok(out)
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The members of a JSON object, duplicates kept, values as raw text.
struct RawObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<RawObject<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = access.next_entry::<String, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(RawObject(members))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mismatch: Mismatch) -> ClientIdPolicy {
        ClientIdPolicy {
            query: true,
            header: Some(http::header::HeaderName::from_static("x-client-id")),
            json: true,
            form: true,
            names: vec!["clientId".into(), "client_id".into()],
            json_pointer: Vec::new(),
            on_mismatch: mismatch,
            allow_non_object_json: false,
            max_body_bytes: 1024,
        }
    }

    #[test]
    fn query_spoofs_are_found_in_every_spelling() {
        let p = policy(Mismatch::Reject);
        assert_eq!(
            query(Some("a=1"), &p, "1001").unwrap().as_deref(),
            Some("a=1&clientId=1001")
        );
        assert_eq!(
            query(Some("clientId=1001&a=1"), &p, "1001")
                .unwrap()
                .as_deref(),
            Some("a=1&clientId=1001")
        );
        for spoof in [
            "clientId=1002",
            "CLIENTID=1002",
            "client_id=1002",
            "clientId=1001&clientId=1002",
            "client%49d=1002",
        ] {
            assert!(
                matches!(
                    query(Some(spoof), &p, "1001"),
                    Err(GatewayError::ClientIdMismatch)
                ),
                "{spoof}"
            );
        }
        let o = policy(Mismatch::Overwrite);
        assert_eq!(
            query(Some("clientId=1002&b=2"), &o, "1001")
                .unwrap()
                .as_deref(),
            Some("b=2&clientId=1001")
        );
    }

    #[test]
    fn json_duplicates_cannot_hide_a_spoof() {
        let p = policy(Mismatch::Reject);
        let out = json_body(br#"{"a":1,"clientId":"1001","b":[1]}"#, &p, "1001")
            .unwrap()
            .unwrap();
        assert_eq!(&out[..], br#"{"a":1,"b":[1],"clientId":"1001"}"#);
        assert!(matches!(
            json_body(br#"{"clientId":"1002","clientId":"1001"}"#, &p, "1001"),
            Err(GatewayError::ClientIdMismatch)
        ));
        assert!(matches!(
            json_body(br#"{"client_id":1002}"#, &p, "1001"),
            Err(GatewayError::ClientIdMismatch)
        ));
        assert!(matches!(
            json_body(b"{bad", &p, "1001"),
            Err(GatewayError::InvalidJson)
        ));
        assert!(matches!(
            json_body(b"[1,2]", &p, "1001"),
            Err(GatewayError::JsonNotObject)
        ));
    }

    #[test]
    fn json_pointers_reach_nested_objects() {
        let mut p = policy(Mismatch::Reject);
        p.json_pointer = vec!["data".into()];
        let out = json_body(br#"{"data":{"x":1},"y":2}"#, &p, "7")
            .unwrap()
            .unwrap();
        assert_eq!(&out[..], br#"{"data":{"x":1,"clientId":"7"},"y":2}"#);
        let out = json_body(br#"{"y":2}"#, &p, "7").unwrap().unwrap();
        assert_eq!(&out[..], br#"{"y":2,"data":{"clientId":"7"}}"#);
        assert!(matches!(
            json_body(br#"{"data":{"clientId":"8"}}"#, &p, "7"),
            Err(GatewayError::ClientIdMismatch)
        ));
    }

    #[test]
    fn form_bodies() {
        let p = policy(Mismatch::Reject);
        assert_eq!(
            &form_body(b"a=1&b=x+y", &p, "9").unwrap()[..],
            b"a=1&b=x+y&clientId=9"
        );
        assert!(matches!(
            form_body(b"client_id=8&a=1", &p, "9"),
            Err(GatewayError::ClientIdMismatch)
        ));
    }

    #[test]
    fn content_types() {
        let kind = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            body_kind(&h)
        };
        assert_eq!(kind("application/json; charset=utf-8"), BodyKind::Json);
        assert_eq!(kind("Application/Problem+JSON"), BodyKind::Json);
        assert_eq!(
            kind("application/x-www-form-urlencoded;charset=UTF-8"),
            BodyKind::Form
        );
        assert_eq!(kind("multipart/form-data; boundary=x"), BodyKind::Other);
        assert_eq!(kind("text/json"), BodyKind::Other);
    }
}
