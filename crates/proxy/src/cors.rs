//! Stage 4: cors. It answers CORS preflights from policy and decides which CORS
//! headers a response carries.
//!
//! A route's policy is its own `cors = "NAME"`, else `[routing] cors`. A request that
//! matches no route is judged by `[routing] cors`, so a 404 still reaches the page.
//!
//! - **Preflights** (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are
//!   answered here for the route that would serve the requested method. They never
//!   reach authentication, limits or the backend. An origin, method or header the
//!   policy does not allow gets 403 `CORS_PREFLIGHT_REFUSED`, without CORS headers, so
//!   the browser stops there. A preflight for a request no route would serve (no such
//!   path, a method the path does not take, a closed route) is answered by the policy
//!   that will decorate its refusal, so that the page can read the 404, 405 or 403:
//!   a browser shows a refusal only after a preflight that succeeded.
//! - **Requests from an allowed origin** get `Access-Control-Allow-Origin` (the origin
//!   itself, or `*` for a policy open to all without credentials). They also get
//!   `-Allow-Credentials` when the policy allows credentials, and `-Expose-Headers`
//!   (the rate-limit, credit, deprecation and request-id headers). Error responses
//!   get all of these too, otherwise the browser would hide the problem+json from the
//!   page.
//! - Where a policy applies, the gateway owns CORS: the backend's own
//!   `Access-Control-*` headers are removed, and every answer carries `Vary: Origin`
//!   (with or without an `Origin` in the request: a shared cache must not hand a copy
//!   made for one to the other). Without a policy, nothing is answered here and
//!   nothing is added or removed.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use tollgate_policy::snapshot::{CorsPolicy, OriginPattern};
use tollgate_policy::RouteAction;

use crate::endpoints::Answer;
use crate::errors::{AccessError, GatewayError};
use crate::exchange::{Cors, Exchange};
use crate::route::{self, Selection};

/// Answers a preflight itself, or records what CORS decided and lets the request go on.
pub fn preflight<B>(
    exchange: &mut Exchange<'_>,
    request: &Request<B>,
    path: &str,
    selection: &Selection<'_>,
) -> Result<Option<Answer>, GatewayError> {
    let headers = request.headers();
    // An actual request's policy: its route's, or the default when none matched.
    let policy = match selection {
        Selection::Route(route) => route.cors.as_ref(),
        _ => exchange.snapshot.cors.as_ref(),
    };
    let Some(origin) = single(headers, &ORIGIN) else {
        // Where a policy applies, the answer depends on `Origin` even when none was
        // sent: a shared cache must not hand this copy (without
        // `Access-Control-Allow-Origin`) to a page (`Vary: Origin`, as on the rest).
        exchange.cors = match policy {
            Some(_) => Cors::Refused,
            None => Cors::NotApplicable,
        };
        return Ok(None);
    };
    let asks_preflight =
        request.method() == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    let requested = asks_preflight
        .then(|| single(headers, &ACCESS_CONTROL_REQUEST_METHOD))
        .flatten();
    // A preflight whose method cannot be read (twice, or not ASCII) is still a
    // preflight: refused as one, not judged as an OPTIONS request of its own.
    if asks_preflight && requested.is_none() {
        exchange.cors = Cors::Refused;
        return Err(AccessError::CorsPreflightRefused.into());
    }
    let Some(requested) = requested else {
        exchange.cors = decide(policy, origin);
        return Ok(None);
    };
    // A preflight: judged by the route that would serve the method it asks for.
    let Ok(method) = Method::from_bytes(requested.as_bytes()) else {
        return Err(AccessError::CorsPreflightRefused.into());
    };
    let asked = asked_headers(headers);
    let target = route::select(exchange.snapshot, &method, path);
    let route = match &target {
        Selection::Route(route) if route.action != RouteAction::Deny => *route,
        // No route would serve it (no such path, another method, a closed route). The
        // actual request will be refused whatever the preflight says, but a browser
        // shows the page a refusal only after a preflight that succeeded: so the policy
        // that will decorate the refusal (the closed route's, else the default) answers
        // the preflight, and the 404, 405 or 403 then reaches the page readable.
        _ => {
            let policy = match &target {
                Selection::Route(route) => route.cors.as_ref(),
                _ => None,
            }
            .or(exchange.snapshot.cors.as_ref());
            let decision = decide(policy, origin);
            let answerable = matches!(decision, Cors::Allowed { .. })
                && policy.is_some_and(|p| headers_allowed(p, &asked));
            exchange.cors = decision;
            return match (answerable, policy) {
                (true, Some(policy)) => Ok(Some(answer(exchange, policy, &method, &asked))),
                _ => Ok(None),
            };
        }
    };
    let Some(policy) = &route.cors else {
        // No policy: the backend may answer preflights itself.
        exchange.cors = Cors::NotApplicable;
        return Ok(None);
    };
    let decision = decide(Some(policy), origin);
    let Cors::Allowed { .. } = &decision else {
        exchange.cors = Cors::Refused;
        return Err(AccessError::CorsPreflightRefused.into());
    };
    let method_allowed = match &policy.methods {
        Some(list) => list.contains(&method),
        None => route.allows(&method),
    };
    if !method_allowed || !headers_allowed(policy, &asked) {
        exchange.cors = Cors::Refused;
        return Err(AccessError::CorsPreflightRefused.into());
    }
    exchange.cors = decision;
    Ok(Some(answer(exchange, policy, &method, &asked)))
}

/// The request headers a preflight asks for, lower case.
fn asked_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

fn headers_allowed(policy: &CorsPolicy, asked: &[String]) -> bool {
    asked
        .iter()
        .all(|h| policy.headers.iter().any(|allowed| allowed.as_str() == h))
}

/// The preflight's 204, allowing `method` and the `asked` headers.
fn answer(
    exchange: &mut Exchange<'_>,
    policy: &CorsPolicy,
    method: &Method,
    asked: &[String],
) -> Answer {
    let mut response = Response::new(crate::body::full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(method.as_str()) {
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !asked.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&asked.join(", ")) {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
    }
    out.insert(
        ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(policy.max_age.as_secs()),
    );
    out.append(
        VARY,
        HeaderValue::from_static("access-control-request-method, access-control-request-headers"),
    );
    exchange.own_answer = true;
    response
}

/// One header value as text; `None` if absent, repeated or not text.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok(),
        _ => None,
    }
}

fn decide(policy: Option<&Arc<CorsPolicy>>, origin: &str) -> Cors {
    let Some(policy) = policy else {
        return Cors::NotApplicable;
    };
    if !policy.origins.iter().any(|p| p.matches(origin)) {
        return Cors::Refused;
    }
    let value = if policy.origins.contains(&OriginPattern::Any) && !policy.credentials {
        HeaderValue::from_static("*")
    } else {
        match HeaderValue::from_str(origin) {
            Ok(v) => v,
            Err(_) => return Cors::Refused,
        }
    };
    Cors::Allowed {
        origin: value,
        policy: Arc::clone(policy),
    }
}

/// The CORS headers a response carries, from the decision.
pub fn decorate<B>(response: &mut Response<B>, decision: &Cors) {
    if matches!(decision, Cors::NotApplicable) {
        return;
    }
    let headers = response.headers_mut();
    for name in [
        ACCESS_CONTROL_ALLOW_ORIGIN,
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        ACCESS_CONTROL_EXPOSE_HEADERS,
    ] {
        headers.remove(name);
    }
    headers.append(VARY, HeaderValue::from_static("origin"));
    let Cors::Allowed { origin, policy } = decision else {
        return;
    };
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if policy.credentials {
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    let exposed: Vec<&str> = policy.expose.iter().map(HeaderName::as_str).collect();
    if let Ok(v) = HeaderValue::from_str(&exposed.join(", ")) {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{exchange_for, snapshot_with_route};

    #[test]
    fn without_a_policy_nothing_is_answered_and_nothing_added() {
        let snapshot = snapshot_with_route();
        let mut exchange = exchange_for(&snapshot);
        let preflight = Request::builder()
            .method("OPTIONS")
            .uri("/x")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "DELETE")
            .body(())
            .unwrap();
        let selection = crate::route::select(&snapshot, preflight.method(), "/x");
        assert!(
            super::preflight(&mut exchange, &preflight, "/x", &selection)
                .unwrap()
                .is_none()
        );
        assert!(matches!(exchange.cors, Cors::NotApplicable));
        let mut response = Response::new(());
        response
            .headers_mut()
            .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        decorate(&mut response, &exchange.cors);
        // The backend's own CORS passes when the gateway has no policy.
        assert_eq!(response.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
