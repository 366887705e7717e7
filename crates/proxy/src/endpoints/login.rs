//! The login wrap: the legacy login was forwarded with the credentials untouched; its
//! answer becomes the gateway's.
//!
//! The answer is a success when the status is 2xx and `[login] user` and `client_id`
//! point at a record and a usable client id. By default that means a non-empty array
//! whose first element has a `clientId`. On success a session starts, and the page
//! gets
//! `{success, user, token, tokenType, expiresIn, expiresAt, refreshToken,
//! refreshExpiresAt, message, data}`:
//! - `user` holds `[login] user_fields` of the record;
//! - the token carries `token_claims`;
//! - `data` is the legacy payload, kept while frontends migrate off `response.data`.
//!
//! Secret members (`apiKey`, …; `[login] secret_fields`) are removed at every depth of
//! everything returned or signed.
//!
//! A refused login (2xx with an empty array, or any 4xx) is 401 `INVALID_CREDENTIALS`.
//! The answer is the same whether the account exists or not, and the gateway does
//! the same work either way. A legacy 5xx, or an answer that cannot be read, is 502.
//! The credentials themselves are never read, logged or stored here.

use std::time::Duration;

use http::Response;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use tollgate_policy::snapshot::{Login, Sessions, TokenMode};
use tollgate_state::sessions::Family;

use super::tokens;
use super::Answer;
use crate::errors::{Bug, GatewayError, SessionRefusal, UpstreamError};
use crate::exchange::Exchange;
use crate::sessions::{self, Sessions as SessionPart};

/// The legacy login's answer is read whole, up to this size.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// In cookie mode a login sets the browser's session cookies, so a form on another site
/// that posts valid credentials (an HTML form, or `text/plain` holding JSON) would log
/// the victim's browser into the attacker's account (login CSRF). Such a login must
/// come from the request's own origin or one the route's CORS policy allows, as
/// `Sec-Fetch-Site` and `Origin` say; a client that sends neither (not a browser) is
/// no victim and passes. A refresh is held to the same: one naming the attacker's
/// refresh token in its body would set the attacker's session cookies just as well.
pub fn refuse_cross_site(
    exchange: &Exchange<'_>,
    headers: &http::HeaderMap,
    host: Option<&str>,
) -> Result<(), GatewayError> {
    let cookie_mode = exchange
        .snapshot
        .sessions
        .as_ref()
        .is_some_and(|s| matches!(s.tokens, TokenMode::Cookie { .. }));
    // An origin the route's CORS policy names is the frontend's; `*` names none (it
    // allows every site, the attacker's too).
    let named =
        matches!(&exchange.cors, crate::exchange::Cors::Allowed { origin, .. } if origin != "*");
    if !cookie_mode || named {
        return Ok(());
    }
    let fetch_site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if fetch_site.is_some_and(|site| site != b"same-origin" && site != b"none") {
        return Err(SessionRefusal::LoginCrossSite.into());
    }
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let own = host.map(|host| format!("{}://{host}", exchange.scheme.as_str()));
        if own.as_deref().map(str::as_bytes) != Some(origin.as_bytes()) {
            return Err(SessionRefusal::LoginCrossSite.into());
        }
    }
    Ok(())
}

/// Turns the legacy login's response into the gateway's login answer.
pub async fn answer(
    exchange: &Exchange<'_>,
    response: Response<Incoming>,
    part: &SessionPart,
) -> Result<Answer, GatewayError> {
    let snapshot = exchange.snapshot;
    let (Some(login), Some(settings)) = (&snapshot.login, &snapshot.sessions) else {
        return Err(Bug::SessionsWithoutSigning.into());
    };
    let status = response.status();
    if status.is_server_error() {
        return Err(SessionRefusal::LoginAnswerUnreadable.into());
    }
    let payload = read_json(response.into_body(), snapshot.upstream.response_timeout).await;
    if !status.is_success() {
        part.counters.logins_refused.inc();
        return Err(SessionRefusal::InvalidCredentials.into());
    }
    let payload = payload?;
    let Some(account) = Account::read(&payload, login) else {
        part.counters.logins_refused.inc();
        // A record came back, so the credentials were right, but it names no usable
        // client id or subject: the caller cannot be told more than a wrong password
        // gets, the operator must be (no values: they may be personal).
        if payload.pointer(&login.user).is_some_and(Value::is_object) {
            tracing::warn!(
                client_id = %login.client_id,
                subject = login.subject.as_deref().unwrap_or("(the client id)"),
                "the legacy login answered a record without a usable client id or subject at these pointers: answered 401 INVALID_CREDENTIALS"
            );
        }
        return Err(SessionRefusal::InvalidCredentials.into());
    };
    let (_, store) = part.store()?;

    let family_id = tollgate_auth::refresh::new_session_id().map_err(|_| Bug::Randomness)?;
    let refresh = tollgate_auth::refresh::issue(&family_id).map_err(|_| Bug::Randomness)?;
    let csrf = match settings.tokens {
        TokenMode::Cookie { .. } => {
            Some(tollgate_auth::random::token(32).map_err(|_| Bug::Randomness)?)
        }
        TokenMode::Bearer => None,
    };
    let family = new_family(exchange, settings, account, family_id, &refresh, csrf);
    store
        .create(exchange.worker, &family)
        .await
        .map_err(|e| sessions::unavailable(&part.counters, &e))?;
    let access = tokens::access_token(exchange, &family)?;
    part.counters.logins.inc();
    Ok(tokens::answer(
        exchange,
        settings,
        &family,
        &access,
        &refresh,
        vec![
            ("message", Value::String("Login successful".into())),
            ("data", without_secrets(payload, login)),
        ],
    ))
}

/// What a successful legacy answer says about the account.
#[derive(Debug, Clone, PartialEq)]
struct Account {
    client_id: Value,
    subject: String,
    user: Map<String, Value>,
    claims: Map<String, Value>,
}

impl Account {
    /// `None` when the answer is not a success (no record, no usable client id).
    fn read(payload: &Value, login: &Login) -> Option<Account> {
        let Value::Object(record) = payload.pointer(&login.user)? else {
            return None;
        };
        let client_id = match payload.pointer(&login.client_id)? {
            Value::String(s) if tollgate_auth::jwt::is_usable_client_id(s) => {
                Value::String(s.clone())
            }
            Value::Number(n) if n.is_u64() || n.is_i64() => Value::Number(n.clone()),
            _ => return None,
        };
        let client_text = match &client_id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let subject = match &login.subject {
            None => client_text,
            Some(pointer) => match payload.pointer(pointer)? {
                Value::String(s) if !s.is_empty() && s.len() <= 256 => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            },
        };
        let clean = |value: &Value| scrub(value.clone(), login);
        let user: Map<String, Value> = record
            .iter()
            .filter(|(name, _)| !login.is_secret(name))
            .filter(|(name, _)| {
                login
                    .user_fields
                    .as_ref()
                    .is_none_or(|fields| fields.iter().any(|f| f == *name))
            })
            .map(|(name, value)| (name.clone(), clean(value)))
            .collect();
        let claims: Map<String, Value> = login
            .token_claims
            .iter()
            .filter_map(|name| record.get(name).map(|v| (name.clone(), clean(v))))
            .collect();
        Some(Account {
            client_id,
            subject,
            user,
            claims,
        })
    }
}

fn new_family(
    exchange: &Exchange<'_>,
    settings: &Sessions,
    account: Account,
    id: String,
    refresh: &str,
    csrf: Option<String>,
) -> Family {
    let now = exchange.now;
    Family {
        id,
        client_id: account.client_id,
        subject: account.subject,
        user: account.user,
        claims: account.claims,
        created: now,
        ends: now.saturating_add(settings.lifetime.as_secs()),
        idle: settings.refresh_idle.as_secs(),
        last_used: now,
        revoked: None,
        current: tollgate_auth::refresh::hash(refresh),
        previous: None,
        spent: Vec::new(),
        csrf,
        // The login's access token is signed under today's lifetime.
        tokens_until: super::tokens::when(exchange, settings).tokens_until,
    }
}

/// The legacy answer as JSON: bounded, in time and size. An answer that cannot be read
/// is the backend's failure (502), not the caller's.
async fn read_json(body: Incoming, timeout: Duration) -> Result<Value, GatewayError> {
    let collected = tokio::time::timeout(timeout, Limited::new(body, MAX_ANSWER_BYTES).collect())
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(|_| SessionRefusal::LoginAnswerUnreadable)?;
    serde_json::from_slice(&collected.to_bytes())
        .map_err(|_| SessionRefusal::LoginAnswerUnreadable.into())
}

/// The payload with every secret member removed, at any depth.
fn without_secrets(payload: Value, login: &Login) -> Value {
    scrub(payload, login)
}

fn scrub(value: Value, login: &Login) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(name, _)| !login.is_secret(name))
                .map(|(name, v)| (name, scrub(v, login)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| scrub(v, login)).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn login() -> Login {
        Login {
            client_id: "/0/clientId".into(),
            user: "/0".into(),
            subject: Some("/0/email".into()),
            user_fields: None,
            token_claims: vec!["email".into()],
            secret_fields: ["apikey", "password", "token"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    #[test]
    fn a_legacy_record_becomes_an_account_without_its_secrets() {
        let payload = json!([{"clientId": 1001, "name": "Acme", "email": "demo@acme.test",
            "apiKey": "k", "nested": {"api_key": "k", "apiKeyPem": "-----BEGIN", "ok": 1},
            "providers": ["plivo"]}]);
        let account = Account::read(&payload, &login()).unwrap();
        assert_eq!(account.client_id, json!(1001));
        assert_eq!(account.subject, "demo@acme.test");
        assert_eq!(
            Value::Object(account.user),
            json!({"clientId": 1001, "name": "Acme", "email": "demo@acme.test",
                   "nested": {"ok": 1}, "providers": ["plivo"]})
        );
        assert_eq!(
            Value::Object(account.claims),
            json!({"email": "demo@acme.test"})
        );
        let data = without_secrets(payload, &login());
        assert!(!data.to_string().contains("apiKey"));
        assert!(!data.to_string().contains("api_key"));
        assert!(!data.to_string().contains("BEGIN"));
        assert_eq!(data[0]["nested"]["ok"], 1);
    }

    #[test]
    fn only_the_allowed_user_fields_are_returned() {
        let mut l = login();
        l.user_fields = Some(vec!["name".into()]);
        let payload = json!([{"clientId": "c-1", "name": "Acme", "email": "e"}]);
        let account = Account::read(&payload, &l).unwrap();
        assert_eq!(Value::Object(account.user), json!({"name": "Acme"}));
        assert_eq!(account.client_id, json!("c-1"));
    }

    #[test]
    fn anything_but_a_record_with_a_usable_id_is_a_refused_login() {
        for payload in [
            json!([]),
            json!({}),
            json!(null),
            json!([{"name": "no id", "email": "e"}]),
            json!([{"clientId": "bad id", "email": "e"}]),
            json!([{"clientId": 1.5, "email": "e"}]),
            json!([{"clientId": 1, "email": ""}]),
            json!(["not an object"]),
        ] {
            assert_eq!(Account::read(&payload, &login()), None, "{payload}");
        }
    }
}
