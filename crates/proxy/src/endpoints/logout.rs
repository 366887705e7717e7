//! `POST /gateway/auth/logout`: ends the session, and the access token it was called
//! with.
//!
//! The caller proves the session with its access token or its refresh token, or both
//! (`Authorization: Bearer`, `{"refreshToken": "..."}`; in cookie mode the cookies and
//! the CSRF header). Each ends what it proves: a valid access token its session and
//! itself, a valid refresh token its session; one that proves nothing does not keep
//! the other from ending its own. A session is revoked in the store, so its refresh
//! token stops working. The session and the presented access token's `jti` (for a
//! token without one, its SHA-256) go on the revocation feed until the access token
//! would have expired, so every instance refuses them within a second: the `jti`
//! within its client ([`sessions::token_key`]), as another issuer's ids may repeat
//! across clients. Logging out twice is not an error.

use http::header::{HeaderValue, CONTENT_TYPE, SET_COOKIE};
use http::{Request, Response};
use serde_json::json;
use tollgate_auth::refresh;
use tollgate_auth::JwtError;
use tollgate_policy::snapshot::TokenMode;
use tollgate_state::sessions::{Revocation, Revoke, Revoked};

use super::refresh::presented_refresh_token;
use super::{tokens, Answer};
use crate::authenticate;
use crate::body::{Reading, RequestBody};
use crate::cookies;
use crate::errors::{AuthError, Bug, GatewayError, SessionRefusal};
use crate::exchange::Exchange;
use crate::jwks::Tokens;
use crate::sessions::{self, Sessions};

pub async fn serve(
    exchange: &Exchange<'_>,
    request: Request<RequestBody>,
    part: &Sessions,
    reading: &Reading,
    verifier: &Tokens,
) -> Result<Answer, GatewayError> {
    let settings = exchange
        .snapshot
        .sessions
        .as_ref()
        .ok_or(Bug::SessionsWithoutSigning)?;
    let cookie_mode = matches!(settings.tokens, TokenMode::Cookie { .. });
    let access = presented_access_token(&request, cookie_mode)?;
    // An access token that does not verify (expired, signed by a key since rotated out,
    // for another audience) proves nothing, and does not keep a refresh token beside it
    // from ending its session. Alone, it is refused as anywhere else (an expired one as
    // a missing credential: the refresh token must do it then).
    let mut refused = None;
    let claims = match access {
        None => None,
        Some(token) => match authenticate::verified_claims(exchange, &token, verifier) {
            Ok(claims) => Some(claims),
            Err(GatewayError::Auth(AuthError::Token(JwtError::Expired))) => None,
            Err(e @ GatewayError::Auth(_)) => {
                refused = Some(e);
                None
            }
            Err(e) => return Err(e),
        },
    };
    let presented_refresh = presented_refresh_token(exchange, request, reading).await?;
    if claims.is_none() && presented_refresh.is_none() {
        return Err(refused.unwrap_or(SessionRefusal::CredentialRequired.into()));
    }
    // Each credential ends what it proves, whatever the other says: a tab holding a
    // stale (or another login's) refresh token beside a valid access token must still
    // end the access token's session, and a valid refresh token of another session
    // ends that one too (its holder could use it in full anyway).
    let (state, store) = part.store()?;
    let when = tokens::when(exchange, settings);
    let mut ended = false;
    if let Some(claims) = &claims {
        if let Some(session) = &claims.session {
            let outcome = store
                .revoke(exchange.worker, session, None, when)
                .await
                .map_err(|e| sessions::unavailable(&part.counters, &e))?;
            ended |= outcome != Revoke::Unknown;
            state.revoked.add(&Revocation {
                kind: Revoked::Session,
                id: session.clone(),
                until: when.tokens_until,
            });
        }
        if let Some(token_id) = &claims.token_id {
            let key = sessions::token_key(&claims.client_id, token_id);
            // Verification accepts a token until `exp` plus the leeway: so long is it
            // refused.
            let leeway = exchange
                .snapshot
                .auth
                .jwt
                .as_ref()
                .map_or(0, |j| j.rules.leeway_secs);
            let until = claims.expires_at.saturating_add(leeway);
            store
                .deny_token(exchange.worker, &key, until)
                .await
                .map_err(|e| sessions::unavailable(&part.counters, &e))?;
            state.revoked.add(&Revocation {
                kind: Revoked::Token,
                id: key,
                until,
            });
            ended = true;
        }
    }
    if let Some((token, session)) = presented_refresh
        .as_deref()
        .and_then(|token| Some((token, refresh::session_of(token)?)))
    {
        let outcome = store
            .revoke(exchange.worker, session, Some(&refresh::hash(token)), when)
            .await
            .map_err(|e| sessions::unavailable(&part.counters, &e))?;
        if outcome != Revoke::Unknown {
            ended = true;
            state.revoked.add(&Revocation {
                kind: Revoked::Session,
                id: session.to_owned(),
                until: when.tokens_until,
            });
        }
    }
    if !ended {
        // No credential proved anything: a refresh token no session knows (an access
        // token that verified always ends at least itself).
        return Err(SessionRefusal::RefreshInvalid.into());
    }
    part.counters.logouts.inc();
    let body = json!({"success": true, "message": "Logged out"});
    let mut response = Response::new(crate::body::full(body.to_string()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    tokens::no_store(headers);
    if let TokenMode::Cookie { secure, .. } = settings.tokens {
        let refresh_path = cookies::refresh_path(exchange.snapshot);
        for value in [
            cookies::clear(cookies::REFRESH, &refresh_path, secure),
            cookies::clear(cookies::ACCESS, "/", secure),
            cookies::clear(cookies::CSRF, "/", secure),
        ]
        .into_iter()
        .flatten()
        {
            headers.append(SET_COOKIE, value);
        }
    }
    Ok(response)
}

/// The access token presented: `Authorization: Bearer`, else (cookie mode) the access
/// cookie, which needs the CSRF header.
fn presented_access_token<B>(
    request: &Request<B>,
    cookie_mode: bool,
) -> Result<Option<String>, GatewayError> {
    if let Some(token) = authenticate::bearer(request.headers())? {
        return Ok(Some(token.to_owned()));
    }
    if !cookie_mode {
        return Ok(None);
    }
    let headers = request.headers();
    match cookies::get(headers, cookies::ACCESS) {
        Err(()) => Err(AuthError::Token(JwtError::Malformed).into()),
        Ok(None) | Ok(Some("")) => Ok(None),
        Ok(Some(token)) => {
            if !cookies::csrf_ok(headers) {
                return Err(SessionRefusal::CsrfInvalid.into());
            }
            Ok(Some(token.to_owned()))
        }
    }
}
