//! Every reason the gateway refuses or fails a request, as small typed errors that know
//! their own public face through one trait, [`Problem`]: status, stable `code`, title,
//! problem type, and what else the response carries (`retryAfter`, `Allow`, ...).
//!
//! This module imports no stage: stages return these errors, [`crate::problem`] only
//! renders them, and the metrics count them by `code`. The catalogue is documented in
//! `docs/errors.md`; codes never change meaning.

use std::fmt;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, ALLOW};
use http::{Method, StatusCode};
use serde_json::Value;
use thiserror::Error;
use tollgate_auth::JwtError;
use tollgate_policy::media::MediaError;
use tollgate_policy::path::PathError;
use tollgate_state::ledger::operator;

/// What every error the gateway answers itself knows about its response.
pub trait Problem: fmt::Display {
    fn status(&self) -> StatusCode;
    /// The stable machine code clients branch on.
    fn code(&self) -> &'static str;
    /// A short, human title.
    fn title(&self) -> &'static str;
    /// How the metrics count it besides by code.
    fn family(&self) -> Family;
    /// Seconds a client should wait before trying again (`Retry-After`, `retryAfter`).
    fn retry_after(&self) -> Option<u64> {
        None
    }
    /// Members of the problem document beyond the standard ones.
    fn extra(&self) -> Vec<(&'static str, Value)> {
        Vec::new()
    }
    /// Headers the response carries for this reason.
    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        Vec::new()
    }
    /// For a 401: the RFC 6750 error description, when a presented token was refused.
    fn token_error(&self) -> Option<String> {
        None
    }
    /// Whether the connection's framing is suspect, so it must not be reused.
    fn closes_connection(&self) -> bool {
        false
    }
    /// The RFC 9457 problem type: `urn:tollgate:problem:` and the code in kebab case.
    fn problem_type(&self) -> String {
        format!(
            "urn:tollgate:problem:{}",
            self.code().to_ascii_lowercase().replace('_', "-")
        )
    }
}

/// Where a problem comes from, for the metrics that group them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// The request itself: framing, path, body.
    Request,
    /// Authentication refused the caller.
    Auth,
    /// The caller may not do this: routing, policy, identity.
    Access,
    /// Rate limits and capacity.
    Limit,
    /// The upstream failed; `kind` labels `tollgate_upstream_errors_total`.
    Upstream { kind: &'static str },
    /// The gateway's own bug.
    Internal,
}

/// Why the request line or headers were refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FramingError {
    #[error("the request has no Host header")]
    MissingHost,
    #[error("the request has more than one Host header")]
    RepeatedHost,
    #[error("the request target names a different host than the Host header")]
    HostMismatch,
    #[error("the Host header is not a host name or address with an optional port")]
    InvalidHost,
    #[error("Transfer-Encoding must be exactly `chunked`")]
    UnsupportedTransferEncoding,
    #[error("the request has more than one Content-Type header")]
    RepeatedContentType,
    #[error("the `*` request target is only allowed with OPTIONS")]
    AsteriskTarget,
    #[error("CONNECT and authority-form request targets are not supported")]
    Connect,
    #[error(
        "the method has lowercase letters: backends that fold its case would run another \
         method than the one the gateway judged; send it in upper case"
    )]
    LowercaseMethod,
    #[error("the absolute-form request target has a scheme other than the connection's")]
    UnsupportedScheme,
    #[error(
        "a {0} request carries no body here: many backends answer {0} without reading one, \
         and would read what it holds as the next request"
    )]
    BodyOnBodilessMethod(&'static str),
}

/// Why a body's type was refused (415 `UNSUPPORTED_MEDIA_TYPE`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MediaRefusal {
    #[error("the request has a body but no Content-Type")]
    Missing,
    #[error("the Content-Type cannot be read: {0}")]
    Unreadable(#[from] MediaError),
    #[error("`{0}` bodies must be UTF-8")]
    Charset(String),
    #[error("compressed request bodies (Content-Encoding) cannot be inspected")]
    Encoded,
    #[error(
        "a multipart/form-data body needs one `boundary` parameter (1 to 70 RFC 2046 characters) \
         and no other parameter than `charset`"
    )]
    NoBoundary,
    #[error("`{0}` bodies are not accepted here: send JSON, a form or multipart/form-data")]
    NotAccepted(String),
    #[error("`{0}` bodies are not accepted here: send JSON (`Content-Type: application/json`)")]
    JsonOnly(String),
    #[error(
        "a login body is read for its per-account limit and its `_method`: send it as JSON \
         or a form, uncompressed"
    )]
    LoginUnreadable,
    #[error("this form body is JSON: send it as application/json")]
    FormIsJson,
    #[error(
        "the Content-Type names another kind of body (`{0}`) beside its own: some backends \
         pick their parser by a search of the whole header; send the type with only its \
         own parameters"
    )]
    NamesAnotherType(&'static str),
}

/// Why a JSON body the gateway must rewrite was refused (400 `INVALID_JSON`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum JsonProblem {
    #[error("the request body is not valid JSON")]
    Malformed,
    #[error("the request body must be a JSON object")]
    NotObject,
    #[error("the request body nests objects too deeply to be searched for a client id")]
    TooDeep,
}

/// The request itself cannot be served: its framing, path or body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("the request header block is larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the request has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("request header names with `_` or `.` are refused (backends read them as `-`)")]
    HeaderName,
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(
        "the request body could not be read (malformed chunked encoding, or the client went away)"
    )]
    BodyInvalid,
    #[error("the request body arrived too slowly")]
    BodyTooSlow,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error(transparent)]
    Json(#[from] JsonProblem),
    #[error(transparent)]
    MediaType(#[from] MediaRefusal),
    #[error("a part of the multipart body could not be read")]
    MultipartInvalid,
    #[error("the login names more than {max} different usernames")]
    LoginAmbiguous { max: usize },
    #[error(
        "a `_method` parameter names another method than the request's own (Rails, Laravel \
         and Symfony would act on it): send the request with the method it means"
    )]
    MethodOverride,
}

impl Problem for RequestError {
    fn status(&self) -> StatusCode {
        match self {
            RequestError::HeadersTooLarge { .. } | RequestError::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            RequestError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            RequestError::BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            RequestError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            RequestError::Framing(_) => "REQUEST_INVALID",
            RequestError::HeadersTooLarge { .. } | RequestError::TooManyHeaders { .. } => {
                "HEADERS_TOO_LARGE"
            }
            RequestError::UriTooLong { .. } => "URI_TOO_LONG",
            RequestError::HeaderName => "HEADER_NAME_INVALID",
            RequestError::Path(_) => "PATH_INVALID",
            RequestError::BodyInvalid => "REQUEST_BODY_INVALID",
            RequestError::BodyTooSlow => "REQUEST_TIMEOUT",
            RequestError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            RequestError::Json(_) => "INVALID_JSON",
            RequestError::MediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            RequestError::MultipartInvalid => "MULTIPART_INVALID",
            RequestError::LoginAmbiguous { .. } => "LOGIN_AMBIGUOUS",
            RequestError::MethodOverride => "METHOD_OVERRIDE_REFUSED",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            RequestError::Framing(_) => "Invalid request",
            RequestError::HeadersTooLarge { .. } | RequestError::TooManyHeaders { .. } => {
                "Request headers too large"
            }
            RequestError::UriTooLong { .. } => "Request target too long",
            RequestError::HeaderName => "Invalid header name",
            RequestError::Path(_) => "Invalid request path",
            RequestError::BodyInvalid => "Invalid request body",
            RequestError::BodyTooSlow => "Request body too slow",
            RequestError::PayloadTooLarge { .. } => "Payload too large",
            RequestError::Json(_) => "Invalid JSON body",
            RequestError::MediaType(_) => "Unsupported body type",
            RequestError::MultipartInvalid => "Invalid multipart body",
            RequestError::LoginAmbiguous { .. } => "Ambiguous login",
            RequestError::MethodOverride => "Method override refused",
        }
    }

    fn family(&self) -> Family {
        Family::Request
    }

    fn closes_connection(&self) -> bool {
        matches!(
            self,
            RequestError::Framing(_)
                | RequestError::HeadersTooLarge { .. }
                | RequestError::TooManyHeaders { .. }
                | RequestError::BodyInvalid
                | RequestError::BodyTooSlow
                | RequestError::MultipartInvalid
        )
    }
}

/// Why a provider callback's proof was refused (401 `SIGNATURE_INVALID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SignatureProblem {
    #[error("the callback carries no signature, nonce or URL secret")]
    Missing,
    #[error("the callback signature or URL secret is wrong")]
    Invalid,
    #[error("the callback carries a signature header, nonce or secret more than once")]
    Repeated,
    #[error("the signature does not cover this request's body")]
    UnsignedBody,
    #[error("the callback carries parameters the signature cannot cover")]
    Uncovered,
    #[error("the callback's path is not written in its normal form (`..`, escapes): it would be signed as one path and delivered as another")]
    PathNotNormal,
}

/// Authentication refused the caller.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("this route needs a bearer token (or, where allowed, an API key)")]
    Required,
    #[error("{0}")]
    Token(JwtError),
    #[error("the API key is not valid")]
    ApiKeyInvalid,
    #[error("the request carries more than one API key: send one, in one place")]
    ApiKeyAmbiguous,
    #[error("API keys were retired on this API; use a bearer token")]
    ApiKeySunset,
    #[error(transparent)]
    Signature(#[from] SignatureProblem),
    #[error("this callback was already received (its nonce was seen before)")]
    Replayed,
    #[error("the callback's source address is not allowed")]
    SourceNotAllowed,
    #[error("the token was revoked: its session was logged out or ended")]
    Revoked,
}

impl From<JwtError> for AuthError {
    fn from(e: JwtError) -> Self {
        AuthError::Token(e)
    }
}

impl Problem for AuthError {
    fn status(&self) -> StatusCode {
        match self {
            AuthError::Token(JwtError::AudienceMismatch) | AuthError::SourceNotAllowed => {
                StatusCode::FORBIDDEN
            }
            AuthError::Replayed => StatusCode::CONFLICT,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AuthError::Required => "AUTH_REQUIRED",
            AuthError::Token(JwtError::Expired) => "TOKEN_EXPIRED",
            AuthError::Token(JwtError::NotYetValid) => "TOKEN_NOT_YET_VALID",
            AuthError::Token(JwtError::AudienceMismatch) => "AUDIENCE_MISMATCH",
            AuthError::Token(_) => "TOKEN_INVALID",
            AuthError::ApiKeyInvalid | AuthError::ApiKeyAmbiguous => "API_KEY_INVALID",
            AuthError::ApiKeySunset => "API_KEY_SUNSET",
            AuthError::Signature(_) => "SIGNATURE_INVALID",
            AuthError::Replayed => "CALLBACK_REPLAYED",
            AuthError::SourceNotAllowed => "FORBIDDEN",
            AuthError::Revoked => "TOKEN_REVOKED",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            AuthError::Required => "Authentication required",
            AuthError::Token(JwtError::Expired) => "Token expired",
            AuthError::Token(JwtError::NotYetValid) => "Token not yet valid",
            AuthError::Token(JwtError::AudienceMismatch) => "Token audience mismatch",
            AuthError::Token(_) => "Invalid token",
            AuthError::ApiKeyInvalid | AuthError::ApiKeyAmbiguous => "Invalid API key",
            AuthError::ApiKeySunset => "API keys retired",
            AuthError::Signature(_) => "Invalid signature",
            AuthError::Replayed => "Callback replayed",
            AuthError::SourceNotAllowed => "Forbidden",
            AuthError::Revoked => "Token revoked",
        }
    }

    fn family(&self) -> Family {
        Family::Auth
    }

    fn token_error(&self) -> Option<String> {
        match self {
            AuthError::Token(e) => Some(e.to_string()),
            AuthError::Revoked => Some(self.to_string()),
            _ => None,
        }
    }
}

/// The gateway's own login, refresh and logout refused or could not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SessionRefusal {
    #[error("the username or password is not correct")]
    InvalidCredentials,
    #[error("the legacy login answered something the gateway cannot read")]
    LoginAnswerUnreadable,
    #[error("this endpoint needs a refresh token (or, for logout, an access token)")]
    CredentialRequired,
    #[error("send a JSON object such as {{\"refreshToken\": \"...\"}}")]
    BodyInvalid,
    #[error("the refresh token is not valid")]
    RefreshInvalid,
    #[error("this refresh token was already used: the session is revoked; log in again")]
    RefreshReused,
    #[error("the session has ended (idle too long, or past its lifetime); log in again")]
    Expired,
    #[error("the session was logged out; log in again")]
    Revoked,
    #[error(
        "state-changing requests with session cookies need the X-CSRF-Token header of the session"
    )]
    CsrfInvalid,
    #[error(
        "with session cookies a login or refresh must come from the frontend's own origin or one the CORS policy allows: a page on another site could otherwise log this browser into its own account"
    )]
    LoginCrossSite,
    #[error("the session store cannot be reached; retry in a moment")]
    StoreUnavailable,
}

impl Problem for SessionRefusal {
    fn status(&self) -> StatusCode {
        match self {
            SessionRefusal::LoginAnswerUnreadable => StatusCode::BAD_GATEWAY,
            SessionRefusal::BodyInvalid => StatusCode::BAD_REQUEST,
            SessionRefusal::CsrfInvalid | SessionRefusal::LoginCrossSite => StatusCode::FORBIDDEN,
            SessionRefusal::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            SessionRefusal::InvalidCredentials => "INVALID_CREDENTIALS",
            SessionRefusal::LoginAnswerUnreadable => "LOGIN_UPSTREAM_INVALID",
            SessionRefusal::CredentialRequired => "AUTH_REQUIRED",
            SessionRefusal::BodyInvalid => "INVALID_REQUEST_BODY",
            SessionRefusal::RefreshInvalid => "REFRESH_TOKEN_INVALID",
            SessionRefusal::RefreshReused => "REFRESH_REUSED",
            SessionRefusal::Expired => "SESSION_EXPIRED",
            SessionRefusal::Revoked => "SESSION_REVOKED",
            SessionRefusal::CsrfInvalid | SessionRefusal::LoginCrossSite => "CSRF_TOKEN_INVALID",
            SessionRefusal::StoreUnavailable => "SESSION_STORE_UNAVAILABLE",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            SessionRefusal::InvalidCredentials => "Invalid credentials",
            SessionRefusal::LoginAnswerUnreadable => "Login unavailable",
            SessionRefusal::CredentialRequired => "Authentication required",
            SessionRefusal::BodyInvalid => "Invalid request body",
            SessionRefusal::RefreshInvalid => "Invalid refresh token",
            SessionRefusal::RefreshReused => "Refresh token reused",
            SessionRefusal::Expired => "Session expired",
            SessionRefusal::Revoked => "Session revoked",
            SessionRefusal::CsrfInvalid | SessionRefusal::LoginCrossSite => "CSRF token invalid",
            SessionRefusal::StoreUnavailable => "Session store unavailable",
        }
    }

    fn family(&self) -> Family {
        match self {
            SessionRefusal::LoginAnswerUnreadable => Family::Upstream {
                kind: "invalid_response",
            },
            SessionRefusal::StoreUnavailable => Family::Limit,
            SessionRefusal::BodyInvalid => Family::Request,
            SessionRefusal::CsrfInvalid | SessionRefusal::LoginCrossSite => Family::Access,
            _ => Family::Auth,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        (*self == SessionRefusal::StoreUnavailable).then_some(1)
    }

    fn extra(&self) -> Vec<(&'static str, Value)> {
        self.retry_after()
            .map(|secs| vec![("retryAfter", Value::from(secs))])
            .unwrap_or_default()
    }

    /// A refresh token presented and refused is a refused token too (RFC 6750 §3).
    fn token_error(&self) -> Option<String> {
        match self {
            SessionRefusal::RefreshInvalid
            | SessionRefusal::RefreshReused
            | SessionRefusal::Expired
            | SessionRefusal::Revoked => Some(self.to_string()),
            _ => None,
        }
    }
}

/// Token credits: the caller cannot pay, or a retry's `Idempotency-Key` does not fit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CreditError {
    #[error("this operation costs {required} token(s) and the balance is {balance}")]
    Insufficient { required: u64, balance: u64 },
    #[error("the token ledger cannot be reached; nothing was charged; retry in a moment")]
    LedgerUnavailable,
    #[error(
        "Idempotency-Key must be 1 to 255 visible ASCII characters (a quoted string or a token)"
    )]
    KeyInvalid,
    #[error("this Idempotency-Key was used for a different request")]
    KeyMismatch,
    #[error("a request with this Idempotency-Key is still running")]
    KeyInFlight,
    #[error("send {{\"operations\": [{{\"method\": \"POST\", \"path\": \"/campaigns\"}}]}} (1 to 100 operations)")]
    PreviewInvalid,
    #[error("operation {index}: {why}")]
    PreviewOperationInvalid { index: usize, why: &'static str },
    /// `max`: the largest page the endpoint that refused serves (each has its own).
    #[error("limit is 1 to {max} and before a movement's seq, both whole numbers")]
    HistoryQueryInvalid { max: u64 },
    #[error(
        "an account holds at most {max} tokens (available and held together); the balance \
         is {balance} and nothing was changed"
    )]
    BalanceTooLarge { balance: u64, max: u64 },
}

impl Problem for CreditError {
    fn status(&self) -> StatusCode {
        match self {
            CreditError::Insufficient { .. } => StatusCode::PAYMENT_REQUIRED,
            CreditError::LedgerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            CreditError::KeyInvalid => StatusCode::BAD_REQUEST,
            CreditError::KeyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            CreditError::KeyInFlight => StatusCode::CONFLICT,
            CreditError::PreviewInvalid
            | CreditError::PreviewOperationInvalid { .. }
            | CreditError::HistoryQueryInvalid { .. } => StatusCode::BAD_REQUEST,
            CreditError::BalanceTooLarge { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            CreditError::Insufficient { .. } => "INSUFFICIENT_TOKENS",
            CreditError::LedgerUnavailable => "LEDGER_UNAVAILABLE",
            CreditError::KeyInvalid => "IDEMPOTENCY_KEY_INVALID",
            CreditError::KeyMismatch => "IDEMPOTENCY_KEY_MISMATCH",
            CreditError::KeyInFlight => "IDEMPOTENCY_KEY_IN_USE",
            CreditError::PreviewInvalid | CreditError::PreviewOperationInvalid { .. } => {
                "INVALID_REQUEST_BODY"
            }
            CreditError::HistoryQueryInvalid { .. } => "INVALID_QUERY",
            CreditError::BalanceTooLarge { .. } => "BALANCE_TOO_LARGE",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            CreditError::Insufficient { .. } => "Insufficient tokens",
            CreditError::LedgerUnavailable => "Token ledger unavailable",
            CreditError::KeyInvalid => "Invalid Idempotency-Key",
            CreditError::KeyMismatch => "Idempotency-Key reused",
            CreditError::KeyInFlight => "Request in progress",
            CreditError::PreviewInvalid | CreditError::PreviewOperationInvalid { .. } => {
                "Invalid request body"
            }
            CreditError::HistoryQueryInvalid { .. } => "Invalid query",
            CreditError::BalanceTooLarge { .. } => "Balance too large",
        }
    }

    fn family(&self) -> Family {
        match self {
            CreditError::KeyInvalid
            | CreditError::KeyMismatch
            | CreditError::PreviewInvalid
            | CreditError::HistoryQueryInvalid { .. }
            | CreditError::BalanceTooLarge { .. } => Family::Request,
            _ => Family::Limit,
        }
    }

    fn retry_after(&self) -> Option<u64> {
        matches!(
            self,
            CreditError::LedgerUnavailable | CreditError::KeyInFlight
        )
        .then_some(1)
    }

    fn extra(&self) -> Vec<(&'static str, Value)> {
        match self {
            CreditError::Insufficient { required, balance } => vec![
                ("required", Value::from(*required)),
                ("balance", Value::from(*balance)),
            ],
            CreditError::BalanceTooLarge { balance, max } => vec![
                ("balance", Value::from(*balance)),
                ("max", Value::from(*max)),
            ],
            _ => self
                .retry_after()
                .map(|secs| vec![("retryAfter", Value::from(secs))])
                .unwrap_or_default(),
        }
    }
}

/// The admin API refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AdminError {
    #[error("the admin API is off: set [admin] token_file or token_env")]
    Disabled,
    #[error("the admin API needs Authorization: Bearer with the [admin] token")]
    Unauthorized,
    #[error("no such admin resource")]
    NotFound,
    #[error("send a JSON object with a whole number (amount, or balance) and a reason")]
    BodyInvalid,
    /// A change the operator rules refuse (the command line applies the same ones).
    #[error(transparent)]
    Refused(#[from] operator::Refusal),
}

impl Problem for AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Disabled | AdminError::NotFound => StatusCode::NOT_FOUND,
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::BodyInvalid | AdminError::Refused(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AdminError::Disabled => "ADMIN_API_DISABLED",
            AdminError::Unauthorized => "ADMIN_UNAUTHORIZED",
            AdminError::NotFound => "ROUTE_NOT_FOUND",
            AdminError::Refused(operator::Refusal::ClientId) => "CLIENT_ID_INVALID",
            AdminError::BodyInvalid | AdminError::Refused(_) => "INVALID_REQUEST_BODY",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            AdminError::Disabled => "Admin API disabled",
            AdminError::Unauthorized => "Admin token required",
            AdminError::NotFound => "Route not found",
            AdminError::Refused(operator::Refusal::ClientId) => "Invalid client id",
            AdminError::BodyInvalid | AdminError::Refused(_) => "Invalid request body",
        }
    }

    fn family(&self) -> Family {
        match self {
            AdminError::Unauthorized => Family::Auth,
            _ => Family::Request,
        }
    }
}

/// The caller may not do this here.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AccessError {
    #[error("no route matches this path")]
    RouteNotFound,
    #[error("this path does not accept the method")]
    MethodNotAllowed { allow: Vec<Method> },
    #[error("this route is closed by policy")]
    RouteDenied,
    #[error("the request names another client than the authenticated caller")]
    ClientIdMismatch,
    #[error("no backend credential is configured for this client")]
    NoBackendCredential,
    #[error("the CORS policy does not allow this origin, method or header")]
    CorsPreflightRefused,
}

impl Problem for AccessError {
    fn status(&self) -> StatusCode {
        match self {
            AccessError::RouteNotFound => StatusCode::NOT_FOUND,
            AccessError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::FORBIDDEN,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            AccessError::RouteNotFound => "ROUTE_NOT_FOUND",
            AccessError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            AccessError::RouteDenied | AccessError::NoBackendCredential => "FORBIDDEN",
            AccessError::ClientIdMismatch => "CLIENT_ID_MISMATCH",
            AccessError::CorsPreflightRefused => "CORS_PREFLIGHT_REFUSED",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            AccessError::RouteNotFound => "Route not found",
            AccessError::MethodNotAllowed { .. } => "Method not allowed",
            AccessError::ClientIdMismatch => "Client id mismatch",
            AccessError::CorsPreflightRefused => "CORS preflight refused",
            _ => "Forbidden",
        }
    }

    fn family(&self) -> Family {
        Family::Access
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            AccessError::MethodNotAllowed { allow } => {
                let list: Vec<&str> = allow.iter().map(Method::as_str).collect();
                HeaderValue::from_str(&list.join(", "))
                    .map(|v| vec![(ALLOW, v)])
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }
}

/// Rate limits and the gateway's capacity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitError {
    #[error("rate limit `{policy}` exceeded: {limit} requests per {} s; retry in {retry_after} s", period.as_secs_f64())]
    RateLimited {
        policy: String,
        limit: u32,
        period: Duration,
        retry_after: u64,
    },
    #[error("the rate-limit store cannot be reached and this route refuses requests it cannot count; retry in {retry_after} s")]
    StoreUnavailable { retry_after: u64 },
    #[error("the gateway is holding too many request bodies; retry in a moment")]
    Overloaded,
    #[error(
        "the gateway has {limit} requests in flight (server.max_connections); retry in a moment"
    )]
    TooManyInFlight { limit: usize },
}

impl Problem for LimitError {
    fn status(&self) -> StatusCode {
        match self {
            LimitError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            LimitError::RateLimited { .. } => "RATE_LIMITED",
            LimitError::StoreUnavailable { .. } => "RATE_LIMIT_UNAVAILABLE",
            LimitError::Overloaded | LimitError::TooManyInFlight { .. } => "GATEWAY_OVERLOADED",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            LimitError::RateLimited { .. } => "Too many requests",
            LimitError::StoreUnavailable { .. } => "Rate limiting unavailable",
            LimitError::Overloaded | LimitError::TooManyInFlight { .. } => "Gateway overloaded",
        }
    }

    fn family(&self) -> Family {
        Family::Limit
    }

    fn retry_after(&self) -> Option<u64> {
        Some(match self {
            LimitError::RateLimited { retry_after, .. }
            | LimitError::StoreUnavailable { retry_after } => *retry_after,
            LimitError::Overloaded | LimitError::TooManyInFlight { .. } => 1,
        })
    }

    fn extra(&self) -> Vec<(&'static str, Value)> {
        self.retry_after()
            .map(|secs| vec![("retryAfter", Value::from(secs))])
            .unwrap_or_default()
    }
}

/// The upstream could not serve the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum UpstreamError {
    #[error("the upstream could not be reached")]
    Unavailable,
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream broke the connection or sent an invalid response")]
    Failed,
}

impl Problem for UpstreamError {
    fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            UpstreamError::Unavailable => "UPSTREAM_UNAVAILABLE",
            UpstreamError::Timeout => "UPSTREAM_TIMEOUT",
            UpstreamError::Failed => "UPSTREAM_ERROR",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            UpstreamError::Unavailable => "Upstream unavailable",
            UpstreamError::Timeout => "Upstream timeout",
            UpstreamError::Failed => "Upstream error",
        }
    }

    fn family(&self) -> Family {
        Family::Upstream {
            kind: match self {
                UpstreamError::Unavailable => "unavailable",
                UpstreamError::Timeout => "timeout",
                UpstreamError::Failed => "invalid_response",
            },
        }
    }
}

/// The gateway's own bug: a 500, never the client's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Bug {
    #[error("the normalized path did not make a valid upstream target")]
    UpstreamTarget,
    #[error("no upstream pool for this worker")]
    NoPool,
    #[error("a callback rule reached the wrong verifier")]
    WrongVerifier,
    #[error("a route's backend credential needs a caller the route does not identify")]
    CredentialWithoutCaller,
    #[error("a session route runs without [sessions] or a signing key")]
    SessionsWithoutSigning,
    #[error("the operating system's random generator failed")]
    Randomness,
    #[error("an access token could not be signed")]
    Signing,
    #[error("a metered route runs without [credits]")]
    NoCredits,
    #[error("a backend exchange running on its own task ended without an answer")]
    Detached,
    #[error("a stored record could not be read back")]
    Corrupt,
}

impl Problem for Bug {
    fn status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    fn code(&self) -> &'static str {
        "INTERNAL"
    }

    fn title(&self) -> &'static str {
        "Internal error"
    }

    fn family(&self) -> Family {
        Family::Internal
    }
}

/// Any reason a request was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GatewayError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Session(#[from] SessionRefusal),
    #[error(transparent)]
    Credit(#[from] CreditError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("the gateway failed to handle this request")]
    Internal(#[from] Bug),
}

impl GatewayError {
    fn inner(&self) -> &dyn Problem {
        match self {
            GatewayError::Request(e) => e,
            GatewayError::Auth(e) => e,
            GatewayError::Access(e) => e,
            GatewayError::Limit(e) => e,
            GatewayError::Upstream(e) => e,
            GatewayError::Session(e) => e,
            GatewayError::Credit(e) => e,
            GatewayError::Admin(e) => e,
            GatewayError::Internal(e) => e,
        }
    }
}

impl Problem for GatewayError {
    fn status(&self) -> StatusCode {
        self.inner().status()
    }
    fn code(&self) -> &'static str {
        self.inner().code()
    }
    fn title(&self) -> &'static str {
        self.inner().title()
    }
    fn family(&self) -> Family {
        self.inner().family()
    }
    fn retry_after(&self) -> Option<u64> {
        self.inner().retry_after()
    }
    fn extra(&self) -> Vec<(&'static str, Value)> {
        self.inner().extra()
    }
    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.inner().headers()
    }
    fn token_error(&self) -> Option<String> {
        self.inner().token_error()
    }
    fn closes_connection(&self) -> bool {
        self.inner().closes_connection()
    }
}

macro_rules! via {
    ($from:ty => $mid:ident) => {
        impl From<$from> for GatewayError {
            fn from(e: $from) -> Self {
                GatewayError::from($mid::from(e))
            }
        }
    };
}

via!(FramingError => RequestError);
via!(PathError => RequestError);
via!(JsonProblem => RequestError);
via!(MediaRefusal => RequestError);
via!(JwtError => AuthError);
via!(SignatureProblem => AuthError);
via!(operator::Refusal => AdminError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_statuses_and_types() {
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (AccessError::RouteNotFound.into(), 404, "ROUTE_NOT_FOUND"),
            (
                AuthError::Token(JwtError::Expired).into(),
                401,
                "TOKEN_EXPIRED",
            ),
            (JwtError::AudienceMismatch.into(), 403, "AUDIENCE_MISMATCH"),
            (
                SignatureProblem::UnsignedBody.into(),
                401,
                "SIGNATURE_INVALID",
            ),
            (AuthError::Replayed.into(), 409, "CALLBACK_REPLAYED"),
            (RequestError::BodyTooSlow.into(), 408, "REQUEST_TIMEOUT"),
            (MediaRefusal::Missing.into(), 415, "UNSUPPORTED_MEDIA_TYPE"),
            (LimitError::Overloaded.into(), 503, "GATEWAY_OVERLOADED"),
            (
                LimitError::TooManyInFlight { limit: 4 }.into(),
                503,
                "GATEWAY_OVERLOADED",
            ),
            (UpstreamError::Failed.into(), 502, "UPSTREAM_ERROR"),
            (Bug::NoPool.into(), 500, "INTERNAL"),
            (AuthError::Revoked.into(), 401, "TOKEN_REVOKED"),
            (
                SessionRefusal::InvalidCredentials.into(),
                401,
                "INVALID_CREDENTIALS",
            ),
            (SessionRefusal::RefreshReused.into(), 401, "REFRESH_REUSED"),
            (
                SessionRefusal::CsrfInvalid.into(),
                403,
                "CSRF_TOKEN_INVALID",
            ),
            (
                SessionRefusal::StoreUnavailable.into(),
                503,
                "SESSION_STORE_UNAVAILABLE",
            ),
            (
                SessionRefusal::LoginAnswerUnreadable.into(),
                502,
                "LOGIN_UPSTREAM_INVALID",
            ),
            (operator::Refusal::ClientId.into(), 400, "CLIENT_ID_INVALID"),
            (
                operator::Refusal::ReasonControl.into(),
                400,
                "INVALID_REQUEST_BODY",
            ),
            (
                operator::Refusal::ZeroAmount.into(),
                400,
                "INVALID_REQUEST_BODY",
            ),
            (
                CreditError::HistoryQueryInvalid { max: 1000 }.into(),
                400,
                "INVALID_QUERY",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(
                (error.status().as_u16(), error.code()),
                (status, code),
                "{error}"
            );
        }
        let e: GatewayError = AccessError::RouteNotFound.into();
        assert_eq!(e.problem_type(), "urn:tollgate:problem:route-not-found");
        // A page-size refusal names the range of the endpoint that refused it.
        for max in [500, 1000] {
            let e = GatewayError::from(CreditError::HistoryQueryInvalid { max });
            assert!(
                e.to_string().starts_with(&format!("limit is 1 to {max} ")),
                "{e}"
            );
        }
        // An operator's refused change says which rule, for people.
        let e = GatewayError::from(operator::Refusal::ReasonControl);
        assert!(e.to_string().contains("control character"), "{e}");
        assert_eq!(
            GatewayError::from(UpstreamError::Timeout).family(),
            Family::Upstream { kind: "timeout" }
        );
    }

    #[test]
    fn an_internal_bug_is_never_a_client_error() {
        for bug in [
            Bug::UpstreamTarget,
            Bug::NoPool,
            Bug::WrongVerifier,
            Bug::CredentialWithoutCaller,
        ] {
            let e = GatewayError::from(bug);
            assert_eq!((e.status().as_u16(), e.code()), (500, "INTERNAL"));
        }
    }

    #[test]
    fn limits_carry_their_wait() {
        let e = GatewayError::from(LimitError::RateLimited {
            policy: "p".into(),
            limit: 3,
            period: Duration::from_secs(60),
            retry_after: 7,
        });
        assert_eq!(e.retry_after(), Some(7));
        assert_eq!(e.extra(), [("retryAfter", Value::from(7u64))]);
        let e = GatewayError::from(AccessError::MethodNotAllowed {
            allow: vec![Method::GET, Method::POST],
        });
        assert_eq!(e.headers()[0].1, "GET, POST");
    }
}
