//! The admin API of the token ledger, for operators: every call needs
//! `Authorization: Bearer <[admin] token>` (the scheme in any case, the token compared in
//! constant time); without a configured token the API is off (404). Every change is
//! journaled with its reason, and checked by the rules `tollgate ledger` applies too
//! ([`tollgate_state::ledger::operator`]). A method a resource does not take is 405 with
//! `Allow`, once the caller is authorized.
//!
//! - `GET  /ledger/clients/{id}?limit=&before=` — balance, held, and the journal;
//! - `POST /ledger/clients/{id}/credit` `{"amount": 100, "reason": "..."}`;
//! - `POST /ledger/clients/{id}/debit`  `{"amount": 100, "reason": "..."}` (402 when
//!   the balance is smaller);
//! - `PUT  /ledger/clients/{id}/balance` `{"balance": 100, "reason": "..."}`;
//! - `GET  /ledger/verify` — replays every journal against its balance.

use base64::Engine as _;
use http::header::{HeaderValue, AUTHORIZATION};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate_state::ledger::operator::{self, MAX_JOURNAL_PAGE};
use tollgate_state::ledger::{
    Adjusted, Change, Claim, Claimed, Movement, StoredAnswer, MAX_TOKENS,
};

use super::AdminResponse;
use crate::credits::now_ms;
use crate::endpoints::credits::{json_answer, query_number};
use crate::errors::{AccessError, AdminError, Bug, CreditError, GatewayError, RequestError};
use crate::runtime::Runtime;

const MAX_BODY_BYTES: usize = 16 * 1024;
/// A change's body must arrive within this (a stalled client holds no task for long).
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn handle(request: Request<Incoming>, runtime: &Runtime) -> AdminResponse {
    let request_id = crate::request_id::from_headers(
        request.headers(),
        &runtime.active().snapshot.log.redact_values,
    );
    let mut response = match serve(request, runtime, &request_id).await {
        Ok(response) => response,
        Err(error) => {
            runtime.metrics.count_problem(&error);
            crate::problem::render(&error, &request_id)
        }
    };
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(crate::request_id::HEADER, id);
    }
    response
}

/// 404 `ROUTE_NOT_FOUND` for a path the admin listener does not serve.
pub fn not_found(request: &Request<Incoming>, runtime: &Runtime) -> AdminResponse {
    refuse(request, AdminError::NotFound.into(), runtime)
}

/// 405 `METHOD_NOT_ALLOWED`, `Allow: <allow>`, for a method a resource does not take.
pub fn method_not_allowed(
    request: &Request<Incoming>,
    allow: Method,
    runtime: &Runtime,
) -> AdminResponse {
    refuse(
        request,
        AccessError::MethodNotAllowed { allow: vec![allow] }.into(),
        runtime,
    )
}

/// The problem document for `error`, counted as every problem the gateway answers.
pub(super) fn refuse(
    request: &Request<Incoming>,
    error: GatewayError,
    runtime: &Runtime,
) -> AdminResponse {
    runtime.metrics.count_problem(&error);
    let request_id = crate::request_id::from_headers(
        request.headers(),
        &runtime.active().snapshot.log.redact_values,
    );
    let mut response = crate::problem::render(&error, &request_id);
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(crate::request_id::HEADER, id);
    }
    response
}

fn authorized(request: &Request<Incoming>, runtime: &Runtime) -> Result<(), GatewayError> {
    let active = runtime.active();
    let Some(token) = active
        .snapshot
        .admin
        .as_ref()
        .and_then(|a| a.token.as_ref())
    else {
        return Err(AdminError::Disabled.into());
    };
    // One credential: a second `Authorization` is ambiguous, as on the data plane.
    let mut sent = request.headers().get_all(AUTHORIZATION).iter();
    let (Some(sent), None) = (sent.next(), sent.next()) else {
        return Err(AdminError::Unauthorized.into());
    };
    // `Bearer`, `bearer` and `BEARER` alike (RFC 9110 §11.1), as on the data plane.
    let presented = sent
        .to_str()
        .ok()
        .and_then(tollgate_auth::bearer::credentials)
        .filter(|token| !token.is_empty())
        .ok_or(AdminError::Unauthorized)?;
    // Hashed first, so the comparison takes the same time whatever the lengths.
    let (a, b) = (
        Sha256::digest(presented.as_bytes()),
        Sha256::digest(&token.0),
    );
    if tollgate_auth::secret::equal(&a, &b) {
        Ok(())
    } else {
        Err(AdminError::Unauthorized.into())
    }
}

/// A change's body: the number under `field`, and a reason.
async fn change_body(
    request: Request<Incoming>,
    field: &str,
) -> Result<(u64, String), GatewayError> {
    let too_large = || -> GatewayError {
        RequestError::PayloadTooLarge {
            limit: MAX_BODY_BYTES as u64,
        }
        .into()
    };
    // A declared length over the limit is refused at once, not read until it fails.
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::headers::whole_number);
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    // Declared JSON, as every JSON body the gateway reads: a form or a text body that
    // happens to parse as JSON is refused (415), not read as a change of money.
    crate::classify::require_json(request.headers())?;
    let body = request.into_body();
    let bytes = tokio::time::timeout(BODY_DEADLINE, Limited::new(body, MAX_BODY_BYTES).collect())
        .await
        .map_err(|_| RequestError::BodyTooSlow)?
        .map_err(|e| -> GatewayError {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                // The framing failed (bad chunking, the client left): as on the data
                // plane, not a JSON problem.
                RequestError::BodyInvalid.into()
            }
        })?
        .to_bytes();
    // Members in order, repeats kept: `{"amount":5,"amount":500000}` is refused rather
    // than read as whichever a parser keeps (a reviewer may have read the other).
    let members = serde_json::from_slice::<tollgate_state::members::Members>(&bytes)
        .map_err(|_| AdminError::BodyInvalid)?;
    // Only the two members it reads, once each: `Amount` or `reason ` beside them
    // would be a change nobody meant, read by no one.
    let known = |k: &str| k == field || k == "reason";
    if members.repeated().is_some() || members.0.iter().any(|(k, _)| !known(k)) {
        return Err(AdminError::BodyInvalid.into());
    }
    // Whether the number and the reason are acceptable is the operator rules' to say
    // (`operator::adjustment`), with a detail that names the rule; here only their types.
    let amount = members
        .get(field)
        .and_then(Value::as_u64)
        .ok_or(AdminError::BodyInvalid)?;
    let reason = members
        .get("reason")
        .and_then(Value::as_str)
        .ok_or(AdminError::BodyInvalid)?;
    Ok((amount, reason.to_owned()))
}

async fn serve(
    request: Request<Incoming>,
    runtime: &Runtime,
    request_id: &str,
) -> Result<AdminResponse, GatewayError> {
    authorized(&request, runtime)?;
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let allow = allowed(&segments).ok_or(AdminError::NotFound)?;
    if request.method() != allow {
        return Err(AccessError::MethodNotAllowed { allow: vec![allow] }.into());
    }
    let active = runtime.active();
    let credits = &active.credits;
    let worker = 0;
    match (request.method().clone(), segments.as_slice()) {
        (Method::GET, ["ledger", "verify"]) => {
            let report = credits
                .ledger()?
                .verify(worker)
                .await
                .map_err(|e| credits.unavailable(&e))?;
            let problems: Vec<Value> = report
                .problems
                .iter()
                .map(|p| json!({"clientId": p.client, "problem": p.problem}))
                .collect();
            let status = if problems.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            Ok(json_answer(
                status,
                &json!({
                    "clients": report.clients,
                    "movements": report.movements,
                    "openReservations": report.open_reservations,
                    "problems": problems,
                }),
            ))
        }
        (Method::GET, ["ledger", "clients", client]) => {
            let client = percent_decode(client)?;
            let query = request.uri().query();
            // As the history refuses it (errors.md): a page size out of range was
            // quietly made another one.
            let limit = match query_number(query, "limit", MAX_JOURNAL_PAGE)? {
                None => 100,
                Some(n) if (1..=MAX_JOURNAL_PAGE).contains(&n) => n as usize,
                Some(_) => {
                    return Err(CreditError::HistoryQueryInvalid {
                        max: MAX_JOURNAL_PAGE,
                    }
                    .into())
                }
            };
            let before = query_number(query, "before", MAX_JOURNAL_PAGE)?;
            let ledger = credits.ledger()?;
            let account = ledger
                .account(worker, &client)
                .await
                .map_err(|e| credits.unavailable(&e))?;
            let page = ledger
                .journal(worker, &client, before, limit)
                .await
                .map_err(|e| credits.unavailable(&e))?;
            Ok(json_answer(
                StatusCode::OK,
                &json!({
                    "clientId": client,
                    "balance": account.available,
                    "held": account.held,
                    "movements": page.movements.iter().map(movement_json).collect::<Vec<_>>(),
                    "next": page.next,
                }),
            ))
        }
        (method, ["ledger", "clients", client, action]) => {
            let client = percent_decode(client)?;
            let key = crate::meter::idempotency_key(request.headers())?;
            let change = match (method.clone(), *action) {
                (Method::POST, "credit") => {
                    let (n, reason) = change_body(request, "amount").await?;
                    (Change::Credit(n), reason)
                }
                (Method::POST, "debit") => {
                    let (n, reason) = change_body(request, "amount").await?;
                    (Change::Debit(n), reason)
                }
                (Method::PUT, "balance") => {
                    let (n, reason) = change_body(request, "balance").await?;
                    (Change::Set(n), reason)
                }
                _ => return Err(AdminError::NotFound.into()),
            };
            let (change, reason) = change;
            let mut adjust = operator::adjustment(&client, change, &reason, "admin", now_ms())
                .map_err(AdminError::from)?;
            // Journaled with the change: the call that made it can be found again.
            adjust.request_id = Some(request_id.to_owned());
            let Some(key) = key else {
                let (status, answer) = adjust_now(runtime, adjust, request_id).await?;
                return Ok(json_answer(status, &answer));
            };
            // With an `Idempotency-Key`, a retry (after a timeout, say) gets the first
            // call's answer instead of moving the money again.
            let fingerprint = hex_sha256(&format!("{method} {action} {change:?} {reason}"));
            once(runtime, &client, &key, fingerprint, request_id, adjust).await
        }
        _ => Err(AdminError::NotFound.into()),
    }
}

/// How long an admin change's key is in flight (a call that died frees it then).
const KEY_IN_FLIGHT_MS: u64 = 60_000;

/// An admin change under an `Idempotency-Key` (scoped to its client, apart from the
/// client's own request keys): run once; a retry of the same change gets its answer
/// again (`Idempotent-Replayed: true`), another change under the key 422, a retry while
/// it runs 409. A refused change moved nothing, so its key is freed for a retry.
async fn once(
    runtime: &Runtime,
    client: &str,
    key: &str,
    fingerprint: String,
    request_id: &str,
    adjust: tollgate_state::ledger::Adjust,
) -> Result<AdminResponse, GatewayError> {
    let active = runtime.active();
    let credits = &active.credits;
    let ledger = credits.ledger()?;
    let (worker, now) = (0, now_ms());
    // Client ids hold no `/`: no caller's own key can share this scope.
    let scope = format!("{client}/admin");
    // The claim's owner is this call alone (a retry may repeat its X-Request-Id).
    let owner = format!(
        "admin-{}",
        tollgate_auth::random::token(16).map_err(|_| Bug::Randomness)?
    );
    let claim = Claim {
        client: scope.clone(),
        key: key.to_owned(),
        fingerprint,
        now_ms: now,
        hold_until: now.saturating_add(KEY_IN_FLIGHT_MS),
        owner: owner.clone(),
    };
    match ledger
        .claim(worker, claim)
        .await
        .map_err(|e| credits.unavailable(&e))?
    {
        Claimed::InFlight => Err(CreditError::KeyInFlight.into()),
        Claimed::Mismatch => Err(CreditError::KeyMismatch.into()),
        Claimed::Answered(stored) => {
            let body = stored
                .body
                .as_deref()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .ok_or(Bug::Corrupt)?;
            let status = StatusCode::from_u16(stored.status).map_err(|_| Bug::Corrupt)?;
            let mut response = json_answer(status, &body);
            response
                .headers_mut()
                .insert(crate::meter::REPLAYED, HeaderValue::from_static("true"));
            Ok(response)
        }
        Claimed::New => match adjust_now(runtime, adjust, request_id).await {
            Ok((status, answer)) => {
                let keep_until =
                    now.saturating_add(active.snapshot.credits.as_ref().map_or(86_400_000, |c| {
                        u64::try_from(c.idempotency_ttl.as_millis()).unwrap_or(u64::MAX)
                    }));
                let stored = StoredAnswer {
                    status: status.as_u16(),
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: Some(
                        base64::engine::general_purpose::STANDARD.encode(answer.to_string()),
                    ),
                    cost: 0,
                    request_digest: None,
                };
                if let Err(e) = ledger
                    .answer(worker, &scope, key, &owner, stored, keep_until)
                    .await
                {
                    // The money moved: it is answered. A retry after the claim runs out
                    // would move it again, so the operator is told where to look.
                    tracing::warn!(error = %e, client, request_id, "an admin change was made but its Idempotency-Key answer could not be kept: check the journal before retrying");
                }
                Ok(json_answer(status, &answer))
            }
            Err(refused) => {
                let _ = ledger.release(worker, &scope, key, &owner).await;
                Err(refused)
            }
        },
    }
}

/// Makes an adjustment now: the answer's status and body.
async fn adjust_now(
    runtime: &Runtime,
    adjust: tollgate_state::ledger::Adjust,
    request_id: &str,
) -> Result<(StatusCode, Value), GatewayError> {
    let active = runtime.active();
    let credits = &active.credits;
    let (client, change) = (adjust.client.clone(), adjust.change);
    let adjusted = credits
        .ledger()?
        .adjust(0, adjust)
        .await
        .map_err(|e| credits.unavailable(&e))?;
    match adjusted {
        Adjusted::Done { balance } => {
            tracing::info!(
                client = %client,
                change = ?change,
                balance,
                request_id,
                "ledger adjusted by an operator"
            );
            Ok((
                StatusCode::OK,
                json!({"clientId": client, "balance": balance}),
            ))
        }
        Adjusted::Short { balance } => Err(CreditError::Insufficient {
            required: match change {
                Change::Debit(n) => n,
                _ => 0,
            },
            balance,
        }
        .into()),
        Adjusted::AlreadyOpened { balance } => Ok((
            StatusCode::OK,
            json!({"clientId": client, "balance": balance}),
        )),
        Adjusted::TooLarge { balance } => Err(CreditError::BalanceTooLarge {
            balance,
            max: MAX_TOKENS,
        }
        .into()),
    }
}

/// The method a ledger resource takes; `None` for a path that names none. [`serve`]
/// answers 405 with this as `Allow` for any other method.
fn allowed(segments: &[&str]) -> Option<Method> {
    match segments {
        ["ledger", "verify"] | ["ledger", "clients", _] => Some(Method::GET),
        ["ledger", "clients", _, "credit" | "debit"] => Some(Method::POST),
        ["ledger", "clients", _, "balance"] => Some(Method::PUT),
        _ => None,
    }
}

fn movement_json(m: &Movement) -> Value {
    serde_json::to_value(m).unwrap_or(Value::Null)
}

/// The SHA-256 of `text`, in hex.
fn hex_sha256(text: &str) -> String {
    crate::trace_context::hex(&Sha256::digest(text.as_bytes()))
}

/// A client id from the path, `%XX` escapes decoded; only an id a caller could have
/// ([`operator::client`]): an account under any other could never be spent from, and a
/// typo would credit it silently.
fn percent_decode(segment: &str) -> Result<String, GatewayError> {
    // A broken escape names no client a caller could have: 400, as a bad id is.
    let out = tollgate_policy::param::unescape_exact(segment.as_bytes())
        .ok_or(operator::Refusal::ClientId)?;
    let text = String::from_utf8(out).map_err(|_| operator::Refusal::ClientId)?;
    operator::client(&text).map_err(AdminError::from)?;
    Ok(text)
}
