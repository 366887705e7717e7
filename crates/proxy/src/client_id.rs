//! The caller's client id, as the backend will see it (part of stage 8, rewrite).
//!
//! Strip, then set: every client-supplied occurrence is found first — repeated query
//! parameters, the header in any case, JSON members at any depth (duplicates included),
//! form fields, cookies — under the canonical name or any alias, in every spelling a backend
//! folds into it (see [`tollgate_policy::param`]). A value that differs from the
//! authenticated caller's is refused (403 `CLIENT_ID_MISMATCH`) or replaced, per route;
//! then the caller's own id is set where the route says. Multipart bodies are never
//! rewritten: [`crate::multipart`] watches them as they stream.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, COOKIE};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use tollgate_policy::snapshot::{ClientIdPolicy, JsonType, Mismatch};

use crate::errors::{AccessError, GatewayError, JsonProblem};

/// The identity header the gateway sets by default; removed from every request that
/// does not get it from the gateway.
pub const DEFAULT_HEADER: &str = "x-client-id";

/// Objects and arrays nested deeper than this are not searched: a body that would need
/// it is refused (a client id could hide below, and recursion must stay bounded).
const MAX_DEPTH: usize = 128;

/// A JSON body is read at most this many times over while it is searched: each level
/// that may hold an id reads its whole subtree again, so a megabyte nested a hundred
/// levels deep under names like `clientIdx` (suspicious, never an id) cost 0.4 s of
/// CPU. Past it the body is refused as too deeply nested for its size.
const MAX_PASSES: usize = 16;

/// The authenticated caller's id, and whether its claim was a JSON integer.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub id: &'a str,
    pub integer: bool,
}

/// The caller of a request nobody authenticated: no supplied id is its own (client ids
/// are never empty), so with an overwriting policy every one is dropped.
pub const NOBODY: Caller<'static> = Caller {
    id: "",
    integer: false,
};

/// Drops every cookie named like a client id (see [`Snapshot::unvouched_client_id`]).
///
/// [`Snapshot::unvouched_client_id`]: tollgate_policy::Snapshot
pub fn drop_supplied_cookies(
    headers: &mut HeaderMap,
    policy: &ClientIdPolicy,
) -> Result<(), GatewayError> {
    cookies(headers, policy, NOBODY)
}

/// The path without client ids in segment parameters (`/campaigns/42;clientId=1002`):
/// JAX-RS's `@MatrixParam` and Spring's `@MatrixVariable` read them. Judged like the
/// query: the caller's own passes, another is refused (or, where the route overwrites,
/// removed). The path is normalized, so a raw `;` separates parameters, and so does an
/// encoded one (`%3B`) here: Spring's lookup path decodes before it reads matrix
/// variables (with `removeSemicolonContent = false`), so
/// `/campaigns/42%3BclientId=1002` names an id to it. Each kept parameter keeps the
/// separator it came with.
pub fn path_params<'p>(
    path: &'p str,
    policy: &ClientIdPolicy,
    caller: Caller,
) -> Result<Cow<'p, str>, GatewayError> {
    use tollgate_policy::param;
    if next_separator(path).is_none() {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    let mut changed = false;
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let (head, mut rest) = match next_separator(segment) {
            Some((at, _)) => segment.split_at(at),
            None => (segment, ""),
        };
        out.push_str(head);
        while let Some((_, len)) = next_separator(rest) {
            let separator = &rest[..len];
            let after = &rest[len..];
            let end = next_separator(after).map_or(after.len(), |(at, _)| at);
            let piece = &after[..end];
            rest = &after[end..];
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            if policy.is_name(&param::decode(name.as_bytes())) {
                let value = param::decode(value.as_bytes());
                judge(policy, &value, caller)?;
                if value != caller.id {
                    changed = true;
                    continue;
                }
            }
            out.push_str(separator);
            out.push_str(piece);
        }
    }
    Ok(if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(path)
    })
}

/// Where the next segment parameter starts in `text` (a `;`, or `%3B` in either case),
/// and the separator's length.
fn next_separator(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().find_map(|(i, b)| match b {
        b';' => Some((i, 1)),
        b'%' if bytes
            .get(i + 1..i + 3)
            .is_some_and(|h| h.eq_ignore_ascii_case(b"3b")) =>
        {
            Some((i, 3))
        }
        _ => None,
    })
}

/// A client-supplied value: the same as the caller's, or not.
fn judge(policy: &ClientIdPolicy, supplied: &str, caller: Caller) -> Result<(), GatewayError> {
    if supplied == caller.id || policy.on_mismatch == Mismatch::Overwrite {
        Ok(())
    } else {
        Err(AccessError::ClientIdMismatch.into())
    }
}

/// The query with client-supplied ids judged and removed, and ours put first if injected.
/// Parameters are split at `;` as well as `&` ([`tollgate_policy::param`]): some
/// backends read `a=1;clientId=2` as naming a client.
pub fn query(
    raw: Option<&str>,
    policy: &ClientIdPolicy,
    caller: Caller,
) -> Result<Option<String>, GatewayError> {
    let kept = without_supplied(raw.unwrap_or_default().as_bytes(), policy, caller)?;
    let out = if policy.query {
        ours_first(policy, caller, &kept)
    } else {
        kept
    };
    // Split at ASCII bytes and rejoined with them: still UTF-8.
    Ok((!out.is_empty()).then(|| {
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }))
}

/// `name=id`, then the parameters kept. Ours comes first because backends read only
/// so many parameters and drop the rest: PHP's `max_input_vars` and Express's `qs`
/// `parameterLimit` are 1,000 by default, so an id appended after a client's thousand
/// parameters would never be seen.
fn ours_first(policy: &ClientIdPolicy, caller: Caller, kept: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(policy.name().len() + caller.id.len() + 2 + kept.len());
    // Client ids are restricted to characters that need no escaping.
    out.extend_from_slice(policy.name().as_bytes());
    out.push(b'=');
    out.extend_from_slice(caller.id.as_bytes());
    if !kept.is_empty() {
        out.push(b'&');
        out.extend_from_slice(kept);
    }
    out
}

/// A query or form body without its client-id parameters, each judged first. A nested
/// or stray-bracket spelling (`filter[clientId]`, `[clientId]`) holding the caller's own
/// id is kept: it is not the parameter the gateway injects, and it may filter.
fn without_supplied(
    text: &[u8],
    policy: &ClientIdPolicy,
    caller: Caller,
) -> Result<Vec<u8>, GatewayError> {
    tollgate_policy::param::retain(text, |piece| {
        // qs's reading (`x=[clientId]=1002`) is judged too; the usual one decides what
        // is removed.
        for (name, value) in tollgate_policy::param::readings(piece).skip(1) {
            if policy.is_name(&tollgate_policy::param::decode(&name)) {
                let value = tollgate_policy::param::decode(&value);
                judge(policy, &value, caller)?;
                if value != caller.id {
                    return Ok(false);
                }
            }
        }
        let (name, value) = tollgate_policy::param::name_and_value(piece);
        let name = tollgate_policy::param::decode(name);
        if !policy.is_name(&name) {
            return Ok(true);
        }
        let value = tollgate_policy::param::decode(value);
        judge(policy, &value, caller)?;
        Ok(value == caller.id && !policy.is_top_name(&name))
    })
}

/// Judges and removes client-supplied id headers (the configured header and any header
/// named like the id), then sets ours if the route injects a header.
pub fn headers(
    headers: &mut HeaderMap,
    policy: &ClientIdPolicy,
    caller: Caller,
) -> Result<(), GatewayError> {
    let suspects: Vec<HeaderName> = headers
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
            judge(policy, &String::from_utf8_lossy(value.as_bytes()), caller)?;
        }
        headers.remove(&name);
    }
    cookies(headers, policy, caller)?;
    if let Some(name) = &policy.header {
        let value = HeaderValue::from_str(caller.id).map_err(|_| AccessError::ClientIdMismatch)?;
        headers.insert(name.clone(), value);
    }
    Ok(())
}

/// Judges cookies named like the id: PHP puts them in `$_COOKIE` (and in `$_REQUEST`,
/// over the query and form, where `request_order` is unset), classic ASP.NET's
/// `Request[...]` reads them after the query and form. Decoded as PHP decodes them. The
/// caller's own id passes; another is refused, or, where the route overwrites, the
/// cookie is dropped.
fn cookies(
    headers: &mut HeaderMap,
    policy: &ClientIdPolicy,
    caller: Caller,
) -> Result<(), GatewayError> {
    use tollgate_policy::param;
    let one = |pair: &[u8]| -> Result<bool, GatewayError> {
        // Express's `cookie` and Werkzeug trim the name and the value (Werkzeug, reading
        // the header as latin-1, NBSP and NEL too).
        let (name, value) = param::name_and_value(trim_space(pair));
        if !policy.is_name(&param::decode(trim_space(name))) {
            return Ok(false);
        }
        let value = param::decode(trim_space(value));
        judge(policy, &value, caller)?;
        Ok(value != caller.id)
    };
    // Python's `SimpleCookie` (Bottle, aiohttp, CherryPy) also ends a cookie at white
    // space, and so after a `,`: `a=1 clientId=1002` and `a=1, clientId=1002` are two
    // cookies to it. Each such piece holding a `=` is judged as a cookie too.
    let foreign = |pair: &[u8]| -> Result<bool, GatewayError> {
        let mut found = one(pair)?;
        for piece in pair.split(|b| matches!(b, b' ' | b'\t' | b',')).skip(1) {
            if piece.contains(&b'=') {
                found |= one(piece)?;
            }
        }
        Ok(found)
    };
    let mut overwritten = false;
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|b| *b == b';') {
            overwritten |= foreign(pair)?;
        }
    }
    if !overwritten {
        return Ok(());
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| {
            let pairs: Vec<&[u8]> = value
                .as_bytes()
                .split(|b| *b == b';')
                .map(<[u8]>::trim_ascii)
                .filter(|pair| !pair.is_empty() && !matches!(foreign(pair), Ok(true)))
                .collect();
            HeaderValue::from_bytes(&pairs.join(&b"; "[..])).ok()
        })
        .filter(|value| !value.is_empty())
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
    Ok(())
}

/// `bytes` without what Python's `str.strip()` takes from a latin-1 header at either end
/// (hyper has refused the other control bytes already).
fn trim_space(bytes: &[u8]) -> &[u8] {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | 0x85 | 0xa0);
    let start = bytes.iter().position(|b| !space(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !space(b))
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// A form body with client-supplied ids judged and removed, and ours put first if
/// injected.
pub fn form_body(
    body: &[u8],
    policy: &ClientIdPolicy,
    caller: Caller,
) -> Result<Bytes, GatewayError> {
    let kept = without_supplied(body, policy, caller)?;
    Ok(Bytes::from(if policy.form {
        ours_first(policy, caller, &kept)
    } else {
        kept
    }))
}

/// A JSON body rewritten, or `None` when it passes unchanged. Malformed JSON is refused
/// before the backend is called.
///
/// Client-supplied ids are looked for at every depth: judged (and, in `overwrite`
/// mode, replaced in place by the caller's) wherever they are; in the object the route
/// injects into they are removed and the caller's id becomes that object's last member.
/// Every other member keeps its place and its bytes (`RawValue`): only objects that
/// hold, or lead to, an id are parsed into members, so a large body costs little more
/// than a scan.
pub fn json_body(
    body: &[u8],
    policy: &ClientIdPolicy,
    caller: Caller,
) -> Result<Option<Bytes>, GatewayError> {
    let text = std::str::from_utf8(body).map_err(|_| JsonProblem::Malformed)?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let json = Json::new(policy, caller, text.len());
    if trimmed.starts_with('{') {
        let rewritten = json.object(text, Some(&policy.json_pointer), 0)?;
        return Ok(Some(Bytes::from(rewritten.into_owned())));
    }
    let whole: &RawValue = serde_json::from_str(text).map_err(|_| JsonProblem::Malformed)?;
    if !policy.allow_non_object_json {
        return Err(JsonProblem::NotObject.into());
    }
    Ok(match json.value(whole.get(), 0)? {
        Cow::Borrowed(_) => None,
        Cow::Owned(changed) => Some(Bytes::from(changed)),
    })
}

/// One JSON rewrite: the policy, the caller, and the caller's id as a JSON literal.
struct Json<'a> {
    policy: &'a ClientIdPolicy,
    caller: Caller<'a>,
    literal: String,
    /// The names, folded, that [`suspicious`] looks for.
    needles: Vec<String>,
    /// Bytes the search may still read (see [`MAX_PASSES`]).
    budget: std::cell::Cell<usize>,
}

impl<'a> Json<'a> {
    fn new(policy: &'a ClientIdPolicy, caller: Caller<'a>, body_len: usize) -> Self {
        let number = match policy.json_type {
            // An integer claim stays a number only while every JSON reader keeps it
            // exact: JavaScript and other double-based readers take 9007199254740993
            // for ...992, another client.
            JsonType::Claim => caller.integer && exact_as_double(caller.id),
            JsonType::String => false,
            JsonType::Number => is_plain_integer(caller.id),
        };
        // Client ids need no escaping (see `tollgate_auth::jwt::is_usable_client_id`).
        let literal = if number {
            caller.id.to_owned()
        } else {
            format!("\"{}\"", caller.id)
        };
        let needles = policy
            .names
            .iter()
            .map(|n| tollgate_policy::param::fold(n))
            .collect();
        Json {
            policy,
            caller,
            literal,
            needles,
            budget: std::cell::Cell::new(body_len.saturating_mul(MAX_PASSES)),
        }
    }

    /// Spends `raw.len()` of the budget before `raw` is read.
    fn read(&self, raw: &str) -> Result<(), GatewayError> {
        let left = self
            .budget
            .get()
            .checked_sub(raw.len())
            .ok_or(JsonProblem::TooDeep)?;
        self.budget.set(left);
        Ok(())
    }

    /// A value anywhere in the body: searched if it may hold an id, else kept as is.
    fn value<'r>(&self, raw: &'r str, depth: usize) -> Result<Cow<'r, str>, GatewayError> {
        let first = raw.trim_start().as_bytes().first().copied();
        if !matches!(first, Some(b'{' | b'[')) {
            return Ok(Cow::Borrowed(raw));
        }
        self.read(raw)?;
        if !self.suspicious(raw) {
            return Ok(Cow::Borrowed(raw));
        }
        if depth >= MAX_DEPTH {
            return Err(JsonProblem::TooDeep.into());
        }
        if first == Some(b'{') {
            return self.object(raw, None, depth);
        }
        self.read(raw)?;
        let RawArray(items) = serde_json::from_str(raw).map_err(|_| JsonProblem::Malformed)?;
        let mut changed = false;
        let mut parts = Vec::with_capacity(items.len());
        for item in items {
            let part = self.value(item.get(), depth + 1)?;
            changed |= matches!(part, Cow::Owned(_));
            parts.push(part);
        }
        if !changed {
            return Ok(Cow::Borrowed(raw));
        }
        Ok(Cow::Owned(format!("[{}]", parts.join(","))))
    }

    /// An object. `pointer` is `Some` on the way to the object the id is injected into
    /// (`Some([])` for that object itself), `None` elsewhere.
    fn object<'r>(
        &self,
        raw: &'r str,
        pointer: Option<&[String]>,
        depth: usize,
    ) -> Result<Cow<'r, str>, GatewayError> {
        if depth >= MAX_DEPTH {
            return Err(JsonProblem::TooDeep.into());
        }
        self.read(raw)?;
        let RawObject(members) = serde_json::from_str(raw).map_err(|_| JsonProblem::Malformed)?;
        let mut out = Members::with_capacity(raw.len() + 32);
        let mut changed = false;
        let mut found = false;
        for (key, value) in &members {
            if self.policy.is_name(key) {
                let supplied: Value =
                    serde_json::from_str(value.get()).map_err(|_| JsonProblem::Malformed)?;
                let text = as_text(&supplied);
                // A number a double cannot hold exactly (9007199254740993) is another
                // client to a JavaScript reader, whatever its digits say here.
                if supplied.is_number()
                    && !exact_as_double(&text)
                    && self.policy.on_mismatch != Mismatch::Overwrite
                {
                    return Err(AccessError::ClientIdMismatch.into());
                }
                judge(self.policy, &text, self.caller)?;
                match pointer {
                    // Beside or in the injection target: removed, ours is set below.
                    Some(_) => changed = true,
                    // Elsewhere: kept where it is, as the caller's own.
                    None if self.policy.on_mismatch == Mismatch::Overwrite => {
                        changed |= value.get() != self.literal;
                        out.push(key, &self.literal);
                    }
                    None => out.push(key, value.get()),
                }
                continue;
            }
            match pointer {
                Some([segment, rest @ ..]) if key == segment => {
                    changed = true;
                    // A repeated member on the path: only the first is kept (and searched).
                    if !std::mem::replace(&mut found, true) {
                        if !value.get().trim_start().starts_with('{') {
                            return Err(JsonProblem::NotObject.into());
                        }
                        let nested = self.object(value.get(), Some(rest), depth + 1)?;
                        out.push(key, &nested);
                    }
                }
                _ => {
                    let nested = self.value(value.get(), depth + 1)?;
                    changed |= matches!(nested, Cow::Owned(_));
                    out.push(key, &nested);
                }
            }
        }
        match pointer {
            Some([]) if self.policy.json => {
                out.push(self.policy.name(), &self.literal);
                changed = true;
            }
            Some([segment, rest @ ..]) if !found && self.policy.json => {
                let nested = self.object("{}", Some(rest), depth + 1)?;
                out.push(segment, &nested);
                changed = true;
            }
            _ => {}
        }
        Ok(if changed {
            Cow::Owned(out.finish())
        } else {
            Cow::Borrowed(raw)
        })
    }

    /// Whether `raw` may hold a member named like the id: it names one (folded, as
    /// [`tollgate_policy::param::fold`] would), or it has an escape or a character that
    /// could spell one (the first bytes of `ı`, `İ`, `ſ` and the Kelvin sign, which
    /// case-insensitive Java and .NET read as ASCII letters). A cheap superset, so that
    /// only such values are parsed.
    fn suspicious(&self, raw: &str) -> bool {
        let bytes = raw.as_bytes();
        if bytes
            .iter()
            .any(|b| matches!(b, b'\\' | 0xC4 | 0xC5 | 0xE2))
        {
            return true;
        }
        let fold = |b: u8| match b {
            b' ' | b'.' | b'[' => b'_',
            b => b.to_ascii_lowercase(),
        };
        self.needles.iter().any(|needle| {
            let needle = needle.as_bytes();
            !needle.is_empty()
                && bytes.windows(needle.len()).any(|w| {
                    w.iter()
                        .zip(needle)
                        .all(|(have, want)| fold(*have) == *want)
                })
        })
    }
}

/// An object's text being re-emitted member by member.
struct Members {
    out: String,
    first: bool,
}

impl Members {
    fn with_capacity(n: usize) -> Self {
        let mut out = String::with_capacity(n);
        out.push('{');
        Members { out, first: true }
    }

    fn push(&mut self, key: &str, value: &str) {
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        // Keys are re-escaped: serializing a string cannot fail.
        self.out
            .push_str(&serde_json::to_string(key).unwrap_or_default());
        self.out.push(':');
        self.out.push_str(value);
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// A decimal integer a JSON number can carry exactly: no sign, no leading zero, at
/// most 15 digits (JavaScript backends read numbers as doubles).
fn is_plain_integer(id: &str) -> bool {
    (1..=15).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_digit())
        && (id == "0" || !id.starts_with('0'))
}

/// Whether an integer's text is a number a double holds exactly (|n| ≤ 2^53 − 1).
pub(crate) fn exact_as_double(id: &str) -> bool {
    id.parse::<i64>()
        .is_ok_and(|n| n.unsigned_abs() < (1u64 << 53))
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

/// The items of a JSON array, as raw text.
struct RawArray<'a>(Vec<&'a RawValue>);

impl<'de> Deserialize<'de> for RawArray<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArrayVisitor;

        impl<'de> Visitor<'de> for ArrayVisitor {
            type Value = RawArray<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array")
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<RawArray<'de>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = access.next_element::<&'de RawValue>()? {
                    items.push(item);
                }
                Ok(RawArray(items))
            }
        }

        deserializer.deserialize_seq(ArrayVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Caller<'static> = Caller {
        id: "1001",
        integer: false,
    };

    fn policy(mismatch: Mismatch) -> ClientIdPolicy {
        ClientIdPolicy {
            query: true,
            header: Some(HeaderName::from_static("x-client-id")),
            json: true,
            form: true,
            names: vec!["clientId".into(), "client_id".into()],
            json_pointer: Vec::new(),
            on_mismatch: mismatch,
            allow_non_object_json: false,
            max_body_bytes: 1024,
            json_type: JsonType::Claim,
        }
    }

    fn json(body: &str, p: &ClientIdPolicy, caller: Caller) -> Result<String, GatewayError> {
        json_body(body.as_bytes(), p, caller)
            .map(|out| out.map_or(body.to_owned(), |b| String::from_utf8(b.to_vec()).unwrap()))
    }

    fn refused(r: Result<impl fmt::Debug, GatewayError>) -> bool {
        matches!(r, Err(GatewayError::Access(AccessError::ClientIdMismatch)))
    }

    #[test]
    fn query_spoofs_are_found_in_every_spelling() {
        let p = policy(Mismatch::Reject);
        assert_eq!(
            query(Some("a=1"), &p, ME).unwrap().as_deref(),
            Some("clientId=1001&a=1")
        );
        assert_eq!(
            query(Some("a=1&clientId=1001"), &p, ME).unwrap().as_deref(),
            Some("clientId=1001&a=1")
        );
        for spoof in [
            "clientId=1002",
            "CLIENTID=1002",
            "client_id=1002",
            "client.id=1002",
            "client+id=1002",
            "client%5Bid=1002",
            "clientId=1001&clientId=1002",
            "client%49d=1002",
            "clientId%00x=1002",
            "clientId[]=1002",
            "clientId%5B0%5D=1002",
            // Rack 2, Go before 1.17 and Python before 3.9.2 split at `;` too.
            "a=1;clientId=1002",
            "clientId=1001;clientId=1002",
            "a=1;client_id=1002&b=2",
        ] {
            assert!(refused(query(Some(spoof), &p, ME)), "{spoof}");
        }
        assert_eq!(
            query(Some("a=1;clientId=1001;b=2"), &p, ME)
                .unwrap()
                .as_deref(),
            Some("clientId=1001&a=1;b=2")
        );
        let o = policy(Mismatch::Overwrite);
        assert_eq!(
            query(Some("clientId=1002&b=2"), &o, ME).unwrap().as_deref(),
            Some("clientId=1001&b=2")
        );
        assert_eq!(
            query(Some("a=1&clientId=1002;b=2"), &o, ME)
                .unwrap()
                .as_deref(),
            Some("clientId=1001&a=1&b=2")
        );
        // Ours first: a backend that reads only the first 1,000 parameters (PHP's
        // max_input_vars, qs's parameterLimit) still sees it behind 5,000 of the client's.
        let many: Vec<String> = (0..5000).map(|i| format!("p{i}=x")).collect();
        let rewritten = query(Some(&many.join("&")), &p, ME).unwrap().unwrap();
        assert!(
            rewritten.starts_with("clientId=1001&p0=x&p1=x&"),
            "{}",
            &rewritten[..40]
        );
        assert_eq!(
            query(None, &p, ME).unwrap().as_deref(),
            Some("clientId=1001")
        );
    }

    #[test]
    fn json_duplicates_cannot_hide_a_spoof() {
        let p = policy(Mismatch::Reject);
        assert_eq!(
            json(r#"{"a":1,"clientId":"1001","b":[1]}"#, &p, ME).unwrap(),
            r#"{"a":1,"b":[1],"clientId":"1001"}"#
        );
        assert!(refused(json(
            r#"{"clientId":"1002","clientId":"1001"}"#,
            &p,
            ME
        )));
        assert!(refused(json(r#"{"client_id":1002}"#, &p, ME)));
        assert!(refused(json(r#"{"client\u0049d":"1002"}"#, &p, ME)));
        assert!(matches!(
            json("{bad", &p, ME),
            Err(GatewayError::Request(crate::errors::RequestError::Json(
                JsonProblem::Malformed
            )))
        ));
        assert!(matches!(
            json("[1,2]", &p, ME),
            Err(GatewayError::Request(crate::errors::RequestError::Json(
                JsonProblem::NotObject
            )))
        ));
    }

    #[test]
    fn a_foreign_id_at_any_depth_is_refused() {
        let p = policy(Mismatch::Reject);
        for body in [
            r#"{"data":{"clientId":1002}}"#,
            r#"{"data":[{"x":1},{"clientId":"1002"}]}"#,
            r#"{"a":{"b":{"c":{"CLIENT_ID":"1002"}}}}"#,
            r#"{"a":{"client\u005fid":"1002"}}"#,
            r#"{"a":{"clientId":{"id":1001}}}"#,
        ] {
            assert!(refused(json(body, &p, ME)), "{body}");
        }
        let mut any = policy(Mismatch::Reject);
        any.allow_non_object_json = true;
        assert!(refused(json(r#"[{"clientId":1002}]"#, &any, ME)));
        assert_eq!(
            json(r#"[{"clientId":1001}]"#, &any, ME).unwrap(),
            r#"[{"clientId":1001}]"#
        );
        // The caller's own id, nested, passes untouched, spacing and all.
        let body = r#"{"data": [ {"clientId": "1001", "n": 1} ]}"#;
        assert_eq!(
            json(body, &p, ME).unwrap(),
            r#"{"data":[ {"clientId": "1001", "n": 1} ],"clientId":"1001"}"#
        );
    }

    #[test]
    fn overwrite_replaces_nested_ids_in_place() {
        let p = policy(Mismatch::Overwrite);
        assert_eq!(
            json(r#"{"a":[{"clientId":1002,"z":0}],"clientId":7}"#, &p, ME).unwrap(),
            r#"{"a":[{"clientId":"1001","z":0}],"clientId":"1001"}"#
        );
    }

    #[test]
    fn the_id_keeps_the_claims_type_or_the_routes() {
        let mut p = policy(Mismatch::Reject);
        let int = Caller {
            id: "42",
            integer: true,
        };
        assert_eq!(
            json(r#"{"a":1}"#, &p, int).unwrap(),
            r#"{"a":1,"clientId":42}"#
        );
        assert_eq!(
            json(r#"{"a":1}"#, &p, ME).unwrap(),
            r#"{"a":1,"clientId":"1001"}"#
        );
        // Past 2^53 - 1 a double-based reader (JavaScript) would read another client:
        // such an integer claim is written as a string.
        for (id, literal) in [
            ("9007199254740991", "9007199254740991"),
            ("-9007199254740991", "-9007199254740991"),
            ("9007199254740992", "\"9007199254740992\""),
            ("9007199254740993", "\"9007199254740993\""),
            ("18446744073709551615", "\"18446744073709551615\""),
        ] {
            let big = Caller { id, integer: true };
            assert_eq!(
                json(r#"{}"#, &p, big).unwrap(),
                format!(r#"{{"clientId":{literal}}}"#),
                "{id}"
            );
        }
        // The caller's own digits, past 2^53 - 1, in a body: another client to a
        // JavaScript reader, refused wherever they stand.
        let big = Caller {
            id: "9007199254740993",
            integer: true,
        };
        assert!(refused(json(
            r#"{"filter":{"clientId":9007199254740993}}"#,
            &p,
            big
        )));
        assert!(json(r#"{"filter":{"clientId":"9007199254740993"}}"#, &p, big).is_ok());
        p.json_type = JsonType::String;
        assert_eq!(
            json(r#"{"a":1}"#, &p, int).unwrap(),
            r#"{"a":1,"clientId":"42"}"#
        );
        p.json_type = JsonType::Number;
        assert_eq!(
            json(r#"{"a":1}"#, &p, ME).unwrap(),
            r#"{"a":1,"clientId":1001}"#
        );
        let odd = Caller {
            id: "007",
            integer: false,
        };
        assert_eq!(json(r#"{}"#, &p, odd).unwrap(), r#"{"clientId":"007"}"#);
        // A number or a string with the caller's digits is the caller's own id.
        assert!(json(r#"{"clientId":1001}"#, &p, ME).is_ok());
        assert!(refused(json(r#"{"clientId":1001.0}"#, &p, ME)));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let p = policy(Mismatch::Reject);
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        // Nothing that could be an id below: passed as it is, unparsed.
        assert!(json(&deep, &p, ME).is_ok());
        let hidden = format!(
            "{{\"a\":{}{{\"clientId\":1002}}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(matches!(
            json(&hidden, &p, ME),
            Err(GatewayError::Request(crate::errors::RequestError::Json(
                JsonProblem::TooDeep
            )))
        ));
    }

    #[test]
    fn a_body_is_read_a_bounded_number_of_times_over() {
        let p = policy(Mismatch::Reject);
        // Its bulk under 100 levels of names that may be an id and never are: each level
        // would read all of it again.
        let bulk = format!("\"{}\"", "x".repeat(100_000));
        let nested = |levels: usize| {
            format!(
                "{}{bulk}{}",
                "{\"clientIdx\":".repeat(levels),
                "}".repeat(levels)
            )
        };
        assert!(matches!(
            json(&nested(100), &p, ME),
            Err(GatewayError::Request(crate::errors::RequestError::Json(
                JsonProblem::TooDeep
            )))
        ));
        // A few levels are searched as before.
        assert!(json(&nested(5), &p, ME).is_ok());
        // As are ids and bulk side by side, at any size.
        let wide = format!(
            "{{\"clientId\":\"1001\",\"a\":[{}]}}",
            vec![r#"{"clientIdx":1}"#; 20_000].join(",")
        );
        assert!(json(&wide, &p, ME).is_ok());
    }

    #[test]
    fn json_pointers_reach_nested_objects() {
        let mut p = policy(Mismatch::Reject);
        p.json_pointer = vec!["data".into()];
        let seven = Caller {
            id: "7",
            integer: false,
        };
        assert_eq!(
            json(r#"{"data":{"x":1},"y":2}"#, &p, seven).unwrap(),
            r#"{"data":{"x":1,"clientId":"7"},"y":2}"#
        );
        assert_eq!(
            json(r#"{"y":2}"#, &p, seven).unwrap(),
            r#"{"y":2,"data":{"clientId":"7"}}"#
        );
        assert!(refused(json(r#"{"data":{"clientId":"8"}}"#, &p, seven)));
        assert!(refused(json(
            r#"{"y":{"clientId":"8"},"data":{}}"#,
            &p,
            seven
        )));
    }

    #[test]
    fn form_bodies() {
        let p = policy(Mismatch::Reject);
        let nine = Caller {
            id: "9",
            integer: false,
        };
        assert_eq!(
            &form_body(b"a=1&b=x+y", &p, nine).unwrap()[..],
            b"clientId=9&a=1&b=x+y"
        );
        for spoof in [
            &b"client_id=8&a=1"[..],
            b"client.id=8",
            b"client%5Fid=8",
            b"+clientId=8",
            b"clientId[x]=8",
            b"a=1;clientId=8",
        ] {
            assert!(
                refused(form_body(spoof, &p, nine)),
                "{}",
                String::from_utf8_lossy(spoof)
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Every (member name, value as text) of a JSON document, at any depth,
        /// duplicates included: a reference walker independent of the rewriter.
        fn members(json: &str) -> Vec<(String, String)> {
            fn walk(value: &str, out: &mut Vec<(String, String)>) {
                if let Ok(RawObject(members)) = serde_json::from_str::<RawObject>(value) {
                    for (k, v) in members {
                        let text = serde_json::from_str::<Value>(v.get())
                            .map(|v| as_text(&v))
                            .unwrap_or_default();
                        out.push((k, text));
                        walk(v.get(), out);
                    }
                } else if let Ok(RawArray(items)) = serde_json::from_str::<RawArray>(value) {
                    for item in items {
                        walk(item.get(), out);
                    }
                }
            }
            let mut out = Vec::new();
            walk(json, &mut out);
            out
        }

        /// `clientId` or `client_id` as a client might spell it to a lenient backend:
        /// any case, array suffixes, leading spaces, and (in JSON) `\u` escapes.
        fn json_name() -> impl Strategy<Value = String> {
            (
                prop_oneof![Just("clientId"), Just("client_id")],
                prop::collection::vec((prop::bool::ANY, prop::bool::ANY), 9),
                prop_oneof![Just(""), Just("[]"), Just("[0]")],
                prop_oneof![Just(""), Just(" ")],
            )
                .prop_map(|(name, flips, suffix, lead)| {
                    let mut out = String::from(lead);
                    for (c, (upper, escape)) in name.chars().zip(flips) {
                        let c = if upper { c.to_ascii_uppercase() } else { c };
                        if escape {
                            out.push_str(&format!("\\u{:04x}", c as u32));
                        } else {
                            out.push(c);
                        }
                    }
                    out.push_str(suffix);
                    out
                })
        }

        fn foreign_value() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("\"1002\"".to_owned()),
                Just("1002".to_owned()),
                Just("\"\\u0031002\"".to_owned()),
                Just("[\"1002\"]".to_owned()),
                Just("{\"id\":1001}".to_owned()),
                Just("null".to_owned()),
                Just("\" 1001\"".to_owned()),
            ]
        }

        /// A body with the foreign id somewhere: nested `depth` deep in objects and
        /// arrays, among other members.
        fn json_with_foreign_id() -> impl Strategy<Value = String> {
            (
                json_name(),
                foreign_value(),
                prop::collection::vec(prop::bool::ANY, 0..6),
                prop::bool::ANY,
            )
                .prop_map(|(name, value, path, own_too)| {
                    let mut inner = format!("{{\"x\":1,\"{name}\":{value}}}");
                    if own_too {
                        inner = format!("{{\"clientId\":\"1001\",\"n\":{inner}}}");
                    }
                    for in_array in path {
                        inner = if in_array {
                            format!("[0,{inner},\"s\"]")
                        } else {
                            format!("{{\"k\":\"v\",\"d\":{inner}}}")
                        };
                    }
                    format!("{{\"name\":\"Spring\",\"data\":{inner}}}")
                })
        }

        /// A form field name spelled as PHP, `qs` or Rails would still read as the id:
        /// case, percent-encoding of any byte, `+` / `.` for `_`, array suffixes.
        fn form_name() -> impl Strategy<Value = String> {
            (
                prop_oneof![Just("clientId"), Just("client_id")],
                prop::collection::vec((prop::bool::ANY, prop::bool::ANY), 9),
                prop_oneof![Just("_"), Just("."), Just("+"), Just("%20"), Just("%5F")],
                prop_oneof![Just(""), Just("[]"), Just("%5B%5D"), Just("[x]")],
            )
                .prop_map(|(name, flips, underscore, suffix)| {
                    let mut out = String::new();
                    for (c, (upper, encode)) in name.chars().zip(flips) {
                        if c == '_' {
                            out.push_str(underscore);
                            continue;
                        }
                        let c = if upper { c.to_ascii_uppercase() } else { c };
                        if encode {
                            out.push_str(&format!("%{:02X}", c as u32));
                        } else {
                            out.push(c);
                        }
                    }
                    out.push_str(suffix);
                    out
                })
        }

        proptest! {
            #[test]
            fn no_spelling_of_a_foreign_json_id_gets_through(body in json_with_foreign_id()) {
                let reject = policy(Mismatch::Reject);
                let outcome = json(&body, &reject, ME);
                prop_assert!(
                    refused(outcome.clone()),
                    "{} -> {:?}", body, outcome
                );
                // Overwritten instead: whatever reaches the backend names only the caller.
                let overwrite = policy(Mismatch::Overwrite);
                let sent = json(&body, &overwrite, ME).unwrap();
                for (name, value) in members(&sent) {
                    if overwrite.is_name(&name) {
                        prop_assert_eq!(&value, "1001", "{} in {}", name, sent);
                    }
                }
            }

            #[test]
            fn no_spelling_of_a_foreign_form_id_gets_through(
                name in form_name(),
                encode_value in prop::bool::ANY,
                before in "[a-z]{1,4}=[a-z0-9]{0,4}",
                separator in prop_oneof![Just('&'), Just(';')],
            ) {
                let value = if encode_value { "%31002" } else { "1002" };
                let body = format!("{before}{separator}{name}={value}");
                let reject = policy(Mismatch::Reject);
                prop_assert!(
                    refused(form_body(body.as_bytes(), &reject, ME)),
                    "{}", body
                );
                let overwrite = policy(Mismatch::Overwrite);
                let sent = form_body(body.as_bytes(), &overwrite, ME).unwrap();
                for (name, value) in tollgate_policy::param::pairs(&sent) {
                    if overwrite.is_name(&name) {
                        prop_assert_eq!(&value, "1001", "{} in {:?}", name, sent);
                    }
                }
                // The query string is read the same way.
                prop_assert!(
                    refused(query(Some(&body), &reject, ME)),
                    "{}", body
                );
            }
        }
    }
}
