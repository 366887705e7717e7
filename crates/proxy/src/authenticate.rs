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

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{Method, Request};
use http_body_util::Either;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tollgate_auth::cache::TokenCache;
use tollgate_auth::{plivo, secret, JwtError};
use tollgate_policy::param;
use tollgate_policy::snapshot::{ApiKeySettings, Jwt, RouteAuth, Webhook};

use crate::body::{self, Reading, RequestBody};
use crate::jwks::JwksSet;
use crate::problem::GatewayError;
use crate::replay::Replay;

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
    /// Whether the token's claim was a JSON integer (API keys: never).
    pub integer: bool,
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
    /// How held bodies (a signed callback's) are read.
    pub reading: &'a Reading,
    /// Where callback nonces are remembered.
    pub replay: &'a Replay,
    pub worker: usize,
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
        if let Webhook::PlivoV3 { .. } = &**hook {
            let (parts, body) = plivo_v3(parts, body, hook, ctx).await?;
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
                    param: name,
                    secret: expected,
                } => {
                    // Every spelling of the parameter counts; two copies are ambiguous.
                    let query = parts.uri.query().unwrap_or_default().as_bytes();
                    let presented = param::values_of(query, name);
                    let [only] = presented.as_slice() else {
                        return Err(GatewayError::SignatureInvalid);
                    };
                    if !secret::equal(only.as_bytes(), expected) {
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
        integer: claims.client_id_is_integer,
        key_id: None,
    })
}

/// The key the request presents: the first configured header that is present, else
/// the query parameter (in any spelling). Two values in one place are refused: the
/// backend might read the other one.
pub fn presented_api_key(
    parts: &Parts,
    settings: &ApiKeySettings,
) -> Result<Option<String>, GatewayError> {
    for name in &settings.headers {
        let mut values = parts.headers.get_all(name).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(GatewayError::ApiKeyInvalid);
            }
            return Ok(Some(String::from_utf8_lossy(value.as_bytes()).into_owned()));
        }
    }
    let (Some(name), Some(query)) = (settings.query_param.as_deref(), parts.uri.query()) else {
        return Ok(None);
    };
    match param::values_of(query.as_bytes(), name).as_slice() {
        [] => Ok(None),
        [only] => Ok(Some(only.clone())),
        _ => Err(GatewayError::ApiKeyInvalid),
    }
}

fn verify_api_key(parts: &Parts, ctx: &Context) -> Result<Identity, GatewayError> {
    let settings = ctx.api_keys.ok_or(GatewayError::AuthRequired)?;
    let presented = presented_api_key(parts, settings)?.ok_or(GatewayError::AuthRequired)?;
    if settings.sunset.is_some_and(|sunset| ctx.now >= sunset) {
        return Err(GatewayError::ApiKeySunset);
    }
    let key = settings
        .keys
        .find(&presented)
        .ok_or(GatewayError::ApiKeyInvalid)?;
    Ok(Identity {
        client_id: key.client_id.clone(),
        integer: false,
        key_id: Some(key.key_id.clone()),
    })
}

const PLIVO_V3: &str = "x-plivo-signature-v3";
const PLIVO_MA_V3: &str = "x-plivo-signature-ma-v3";
const PLIVO_NONCE: &str = "x-plivo-signature-v3-nonce";

async fn plivo_v3(
    parts: Parts,
    body: Incoming,
    hook: &Webhook,
    ctx: &Context<'_>,
) -> Result<(Parts, RequestBody), GatewayError> {
    let Webhook::PlivoV3 {
        name,
        public_base_url,
        auth_tokens,
        max_body_bytes,
        replay_window,
    } = hook
    else {
        return Err(GatewayError::Internal);
    };
    // One value each: of two, the backend and the gateway could each read another.
    let header = |name: &str| -> Result<Option<String>, GatewayError> {
        let mut values = parts.headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(GatewayError::SignatureInvalid);
        }
        Ok(first.and_then(|v| v.to_str().ok()).map(str::to_owned))
    };
    let nonce = header(PLIVO_NONCE)?.ok_or(GatewayError::SignatureInvalid)?;
    let signatures: Vec<String> = [header(PLIVO_V3)?, header(PLIVO_MA_V3)?]
        .into_iter()
        .flatten()
        .collect();
    if signatures.is_empty() {
        return Err(GatewayError::SignatureInvalid);
    }
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let url = format!("{public_base_url}{target}");
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
    // The body is read (bounded in size, time and memory) whatever the method: a GET's
    // signature covers the query only, so a GET may carry no body at all.
    let held = body::hold(&parts, Either::Left(body), *max_body_bytes, ctx.reading).await?;
    let bytes = held.bytes();
    let params = if parts.method == Method::GET {
        if !bytes.is_empty() {
            return Err(GatewayError::UnsignedBody);
        }
        param::pairs(raw_query.as_bytes())
    } else {
        let is_form = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| tollgate_policy::media::MediaType::parse(v.as_bytes()).ok())
            .is_some_and(|m| m.essence() == "application/x-www-form-urlencoded");
        if !bytes.is_empty() && !is_form {
            return Err(GatewayError::UnsignedBody);
        }
        param::pairs(&bytes)
    };
    let mut names: Vec<String> = params.iter().map(|(k, _)| param::fold(k)).collect();
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
    // Only a verified callback's nonce is recorded, so only Plivo can fill the store.
    if !ctx
        .replay
        .first_use(ctx.worker, &nonce_key(name, &nonce), *replay_window)
        .await
    {
        return Err(GatewayError::CallbackReplayed);
    }
    Ok((parts, Either::Right(held)))
}

/// The store key for a nonce: the webhook's name and a hash of the nonce (bounded
/// length, nothing a provider sent written into keys as is).
fn nonce_key(webhook: &str, nonce: &str) -> String {
    let digest = Sha256::digest(nonce.as_bytes());
    let mut key = String::with_capacity(webhook.len() + 33);
    key.push_str(webhook);
    key.push(':');
    for byte in &digest[..16] {
        let _ = write!(key, "{byte:02x}");
    }
    key
}
