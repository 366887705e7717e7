//! Stage 8 — rewrite: turn the client's request into the upstream's.
//!
//! Strip, then set. First go hop-by-hop headers (and every header named in
//! `Connection`), headers whose names hold `_` (CGI, WSGI, PHP and many Java containers
//! read `X_Client_Id` as `X-Client-Id`), and the operator's list of headers that make
//! backends re-route or re-identify a request (`X-Original-URL`,
//! `X-HTTP-Method-Override`, `True-Client-IP`, ...). Then the caller's own credentials:
//! `Authorization` on every route (a backend credential may set it again), legacy API
//! keys on every route unless the route passes on the key its caller authenticated with
//! (never after the sunset), a
//! callback's URL secret. Then the gateway sets what it vouches for: forwarding headers,
//! the request id, `Host`, the route's backend credential, the caller's client id, and
//! the upstream target built from the *normalized* path.
//!
//! The body is classified first ([`crate::classify`]) on routes that identify their
//! caller: JSON and form bodies are read (bounded) and rewritten, multipart bodies are
//! watched as they stream ([`crate::multipart`]), opaque ones pass, anything else is 415.
//! A `_method` parameter that would change the method the route judged is refused in the
//! query and in every body the gateway reads ([`crate::method_override`]).

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, EXPECT, HOST};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http_body::Body as _;
use http_body_util::Either;
use tollgate_policy::snapshot::{Credential, RouteAction, RouteAuth, Upstream};
use tollgate_policy::{param, Route, Snapshot};

use crate::body::{self, Reading, RequestBody};
use crate::classify::{self, BodyClass};
use crate::client_id::{self, Caller as ClientCaller};
use crate::errors::{AccessError, Bug, GatewayError, MediaRefusal, RequestError};
use crate::exchange::{AuthMethod, Exchange};
use crate::multipart::Scanner;
use crate::{headers, method_override, request_id, trace_context, x_forwarded};

/// The header a legacy API key comes in when `[api_keys]` names none (and, by that
/// name, the query parameter it is dropped from).
const DEFAULT_API_KEY: &str = "x-api-key";
const DEFAULT_API_KEY_HEADER: HeaderName = HeaderName::from_static(DEFAULT_API_KEY);
/// Query parameters that carry a caller's key or bearer token by convention (RFC 6750's
/// `access_token`): the gateway authenticated the caller, so they never reach the
/// backend, whatever the route (compared as every parameter name is: decoded, any case).
const KEY_PARAMS: &[&str] = &["api_key", "apikey", "api-key", "access_token"];

/// Rewrites the request head in place for the upstream.
pub fn upstream_head(
    exchange: &Exchange<'_>,
    route: &Route,
    parts: &mut Parts,
    path: &str,
) -> Result<(), GatewayError> {
    let snapshot = exchange.snapshot;
    let caller = &exchange.caller;
    // The backend is spoken to in HTTP/1.1, whichever version the client used.
    parts.version = http::Version::HTTP_11;
    // The length as it was read, in one spelling: `005` is 5 to hyper, but octal to a
    // backend that parses it with `strtol(…, 0)`, and two readings of one length are
    // a desync. (hyper refused any value it could not read as one number.)
    if let Some(length) = crate::body::declared_length(parts) {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    let h = &mut parts.headers;
    headers::strip_hop_by_hop(h);
    crate::cookies::join(h);
    // `Expect: 100-continue` was answered (or not) by this hop; the body is sent as is.
    h.remove(EXPECT);
    strip_spoofable(h, snapshot);
    // The gateway reads the legacy login's answer as JSON: a browser's `gzip, br` would
    // let a compressing backend (Spring, nginx) answer in a form the gateway does not
    // decode, and every browser's login would fail as an unreadable answer.
    if route.action == RouteAction::Login {
        h.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }

    // The caller's credentials are for the gateway, not the backend: what
    // authentication read, a bearer token (or any other Authorization) on every route,
    // and legacy keys everywhere — except the key a caller authenticated with on a route
    // that passes it on, until the sunset. A backend credential may set one again below.
    let keys = snapshot.auth.api_keys.as_ref();
    let past_sunset = keys
        .and_then(|k| k.sunset)
        .is_some_and(|sunset| exchange.now >= sunset);
    let passes_keys = route.pass_api_key && caller.method == AuthMethod::ApiKey && !past_sunset;
    // On a route that passes keys on, the place the checked key came from stays (the
    // same key anywhere else goes: the backend gets one key, the one checked).
    let kept = passes_keys.then_some(&caller.consumed);
    let kept_header = |name: &HeaderName| kept.is_some_and(|c| c.headers.contains(name));
    let kept_param = |name: &str| kept.is_some_and(|c| c.params.iter().any(|p| p == name));
    let mut drop_params: Vec<&str> = Vec::new();
    for name in caller.consumed.headers.iter().filter(|n| !kept_header(n)) {
        h.remove(name);
    }
    drop_params.extend(
        caller
            .consumed
            .params
            .iter()
            .map(String::as_str)
            .filter(|p| !kept_param(p)),
    );
    h.remove(AUTHORIZATION);
    // The gateway's session cookies are its credentials, never the backend's.
    if snapshot.sessions.is_some() {
        crate::cookies::strip_ours(h);
    }
    match keys {
        Some(keys) => {
            for name in keys.headers.iter().filter(|n| !kept_header(n)) {
                h.remove(name);
            }
            drop_params.extend(keys.query_param.as_deref().filter(|p| !kept_param(p)));
            // A key moved from its header to the query (`?x-api-key=`) is no more the
            // backend's than in the header: a backend that reads it there would act
            // for whoever's key it is, past the sunset too.
            drop_params.extend(
                keys.headers
                    .iter()
                    .map(HeaderName::as_str)
                    .filter(|p| !kept_param(p)),
            );
        }
        None => {
            h.remove(DEFAULT_API_KEY_HEADER);
            drop_params.push(DEFAULT_API_KEY);
        }
    }
    drop_params.extend(KEY_PARAMS.iter().copied().filter(|p| !kept_param(p)));
    if let Some((_, credential)) = &route.upstream_credential {
        set_credential(h, credential, exchange)?;
    }

    let client_id = route
        .client_id
        .as_ref()
        .zip(caller.identity.as_ref().map(|i| ClientCaller {
            id: &i.client_id,
            integer: i.integer,
        }));
    // No authenticated caller: nobody may claim an identity the backend trusts, in a
    // header, a cookie or the query (a signed callback's URL is the provider's).
    let unvouched = match (client_id, &route.auth) {
        (Some(_), _) | (None, RouteAuth::Webhook(_)) => None,
        (None, _) => snapshot.unvouched_client_id.as_ref(),
    };
    match client_id {
        Some((policy, client)) => client_id::headers(h, policy, client)?,
        None => {
            for name in &snapshot.identity_headers {
                h.remove(name);
            }
            if let Some(policy) = unvouched {
                client_id::drop_supplied_cookies(h, policy)?;
            }
        }
    }

    x_forwarded::set_headers(
        h,
        exchange.peer,
        exchange.client,
        &snapshot.server.trusted_proxies,
        exchange.scheme,
    );
    if let Ok(id) = HeaderValue::from_str(&exchange.request_id) {
        h.insert(request_id::HEADER, id);
    }
    // The client's trace headers are replaced by the continued (or new) trace: the
    // backend never sees a traceparent the gateway did not check.
    h.insert(trace_context::TRACEPARENT, exchange.trace.traceparent());
    h.remove(&trace_context::TRACESTATE);
    if let Some(state) = &exchange.trace.state {
        h.insert(trace_context::TRACESTATE, state.clone());
    }
    if let Ok(host) = HeaderValue::from_str(snapshot.upstream.authority.as_str()) {
        h.insert(HOST, host);
    }
    if let Some(q) = parts.uri.query() {
        method_override::judge_params(q.as_bytes(), &parts.method)?;
    }
    let mut query = parts.uri.query().map(|q| {
        if drop_params.is_empty() {
            q.to_owned()
        } else {
            param::without(q, &drop_params)
        }
    });
    if let Some((policy, client)) = client_id {
        query = client_id::query(query.as_deref(), policy, client)?;
    } else if let Some(policy) = unvouched {
        query = client_id::query(query.as_deref(), policy, client_id::NOBODY)?;
    }
    let path = match (client_id, unvouched) {
        (Some((policy, client)), _) => client_id::path_params(path, policy, client)?,
        (None, Some(policy)) => client_id::path_params(path, policy, client_id::NOBODY)?,
        (None, None) => std::borrow::Cow::Borrowed(path),
    };
    parts.uri = upstream_uri(query.as_deref(), &path, &snapshot.upstream)?;
    Ok(())
}

/// Removes request headers a backend could read as another name or another request:
/// names with `_` or `.` (refused earlier in `refuse` mode), and the configured list.
///
/// One pass over the request's few headers, comparing each with the list, rather than a
/// removal (a hash lookup) per listed name: measured with callgrind, the lookups cost
/// about 9,500 instructions per request, this pass a few hundred.
fn strip_spoofable(h: &mut HeaderMap, snapshot: &Snapshot) {
    let listed = &snapshot.server.strip_request_headers;
    let doomed: Vec<HeaderName> = h
        .keys()
        .filter(|name| crate::headers::folds_into_another(name) || listed.contains(name))
        .cloned()
        .collect();
    for name in doomed {
        h.remove(name);
    }
}

/// Adds the backend credential; `insert` replaces whatever the client sent under that name.
fn set_credential(
    headers: &mut HeaderMap,
    credential: &Credential,
    exchange: &Exchange<'_>,
) -> Result<(), GatewayError> {
    match credential {
        Credential::Header { name, value } => {
            headers.insert(name.clone(), value.clone());
        }
        Credential::ClientMap { name, values } => {
            headers.remove(name);
            let value = client_credential(values, exchange)?;
            headers.insert(name.clone(), value.clone());
        }
    }
    Ok(())
}

/// The caller's own entry of a per-client credential: 403 `FORBIDDEN` for a caller the
/// backend has no key for.
fn client_credential<'v>(
    values: &'v std::collections::HashMap<String, HeaderValue>,
    exchange: &Exchange<'_>,
) -> Result<&'v HeaderValue, GatewayError> {
    // `tollgate check` refuses a per-client credential where nobody is identified.
    let client = exchange
        .caller
        .identity
        .as_ref()
        .ok_or(Bug::CredentialWithoutCaller)?;
    Ok(values
        .get(&client.client_id)
        .ok_or(AccessError::NoBackendCredential)?)
}

/// Refuses, before anything is reserved or claimed, a caller this stage could not
/// give the route's backend credential: the refusal would otherwise come after a
/// reservation, and journal a reserve and a void for a request that never could run.
pub fn require_credential(exchange: &Exchange<'_>, route: &Route) -> Result<(), GatewayError> {
    match route.upstream_credential.as_ref().map(|(_, c)| &**c) {
        Some(Credential::ClientMap { values, .. }) => client_credential(values, exchange).map(drop),
        _ => Ok(()),
    }
}

/// The target the upstream is sent: its base path, then the normalized `path`, then the
/// query as rewritten.
pub fn upstream_uri(
    query: Option<&str>,
    path: &str,
    upstream: &Upstream,
) -> Result<Uri, GatewayError> {
    let mut target = String::with_capacity(upstream.base_path.len() + path.len() + 64);
    target.push_str(&upstream.base_path);
    target.push_str(path);
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        target.push('?');
        target.push_str(query);
    }
    // The path came out of a valid URI and only had unreserved escapes decoded, so it is
    // still a valid one; failure here would be the gateway's bug.
    let path_and_query = PathAndQuery::try_from(target).map_err(|_| Bug::UpstreamTarget)?;
    let scheme = match upstream.tls {
        Some(_) => http::uri::Scheme::HTTPS,
        None => http::uri::Scheme::HTTP,
    };
    Uri::builder()
        .scheme(scheme)
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| Bug::UpstreamTarget.into())
}

/// The request body for the upstream, and the multipart scanner it must pass through.
///
/// On a route that identifies its caller the body is classified: a JSON or form body is
/// read (bounded by the route's `client_id.max_body_bytes`) and rewritten with an exact
/// `Content-Length`; a multipart body streams with a scanner; an opaque one streams as
/// it is; anything else is refused. On other routes every body streams untouched. A
/// declared length over the route's upload limit is refused at once.
pub async fn upstream_body(
    exchange: &Exchange<'_>,
    route: &Route,
    parts: &mut Parts,
    body: RequestBody,
    reading: &Reading,
) -> Result<(RequestBody, Option<Scanner>), GatewayError> {
    let client_id = route
        .client_id
        .as_ref()
        .zip(exchange.caller.identity.as_ref());
    let Some((policy, identity)) = client_id else {
        refuse_declared_over_limit(parts, route)?;
        return Ok((body, None));
    };
    let caller = ClientCaller {
        id: &identity.client_id,
        integer: identity.integer,
    };
    let class = classify::classify(&parts.headers, !body.is_end_stream(), route)?;
    match class {
        BodyClass::Json | BodyClass::Form => {
            let held = body::hold(parts, body, policy.max_body_bytes as u64, reading).await?;
            let bytes = held.bytes();
            let rewritten = if class == BodyClass::Json {
                method_override::judge_json(&bytes, &parts.method)?;
                client_id::json_body(&bytes, policy, caller)?.unwrap_or(bytes)
            } else {
                // Backends that read the raw body as JSON whatever its type (PHP's
                // `json_decode(php://input)`, `get_json(force=True)`) would find a client
                // id in it that the form reading, one field named `{"clientId":…}`,
                // never judged.
                if opens_like_json(&bytes) {
                    return Err(MediaRefusal::FormIsJson.into());
                }
                method_override::judge_params(&bytes, &parts.method)?;
                client_id::form_body(&bytes, policy, caller)?
            };
            parts.headers.remove(http::header::TRANSFER_ENCODING);
            parts.headers.insert(
                http::header::CONTENT_LENGTH,
                HeaderValue::from(rewritten.len()),
            );
            Ok((Either::Right(held.replaced(rewritten)), None))
        }
        BodyClass::Multipart { boundary } => {
            refuse_declared_over_limit(parts, route)?;
            let scanner = Scanner::new(&boundary, &policy.names, caller.id, parts.method.as_str());
            Ok((body, Some(scanner)))
        }
        BodyClass::Empty | BodyClass::Opaque => {
            refuse_declared_over_limit(parts, route)?;
            Ok((body, None))
        }
    }
}

/// Whether `bytes` start like a JSON object, or like an array whose first element is a
/// value that can hold one (after white space or a byte-order mark): no form body does.
/// A form may open with `[`, in qs's bracket names (`[_method]=…`, judged as such).
fn opens_like_json(bytes: &[u8]) -> bool {
    let text = bytes
        .strip_prefix(b"\xef\xbb\xbf")
        .unwrap_or(bytes)
        .trim_ascii_start();
    match text.split_first() {
        Some((b'{', _)) => true,
        Some((b'[', rest)) => rest
            .trim_ascii_start()
            .first()
            .is_some_and(|b| matches!(b, b'{' | b'[' | b'"' | b'-' | b'0'..=b'9')),
        _ => false,
    }
}

fn refuse_declared_over_limit(parts: &Parts, route: &Route) -> Result<(), GatewayError> {
    if let Some(limit) = route.max_upload_bytes {
        if body::declared_length(parts).is_some_and(|n| n > limit) {
            return Err(RequestError::PayloadTooLarge { limit }.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_form_that_is_json_is_told_from_a_form_with_bracket_names() {
        for json in [
            r#"{"clientId":"1002"}"#,
            " \n[{\"clientId\":1002}]",
            "\u{feff}{}",
            r#"[ "x", {"clientId":"1"} ]"#,
            "[[{}]]",
            "[1,{}]",
        ] {
            assert!(opens_like_json(json.as_bytes()), "{json}");
        }
        for form in [
            "a=1",
            "[_method]=DELETE",
            "[clientId]=1002",
            "[ x]=1",
            "",
            "x={}",
        ] {
            assert!(!opens_like_json(form.as_bytes()), "{form}");
        }
    }

    fn upstream(base: &str) -> Upstream {
        crate::testing::upstream("backend:8081", base)
    }

    /// Raw request paths: segments of characters that matter to normalization, escapes
    /// included (valid, invalid, encoded slashes and dots, non-ASCII).
    fn raw_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("a".to_owned()),
            Just("admin".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E%2e".to_owned()),
            Just("%2f".to_owned()),
            Just("%5c".to_owned()),
            Just("%41".to_owned()),
            Just("%7e".to_owned()),
            Just("%c3%a9".to_owned()),
            Just("%ff".to_owned()),
            Just("%zz".to_owned()),
            Just("%".to_owned()),
            Just(";".to_owned()),
            Just("..;".to_owned()),
            Just("é".to_owned()),
            Just("%00".to_owned()),
            Just("%20".to_owned()),
            Just("-_~".to_owned()),
            "[a-z0-9]{1,3}",
        ];
        prop::collection::vec((piece, prop::bool::ANY), 0..8).prop_map(|parts| {
            let mut out = String::from("/");
            for (p, slash) in parts {
                out.push_str(&p);
                if slash {
                    out.push('/');
                }
            }
            out
        })
    }

    proptest! {
        /// What the policy judges (the normalized path) is, byte for byte, the path the
        /// upstream is sent, and normalizing it again changes nothing: no second decoder
        /// can see another path.
        #[test]
        fn the_path_judged_is_the_path_forwarded(raw in raw_path(), query in "[a-z=&%0-9]{0,12}") {
            let Ok(judged) = tollgate_policy::path::normalize(&raw) else {
                return Ok(());
            };
            for base in ["", "/api"] {
                let uri = upstream_uri(Some(&query), &judged, &upstream(base)).unwrap();
                prop_assert_eq!(uri.path(), format!("{base}{judged}"));
                let reparsed: Uri = uri.to_string().parse().unwrap();
                prop_assert_eq!(reparsed.path(), uri.path());
            }
            prop_assert_eq!(tollgate_policy::path::normalize(&judged).unwrap(), judged.clone());
        }
    }
}
