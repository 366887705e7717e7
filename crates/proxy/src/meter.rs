//! Stage 7 — meter: token credits, in two phases.
//!
//! [`reserve`] holds a metered route's cost before anything reaches the backend, or
//! refuses the request with 402 `INSUFFICIENT_TOKENS` (with `required` and `balance`).
//! When the backend's response head arrives, [`settle`] posts the reservation (at the
//! backend's own figure when the route names a `settle_header`, never above what was
//! held; written in the background: the answer does not wait for it) or voids it when
//! the status is one that refunds (`4xx` and `5xx` unless the route says otherwise). A
//! request that fails after reserving — the backend cannot be reached or times out, the
//! gateway refuses the body — is refunded by [`refund`]; a client that goes away before
//! the response head, by the reservation's own drop (see [`crate::reservation`]).
//! [`decorate`] tells the client what the request cost and what is left
//! (`X-Token-Cost`, `X-Token-Balance`).
//!
//! **Idempotency-Key** (draft-ietf-httpapi-idempotency-key-header): on a metered
//! request the key is claimed, per client, before reserving. A retry of a charged
//! request gets the first answer again (status, headers, body; `Idempotent-Replayed:
//! true`) and is not charged; the same key on a different request is 422, and while the
//! first is running, 409. A request that was not charged (refused, refunded) frees its
//! key, so its retry runs. "The same request" is the method, the route, the target, the
//! content type and the body: JSON and form bodies (which the gateway reads anyway) by
//! their SHA-256 in the claim; streamed bodies (multipart, opaque), which pass unread,
//! by the digest [`crate::body::Outbound`] takes as they pass ([`BodyHasher`]:
//! multipart without its boundary), kept with the answer (once the body has ended, if
//! the backend answered sooner): a retry's body is read to the end, let go, and must
//! hash the same (an opaque body's type and declared length are
//! in the claim too; a multipart one's boundary, and so its length, are not).
//!
//! The ledger is never guessed: when it cannot be reached a metered request gets 503
//! `LEDGER_UNAVAILABLE` and nothing is forwarded.

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use tollgate_policy::snapshot::{ClientAbort, Cost};
use tollgate_policy::Route;
use tollgate_state::ledger::{Claim, Claimed, Reservation, Reserved, Settled, StoredAnswer};

use crate::body::{Reading, RequestBody};
use crate::body_digest::BodyHasher;
use crate::classify::{self, BodyClass};
use crate::credits::{now_ms, Credits, VoidReason};
use crate::endpoints::Answer;
use crate::errors::{Bug, CreditError, GatewayError, Problem as _, RequestError, UpstreamError};
use crate::exchange::{Exchange, Metering};
use crate::metrics;
use crate::reservation::{Hold, KeyClaim};

/// The request header that names a retry-safe operation.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header a replayed answer carries.
pub const REPLAYED: &str = "idempotent-replayed";
// Parsed once: every response is stripped of them and every metered one gets two.
static REPLAYED_NAME: HeaderName = HeaderName::from_static(REPLAYED);
static TOKEN_COST: HeaderName = HeaderName::from_static("x-token-cost");
static TOKEN_BALANCE: HeaderName = HeaderName::from_static("x-token-balance");
/// Answer bodies up to this size are kept for replays; larger ones are replayed as the
/// status and headers alone.
pub const MAX_KEPT_BODY: u64 = 1024 * 1024;
/// Response headers a replay repeats.
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "content-language",
    "location",
    "etag",
    "cache-control",
];

/// What stage 7 lets through.
pub enum Reserve {
    /// Go on: the cost is held (or the route is free).
    Forward(Request<RequestBody>),
    /// A retry of a charged request: its first answer.
    Replay(Answer),
}

/// Reserves what the request costs the caller, or refuses it.
pub async fn reserve(
    exchange: &mut Exchange<'_>,
    route: &Route,
    request: Request<RequestBody>,
    path: &str,
    credits: &Credits,
    reading: &Reading,
) -> Result<Reserve, GatewayError> {
    let cost = cost(exchange, route, request.method());
    let Some(client) = exchange
        .caller
        .identity
        .as_ref()
        .map(|i| i.client_id.clone())
        .filter(|_| cost > 0)
    else {
        return Ok(Reserve::Forward(request));
    };
    let settings = exchange.snapshot.credits.as_ref().ok_or(Bug::NoCredits)?;
    let ledger = std::sync::Arc::clone(credits.ledger()?);
    let worker = exchange.worker;
    let now = now_ms();
    let hold_until = now.saturating_add(duration_ms(settings.reservation_timeout));

    let key = match idempotency_key(request.headers()) {
        Ok(key) => key,
        Err(invalid) => return Err(key_refused(exchange, &*ledger, &client, invalid).await),
    };
    let (request, claim) = match key.clone() {
        None => (request, None),
        Some(key) => {
            // A body refused while it is read for the fingerprint (415, 413, 408, 400)
            // is a metered answer like any other: it says what the caller has.
            let (request, fingerprint, boundary) =
                match fingerprint(route, request, path, reading).await {
                    Ok(read) => read,
                    Err(e) => return Err(key_refused(exchange, &*ledger, &client, e).await),
                };
            // Generated here, never the client's `X-Request-Id`: only this request may
            // free what it claims.
            let owner = crate::request_id::generate();
            let keep_until = now.saturating_add(duration_ms(settings.idempotency_ttl));
            // Armed before the ledger is asked, as the reservation below is: a client
            // that hangs up while the key is being claimed frees its claim (and only
            // its own) instead of leaving the key "in flight" until `hold_until`.
            let mut guard = KeyClaim::new(
                std::sync::Arc::clone(&ledger),
                worker,
                client.clone(),
                key.clone(),
                owner.clone(),
                keep_until,
            )
            .with_boundary(boundary.clone());
            // The claim outlives the reservation by the longest a charged request's
            // answer may take to be kept after its head (the body read for keeping, or
            // the rest of an upload the backend answered early): one that ran out under
            // a running request would let a retry run, and be charged, again.
            let after_head =
                exchange.snapshot.upstream.response_timeout + crate::reservation::DIGEST_WAIT;
            let claim = Claim {
                client: client.clone(),
                key: key.clone(),
                fingerprint,
                now_ms: now,
                hold_until: hold_until.saturating_add(duration_ms(after_head)),
                owner,
            };
            let started = std::time::Instant::now();
            let claimed = ledger.claim(worker, claim).await;
            metrics::observe(&credits.counters.latency, started.elapsed());
            let claimed = match claimed {
                Ok(claimed) => claimed,
                Err(e) => {
                    // A timeout may come after the claim was made (Redis ran the script):
                    // the refund releases it, and only if it is ours.
                    exchange.key_claim = Some(guard);
                    return Err(credits.unavailable(&e));
                }
            };
            if !matches!(claimed, Claimed::New) {
                guard.disarm();
            }
            let refused = match claimed {
                Claimed::InFlight => Some(CreditError::KeyInFlight),
                Claimed::Mismatch => Some(CreditError::KeyMismatch),
                _ => None,
            };
            if let Some(refused) = refused {
                return Err(key_refused(exchange, &*ledger, &client, refused).await);
            }
            match claimed {
                Claimed::New | Claimed::InFlight | Claimed::Mismatch => {}
                Claimed::Answered(answer) => {
                    if let Some(first) = &answer.request_digest {
                        // The first body streamed through: this one must hash the same.
                        let (_, body) = request.into_parts();
                        let digest = match digest_body(body, boundary.as_deref(), route, reading)
                            .await
                        {
                            Ok(digest) => digest,
                            Err(e) => return Err(key_refused(exchange, &*ledger, &client, e).await),
                        };
                        if digest != *first {
                            let mismatch = CreditError::KeyMismatch;
                            return Err(key_refused(exchange, &*ledger, &client, mismatch).await);
                        }
                    }
                    credits.counters.replays.inc();
                    let balance = ledger
                        .account(worker, &client)
                        .await
                        .map_err(|e| credits.unavailable(&e))?
                        .available;
                    exchange.metering = Metering::Replayed { balance };
                    return Ok(Reserve::Replay(replay(&answer, &exchange.request_id)?));
                }
            }
            (request, Some(guard))
        }
    };

    let id = crate::request_id::generate();
    let reservation = Reservation {
        id: id.clone(),
        client: client.clone(),
        amount: cost,
        deadline: hold_until,
        route: Some(route.name.clone()),
        request_id: Some(exchange.request_id.clone()),
        idempotency_key: key,
    };
    // Armed before the ledger is asked: a client that hangs up while the reservation is
    // being made (it may already be held, even durable) drops this future, and the guard
    // voids whatever was held instead of leaving it to the reservation's deadline.
    let mut hold = Hold::new(
        std::sync::Arc::clone(&ledger),
        std::sync::Arc::clone(&credits.counters),
        worker,
        client,
        id,
        cost,
    );
    hold.settle_within(settings.reservation_timeout);
    let started = std::time::Instant::now();
    let reserved = ledger.reserve(worker, reservation, now).await;
    metrics::observe(&credits.counters.latency, started.elapsed());
    let reserved = match reserved {
        Ok(r) => r,
        Err(e) => {
            // The reservation may be held even so (a timeout after Redis ran the
            // script): the refund voids it (`request_refused`; an id never held is
            // `Gone`, nothing counted) and frees the key, or the deadline does.
            exchange.hold = Some(hold);
            exchange.key_claim = claim;
            return Err(credits.unavailable(&e));
        }
    };
    match reserved {
        Reserved::Held { balance } => {
            exchange.metering = Metering::Held { cost, balance };
            hold.held(balance);
            exchange.hold = Some(hold);
            exchange.key_claim = claim;
            Ok(Reserve::Forward(request))
        }
        Reserved::Short { balance } => {
            hold.disarm();
            credits.counters.insufficient.inc();
            if let Some(claim) = claim {
                let _ = claim.release().await;
            }
            exchange.metering = Metering::Short { balance };
            Err(CreditError::Insufficient {
                required: cost,
                balance,
            }
            .into())
        }
    }
}

/// What `method` on `route` costs now: 0 when the route is free or metering is off.
fn cost(exchange: &Exchange<'_>, route: &Route, method: &http::Method) -> u64 {
    match (&route.cost, &exchange.snapshot.credits) {
        (Some(cost), Some(settings)) if settings.enabled => cost.for_method(method),
        _ => 0,
    }
}

/// A metered request the rewrite stage would refuse (`refused`: the route's backend
/// credential has no entry for the caller), refused before anything is held or claimed.
/// A caller short of the cost hears 402 first, as on any metered route (the credential
/// matters only to a caller who could pay); one who could pay gets `refused`, with its
/// balance. When the ledger cannot say, `refused` stands: it is true either way.
pub async fn refuse_unreserved(
    exchange: &mut Exchange<'_>,
    route: &Route,
    method: &http::Method,
    credits: &Credits,
    refused: GatewayError,
) -> GatewayError {
    let cost = cost(exchange, route, method);
    let (Some(identity), Ok(ledger)) = (exchange.caller.identity.as_ref(), credits.ledger()) else {
        return refused;
    };
    if cost == 0 {
        return refused;
    }
    match ledger.account(exchange.worker, &identity.client_id).await {
        Ok(account) if account.available < cost => {
            credits.counters.insufficient.inc();
            exchange.metering = Metering::Short {
                balance: account.available,
            };
            CreditError::Insufficient {
                required: cost,
                balance: account.available,
            }
            .into()
        }
        Ok(account) => {
            exchange.metering = Metering::Refused {
                balance: account.available,
            };
            refused
        }
        Err(_) => refused,
    }
}

/// A request its idempotency key refuses (400, 409, 422): like every metered answer, it says
/// what is left (when the ledger can say at once), and that it cost nothing.
async fn key_refused(
    exchange: &mut Exchange<'_>,
    ledger: &dyn tollgate_state::ledger::Ledger,
    client: &str,
    refused: impl Into<GatewayError>,
) -> GatewayError {
    if let Ok(account) = ledger.account(exchange.worker, client).await {
        exchange.metering = Metering::Refused {
            balance: account.available,
        };
    }
    refused.into()
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The request's `Idempotency-Key`, one header only: an sf-string (RFC 8941: `"..."`
/// of printable ASCII, `\"` and `\\` escaped, parameters after it allowed and not
/// part of the key), or, as clients of Stripe-style APIs send it, a bare run of
/// visible ASCII; 1 to 255 characters either way.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, CreditError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CreditError::KeyInvalid);
    }
    let text = value.to_str().map_err(|_| CreditError::KeyInvalid)?.trim();
    let key = match text.strip_prefix('"') {
        Some(quoted) => {
            let (key, rest) = sf_string(quoted).ok_or(CreditError::KeyInvalid)?;
            if !sf_parameters(rest) {
                return Err(CreditError::KeyInvalid);
            }
            key
        }
        None => {
            // A bare key (as clients send UUIDs) holds no `,` or `;`: two header lines
            // joined by a proxy read `a,b`, and a structured-field reader takes `k;x=1`
            // as `k` with a parameter. Either way another reader sees another key.
            let visible = text
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b',' | b';'));
            if !visible {
                return Err(CreditError::KeyInvalid);
            }
            text.to_owned()
        }
    };
    if key.is_empty() || key.len() > 255 {
        return Err(CreditError::KeyInvalid);
    }
    Ok(Some(key))
}

/// An sf-string's content after its opening quote, unescaped, and what follows its
/// closing quote; `None` if it is not one (unterminated, a bad escape, a character
/// outside printable ASCII).
fn sf_string(quoted: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = quoted.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((out, &quoted[at + 1..])),
            '\\' => match chars.next() {
                Some((_, escaped @ ('"' | '\\'))) => out.push(escaped),
                _ => return None,
            },
            ' '..='~' => out.push(c),
            _ => return None,
        }
    }
    None
}

/// Whether `rest` is an sf-item's parameters (`;key=value`, `;key`), or nothing.
fn sf_parameters(mut rest: &str) -> bool {
    while let Some(after) = rest.strip_prefix(';') {
        let after = after.trim_start_matches(' ');
        let key_end = after
            .find(|c: char| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.' | '*'))
            .unwrap_or(after.len());
        let key = &after[..key_end];
        if !key.starts_with(|c: char| c.is_ascii_lowercase() || c == '*') {
            return false;
        }
        rest = &after[key_end..];
        if let Some(value) = rest.strip_prefix('=') {
            rest = match value.strip_prefix('"') {
                Some(quoted) => match sf_string(quoted) {
                    Some((_, after)) => after,
                    None => return false,
                },
                None => {
                    // A token, number, boolean or byte sequence: read as one run.
                    let end = value
                        .find(|c: char| !c.is_ascii_graphic() || matches!(c, ';' | ',' | '"'))
                        .unwrap_or(value.len());
                    if end == 0 {
                        return false;
                    }
                    &value[end..]
                }
            };
        }
    }
    rest.is_empty()
}

/// What makes two requests "the same" for an idempotency key; JSON and form bodies are
/// read (they are read for the rewrite anyway) and hashed. A multipart body's boundary
/// is returned: a browser's retry of the same form data picks a new one, so neither it
/// nor the length it changes is part of the request's identity (see [`BodyHasher`]).
async fn fingerprint(
    route: &Route,
    request: Request<RequestBody>,
    path: &str,
    reading: &Reading,
) -> Result<(Request<RequestBody>, String, Option<String>), GatewayError> {
    let (parts, body) = request.into_parts();
    let mut hash = Sha256::new();
    hash.update(parts.method.as_str());
    hash.update(b"\n");
    hash.update(route.name.as_bytes());
    hash.update(b"\n");
    // The normalized path: `/campaigns/%61` is the request `/campaigns/a` is, as the
    // route and the backend see it.
    hash.update(path.as_bytes());
    // An empty query (`/a?`) is none: the backend gets the same target either way.
    if let Some(query) = parts.uri.query().filter(|q| !q.is_empty()) {
        hash.update(b"?");
        hash.update(query.as_bytes());
    }
    hash.update(b"\n");
    let empty = http_body::Body::is_end_stream(&body);
    let content_type = parts.headers.get(CONTENT_TYPE).map(|v| v.as_bytes());
    let class = classify::classify(&parts.headers, !empty, route)?;
    let boundary = match &class {
        BodyClass::Multipart { boundary } => Some(boundary.clone()),
        _ => None,
    };
    let read_whole =
        matches!(class, BodyClass::Json | BodyClass::Form) && route.client_id.is_some();
    // Media types and parameter names are case-insensitive (RFC 9110 §8.3.1), and the
    // one parameter JSON and forms may carry is a UTF-8 charset, whose value is too:
    // `Application/JSON` is `application/json`. An opaque type's parameter values
    // keep their spelling.
    let textual = matches!(class, BodyClass::Json | BodyClass::Form);
    let content_type = content_type.map(|value| {
        let end = match textual {
            true => value.len(),
            false => value.iter().position(|b| *b == b';').unwrap_or(value.len()),
        };
        let mut spelled = value.to_vec();
        spelled[..end].make_ascii_lowercase();
        spelled
    });
    let content_type = content_type.as_deref();
    // The framing is not the request: a body read whole is hashed here, and one that
    // streams through is hashed as it passes and compared with a retry's
    // (`request_digest`), so the same bytes sent with `Content-Length` or chunked are
    // the same request, and no body is no body either way.
    let head = match boundary {
        // `classify` allows a UTF-8 charset beside the boundary, nothing else.
        Some(_) => &b"multipart/form-data"[..],
        None => content_type.unwrap_or(b""),
    };
    // Then an empty line, where the declared length once was: the fingerprints of keys
    // already claimed with a body read whole (JSON or a form the route injects into) or
    // a multipart one stay what they were; one of another streamed body, retried across
    // the upgrade, is refused once as another request (422).
    for value in [head, b""] {
        hash.update(value);
        hash.update(b"\n");
    }
    let body = match (read_whole, &route.client_id) {
        (true, Some(policy)) => {
            let held =
                crate::body::hold(&parts, body, policy.max_body_bytes as u64, reading).await?;
            hash.update(held.bytes());
            Either::Right(held)
        }
        _ => body,
    };
    let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((Request::from_parts(parts, body), digest, boundary))
}

/// The SHA-256 (hex) of a retry's whole body, read and let go as it arrives (bounded
/// by the route's upload limit and the body deadline, as a forwarded one would be).
async fn digest_body(
    mut body: RequestBody,
    boundary: Option<&str>,
    route: &Route,
    reading: &Reading,
) -> Result<String, GatewayError> {
    let limits = reading.limits;
    let started = tokio::time::Instant::now();
    let (mut hash, mut seen) = (BodyHasher::new(boundary), 0u64);
    loop {
        let deadline = started + limits.allowance(seen);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(RequestError::BodyTooSlow.into()),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(RequestError::BodyInvalid.into()),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if let Some(limit) = route.max_upload_bytes.filter(|l| seen > *l) {
                return Err(RequestError::PayloadTooLarge { limit }.into());
            }
            hash.update(&data);
        }
    }
    Ok(hash.finish())
}

/// A kept answer, answered again. A problem document (the gateway's, kept when a
/// backend's answer broke off) names this request, as every problem document does.
fn replay(answer: &StoredAnswer, request_id: &str) -> Result<Answer, GatewayError> {
    let mut body = match &answer.body {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| Bug::Corrupt)?,
        None => Vec::new(),
    };
    let problem = answer.headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("content-type") && value == crate::problem::CONTENT_TYPE
    });
    if problem {
        if let Ok(serde_json::Value::Object(mut members)) = serde_json::from_slice(&body) {
            members.insert("requestId".into(), request_id.into());
            body = serde_json::Value::Object(members).to_string().into_bytes();
        }
    }
    let mut response = Response::new(crate::body::full(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(answer.status).map_err(|_| Bug::Corrupt)?;
    for (name, value) in &answer.headers {
        // An answer kept without its body (over MAX_KEPT_BODY, or of no declared
        // length) says no type it does not carry: an empty `application/json` would not
        // parse.
        if answer.body.is_none() && name.eq_ignore_ascii_case("content-type") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    Ok(response)
}

/// Settles the reservation from the backend's response head: post, or void when the
/// status refunds.
pub async fn settle(
    exchange: &mut Exchange<'_>,
    route: &Route,
    status: StatusCode,
    headers: &HeaderMap,
) {
    let Some(hold) = exchange.hold.take() else {
        return;
    };
    let cost = route.cost.as_deref();
    let refunds = cost.is_none_or(|c| c.refunds(status.as_u16()));
    if refunds {
        match hold.void(VoidReason::UpstreamStatus).await {
            Ok(Settled::Done { balance, .. }) => exchange.metering = Metering::Refunded { balance },
            Ok(Settled::Gone) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot refund now; the reservation expires instead")
            }
        }
        if let Some(claim) = exchange.key_claim.take() {
            let _ = claim.release().await;
        }
        return;
    }
    let reserved = hold.cost;
    let amount = settled_amount(cost, reserved, headers);
    // The reservation is durable already; the post is written in the background, so
    // the answer does not wait for a second commit. Should this gateway die before the
    // post is committed, the reservation expires and is refunded: a crash can cost the
    // operator a charge, never the client a double one.
    let charged = amount.min(reserved);
    let balance = hold.balance.saturating_add(reserved - charged);
    let tracked = hold.track_detached();
    let mut posted = hold.post_detached(amount);
    // The embedded ledger decides a post at once (its log write is the writer's), so
    // one poll finishes it; a store that must wait gets a task of its own.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match posted.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(outcome) => report_post(outcome),
        std::task::Poll::Pending => {
            tokio::spawn(async move {
                report_post(posted.await);
                drop(tracked);
            });
        }
    }
    exchange.metering = Metering::Charged {
        cost: charged,
        balance,
    };
    if let Some(claim) = &mut exchange.key_claim {
        claim.charged(StoredAnswer {
            status: status.as_u16(),
            headers: kept_headers(headers),
            body: None,
            cost: charged,
            request_digest: None,
        });
    }
}

fn report_post(outcome: Result<Settled, tollgate_state::ledger::LedgerError>) {
    match outcome {
        Ok(Settled::Done { .. }) => {}
        // Expired under a request that ran past the reservation timeout: refunded.
        Ok(Settled::Gone) => {
            tracing::warn!("a reservation expired before its request was answered: not charged")
        }
        // Not retried: the reservation is left to its deadline, which refunds it.
        Err(e) => {
            tracing::warn!(error = %e, "cannot post a reservation; it expires (refunded) instead")
        }
    }
}

/// What the backend says the request cost (`settle_header`), else what was reserved.
fn settled_amount(cost: Option<&Cost>, reserved: u64, headers: &HeaderMap) -> u64 {
    let Some(name) = cost.and_then(|c| c.settle_header.as_ref()) else {
        return reserved;
    };
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => reserved,
        (Some(only), None) => match only
            .to_str()
            .ok()
            .map(str::trim)
            .and_then(crate::headers::whole_number)
        {
            Some(amount) => amount,
            None => {
                tracing::warn!(header = %name, "the backend's settle header is not a whole number: charging what was reserved");
                reserved
            }
        },
        // Two figures (a framework's default and the real one) mean nothing certain,
        // as `3, 7` on one line would not: the reservation is charged.
        (Some(_), Some(_)) => {
            tracing::warn!(header = %name, "the backend sent its settle header more than once: charging what was reserved");
            reserved
        }
    }
}

/// A reservation whose exchange with the backend runs on its own task
/// (`[credits] on_client_abort = "settle"`): handed back to the request when it is
/// still waiting, else settled by the backend's answer alone.
pub struct Orphan {
    hold: Hold,
    claim: Option<KeyClaim>,
    cost: Option<Arc<Cost>>,
    /// What cleaning and keeping an answer nobody waits for needs.
    upstream: tollgate_policy::snapshot::Upstream,
    request_id: String,
    /// Counted while the exchange may settle on its own: a graceful stop waits for it.
    _tracked: crate::credits::DetachedGuard,
}

/// Takes the request's reservation for a backend exchange that must outlive the
/// client, when the configuration asks for it.
pub fn outlive_client(exchange: &mut Exchange<'_>, route: &Route) -> Option<Orphan> {
    let settings = exchange.snapshot.credits.as_ref()?;
    if settings.on_client_abort != ClientAbort::Settle {
        return None;
    }
    let hold = exchange.hold.take()?;
    Some(Orphan {
        _tracked: hold.track_detached(),
        hold,
        claim: exchange.key_claim.take(),
        cost: route.cost.clone(),
        upstream: exchange.snapshot.upstream.clone(),
        request_id: exchange.request_id.clone(),
    })
}

impl Orphan {
    /// The request is still there: it settles as usual.
    pub fn adopt(self, exchange: &mut Exchange<'_>) {
        exchange.hold = Some(self.hold);
        exchange.key_claim = self.claim;
    }

    /// Nobody waits for the answer: the backend's answer (or its failure) settles the
    /// reservation; a failure while the client's upload was still arriving refunds it
    /// as a client abort. A charged request's idempotency key keeps the answer (its body
    /// read as [`remember`] would have), so the client's retry is not charged again and
    /// is shown what the backend said.
    pub async fn settle_alone(
        self,
        answer: Option<Response<hyper::body::Incoming>>,
        upload_cut_off: bool,
    ) {
        let Orphan {
            hold,
            claim,
            cost,
            upstream,
            request_id,
            _tracked,
        } = self;
        let outcome = match answer {
            Some(answer)
                if !cost
                    .as_deref()
                    .is_none_or(|c| c.refunds(answer.status().as_u16())) =>
            {
                let amount = settled_amount(cost.as_deref(), hold.cost, answer.headers());
                let posted = hold.post(amount).await;
                if let (Ok(Settled::Done { charged, .. }), Some(claim)) = (&posted, claim) {
                    let answer = crate::respond::from_upstream(answer, &upstream);
                    let pending = StoredAnswer {
                        status: answer.status().as_u16(),
                        headers: Vec::new(),
                        body: None,
                        cost: *charged,
                        request_digest: None,
                    };
                    let (kept, _) =
                        kept(pending, answer, upstream.response_timeout, &request_id).await;
                    if let Err(e) = claim.keep(kept).await {
                        tracing::warn!(error = %e, "cannot keep an idempotent answer");
                    }
                }
                posted.map(|_| ())
            }
            Some(_) => hold.void(VoidReason::UpstreamStatus).await.map(|_| ()),
            None if upload_cut_off => hold.void(VoidReason::ClientAbort).await.map(|_| ()),
            None => hold.void(VoidReason::UpstreamError).await.map(|_| ()),
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "cannot settle a request whose client left; its reservation expires instead");
        }
    }
}

fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    KEPT_HEADERS
        .iter()
        .flat_map(|name| {
            headers
                .get_all(*name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| ((*name).to_owned(), v.to_owned()))
        })
        .collect()
}

/// Refunds a request that failed after reserving; frees its idempotency key.
pub async fn refund(exchange: &mut Exchange<'_>, error: &GatewayError) {
    if let Some(hold) = exchange.hold.take() {
        let reason = match error {
            // The client's body broke off on its side: it went away mid-upload.
            GatewayError::Request(RequestError::BodyInvalid) => VoidReason::ClientAbort,
            _ => match error.family() {
                crate::errors::Family::Upstream { .. } => VoidReason::UpstreamError,
                _ => VoidReason::RequestRefused,
            },
        };
        match hold.void(reason).await {
            Ok(Settled::Done { balance, .. }) => exchange.metering = Metering::Refunded { balance },
            Ok(Settled::Gone) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot refund now; the reservation expires instead")
            }
        }
    }
    if let Some(claim) = exchange.key_claim.take() {
        let _ = claim.release().await;
    }
}

/// Keeps a charged request's answer for its retries (see [`kept`]).
pub async fn remember(exchange: &mut Exchange<'_>, answer: Answer) -> Answer {
    let Some(claim) = exchange.key_claim.take() else {
        return answer;
    };
    let Some(pending) = claim.pending_answer().cloned() else {
        return answer;
    };
    let timeout = exchange.snapshot.upstream.response_timeout;
    let request_id = exchange.request_id.clone();
    // On a task of its own: a client that leaves while the body is read (and its
    // request's future is dropped) must not leave the answer kept without its body.
    // Kept before it is sent on, so a retry that follows the answer finds it.
    let (send, sent) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (kept, answer) = kept(pending, answer, timeout, &request_id).await;
        if let Err(e) = claim.keep(kept).await {
            tracing::warn!(error = %e, "cannot keep an idempotent answer");
        }
        let _ = send.send(answer);
    });
    match sent.await {
        Ok(answer) => answer,
        // The task ended without an answer (a panic): the body is gone.
        Err(_) => crate::problem::render(&UpstreamError::Failed, &exchange.request_id),
    }
}

/// What a retry of a charged request is answered, and the answer to send on now. Bodies
/// up to [`MAX_KEPT_BODY`] with a declared length are read and kept whole; others are
/// kept as the status and headers alone. The headers are the cleaned answer's (a
/// backend's absolute `Location` made relative), as the first client saw them.
async fn kept(
    pending: StoredAnswer,
    answer: Answer,
    timeout: std::time::Duration,
    request_id: &str,
) -> (StoredAnswer, Answer) {
    let pending = StoredAnswer {
        headers: kept_headers(answer.headers()),
        ..pending
    };
    let length = answer
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::headers::whole_number);
    if length.is_none_or(|n| n > MAX_KEPT_BODY) {
        return (pending, answer);
    }
    let (parts, body) = answer.into_parts();
    let bytes = match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        // The body broke off (or never ended): nothing whole can be shown, and an empty
        // 200 would pass for a success. The client is told (502 UPSTREAM_ERROR), and a
        // retry with the key gets that same answer; the charge stands, as it does for a
        // request without a key whose answer breaks off after a success status.
        _ => {
            drop(parts);
            let problem = crate::problem::render(&UpstreamError::Failed, request_id);
            let (problem_parts, problem_body) = problem.into_parts();
            let problem_bytes = problem_body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let kept = StoredAnswer {
                status: problem_parts.status.as_u16(),
                headers: kept_headers(&problem_parts.headers),
                body: Some(base64::engine::general_purpose::STANDARD.encode(&problem_bytes)),
                ..pending
            };
            let answer = Response::from_parts(problem_parts, crate::body::full(problem_bytes));
            return (kept, answer);
        }
    };
    let kept = StoredAnswer {
        body: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
        ..pending
    };
    (kept, Response::from_parts(parts, crate::body::full(bytes)))
}

/// Removes what a backend cannot say: the credit headers and `Idempotent-Replayed` are
/// the gateway's word about the caller's money.
pub fn strip_upstream_claims(headers: &mut http::HeaderMap) {
    for name in [&TOKEN_COST, &TOKEN_BALANCE, &REPLAYED_NAME] {
        headers.remove(name);
    }
}

/// The credit headers a response carries, from what metering did.
pub fn decorate<B>(response: &mut Response<B>, metering: &Metering) {
    let (cost, balance) = match *metering {
        Metering::Free => return,
        Metering::Held { cost, balance } | Metering::Charged { cost, balance } => (cost, balance),
        Metering::Refunded { balance }
        | Metering::Short { balance }
        | Metering::Replayed { balance }
        | Metering::Refused { balance } => (0, balance),
    };
    let headers = response.headers_mut();
    headers.insert(TOKEN_COST.clone(), HeaderValue::from(cost));
    headers.insert(TOKEN_BALANCE.clone(), HeaderValue::from(balance));
    // On a metered route the gateway says what is a replay: a backend's own header
    // beside a fresh charge would read as a free replay.
    if !matches!(metering, Metering::Replayed { .. }) {
        headers.remove(&REPLAYED_NAME);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{exchange_for, snapshot_with_route};

    #[test]
    fn a_settle_header_is_believed_only_when_it_says_one_whole_number() {
        let cost = Cost {
            amounts: vec![(None, 10)],
            settle_header: Some(http::header::HeaderName::from_static("x-tokens-used")),
            refund: Vec::new(),
        };
        let charged = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append("x-tokens-used", HeaderValue::from_str(v).unwrap());
            }
            settled_amount(Some(&cost), 10, &headers)
        };
        assert_eq!(charged(&["3"]), 3);
        assert_eq!(charged(&[" 4 "]), 4);
        assert_eq!(charged(&[]), 10);
        for doubtful in [
            &["0", "10"][..],
            &["3", "7"],
            &["3", "abc"],
            &["3,7"],
            &["-1"],
            &["+2"],
            &["2.0"],
        ] {
            assert_eq!(charged(doubtful), 10, "{doubtful:?}");
        }
    }

    #[test]
    fn a_route_without_a_cost_says_nothing() {
        let snapshot = snapshot_with_route();
        let exchange = exchange_for(&snapshot);
        assert_eq!(exchange.metering, Metering::Free);
        let mut response = Response::new(());
        decorate(&mut response, &exchange.metering);
        assert!(response.headers().is_empty());
    }

    #[test]
    fn credit_headers_say_what_this_request_cost() {
        let mut response = Response::new(());
        // The backend's own claims are replaced: a charged answer is no replay.
        for (name, value) in [
            ("x-token-cost", "0"),
            ("x-token-balance", "999"),
            (REPLAYED, "true"),
        ] {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        decorate(
            &mut response,
            &Metering::Charged {
                cost: 3,
                balance: 7,
            },
        );
        assert_eq!(response.headers()["x-token-cost"], "3");
        assert_eq!(response.headers()["x-token-balance"], "7");
        assert!(!response.headers().contains_key(REPLAYED));
        decorate(&mut response, &Metering::Refunded { balance: 10 });
        assert_eq!(response.headers()["x-token-cost"], "0");
        assert_eq!(response.headers()["x-token-balance"], "10");
    }

    #[test]
    fn idempotency_keys_are_strings_or_tokens() {
        let key = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(IDEMPOTENCY_KEY, HeaderValue::from_str(v).unwrap());
            idempotency_key(&h)
        };
        assert_eq!(
            key("\"8e03978e-40d5\"").unwrap().as_deref(),
            Some("8e03978e-40d5")
        );
        assert_eq!(key("abc123").unwrap().as_deref(), Some("abc123"));
        // Any sf-string: spaces and escapes inside, parameters after (not the key).
        for (sent, read) in [
            (r#""a b""#, "a b"),
            (r#""a\"b""#, "a\"b"),
            (r#""a\\b""#, "a\\b"),
            (r#""k1";x=1"#, "k1"),
            (r#""k1"; a="b;c";*d;e=?1;f=:YWJj:"#, "k1"),
        ] {
            assert_eq!(key(sent).unwrap().as_deref(), Some(read), "{sent}");
        }
        for bad in [
            "\"\"",
            "\"open",
            "a b",
            &"x".repeat(256),
            &format!("\"{}\"", "x".repeat(256)),
            r#""a\qb""#,
            r#""k1"x"#,
            r#""k1";X=1"#,
            r#""k1";=1"#,
            r#""k1";x="#,
            r#""k1";x="open"#,
            r#""k1","k2""#,
            "\"k\tb\"",
            // Two lines joined by a proxy; a parameter on a bare key.
            "a,b",
            "a, b",
            "k1;x=1",
        ] {
            assert!(key(bad).is_err(), "{bad}");
        }
        let mut two = HeaderMap::new();
        two.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        two.append(IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert!(idempotency_key(&two).is_err());
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
    }
}
