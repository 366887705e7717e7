//! Every error the gateway answers itself, and the one function that turns them into
//! RFC 9457 `application/problem+json` responses.
//!
//! Each variant is one reason a request was refused; [`GatewayError::kind`] gives its
//! status, stable machine `code` and title, and [`respond`] writes the response. The
//! catalogue is documented in `docs/errors.md`; the codes never change meaning.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use thiserror::Error;
use tollgate_auth::JwtError;
use tollgate_policy::path::PathError;

/// Why the request line or headers were refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FramingError {
    #[error("the request has no Host header")]
    MissingHost,
    #[error("the request has more than one Host header")]
    RepeatedHost,
    #[error("the absolute-form request target names a different host than the Host header")]
    HostMismatch,
    #[error("Transfer-Encoding must be exactly `chunked`")]
    UnsupportedTransferEncoding,
    #[error("the request has more than one Content-Type header")]
    RepeatedContentType,
    #[error("the `*` request target is only allowed with OPTIONS")]
    AsteriskTarget,
    #[error("CONNECT and authority-form request targets are not supported")]
    Connect,
    #[error("the absolute-form request target has a scheme other than http")]
    UnsupportedScheme,
}

/// A request the gateway refused, or could not complete, with the reason.
#[derive(Debug, Error)]
pub enum GatewayError {
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("the request header block is larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(
        "the request body could not be read (malformed chunked encoding, or the client went away)"
    )]
    RequestBodyInvalid,
    #[error("this route needs a bearer token (or, where allowed, an API key)")]
    AuthRequired,
    #[error("{0}")]
    Token(JwtError),
    #[error("the API key is not valid")]
    ApiKeyInvalid,
    #[error("API keys were retired on this API; use a bearer token")]
    ApiKeySunset,
    #[error("the callback signature or secret is missing or invalid")]
    SignatureInvalid,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request names another client than the authenticated caller")]
    ClientIdMismatch,
    #[error("the request body is not valid JSON")]
    InvalidJson,
    #[error("the request body must be a JSON object")]
    JsonNotObject,
    #[error("no route matches this path")]
    RouteNotFound,
    #[error("this path does not accept the method")]
    MethodNotAllowed { allow: Vec<Method> },
    #[error("this route is closed by policy")]
    RouteDenied,
    #[error("the upstream could not be reached")]
    UpstreamUnavailable,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream sent an invalid response")]
    UpstreamFailed,
    #[error("rate limit `{}` exceeded: {} requests per {} s; retry in {} s", .0.policy.name, .0.decision.limit, .0.policy.period.as_secs_f64(), .0.decision.retry_after_secs())]
    RateLimited(Box<crate::limit::Verdict>),
    #[error("the rate-limit store cannot be reached and this route refuses requests it cannot count; retry in {retry_after} s")]
    RateLimitUnavailable { retry_after: u64 },
    #[error(
        "the login names more than {} different usernames",
        crate::username::MAX_USERNAMES
    )]
    LoginAmbiguous,
    #[error("{0}")]
    UnsupportedMediaType(crate::classify::MediaRefusal),
    #[error("the request body arrived too slowly")]
    RequestTimeout,
    #[error("the gateway is holding too many request bodies; retry in a moment")]
    Overloaded,
    #[error("request header names with `_` are refused (backends read them as `-`)")]
    HeaderNameInvalid,
    #[error("this callback was already received (its nonce was seen before)")]
    CallbackReplayed,
    #[error("the signature does not cover this request's body")]
    UnsignedBody,
    #[error("a part of the multipart body could not be read")]
    MultipartInvalid,
    #[error("the gateway failed to handle this request")]
    Internal,
}

/// The public face of an error: status, stable code and title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
}

impl GatewayError {
    /// Seconds a client should wait before trying again, for the errors that say so.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimited(verdict) => Some(verdict.decision.retry_after_secs()),
            GatewayError::RateLimitUnavailable { retry_after } => Some(*retry_after),
            GatewayError::Overloaded => Some(1),
            _ => None,
        }
    }

    pub fn kind(&self) -> Kind {
        let (status, code, title) = match self {
            GatewayError::Framing(_) => (
                StatusCode::BAD_REQUEST,
                "REQUEST_INVALID",
                "Invalid request",
            ),
            GatewayError::HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HEADERS_TOO_LARGE",
                "Request headers too large",
            ),
            GatewayError::UriTooLong { .. } => (
                StatusCode::URI_TOO_LONG,
                "URI_TOO_LONG",
                "Request target too long",
            ),
            GatewayError::Path(_) => (
                StatusCode::BAD_REQUEST,
                "PATH_INVALID",
                "Invalid request path",
            ),
            GatewayError::RequestBodyInvalid => (
                StatusCode::BAD_REQUEST,
                "REQUEST_BODY_INVALID",
                "Invalid request body",
            ),
            GatewayError::AuthRequired => (
                StatusCode::UNAUTHORIZED,
                "AUTH_REQUIRED",
                "Authentication required",
            ),
            GatewayError::Token(JwtError::Expired) => {
                (StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED", "Token expired")
            }
            GatewayError::Token(JwtError::NotYetValid) => (
                StatusCode::UNAUTHORIZED,
                "TOKEN_NOT_YET_VALID",
                "Token not yet valid",
            ),
            GatewayError::Token(JwtError::AudienceMismatch) => (
                StatusCode::FORBIDDEN,
                "AUDIENCE_MISMATCH",
                "Token audience mismatch",
            ),
            GatewayError::Token(_) => (StatusCode::UNAUTHORIZED, "TOKEN_INVALID", "Invalid token"),
            GatewayError::ApiKeyInvalid => (
                StatusCode::UNAUTHORIZED,
                "API_KEY_INVALID",
                "Invalid API key",
            ),
            GatewayError::ApiKeySunset => (
                StatusCode::UNAUTHORIZED,
                "API_KEY_SUNSET",
                "API keys retired",
            ),
            GatewayError::SignatureInvalid => (
                StatusCode::UNAUTHORIZED,
                "SIGNATURE_INVALID",
                "Invalid signature",
            ),
            GatewayError::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN", "Forbidden"),
            GatewayError::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "Payload too large",
            ),
            GatewayError::ClientIdMismatch => (
                StatusCode::FORBIDDEN,
                "CLIENT_ID_MISMATCH",
                "Client id mismatch",
            ),
            GatewayError::InvalidJson | GatewayError::JsonNotObject => {
                (StatusCode::BAD_REQUEST, "INVALID_JSON", "Invalid JSON body")
            }
            GatewayError::RouteNotFound => {
                (StatusCode::NOT_FOUND, "ROUTE_NOT_FOUND", "Route not found")
            }
            GatewayError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "Method not allowed",
            ),
            GatewayError::RouteDenied => (StatusCode::FORBIDDEN, "FORBIDDEN", "Forbidden"),
            GatewayError::UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                "UPSTREAM_UNAVAILABLE",
                "Upstream unavailable",
            ),
            GatewayError::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "UPSTREAM_TIMEOUT",
                "Upstream timeout",
            ),
            GatewayError::UpstreamFailed => {
                (StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR", "Upstream error")
            }
            GatewayError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "Too many requests",
            ),
            GatewayError::LoginAmbiguous => (
                StatusCode::BAD_REQUEST,
                "LOGIN_AMBIGUOUS",
                "Ambiguous login",
            ),
            GatewayError::RateLimitUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "RATE_LIMIT_UNAVAILABLE",
                "Rate limiting unavailable",
            ),
            GatewayError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "Unsupported body type",
            ),
            GatewayError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                "Request body too slow",
            ),
            GatewayError::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "GATEWAY_OVERLOADED",
                "Gateway overloaded",
            ),
            GatewayError::HeaderNameInvalid => (
                StatusCode::BAD_REQUEST,
                "HEADER_NAME_INVALID",
                "Invalid header name",
            ),
            GatewayError::CallbackReplayed => (
                StatusCode::CONFLICT,
                "CALLBACK_REPLAYED",
                "Callback replayed",
            ),
            GatewayError::UnsignedBody => (
                StatusCode::UNAUTHORIZED,
                "SIGNATURE_INVALID",
                "Invalid signature",
            ),
            GatewayError::MultipartInvalid => (
                StatusCode::BAD_REQUEST,
                "MULTIPART_INVALID",
                "Invalid multipart body",
            ),
            GatewayError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "Internal error",
            ),
        };
        Kind {
            status,
            code,
            title,
        }
    }
}

pub const CONTENT_TYPE: &str = "application/problem+json";

/// The one mapping from an error to its HTTP response.
pub fn respond(error: &GatewayError, request_id: &str) -> Response<Either<Incoming, Full<Bytes>>> {
    let kind = error.kind();
    let retry_after = error.retry_after();
    let mut body = serde_json::json!({
        "type": format!("urn:tollgate:problem:{}", kind.code.to_ascii_lowercase().replace('_', "-")),
        "title": kind.title,
        "status": kind.status.as_u16(),
        "detail": error.to_string(),
        "code": kind.code,
        "requestId": request_id,
    });
    if let (Some(secs), Some(members)) = (retry_after, body.as_object_mut()) {
        members.insert("retryAfter".into(), secs.into());
    }
    let mut response = Response::new(crate::body::full(body.to_string()));
    *response.status_mut() = kind.status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if kind.status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, www_authenticate(error));
    }
    if let GatewayError::MethodNotAllowed { allow } = error {
        let list: Vec<&str> = allow.iter().map(Method::as_str).collect();
        if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
            headers.insert(header::ALLOW, value);
        }
    }
    if matches!(
        error,
        GatewayError::Framing(_)
            | GatewayError::HeadersTooLarge { .. }
            | GatewayError::RequestBodyInvalid
            | GatewayError::RequestTimeout
            | GatewayError::MultipartInvalid
    ) {
        // The connection's framing is suspect: do not reuse it.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// RFC 6750 §3: `error="invalid_token"` when a token was presented and refused.
fn www_authenticate(error: &GatewayError) -> HeaderValue {
    match error {
        GatewayError::Token(e) => {
            let description = e.to_string().replace('"', "'");
            HeaderValue::from_str(&format!(
                "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{description}\""
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"tollgate\", error=\"invalid_token\""))
        }
        _ => HeaderValue::from_static("Bearer realm=\"tollgate\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problem_json_has_the_documented_members() {
        let response = respond(&GatewayError::RouteNotFound, "req-1");
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

    #[test]
    fn method_not_allowed_lists_allow() {
        let response = respond(
            &GatewayError::MethodNotAllowed {
                allow: vec![Method::GET, Method::POST],
            },
            "r",
        );
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
    }
}
