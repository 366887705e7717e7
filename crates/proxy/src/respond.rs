//! Stage 10 — respond: the upstream's response is passed back with hop-by-hop headers
//! removed; every response, the gateway's own included, carries the request id.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::access_log::AccessLog;
use crate::body::{Observed, ResponseBody};
use crate::limit::Verdict;
use crate::{headers, request_id};
use tollgate_policy::snapshot::ApiKeySettings;

/// The upstream's response, cleaned for the client.
pub fn from_upstream(response: Response<Incoming>) -> Response<Either<Incoming, Full<Bytes>>> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// Tells a caller who used an API key that keys are on their way out: `Deprecation`
/// (RFC 9745, `@` seconds), `Sunset` (RFC 8594, an HTTP date) and a `Link` to the
/// migration notes.
pub fn api_key_notice<B>(response: &mut Response<B>, keys: &ApiKeySettings) {
    let headers = response.headers_mut();
    if let Some(at) = keys.deprecation {
        if let Ok(v) = HeaderValue::from_str(&format!("@{at}")) {
            headers.insert("deprecation", v);
        }
    }
    if let Some(at) = keys.sunset {
        let date =
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at));
        if let Ok(v) = HeaderValue::from_str(&date) {
            headers.insert("sunset", v);
        }
    }
    if let Some(link) = &keys.sunset_link {
        if let Ok(v) = HeaderValue::from_str(&format!("<{link}>; rel=\"sunset\"")) {
            headers.append(http::header::LINK, v);
        }
    }
}

/// Describes the rate limit closest to exhaustion (see `docs/frontend.md`):
///
/// - `X-RateLimit-Limit`: requests per period; `X-RateLimit-Remaining`: requests that
///   would be allowed right now; `X-RateLimit-Reset`: **seconds** (a delta, not a
///   timestamp) until the whole allowance is back.
/// - `RateLimit-Policy` and `RateLimit`, as in draft-ietf-httpapi-ratelimit-headers-10:
///   `"per-client";q=600;w=60` and `"per-client";r=12;t=3`.
///
/// Whatever the upstream said about limits is replaced.
pub fn rate_limit_headers<B>(response: &mut Response<B>, verdict: &Verdict) {
    let d = &verdict.decision;
    let name = &verdict.policy.name;
    let window = tollgate_state::rate::ceil_secs(verdict.policy.period);
    let reset = d.reset_secs();
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
    // Policy names are letters, digits, `-` and `_`: always a valid header value.
    if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";q={};w={window}", d.limit)) {
        headers.insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";r={};t={reset}", d.remaining)) {
        headers.insert("ratelimit", v);
    }
}

/// The answer to `OPTIONS *`: the server is here; ask a path for more.
pub fn server_options() -> Response<Either<Incoming, Full<Bytes>>> {
    let mut response = Response::new(crate::body::full(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// Adds what every response carries and hands the body to the access log.
pub fn finish(
    response: Response<Either<Incoming, Full<Bytes>>>,
    request_id: &str,
    mut log: AccessLog,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        parts.headers.insert(request_id::HEADER, id);
    }
    log.set_status(parts.status);
    Response::from_parts(parts, Observed::new(body, log))
}
