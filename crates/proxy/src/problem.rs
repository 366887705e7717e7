//! Renders a [`Problem`] as an RFC 9457 `application/problem+json` response: the one
//! place an error becomes HTTP. It imports no stage; what each error means is the error's
//! own business (see [`crate::errors`]).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::errors::Problem;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// The response for `problem`, with `requestId` set to `request_id`.
pub fn render(problem: &dyn Problem, request_id: &str) -> Response<Either<Incoming, Full<Bytes>>> {
    let status = problem.status();
    let mut body = serde_json::json!({
        "type": problem.problem_type(),
        "title": problem.title(),
        "status": status.as_u16(),
        "detail": problem.to_string(),
        "code": problem.code(),
        "requestId": request_id,
    });
    if let Some(members) = body.as_object_mut() {
        for (name, value) in problem.extra() {
            members.insert(name.to_owned(), value);
        }
    }
    let mut response = Response::new(crate::body::full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = problem.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, www_authenticate(problem));
    }
    for (name, value) in problem.headers() {
        headers.insert(name, value);
    }
    if problem.closes_connection() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// RFC 6750 §3: `error="invalid_token"` when a token was presented and refused.
fn www_authenticate(problem: &dyn Problem) -> HeaderValue {
    match problem.token_error() {
        Some(description) => {
            let description = description.replace('"', "'");
            HeaderValue::from_str(&format!(
                "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{description}\""
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"tollgate\", error=\"invalid_token\""))
        }
        None => HeaderValue::from_static("Bearer realm=\"tollgate\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::{AccessError, GatewayError, LimitError};
    use http::Method;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problem_json_has_the_documented_members() {
        let response = render(&GatewayError::from(AccessError::RouteNotFound), "req-1");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["code"], "ROUTE_NOT_FOUND");
        assert_eq!(v["status"], 404);
        assert_eq!(v["requestId"], "req-1");
        assert_eq!(v["type"], "urn:tollgate:problem:route-not-found");
        assert_eq!(v["title"], "Route not found");
    }

    #[tokio::test]
    async fn extra_members_and_headers() {
        let response = render(&GatewayError::from(LimitError::Overloaded), "r");
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["retryAfter"], 1);
        let response = render(
            &GatewayError::from(AccessError::MethodNotAllowed {
                allow: vec![Method::GET, Method::POST],
            }),
            "r",
        );
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
    }
}
