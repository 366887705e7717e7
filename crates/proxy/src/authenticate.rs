//! Stage 5 — authenticate: who is calling, by the route's rule.
//!
//! - `jwt`: `Authorization: Bearer <token>`, verified against the pinned keys (verified
//!   tokens are cached until they expire).
//! - `api_key`: a legacy key from the configured headers or query parameter.
//! - `jwt_or_api_key`: the key is looked at only when no bearer token is presented; a
//!   bearer token that fails is refused and never falls back to a key.
//! - `webhook`: provider callbacks — Plivo V3 signatures, a secret in the URL (Exotel),
//!   or a source-address allowlist.
//!
//! The stage only decides; the rewrite stage removes the caller's credentials and adds
//! the backend's.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::request::Parts;
use http::{Method, Request};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use tollgate_auth::cache::TokenCache;
use tollgate_auth::{plivo, secret, JwtError};
use tollgate_policy::snapshot::{ApiKeySettings, Jwt, RouteAuth, Webhook};

use crate::body::RequestBody;
use crate::form;
use crate::jwks::JwksSet;
use crate::problem::GatewayError;

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
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
#[derive(Debug, Clone)]
pub struct Identity {
    pub client_id: String,
    /// The API key's id, when a key was used.
    pub key_id: Option<String>,
}

/// What the stage found out.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub method: AuthMethod,
    pub identity: Option<Identity>,
}

/// What authentication needs besides the request.
pub struct Context<'a> {
    pub jwt: Option<&'a Jwt>,
    pub api_keys: Option<&'a ApiKeySettings>,
    pub tokens: &'a TokenCache,
    /// Remote key sets, consulted after the static keys.
    pub jwks: &'a [Arc<JwksSet>],
    /// The client address (through trusted proxies).
    pub client: IpAddr,
    /// Seconds since the epoch.
    pub now: u64,
}

/// Authenticates `request` by `rule`. A Plivo callback's form body is read (bounded) to
/// check its signature and handed on unchanged; every other body stays a stream.
pub async fn authenticate(
    request: Request<Incoming>,
    rule: &RouteAuth,
    ctx: &Context<'_>,
) -> Result<(Request<RequestBody>, Outcome), GatewayError> {
    let (parts, body) = request.into_parts();
    if let RouteAuth::Webhook(hook) = rule {
        if let Webhook::PlivoV3 {
            public_base_url,
            auth_tokens,
            max_body_bytes,
        } = &**hook
        {
            let (parts, body) =
                plivo_v3(parts, body, public_base_url, auth_tokens, *max_body_bytes).await?;
            let outcome = Outcome {
                method: AuthMethod::Webhook,
                identity: None,
            };
            return Ok((Request::from_parts(parts, body), outcome));
        }
    }
    let outcome = match decide(&parts, rule, ctx) {
        // A kid we do not know may be a key the issuer just rotated in: refetch the
        // remote sets (each at most once per its `min_refetch`) and try once more.
        Err(GatewayError::Token(JwtError::UnknownKey)) if !ctx.jwks.is_empty() => {
            for set in ctx.jwks {
                if set.refetch().await {
                    // A key may have been withdrawn: tokens it signed must not stay cached.
                    ctx.tokens.clear();
                }
            }
            decide(&parts, rule, ctx)?
        }
        other => other?,
    };
    Ok((Request::from_parts(parts, Either::Left(body)), outcome))
}

/// Every rule that needs only the request head.
fn decide(parts: &Parts, rule: &RouteAuth, ctx: &Context) -> Result<Outcome, GatewayError> {
    let verified = |method, identity| {
        Ok(Outcome {
            method,
            identity: Some(identity),
        })
    };
    match rule {
        RouteAuth::None => Ok(Outcome {
            method: AuthMethod::None,
            identity: None,
        }),
        RouteAuth::Jwt => {
            let token = bearer(parts)?.ok_or(GatewayError::AuthRequired)?;
            verified(AuthMethod::Jwt, verify_jwt(token, ctx)?)
        }
        RouteAuth::ApiKey => verified(AuthMethod::ApiKey, verify_api_key(parts, ctx)?),
        RouteAuth::JwtOrApiKey => match bearer(parts)? {
            Some(token) => verified(AuthMethod::Jwt, verify_jwt(token, ctx)?),
            None => verified(AuthMethod::ApiKey, verify_api_key(parts, ctx)?),
        },
        RouteAuth::Webhook(hook) => {
            match &**hook {
                Webhook::IpAllowlist { cidrs } => {
                    if !cidrs.iter().any(|c| c.contains(ctx.client)) {
                        return Err(GatewayError::Forbidden(
                            "the callback's source address is not allowed",
                        ));
                    }
                }
                Webhook::UrlSecret {
                    param,
                    secret: expected,
                } => {
                    let presented = parts
                        .uri
                        .query()
                        .map(|q| form::pairs(q.as_bytes()))
                        .unwrap_or_default()
                        .into_iter()
                        .find(|(name, _)| name == param)
                        .map(|(_, value)| value);
                    if !presented.is_some_and(|p| secret::equal(p.as_bytes(), expected)) {
                        return Err(GatewayError::SignatureInvalid);
                    }
                }
                // Needs the body: handled in `authenticate`.
                Webhook::PlivoV3 { .. } => return Err(GatewayError::SignatureInvalid),
            }
            Ok(Outcome {
                method: AuthMethod::Webhook,
                identity: None,
            })
        }
    }
}

/// The bearer token, if the request presents one. Another scheme is not a token.
fn bearer(parts: &Parts) -> Result<Option<&str>, GatewayError> {
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::Token(JwtError::Malformed));
    }
    let text = first
        .to_str()
        .map_err(|_| GatewayError::Token(JwtError::Malformed))?;
    let (scheme, rest) = text
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(GatewayError::Token(JwtError::Malformed));
    }
    Ok(Some(token))
}

fn verify_jwt(token: &str, ctx: &Context) -> Result<Identity, GatewayError> {
    // Routes that need a JWT only load when `[jwt]` exists; this is a safety net.
    let jwt = ctx.jwt.ok_or(GatewayError::AuthRequired)?;
    let key = TokenCache::key(token);
    let claims = match ctx.tokens.get(&key, ctx.now, jwt.rules.leeway_secs) {
        Some(claims) => claims,
        None => {
            let remote: Vec<Arc<Vec<Arc<tollgate_auth::VerifyKey>>>> =
                ctx.jwks.iter().map(|s| s.keys()).collect();
            let keys = jwt
                .keys
                .iter()
                .chain(remote.iter().flat_map(|set| set.iter()));
            let claims = tollgate_auth::jwt::verify(token, keys, &jwt.rules, ctx.now)
                .map_err(GatewayError::Token)?;
            let claims = Arc::new(claims);
            ctx.tokens.insert(key, Arc::clone(&claims));
            claims
        }
    };
    Ok(Identity {
        client_id: claims.client_id.clone(),
        key_id: None,
    })
}

/// The key the request presents: the first configured header that is present, else
/// the query parameter.
pub fn presented_api_key(parts: &Parts, settings: &ApiKeySettings) -> Option<String> {
    for name in &settings.headers {
        if let Some(value) = parts.headers.get(name) {
            return Some(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
    }
    let param = settings.query_param.as_deref()?;
    form::pairs(parts.uri.query()?.as_bytes())
        .into_iter()
        .find(|(name, _)| name == param)
        .map(|(_, value)| value)
}

fn verify_api_key(parts: &Parts, ctx: &Context) -> Result<Identity, GatewayError> {
    let settings = ctx.api_keys.ok_or(GatewayError::AuthRequired)?;
    let presented = presented_api_key(parts, settings).ok_or(GatewayError::AuthRequired)?;
    if settings.sunset.is_some_and(|sunset| ctx.now >= sunset) {
        return Err(GatewayError::ApiKeySunset);
    }
    let key = settings
        .keys
        .find(&presented)
        .ok_or(GatewayError::ApiKeyInvalid)?;
    Ok(Identity {
        client_id: key.client_id.clone(),
        key_id: Some(key.key_id.clone()),
    })
}

const PLIVO_V3: &str = "x-plivo-signature-v3";
const PLIVO_MA_V3: &str = "x-plivo-signature-ma-v3";
const PLIVO_NONCE: &str = "x-plivo-signature-v3-nonce";

async fn plivo_v3(
    parts: Parts,
    body: Incoming,
    public_base_url: &str,
    auth_tokens: &[Vec<u8>],
    max_body_bytes: usize,
) -> Result<(Parts, RequestBody), GatewayError> {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let nonce = header(PLIVO_NONCE).ok_or(GatewayError::SignatureInvalid)?;
    let signatures: Vec<String> = [header(PLIVO_V3), header(PLIVO_MA_V3)]
        .into_iter()
        .flatten()
        .collect();
    if signatures.is_empty() {
        return Err(GatewayError::SignatureInvalid);
    }
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let url = format!("{public_base_url}{target}");
    let is_form = crate::inject::body_kind(&parts.headers) == crate::inject::BodyKind::Form;
    // Plivo signs the URL and form parameters only: a body of any other kind, a repeated
    // parameter (backends differ on which copy they read) or a query pair the signature
    // does not cover could be changed under a valid signature, so none is accepted.
    let raw_query = parts.uri.query().unwrap_or_default();
    if raw_query
        .split('&')
        .any(|pair| !pair.is_empty() && pair.matches('=').count() != 1)
    {
        return Err(GatewayError::SignatureInvalid);
    }
    let (params, body): (Vec<(String, String)>, RequestBody) = if parts.method == Method::GET {
        (form::pairs(raw_query.as_bytes()), Either::Left(body))
    } else {
        let bytes = read_bounded(&parts, body, max_body_bytes).await?;
        if !bytes.is_empty() && !is_form {
            return Err(GatewayError::SignatureInvalid);
        }
        (form::pairs(&bytes), Either::Right(Full::new(bytes)))
    };
    let mut names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    let total = names.len();
    names.sort_unstable();
    names.dedup();
    if names.len() != total {
        return Err(GatewayError::SignatureInvalid);
    }
    let ok = signatures.iter().any(|sig| {
        plivo::verify(
            auth_tokens,
            &url,
            parts.method.as_str(),
            &params,
            &nonce,
            sig,
        )
    });
    if !ok {
        return Err(GatewayError::SignatureInvalid);
    }
    Ok((parts, body))
}

/// Reads a body of at most `limit` bytes; refuses at once when `Content-Length` says more.
pub async fn read_bounded<B>(parts: &Parts, body: B, limit: usize) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(GatewayError::PayloadTooLarge { limit })
        }
        Err(_) => Err(GatewayError::RequestBodyInvalid),
    }
}
