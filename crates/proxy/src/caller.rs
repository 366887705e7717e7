//! Who is calling: what authentication finds out about a request's caller, carried in
//! the [`crate::exchange::Exchange`] and read by the limits, the rewrite, the metrics and
//! the access log. A leaf: it imports nothing of the crate.

use http::header::HeaderName;

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    #[default]
    None,
    Jwt,
    ApiKey,
    Webhook,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Webhook => "webhook",
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub client_id: String,
    /// Whether the token's claim was a JSON integer (API keys: never).
    pub integer: bool,
    /// The API key's id, when a key was used.
    pub key_id: Option<String>,
}

/// Who is calling, as authentication found out.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub method: AuthMethod,
    pub identity: Option<Identity>,
    /// The caller's own credentials that authentication read: removed before forwarding.
    pub consumed: Consumed,
    /// The caller presented a legacy API key (accepted, or refused for the sunset): the
    /// response says keys are on their way out.
    pub used_api_key: bool,
}

/// Credentials authentication read from the request.
#[derive(Debug, Clone, Default)]
pub struct Consumed {
    pub headers: Vec<HeaderName>,
    /// Query parameters (configured names; every spelling of them is removed).
    pub params: Vec<String>,
}
