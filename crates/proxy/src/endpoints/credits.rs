//! The token-credit endpoints for the frontend, about the caller's own client:
//!
//! - `GET /gateway/tokens/balance` — the balance, and what running requests hold;
//! - `GET /gateway/tokens/costs` — every metered route's cost, for client-side
//!   prediction (routes not listed are free);
//! - `POST /gateway/tokens/preview` — what one or several operations would cost, and
//!   whether the balance covers them;
//! - `GET /gateway/tokens/history?limit=&before=` — the caller's movements, newest
//!   first, in pages.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tollgate_policy::snapshot::Cost;
use tollgate_policy::RouteAction;

use super::Answer;
use crate::body::{self, Reading, RequestBody};
use crate::credits::Credits;
use crate::errors::{Bug, CreditError, GatewayError};
use crate::exchange::Exchange;

/// Operations one preview may ask about.
const MAX_OPERATIONS: usize = 100;
const MAX_BODY_BYTES: u64 = 64 * 1024;
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: u64 = 500;

/// A JSON answer nobody caches: the token endpoints' and the ledger admin API's.
pub(crate) fn json_answer(status: StatusCode, value: &Value) -> Answer {
    let mut response = Response::new(crate::body::full(value.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn client(exchange: &Exchange<'_>) -> Result<String, GatewayError> {
    exchange
        .caller
        .identity
        .as_ref()
        .map(|i| i.client_id.clone())
        .ok_or_else(|| Bug::CredentialWithoutCaller.into())
}

fn metering(exchange: &Exchange<'_>) -> bool {
    exchange
        .snapshot
        .credits
        .as_ref()
        .is_some_and(|c| c.enabled)
}

pub async fn balance(exchange: &Exchange<'_>, credits: &Credits) -> Result<Answer, GatewayError> {
    let client = client(exchange)?;
    let account = credits
        .ledger()?
        .account(exchange.worker, &client)
        .await
        .map_err(|e| credits.unavailable(&e))?;
    Ok(json_answer(
        StatusCode::OK,
        &json!({
            "clientId": client,
            "balance": account.available,
            "held": account.held,
            "metering": metering(exchange),
        }),
    ))
}

fn costs_of(cost: &Cost) -> Map<String, Value> {
    cost.amounts
        .iter()
        .map(|(method, amount)| {
            let key = method.as_ref().map_or("*", Method::as_str).to_owned();
            (key, Value::from(*amount))
        })
        .collect()
}

pub fn costs(exchange: &Exchange<'_>) -> Answer {
    let routes: Vec<Value> = exchange
        .snapshot
        .routes
        .iter()
        .filter_map(|route| {
            let cost = route.cost.as_ref()?;
            let methods: Vec<&str> = route
                .methods
                .as_ref()
                .map_or_else(Vec::new, |m| m.iter().map(Method::as_str).collect());
            Some(json!({
                "route": route.name,
                "path": route.path.to_string(),
                "methods": methods,
                "costs": costs_of(cost),
                "settledByBackend": cost.settle_header.is_some(),
            }))
        })
        .collect();
    json_answer(
        StatusCode::OK,
        &json!({
            "metering": metering(exchange),
            "unit": "token",
            "routes": routes,
        }),
    )
}

pub async fn preview(
    exchange: &Exchange<'_>,
    request: Request<RequestBody>,
    credits: &Credits,
    reading: &Reading,
) -> Result<Answer, GatewayError> {
    let client = client(exchange)?;
    crate::classify::require_json(request.headers())?;
    let (parts, body) = request.into_parts();
    let held = body::hold(&parts, body, MAX_BODY_BYTES, reading).await?;
    // A member given twice says two things (serde keeps the last): refused, as the
    // body's own duplicates are everywhere the gateway reads JSON.
    let super::unique::UniqueMembers(value) =
        serde_json::from_slice(&held.bytes()).map_err(|_| CreditError::PreviewInvalid)?;
    let operations = match &value {
        Value::Object(o) if o.contains_key("operations") => match &o["operations"] {
            Value::Array(list) => list.clone(),
            _ => return Err(CreditError::PreviewInvalid.into()),
        },
        Value::Object(_) => vec![value.clone()],
        Value::Array(list) => list.clone(),
        _ => return Err(CreditError::PreviewInvalid.into()),
    };
    if operations.is_empty() || operations.len() > MAX_OPERATIONS {
        return Err(CreditError::PreviewInvalid.into());
    }
    let snapshot = exchange.snapshot;
    let on = metering(exchange);
    let mut total: u64 = 0;
    let mut priced = Vec::with_capacity(operations.len());
    for (i, op) in operations.iter().enumerate() {
        // Said of the operation, numbered from 1: "send {operations}" was all a page got
        // for a lowercase method or an unreadable path.
        let bad = |why| CreditError::PreviewOperationInvalid { index: i + 1, why };
        let method = op.get("method").and_then(Value::as_str);
        let path = op.get("path").and_then(Value::as_str);
        let (Some(method), Some(path)) = (method, path) else {
            return Err(bad("give `method` and `path`, both strings").into());
        };
        let method = Method::from_bytes(method.as_bytes())
            .ok()
            .filter(crate::accept::method_is_canonical)
            .ok_or(bad(
                "`method` is an HTTP method in upper case (`POST`), as a request sends it",
            ))?;
        // A target longer than a request may send (414 `URI_TOO_LONG`) is no request's.
        if path.len() > snapshot.server.max_uri_bytes {
            return Err(bad(
                "`path` is longer than a request target may be (`[server] max_uri_bytes`)",
            )
            .into());
        }
        // As a request target is read: the query, and a fragment, are not the path.
        let path_only = path.split(['?', '#']).next().unwrap_or(path);
        let normalized = tollgate_policy::path::normalize(path_only).map_err(|_| {
            bad("`path` is not a path a request could have (an encoded `/` or `\\`, a control character, a broken escape)")
        })?;
        // As a request is routed: `TRACE` and `TRACK` are never forwarded, `CONNECT` is
        // refused before routing, and a denying route charges nothing, so none is priced.
        let route = crate::route::select(snapshot, &method, &normalized)
            .route()
            .filter(|r| r.action != RouteAction::Deny && method != Method::CONNECT);
        let cost = route
            .and_then(|r| r.cost.as_ref())
            .filter(|_| on)
            .map_or(0, |c| c.for_method(&method));
        total = total.saturating_add(cost);
        priced.push(json!({
            "method": method.as_str(),
            "path": path,
            "route": route.map(|r| r.name.clone()),
            "cost": cost,
        }));
    }
    let account = credits
        .ledger()?
        .account(exchange.worker, &client)
        .await
        .map_err(|e| credits.unavailable(&e))?;
    let sufficient = account.available >= total;
    Ok(json_answer(
        StatusCode::OK,
        &json!({
            "operations": priced,
            "total": total,
            "balance": account.available,
            "sufficient": sufficient,
            "balanceAfter": if sufficient { Value::from(account.available - total) } else { Value::Null },
            "shortBy": if sufficient { Value::from(0) } else { Value::from(total - account.available) },
        }),
    ))
}

/// The first `name=` of a query as a whole number (400 `INVALID_QUERY` if it is not one;
/// its detail names `max_page`, the page size of the endpoint asking).
pub(crate) fn query_number(
    query: Option<&str>,
    name: &str,
    max_page: u64,
) -> Result<Option<u64>, GatewayError> {
    let invalid = || GatewayError::from(CreditError::HistoryQueryInvalid { max: max_page });
    let mut found = None;
    for pair in query.unwrap_or("").split('&') {
        // `?limit` alone names the parameter without a number: refused like `?limit=`.
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == name {
            // Given twice, it says two things: refused rather than one picked.
            if found.is_some() {
                return Err(invalid());
            }
            let number = crate::headers::whole_number(value).ok_or_else(invalid)?;
            found = Some(number);
        }
    }
    Ok(found)
}

pub async fn history<B>(
    exchange: &Exchange<'_>,
    request: &Request<B>,
    path: &str,
    credits: &Credits,
) -> Result<Answer, GatewayError> {
    let client = client(exchange)?;
    let query = request.uri().query();
    let limit = match query_number(query, "limit", MAX_PAGE)? {
        None => DEFAULT_PAGE,
        Some(n) if (1..=MAX_PAGE).contains(&n) => n as usize,
        Some(_) => return Err(CreditError::HistoryQueryInvalid { max: MAX_PAGE }.into()),
    };
    let before = query_number(query, "before", MAX_PAGE)?;
    let page = credits
        .ledger()?
        .journal(exchange.worker, &client, before, limit)
        .await
        .map_err(|e| credits.unavailable(&e))?;
    let movements: Vec<Value> = page
        .movements
        .iter()
        .map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                // The caller's own: the client is the caller.
                o.remove("client");
                o.remove("heldChange");
            }
            v
        })
        .collect();
    let next = page
        .next
        // The normalized path, never the one the caller spelled: `//gateway/...` would be
        // a protocol-relative reference to another host.
        .map(|cursor| format!("{path}?limit={limit}&before={cursor}"));
    Ok(json_answer(
        StatusCode::OK,
        &json!({
            "clientId": client,
            "movements": movements,
            "next": next,
        }),
    ))
}
