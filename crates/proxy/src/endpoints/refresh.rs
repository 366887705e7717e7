//! `POST /gateway/auth/refresh`: a refresh token for a new pair.
//!
//! The presented token is spent and its successor returned with a new access token
//! (rotation). The store decides atomically ([`tollgate_state::sessions`]):
//! - A spent token presented again revokes the whole session, and the access tokens
//!   issued from it: 401 `REFRESH_REUSED`.
//! - The one exception is the token rotated last, presented again within
//!   `[sessions] reuse_grace` while its successor is still unused. That is a client
//!   that lost the answer. It gets the same successor again, unsealed with the token
//!   it presented, and a fresh access token.
//!
//! Bearer mode reads `{"refreshToken": "..."}`. Cookie mode reads the `tg_refresh`
//! cookie and needs the CSRF header.

use http::Request;
use serde_json::Value;
use tollgate_auth::refresh;
use tollgate_policy::snapshot::TokenMode;
use tollgate_state::sessions::{Next, Revocation, Revoked, Rotation};

use super::{tokens, Answer};
use crate::body::{self, Reading, RequestBody};
use crate::cookies;
use crate::errors::{Bug, GatewayError, SessionRefusal};
use crate::exchange::Exchange;
use crate::sessions::{self, Sessions};

/// A refresh or logout body is a small JSON object.
const MAX_BODY_BYTES: u64 = 8 * 1024;

pub async fn serve(
    exchange: &Exchange<'_>,
    request: Request<RequestBody>,
    part: &Sessions,
    reading: &Reading,
) -> Result<Answer, GatewayError> {
    let settings = exchange
        .snapshot
        .sessions
        .as_ref()
        .ok_or(Bug::SessionsWithoutSigning)?;
    let presented = presented_refresh_token(exchange, request, reading)
        .await?
        .ok_or(SessionRefusal::CredentialRequired)?;
    let family_id = refresh::session_of(&presented).ok_or(SessionRefusal::RefreshInvalid)?;
    let (state, store) = part.store()?;
    let next_token = refresh::issue(family_id).map_err(|_| Bug::Randomness)?;
    let next = Next {
        hash: refresh::hash(&next_token),
        sealed: refresh::seal(&next_token, &presented).ok_or(Bug::Randomness)?,
    };
    let when = tokens::when(exchange, settings);
    let outcome = store
        .rotate(
            exchange.worker,
            family_id,
            &refresh::hash(&presented),
            &next,
            when,
        )
        .await
        .map_err(|e| sessions::unavailable(&part.counters, &e))?;
    let (family, token) = match outcome {
        Rotation::Rotated(family) => {
            part.counters.refreshes.inc();
            (family, next_token)
        }
        Rotation::Grace {
            family,
            sealed_next,
        } => {
            let token = refresh::unseal(&sealed_next, &presented)
                .filter(|t| refresh::hash(t) == family.current)
                .ok_or(SessionRefusal::RefreshInvalid)?;
            part.counters.grace_answers.inc();
            (family, token)
        }
        Rotation::Reused { family } => {
            part.counters.reuses.inc();
            tracing::warn!(session = %family, "a spent refresh token was presented again: the session is revoked");
            state.revoked.add(&Revocation {
                kind: Revoked::Session,
                id: family,
                until: when.tokens_until,
            });
            return Err(SessionRefusal::RefreshReused.into());
        }
        Rotation::Revoked => return Err(SessionRefusal::Revoked.into()),
        Rotation::Expired => return Err(SessionRefusal::Expired.into()),
        Rotation::Unknown => return Err(SessionRefusal::RefreshInvalid.into()),
    };
    let access = tokens::access_token(exchange, &family)?;
    Ok(tokens::answer(
        exchange,
        settings,
        &family,
        &access,
        &token,
        Vec::new(),
    ))
}

/// The refresh token the request presents: the cookie in cookie mode (with the CSRF
/// header), else `refreshToken` in a JSON body. `None` when it presents none.
pub async fn presented_refresh_token(
    exchange: &Exchange<'_>,
    request: Request<RequestBody>,
    reading: &Reading,
) -> Result<Option<String>, GatewayError> {
    if let Some(TokenMode::Cookie { .. }) = exchange.snapshot.sessions.as_ref().map(|s| s.tokens) {
        let headers = request.headers();
        let cookie = cookies::get(headers, cookies::REFRESH)
            .map_err(|()| SessionRefusal::RefreshInvalid)?
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        if cookie.is_some() {
            if !cookies::csrf_ok(headers) {
                return Err(SessionRefusal::CsrfInvalid.into());
            }
            return Ok(cookie);
        }
    }
    json_member(request, reading, "refreshToken").await
}

/// A string member of a small JSON object body; `None` for no body or no member.
pub async fn json_member(
    request: Request<RequestBody>,
    reading: &Reading,
    name: &str,
) -> Result<Option<String>, GatewayError> {
    let (parts, body) = request.into_parts();
    let held = body::hold(
        &parts,
        body,
        MAX_BODY_BYTES,
        &reading.for_pool(body::Pool::Session),
    )
    .await?;
    let bytes = held.bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| tollgate_policy::media::MediaType::parse(v.as_bytes()).ok())
        .is_some_and(|m| crate::classify::is_json(m.essence()));
    if !json {
        return Err(SessionRefusal::BodyInvalid.into());
    }
    // A member given twice (`refreshToken` twice) names two sessions: refused.
    match serde_json::from_slice::<super::unique::UniqueMembers>(&bytes).map(|u| u.0) {
        Ok(Value::Object(map)) => match map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(SessionRefusal::BodyInvalid.into()),
        },
        _ => Err(SessionRefusal::BodyInvalid.into()),
    }
}
