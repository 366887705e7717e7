//! What login, refresh and the grace answer hand out: an access token for a session,
//! the session's refresh token, and the JSON answer (or, in cookie mode, the cookies)
//! that carry them.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, PRAGMA, SET_COOKIE};
use http::{Response, StatusCode};
use serde_json::{Map, Value};
use tollgate_auth::mint::{mint_access, AccessToken};
use tollgate_policy::snapshot::{Sessions, TokenMode};
use tollgate_state::sessions::{Family, When};

use super::Answer;
use crate::cookies;
use crate::errors::{Bug, GatewayError};
use crate::exchange::Exchange;

/// An access token and when it expires (seconds since the epoch).
pub struct Access {
    pub token: String,
    pub expires_at: u64,
}

/// Signs an access token for `family`'s session: it expires after `[jwt] access_ttl`,
/// or when the session ends if that is sooner.
pub fn access_token(exchange: &Exchange<'_>, family: &Family) -> Result<Access, GatewayError> {
    let jwt = exchange
        .snapshot
        .auth
        .jwt
        .as_ref()
        .ok_or(Bug::SessionsWithoutSigning)?;
    let key = jwt.signing.as_ref().ok_or(Bug::SessionsWithoutSigning)?;
    let now = exchange.now;
    let expires_at = now
        .saturating_add(jwt.access_ttl.as_secs())
        .min(family.ends);
    let token_id = tollgate_auth::random::token(16).map_err(|_| Bug::Randomness)?;
    let csrf_hash = family.csrf.as_deref().map(crate::cookies::csrf_hash);
    let token = mint_access(
        &AccessToken {
            issuer: jwt.rules.issuer.as_deref(),
            audience: jwt.rules.audience.as_deref(),
            subject: &family.subject,
            client_id_claim: &jwt.rules.client_id_claim,
            client_id: &family.client_id,
            issued_at: now,
            expires_at,
            token_id: &token_id,
            session: Some(&family.id),
            csrf_hash: csrf_hash.as_deref(),
            extra: Some(&family.claims),
        },
        key,
    )
    .map_err(|e| {
        tracing::error!(error = %e, "cannot sign an access token");
        Bug::Signing
    })?;
    Ok(Access { token, expires_at })
}

/// The clock and windows the store decides with, for this request.
pub fn when(exchange: &Exchange<'_>, sessions: &Sessions) -> When {
    let (ttl, leeway) = exchange
        .snapshot
        .auth
        .jwt
        .as_ref()
        .map_or((0, 0), |j| (j.access_ttl.as_secs(), j.rules.leeway_secs));
    When {
        now: exchange.now,
        grace: sessions.reuse_grace.as_secs(),
        tokens_until: exchange.now.saturating_add(ttl).saturating_add(leeway),
    }
}

/// When a refresh token issued now stops working: idle timeout or session end.
pub fn refresh_expires_at(exchange: &Exchange<'_>, family: &Family) -> u64 {
    exchange.now.saturating_add(family.idle).min(family.ends)
}

/// The answer to a login or a refresh: `{success, user, token, expiresIn, expiresAt,
/// refreshToken, ...}` with `more` members after them (login adds `message` and
/// `data`). In cookie mode the tokens go into cookies instead, and the answer carries
/// the CSRF token.
pub fn answer(
    exchange: &Exchange<'_>,
    sessions: &Sessions,
    family: &Family,
    access: &Access,
    refresh: &str,
    more: Vec<(&'static str, Value)>,
) -> Answer {
    let now = exchange.now;
    let lifetime = access.expires_at.saturating_sub(now);
    let refresh_expires = refresh_expires_at(exchange, family);
    let mut body = Map::new();
    body.insert("success".into(), Value::Bool(true));
    body.insert("user".into(), Value::Object(family.user.clone()));
    let cookie_mode = match sessions.tokens {
        TokenMode::Bearer => None,
        TokenMode::Cookie {
            access_token,
            secure,
        } => Some((access_token, secure)),
    };
    let access_in_body = cookie_mode.is_none_or(|(in_cookie, _)| !in_cookie);
    if access_in_body {
        body.insert("token".into(), Value::String(access.token.clone()));
        body.insert("tokenType".into(), Value::String("Bearer".into()));
    }
    body.insert("expiresIn".into(), Value::String(human(lifetime)));
    body.insert(
        "expiresAt".into(),
        Value::String(rfc3339(access.expires_at)),
    );
    if cookie_mode.is_none() {
        body.insert("refreshToken".into(), Value::String(refresh.to_owned()));
    }
    body.insert(
        "refreshExpiresAt".into(),
        Value::String(rfc3339(refresh_expires)),
    );
    if let (Some(_), Some(csrf)) = (cookie_mode, &family.csrf) {
        body.insert("csrfToken".into(), Value::String(csrf.clone()));
    }
    for (name, value) in more {
        body.insert(name.into(), value);
    }
    let mut response = Response::new(crate::body::full(Value::Object(body).to_string()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    no_store(headers);
    if let Some((access_in_cookie, secure)) = cookie_mode {
        let refresh_path = cookies::refresh_path(exchange.snapshot);
        let refresh_age = refresh_expires.saturating_sub(now);
        let mut set = vec![cookies::set(
            cookies::REFRESH,
            refresh,
            &refresh_path,
            refresh_age,
            secure,
        )];
        if access_in_cookie {
            // The cookie outlives the token it holds: an expired token still reaches
            // the gateway, which answers TOKEN_EXPIRED (refresh) rather than
            // AUTH_REQUIRED (log in again).
            set.push(cookies::set(
                cookies::ACCESS,
                &access.token,
                "/",
                refresh_age,
                secure,
            ));
        }
        if let Some(csrf) = &family.csrf {
            set.push(cookies::set(cookies::CSRF, csrf, "/", refresh_age, secure));
        }
        for value in set.into_iter().flatten() {
            headers.append(SET_COOKIE, value);
        }
    }
    response
}

/// Answers about credentials are never stored by a cache or the browser.
pub fn no_store(headers: &mut http::HeaderMap) {
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

/// A lifetime as the frontend expects it: `24h`, `15m`, `90s`.
pub fn human(secs: u64) -> String {
    if secs > 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_and_timestamps_read_as_expected() {
        assert_eq!(human(86_400), "24h");
        assert_eq!(human(900), "15m");
        assert_eq!(human(90), "90s");
        assert_eq!(human(0), "0s");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_083_199), "2026-11-30T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
