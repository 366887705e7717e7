//! Stage 10 — respond: the upstream's response is passed back with hop-by-hop headers
//! removed, and every response — the upstream's, the gateway's own, an error — is
//! decorated in one place, [`decorate`], from what the request accumulated in its
//! [`Exchange`]: the request id, the rate-limit headers, the API-key notices, and the
//! CORS and credit headers of their stages.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, LOCATION};
use http::{Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::access_log::AccessLog;
use crate::body::Observed;

/// What the gateway answers with: the upstream's body streamed through, or its own,
/// counted for the access log as it goes.
pub type ResponseBody = Observed<Either<Incoming, Full<Bytes>>, AccessLog>;
use crate::exchange::{Exchange, Verdict};
use crate::{cors, headers, meter, request_id};
use tollgate_policy::snapshot::{ApiKeySettings, Upstream};

/// The upstream's response, cleaned for the client: hop-by-hop headers, the credit
/// headers only the gateway may set (a backend's `X-Token-Balance: 99999` on a free
/// route would be shown as the caller's balance; metering sets them where it metered),
/// a `Set-Cookie` for the gateway's session cookies, and a `Location` that points at
/// the backend itself.
pub fn from_upstream(
    response: Response<Incoming>,
    upstream: &Upstream,
) -> Response<Either<Incoming, Full<Bytes>>> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    meter::strip_upstream_claims(&mut parts.headers);
    crate::cookies::drop_set_by_backend(&mut parts.headers);
    relative_location(&mut parts.headers, upstream);
    Response::from_parts(parts, Either::Left(body))
}

/// A redirect to the backend's own address — a framework builds absolute URLs from the
/// `Host` it was sent, which is the backend's — would send the browser past the gateway
/// (and tell it where the backend is). It is made relative to the gateway, the base
/// path taken off, as nginx's `proxy_redirect default` does. Redirects elsewhere pass.
fn relative_location(headers: &mut HeaderMap, upstream: &Upstream) {
    let Some(location) = headers.get(LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Ok(uri) = location.parse::<Uri>() else {
        return;
    };
    let scheme = if upstream.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let ours = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        && uri
            .authority()
            .is_some_and(|a| a.as_str().eq_ignore_ascii_case(upstream.authority.as_str()));
    if !ours {
        return;
    }
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let target = match target.strip_prefix(upstream.base_path.as_str()) {
        Some(rest) if !upstream.base_path.is_empty() && rest.starts_with(['/', '?']) => {
            if rest.starts_with('?') {
                format!("/{rest}")
            } else {
                rest.to_owned()
            }
        }
        Some("") if !upstream.base_path.is_empty() => "/".to_owned(),
        _ => target.to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&target) {
        headers.insert(LOCATION, value);
    }
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

/// Describes the rate limit closest to exhaustion (see `docs/frontend.md`), as what GCRA
/// actually guarantees: `burst` requests per window of `burst × interval` (600 per
/// minute with a burst of 100 is advertised as 100 per 10 s), so `Remaining` never
/// exceeds `Limit`:
///
/// - `X-RateLimit-Limit`: the burst; `X-RateLimit-Remaining`: requests that would be
///   allowed right now; `X-RateLimit-Reset`: **seconds** (a delta, not a timestamp)
///   until the whole allowance is back.
/// - `RateLimit-Policy` and `RateLimit`, as in draft-ietf-httpapi-ratelimit-headers-10:
///   `"per-client";q=100;w=10` and `"per-client";r=12;t=3`.
///
/// Whatever the upstream said about limits is replaced.
pub fn rate_limit_headers<B>(response: &mut Response<B>, verdict: &Verdict) {
    let d = &verdict.decision;
    let name = &verdict.policy.name;
    let window = tollgate_state::rate::ceil_secs(verdict.policy.quota.window()).max(1);
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

/// Writes onto any response what the request accumulated: the request id, the
/// rate-limit headers, the API-key notices, what CORS and metering decided, and the
/// security headers.
pub fn decorate<B>(response: &mut Response<B>, exchange: &Exchange<'_>) {
    if let Ok(id) = HeaderValue::from_str(&exchange.request_id) {
        response.headers_mut().insert(request_id::HEADER, id);
    }
    if let Some(verdict) = &exchange.rate_limit {
        rate_limit_headers(response, verdict);
    }
    if let (true, Some(keys)) = (
        exchange.caller.used_api_key,
        &exchange.snapshot.auth.api_keys,
    ) {
        api_key_notice(response, keys);
    }
    cors::decorate(response, &exchange.cors);
    meter::decorate(response, &exchange.metering);
    security_headers(response, exchange);
}

/// The gateway's own answers (endpoints, the login wrap, errors) are never sniffed
/// into another type and leak no referrer; over TLS every response tells the browser
/// to stay on TLS (HSTS). The upstream's own answers are otherwise left as they are.
fn security_headers<B>(response: &mut Response<B>, exchange: &Exchange<'_>) {
    let headers = response.headers_mut();
    if exchange.own_answer {
        headers.insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            http::header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    let hsts = exchange
        .snapshot
        .server
        .tls
        .as_ref()
        .and_then(|tls| tls.strict_transport_security.as_ref());
    if let (crate::exchange::Scheme::Https, Some(hsts)) = (exchange.scheme, hsts) {
        if !headers.contains_key(http::header::STRICT_TRANSPORT_SECURITY) {
            headers.insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }
}

/// Decorates the response and hands its body to the access log, which is written when
/// the body is done.
pub fn finish(
    response: Response<Either<Incoming, Full<Bytes>>>,
    exchange: Exchange<'_>,
) -> Response<ResponseBody> {
    let mut response = response;
    decorate(&mut response, &exchange);
    let mut log = exchange.log;
    let (parts, body) = response.into_parts();
    log.set_status(parts.status);
    Response::from_parts(parts, Observed::new(body, log))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::sync::Arc;
    use std::time::Duration;

    use tollgate_policy::snapshot::{FailureMode, LimitKey, LimitPolicy, Origin};
    use tollgate_state::rate::{Decide, Quota};

    #[test]
    fn a_redirect_to_the_backend_itself_is_made_relative() {
        let upstream = |base: &str| crate::testing::upstream("10.0.0.5:8081", base);
        let cases = [
            (
                "",
                "http://10.0.0.5:8081/internal?next=1",
                "/internal?next=1",
            ),
            ("", "HTTP://10.0.0.5:8081", "/"),
            (
                "/api",
                "http://10.0.0.5:8081/api/campaigns/3",
                "/campaigns/3",
            ),
            ("/api", "http://10.0.0.5:8081/api", "/"),
            ("/api", "http://10.0.0.5:8081/api?x=1", "/?x=1"),
            ("/api", "http://10.0.0.5:8081/apix/y", "/apix/y"),
            // Elsewhere, or relative already: as sent.
            ("", "https://10.0.0.5:8081/x", "https://10.0.0.5:8081/x"),
            ("", "http://10.0.0.5:9999/x", "http://10.0.0.5:9999/x"),
            ("", "https://idp.example/login", "https://idp.example/login"),
            ("", "/already/relative", "/already/relative"),
        ];
        for (base, sent, want) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(LOCATION, HeaderValue::from_str(sent).unwrap());
            relative_location(&mut headers, &upstream(base));
            assert_eq!(headers[LOCATION], want, "{base} {sent}");
        }
    }

    use super::*;

    fn verdict(limit: u32, period: Duration, burst: u32, allowed: Option<u32>) -> Verdict {
        let (limit, burst) = (
            NonZeroU32::new(limit).unwrap(),
            NonZeroU32::new(burst).unwrap(),
        );
        let quota = Quota::new(limit, period, burst).unwrap();
        Verdict {
            policy: Arc::new(LimitPolicy {
                name: "per-client".into(),
                quota,
                key: vec![LimitKey::Client],
                on_redis_error: FailureMode::Local,
                origin: Origin {
                    file: "p.toml".into(),
                    line: 1,
                    column: 1,
                },
            }),
            decision: match allowed {
                Some(remaining) => quota.allowed(remaining),
                None => quota.denied(Duration::from_millis(1500)),
            },
        }
    }

    fn headers(v: &Verdict) -> Vec<(String, String)> {
        let mut response = Response::new(());
        response.headers_mut().insert(
            "x-ratelimit-limit",
            HeaderValue::from_static("from upstream"),
        );
        rate_limit_headers(&mut response, v);
        let mut out: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        out.sort();
        out
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_allowed_request_reports_limit_remaining_and_seconds_to_full() {
        // 600 per minute, burst 100, 87 left: 13 used, back at 0.1 s each -> 1.3 s -> 2.
        // Advertised as GCRA guarantees it: 100 per 10 s (never Remaining > Limit).
        let v = verdict(600, Duration::from_secs(60), 100, Some(87));
        assert_eq!(
            headers(&v),
            pairs(&[
                ("ratelimit", "\"per-client\";r=87;t=2"),
                ("ratelimit-policy", "\"per-client\";q=100;w=10"),
                ("x-ratelimit-limit", "100"),
                ("x-ratelimit-remaining", "87"),
                ("x-ratelimit-reset", "2"),
            ])
        );
    }

    #[test]
    fn a_refusal_reports_nothing_left_and_when_all_is_back() {
        // 2 per second, burst 2: the next in 1.5 s, the other 0.5 s later.
        let v = verdict(2, Duration::from_secs(1), 2, None);
        assert_eq!(
            headers(&v),
            pairs(&[
                ("ratelimit", "\"per-client\";r=0;t=2"),
                ("ratelimit-policy", "\"per-client\";q=2;w=1"),
                ("x-ratelimit-limit", "2"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "2"),
            ])
        );
        assert_eq!(v.decision.retry_after_secs(), 2);
    }

    #[test]
    fn a_window_under_a_second_is_rounded_up() {
        let v = verdict(5, Duration::from_millis(500), 5, Some(4));
        assert!(headers(&v).contains(&("ratelimit-policy".into(), "\"per-client\";q=5;w=1".into())));
    }

    #[test]
    fn security_headers_go_on_own_answers_and_hsts_only_over_tls() {
        let mut snapshot = (*crate::testing::snapshot_with_route()).clone();
        snapshot.server.tls = Some(tollgate_policy::snapshot::Tls {
            listen: Vec::new(),
            certificates: Vec::new(),
            strict_transport_security: Some(HeaderValue::from_static(
                "max-age=63072000; includeSubDomains",
            )),
        });
        let snapshot = std::sync::Arc::new(snapshot);
        let mut exchange = crate::testing::exchange_for(&snapshot);
        let mut upstream = Response::new(());
        decorate(&mut upstream, &exchange);
        assert!(upstream.headers().get("x-content-type-options").is_none());
        assert!(upstream
            .headers()
            .get("strict-transport-security")
            .is_none());
        exchange.own_answer = true;
        exchange.scheme = crate::exchange::Scheme::Https;
        let mut own = Response::new(());
        decorate(&mut own, &exchange);
        assert_eq!(own.headers()["x-content-type-options"], "nosniff");
        assert_eq!(own.headers()["referrer-policy"], "no-referrer");
        assert_eq!(
            own.headers()["strict-transport-security"],
            "max-age=63072000; includeSubDomains"
        );
        // An upstream's own HSTS is kept as it is.
        exchange.own_answer = false;
        let mut theirs = Response::new(());
        theirs.headers_mut().insert(
            "strict-transport-security",
            HeaderValue::from_static("max-age=60"),
        );
        decorate(&mut theirs, &exchange);
        assert_eq!(theirs.headers()["strict-transport-security"], "max-age=60");
    }
}
