//! Stage 5 — authenticate: who is calling, by the route's rule.
//!
//! - `jwt`: `Authorization: Bearer <token>`, verified against the pinned keys (verified
//!   tokens are cached until they expire).
//! - `api_key`: a legacy key from the configured headers or query parameter.
//! - `jwt_or_api_key`: the key is looked at only when no bearer token is presented; a
//!   bearer token that fails is refused and never falls back to a key.
//! - `webhook`: provider callbacks — Plivo V3 signatures (a nonce counts once), a secret
//!   in the URL (Exotel), or a source-address allowlist.
//!
//! The stage only decides: it records the caller, and the credentials it read, in the
//! [`Exchange`]; the rewrite stage removes them and adds the backend's.

use std::fmt::Write as _;

use http::header::{HeaderName, AUTHORIZATION};
use http::request::Parts;
use http::{Method, Request};
use http_body_util::Either;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tollgate_auth::cache::TokenCache;
use tollgate_auth::{plivo, secret, JwtError};
use tollgate_policy::param;
use tollgate_policy::snapshot::{ApiKeySettings, RouteAuth, TokenMode, Webhook};
use tollgate_policy::Route;

use crate::body::{self, Reading, RequestBody};
use crate::cookies;
use crate::errors::{AuthError, Bug, GatewayError, SessionRefusal, SignatureProblem};
use crate::exchange::{AuthMethod, Caller, Consumed, Exchange, Identity};
use crate::jwks::Tokens;
use crate::replay::Replay;
use crate::sessions::Sessions;

/// What authentication uses besides the request and the exchange.
pub struct Keys<'a> {
    pub tokens: &'a Tokens,
    pub replay: &'a Replay,
    pub reading: &'a Reading,
    /// Revoked sessions and access tokens.
    pub sessions: &'a Sessions,
}

/// Authenticates the request by its route's rule and records the caller in the
/// exchange. A Plivo callback's body is read (bounded) to check its signature and handed
/// on unchanged; every other body stays a stream.
pub async fn authenticate(
    exchange: &mut Exchange<'_>,
    route: &Route,
    request: Request<Incoming>,
    keys: &Keys<'_>,
) -> Result<Request<RequestBody>, GatewayError> {
    let (parts, body) = request.into_parts();
    if let RouteAuth::Webhook(hook) = &route.auth {
        if let Webhook::PlivoV3 { .. } = &**hook {
            let (parts, body) = plivo_v3(exchange, parts, body, hook, keys).await?;
            exchange.caller.method = AuthMethod::Webhook;
            return Ok(Request::from_parts(parts, body));
        }
    }
    let caller = match decide(exchange, &parts, &route.auth, keys) {
        // A kid we do not know may be a key the issuer just rotated in: refetch the
        // remote sets (each at most once per its `min_refetch`) and try once more.
        Err(GatewayError::Auth(AuthError::Token(JwtError::UnknownKey)))
            if !keys.tokens.sets().is_empty() =>
        {
            for set in keys.tokens.sets() {
                if set.refetch().await {
                    // A key may have been withdrawn: tokens it signed must not stay cached.
                    keys.tokens.cache().clear();
                }
            }
            decide(exchange, &parts, &route.auth, keys)
        }
        other => other,
    };
    exchange.caller = caller?;
    Ok(Request::from_parts(parts, Either::Left(body)))
}

/// Every rule that needs only the request head.
fn decide(
    exchange: &mut Exchange<'_>,
    parts: &Parts,
    rule: &RouteAuth,
    keys: &Keys<'_>,
) -> Result<Caller, GatewayError> {
    let mut caller = Caller::default();
    match rule {
        RouteAuth::None => {}
        RouteAuth::Jwt => {
            let token = access_token(exchange, parts)?.ok_or(AuthError::Required)?;
            caller.identity = Some(verify_jwt(exchange, token, parts, keys)?);
            caller.method = AuthMethod::Jwt;
            caller.consumed.headers.push(AUTHORIZATION);
        }
        RouteAuth::ApiKey => verify_api_key(exchange, parts, &mut caller)?,
        RouteAuth::JwtOrApiKey => match access_token(exchange, parts)? {
            Some(token) => {
                caller.identity = Some(verify_jwt(exchange, token, parts, keys)?);
                caller.method = AuthMethod::Jwt;
                caller.consumed.headers.push(AUTHORIZATION);
            }
            None => verify_api_key(exchange, parts, &mut caller)?,
        },
        RouteAuth::Webhook(hook) => {
            match &**hook {
                Webhook::IpAllowlist { cidrs } => {
                    if !cidrs.iter().any(|c| c.contains(exchange.client)) {
                        return Err(AuthError::SourceNotAllowed.into());
                    }
                }
                Webhook::UrlSecret {
                    param: name,
                    secret: expected,
                } => {
                    // Every spelling of the parameter counts; two copies are ambiguous.
                    let query = parts.uri.query().unwrap_or_default().as_bytes();
                    let presented = param::values_of(query, name);
                    let only = match presented.as_slice() {
                        [only] => only,
                        [] => return Err(SignatureProblem::Missing.into()),
                        _ => return Err(SignatureProblem::Repeated.into()),
                    };
                    if !secret::equal(only.as_bytes(), expected) {
                        return Err(SignatureProblem::Invalid.into());
                    }
                    caller.consumed.params.push(name.clone());
                }
                // Needs the body: handled in `authenticate`.
                Webhook::PlivoV3 { .. } => return Err(Bug::WrongVerifier.into()),
            }
            caller.method = AuthMethod::Webhook;
        }
    }
    Ok(caller)
}

/// The access token the request presents: `Authorization: Bearer`, else, in cookie
/// mode, the access cookie, which on a request that changes state needs the CSRF
/// header (see [`crate::cookies`]).
fn access_token<'p>(
    exchange: &Exchange<'_>,
    parts: &'p Parts,
) -> Result<Option<&'p str>, GatewayError> {
    if let Some(token) = bearer(&parts.headers)? {
        return Ok(Some(token));
    }
    let cookie_access = matches!(
        exchange.snapshot.sessions.as_ref().map(|s| s.tokens),
        Some(TokenMode::Cookie {
            access_token: true,
            ..
        })
    );
    if !cookie_access {
        return Ok(None);
    }
    match cookies::get(&parts.headers, cookies::ACCESS) {
        Err(()) => Err(AuthError::Token(JwtError::Malformed).into()),
        Ok(None) | Ok(Some("")) => Ok(None),
        Ok(Some(token)) => {
            if cookies::changes_state(&parts.method) && !cookies::csrf_ok(&parts.headers) {
                return Err(SessionRefusal::CsrfInvalid.into());
            }
            Ok(Some(token))
        }
    }
}

/// The bearer token, if the request presents one. Another scheme is not a token.
pub(crate) fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Token(JwtError::RepeatedAuthorization).into());
    }
    let text = first
        .to_str()
        .map_err(|_| AuthError::Token(JwtError::Malformed))?;
    // `Bearer`, `bearer` and `BEARER` alike (RFC 9110 §11.1).
    let Some(token) = tollgate_auth::bearer::credentials(text) else {
        return Ok(None);
    };
    if token.is_empty() {
        return Err(AuthError::Token(JwtError::Malformed).into());
    }
    Ok(Some(token))
}

/// Verifies an access token and refuses it if its session or the token itself was
/// revoked. One taken from the access cookie on a request that changes state must come
/// with its own session's CSRF token (see [`crate::cookies`]).
fn verify_jwt(
    exchange: &Exchange<'_>,
    token: &str,
    parts: &Parts,
    keys: &Keys<'_>,
) -> Result<Identity, GatewayError> {
    let claims = verified_claims(exchange, token, keys.tokens)?;
    let from_cookie = bearer(&parts.headers)?.is_none();
    if from_cookie
        && cookies::changes_state(&parts.method)
        && !cookies::csrf_bound(&parts.headers, claims.csrf_hash.as_deref())
    {
        return Err(SessionRefusal::CsrfInvalid.into());
    }
    keys.sessions.check(
        claims.session.as_deref(),
        claims
            .token_id
            .as_deref()
            .map(|jti| (claims.client_id.as_str(), jti)),
        exchange.now,
    )?;
    Ok(Identity {
        client_id: claims.client_id.clone(),
        integer: claims.client_id_is_integer,
        key_id: None,
    })
}

/// The claims of a token with a valid signature, issuer, audience and lifetime (from
/// the cache of verified tokens when it is there); revocation is not looked at.
pub(crate) fn verified_claims(
    exchange: &Exchange<'_>,
    token: &str,
    tokens: &Tokens,
) -> Result<std::sync::Arc<tollgate_auth::Claims>, GatewayError> {
    // Routes that need a JWT only load when `[jwt]` exists; this is a safety net.
    let jwt = exchange
        .snapshot
        .auth
        .jwt
        .as_ref()
        .ok_or(AuthError::Required)?;
    let key = TokenCache::key(token);
    let claims = match tokens
        .cache()
        .get(&key, exchange.now, jwt.rules.leeway_secs)
    {
        Some(claims) => claims,
        None => {
            let remote: Vec<_> = tokens.sets().iter().map(|s| s.keys()).collect();
            let keys = jwt
                .keys
                .iter()
                .chain(remote.iter().flat_map(|set| set.iter()));
            let claims = tollgate_auth::jwt::verify(token, keys, &jwt.rules, exchange.now)
                .map_err(AuthError::Token)?;
            let claims = std::sync::Arc::new(claims);
            tokens.cache().insert(key, std::sync::Arc::clone(&claims));
            claims
        }
    };
    Ok(claims)
}

/// Where the request presents its key: the first configured header that is present,
/// else the query parameter (in any spelling). Two values in one place are refused: the
/// backend might read the other one.
fn presented_api_key(
    parts: &Parts,
    settings: &ApiKeySettings,
) -> Result<Option<(String, Consumed)>, GatewayError> {
    // Every place a key may come from: the configured headers, then the parameter.
    let mut found: Option<(String, Consumed)> = None;
    let mut seen = |value: String, place: Consumed| -> Result<(), GatewayError> {
        match &found {
            None => found = Some((value, place)),
            // Two different keys (one in `X-Api-Key`, another in `?api_key`): a backend
            // that reads the key itself may take the one the gateway did not check.
            Some((first, _)) if !secret::equal(first.as_bytes(), value.as_bytes()) => {
                return Err(AuthError::ApiKeyAmbiguous.into());
            }
            Some(_) => {}
        }
        Ok(())
    };
    for name in &settings.headers {
        let mut values = parts.headers.get_all(name).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(AuthError::ApiKeyInvalid.into());
            }
            let consumed = Consumed {
                headers: vec![HeaderName::clone(name)],
                params: Vec::new(),
            };
            seen(
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
                consumed,
            )?;
        }
    }
    if let (Some(name), Some(query)) = (settings.query_param.as_deref(), parts.uri.query()) {
        match param::values_of(query.as_bytes(), name).as_slice() {
            [] => {}
            [only] => seen(
                only.clone(),
                Consumed {
                    headers: Vec::new(),
                    params: vec![name.to_owned()],
                },
            )?,
            _ => return Err(AuthError::ApiKeyInvalid.into()),
        }
    }
    Ok(found)
}

fn verify_api_key(
    exchange: &mut Exchange<'_>,
    parts: &Parts,
    caller: &mut Caller,
) -> Result<(), GatewayError> {
    let settings = exchange
        .snapshot
        .auth
        .api_keys
        .as_ref()
        .ok_or(AuthError::Required)?;
    let (presented, consumed) = presented_api_key(parts, settings)?.ok_or(AuthError::Required)?;
    if settings.sunset.is_some_and(|sunset| exchange.now >= sunset) {
        // The refusal tells the caller about the sunset too.
        exchange.caller.used_api_key = true;
        return Err(AuthError::ApiKeySunset.into());
    }
    let key = settings
        .keys
        .find(&presented)
        .ok_or(AuthError::ApiKeyInvalid)?;
    caller.method = AuthMethod::ApiKey;
    caller.used_api_key = true;
    caller.consumed = consumed;
    caller.identity = Some(Identity {
        client_id: key.client_id.clone(),
        integer: false,
        key_id: Some(key.key_id.clone()),
    });
    Ok(())
}

const PLIVO_V3: &str = "x-plivo-signature-v3";
const PLIVO_MA_V3: &str = "x-plivo-signature-ma-v3";
const PLIVO_NONCE: &str = "x-plivo-signature-v3-nonce";

async fn plivo_v3(
    exchange: &Exchange<'_>,
    parts: Parts,
    body: Incoming,
    hook: &Webhook,
    keys: &Keys<'_>,
) -> Result<(Parts, RequestBody), GatewayError> {
    let Webhook::PlivoV3 {
        public_base_url,
        auth_tokens,
        max_body_bytes,
        replay_window,
        ..
    } = hook
    else {
        return Err(Bug::WrongVerifier.into());
    };
    // One value each: of two, the backend and the gateway could each read another.
    let header = |name: &str| -> Result<Option<String>, GatewayError> {
        let mut values = parts.headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(SignatureProblem::Repeated.into());
        }
        Ok(first.and_then(|v| v.to_str().ok()).map(str::to_owned))
    };
    let nonce = header(PLIVO_NONCE)?.ok_or(SignatureProblem::Missing)?;
    let signatures: Vec<String> = [header(PLIVO_V3)?, header(PLIVO_MA_V3)?]
        .into_iter()
        .flatten()
        .collect();
    if signatures.is_empty() {
        return Err(SignatureProblem::Missing.into());
    }
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    // The signature covers the path as sent, the backend gets it normalized: a path
    // normalization changes (`/a/../status`, `%73tatus`) would be signed as one path and
    // delivered as another. Plivo calls the URL it was given, which normalizes to itself.
    let raw_path = parts.uri.path();
    if tollgate_policy::path::normalize(raw_path).ok().as_deref() != Some(raw_path) {
        return Err(SignatureProblem::PathNotNormal.into());
    }
    let url = format!("{public_base_url}{target}");
    // Plivo signs the URL and form parameters only: a body of any other kind, a repeated
    // parameter (backends differ on which copy they read) or a query pair the signature
    // does not cover could be changed under a valid signature, so none is accepted.
    let raw_query = parts.uri.query().unwrap_or_default();
    if raw_query
        .split('&')
        .any(|pair| !pair.is_empty() && pair.matches('=').count() != 1)
    {
        return Err(SignatureProblem::Uncovered.into());
    }
    // The signature covers the parameters as read from the bytes sent: a backend that
    // decompresses them would read others.
    if parts.headers.contains_key(http::header::CONTENT_ENCODING) {
        return Err(SignatureProblem::UnsignedBody.into());
    }
    // The body is read (bounded in size, time and memory) whatever the method: a GET's
    // signature covers the query only, so a GET may carry no body at all.
    let held = body::hold(
        &parts,
        Either::Left(body),
        *max_body_bytes as u64,
        &keys.reading.for_pool(body::Pool::Callback),
    )
    .await?;
    let bytes = held.bytes();
    let params = if parts.method == Method::GET {
        if !bytes.is_empty() {
            return Err(SignatureProblem::UnsignedBody.into());
        }
        param::strict_pairs(raw_query.as_bytes())
    } else {
        // A form in UTF-8, as the signature reads it: in another charset a backend
        // would decode the same bytes into other parameters.
        let is_form = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| tollgate_policy::media::MediaType::parse(v.as_bytes()).ok())
            .is_some_and(|m| {
                m.essence() == "application/x-www-form-urlencoded" && m.is_utf8() == Ok(true)
            });
        if !bytes.is_empty() && !is_form {
            return Err(SignatureProblem::UnsignedBody.into());
        }
        param::strict_pairs(&bytes)
    }
    .ok_or(SignatureProblem::Uncovered)?;
    // A repeated name in the query or the body: the signature sorts the URL's
    // parameters into a map (one copy counts) and the backend may read the other. The
    // query is checked on a POST too, where the signed parameters are the body's.
    let query = param::strict_pairs(raw_query.as_bytes()).ok_or(SignatureProblem::Uncovered)?;
    if repeats_a_name(&params) || (parts.method != Method::GET && repeats_a_name(&query)) {
        return Err(SignatureProblem::Uncovered.into());
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
        return Err(SignatureProblem::Invalid.into());
    }
    // Only a verified callback's nonce is recorded, so only Plivo can fill the store.
    if !keys
        .replay
        .first_use(exchange.worker, &nonce_key(&nonce), *replay_window)
        .await
    {
        return Err(AuthError::Replayed.into());
    }
    Ok((parts, Either::Right(held)))
}

/// Whether two of `params` have the same name, as backends fold names.
fn repeats_a_name(params: &[(String, String)]) -> bool {
    let mut names: Vec<String> = params.iter().map(|(k, _)| param::fold(k)).collect();
    let total = names.len();
    names.sort_unstable();
    names.dedup();
    names.len() != total
}

/// The store key for a nonce: a hash of it (bounded length, nothing a provider sent
/// written into keys as is). Not scoped by the webhook's name: renaming a webhook (a
/// reload) must forget nothing, and a nonce is Plivo's whichever URL it came to.
fn nonce_key(nonce: &str) -> String {
    let digest = Sha256::digest(nonce.as_bytes());
    let mut key = String::with_capacity(6 + 32);
    key.push_str("plivo:");
    for byte in &digest[..16] {
        let _ = write!(key, "{byte:02x}");
    }
    key
}
