//! The request pipeline, top to bottom. Each stage is one module with one entry point;
//! this file is the whole order, and the only place that knows it.
//!
//! 1. **accept** — size limits and framing checks; the request id.
//! 2. **normalize** — the path, once; what routing sees is what is forwarded.
//! 3. **route** — the first matching route of the snapshot, or the default (deny).
//! 4. cors — later: preflights answered here.
//! 5. **authenticate** — by the route's rule: JWT, API key, either, a provider
//!    callback's signature, or none.
//! 6. **limit** — the route's rate-limit policies, counted here or in Redis; the
//!    decision closest to exhaustion is reported in headers on every response after it.
//! 7. meter — later: token credits slot in here, taking the request head, the route
//!    and the caller, and returning an error or a reservation.
//! 8. **rewrite** — strip hop-by-hop headers and the caller's credentials, then set ours:
//!    the backend credential, the caller's client id (query, header, JSON, form; spoofs
//!    refused), forwarding headers and the target. JSON and form bodies are rewritten;
//!    every other body streams untouched under the route's upload limit.
//! 9. **forward** — stream to the upstream; wait (bounded) for its response head.
//! 10. **respond** — clean the response; every error becomes problem+json in
//!     [`crate::problem::respond`]; the access log is written when the body is done.
//!
//! A request reads the policy snapshot once, at the top, and uses only that one.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::access_log::AccessLog;
use crate::authenticate::AuthMethod;
use crate::body::{CutOff, Outbound, Reading, ResponseBody};
use crate::rewrite::Caller;
use crate::server::{Active, Shared};
use crate::{
    accept, authenticate, forwarded, limit, normalize, problem, request_id, respond, rewrite, route,
};
use tollgate_policy::snapshot::RouteAuth;

/// Serves one request from a client connected from `peer`, on worker `worker`.
pub async fn handle(
    request: Request<Incoming>,
    peer: SocketAddr,
    worker: usize,
    shared: &Shared,
) -> Response<ResponseBody> {
    let active = shared.active.load_full();
    let snapshot = &active.snapshot;
    let request_id = request_id::from_headers(request.headers());
    let client = forwarded::client_addr(
        peer.ip(),
        request.headers(),
        &snapshot.server.trusted_proxies,
    );
    let mut log = AccessLog::start(
        Arc::clone(&shared.access_sink),
        Arc::clone(snapshot),
        Arc::clone(&shared.metrics),
        &request_id,
        request.method(),
        request.uri().path(),
        request.uri().query(),
        client,
    );
    let caller = Caller {
        peer: peer.ip(),
        client,
        request_id: &request_id,
    };
    let mut verdict = None;
    let mut response = match run(
        request,
        &caller,
        &active,
        worker,
        shared,
        &mut log,
        &mut verdict,
    )
    .await
    {
        Ok(response) => response,
        Err(error) => {
            if let problem::GatewayError::RateLimited(refused) = &error {
                verdict = Some((**refused).clone());
            }
            shared.metrics.count_error(&error);
            let mut response = problem::respond(&error, &request_id);
            if let (problem::GatewayError::ApiKeySunset, Some(keys)) =
                (&error, &snapshot.auth.api_keys)
            {
                respond::api_key_notice(&mut response, keys);
            }
            response
        }
    };
    if let Some(verdict) = &verdict {
        respond::rate_limit_headers(&mut response, verdict);
    }
    respond::finish(response, &request_id, log)
}

async fn run(
    request: Request<Incoming>,
    caller: &Caller<'_>,
    active: &Active,
    worker: usize,
    shared: &Shared,
    log: &mut AccessLog,
    verdict: &mut Option<limit::Verdict>,
) -> Result<Response<Either<Incoming, Full<Bytes>>>, problem::GatewayError> {
    let snapshot = &active.snapshot;

    // 1. accept
    accept::check(&request, &snapshot.server)?;
    if accept::is_server_options(&request) {
        return Ok(respond::server_options());
    }

    // 2. normalize
    let path = normalize::path(request.uri())?;
    log.set_path(&path);

    // 3. route
    let selection = route::select(snapshot, request.method(), &path);
    if let Some(route) = selection.route {
        log.set_route(&route.name);
    }
    selection.outcome?;
    let route = selection.route;

    let reading = Reading {
        limits: snapshot.server.bodies,
        budget: std::sync::Arc::clone(&shared.budget),
    };
    let now = unix_now();

    // 5. authenticate
    let rule = route.map_or(&RouteAuth::None, |r| &r.auth);
    let context = authenticate::Context {
        jwt: snapshot.auth.jwt.as_ref(),
        api_keys: snapshot.auth.api_keys.as_ref(),
        tokens: &active.tokens,
        jwks: &active.jwks,
        client: caller.client,
        now,
        reading: &reading,
        replay: &active.replay,
        worker,
    };
    let (request, auth) = authenticate::authenticate(request, rule, &context).await?;
    log.set_auth(
        auth.method,
        auth.identity.as_ref().map(|i| i.client_id.as_str()),
    );
    shared.metrics.count_auth(
        auth.method,
        auth.identity.as_ref().and_then(|i| i.key_id.as_deref()),
    );

    // 6. limit
    let request = match route {
        Some(route) => {
            let subject = limit::Subject {
                auth: &auth,
                client: caller.client,
            };
            let (request, decided) =
                limit::check(request, route, &subject, &active.limiters, worker, &reading).await?;
            *verdict = decided;
            request
        }
        None => request,
    };

    // 8. rewrite
    let (mut head, body) = request.into_parts();
    rewrite::upstream_head(&mut head, &path, caller, route, &auth, snapshot, now)?;
    let (body, scanner) = rewrite::upstream_body(&mut head, body, route, &auth, &reading).await?;
    let body_stats = log.bytes_in();
    let limit = route.and_then(|r| r.max_upload_bytes);
    let outbound = Outbound::new(
        body,
        limit,
        snapshot.server.bodies,
        scanner,
        Arc::clone(&body_stats),
    );
    let upstream_request = Request::from_parts(head, outbound);

    // 9. forward
    let upstream = active
        .upstreams
        .get(worker)
        .ok_or(problem::GatewayError::Internal)?;
    let response = upstream
        .send(
            upstream_request,
            snapshot.upstream.response_timeout,
            &body_stats,
        )
        .await
        // A body cut off on the client's side is the client's error, whatever the
        // upstream connection then reported.
        .map_err(|e| match body_stats.cut_off() {
            CutOff::None => e,
            CutOff::OverLimit => problem::GatewayError::PayloadTooLarge {
                limit: limit.unwrap_or_default() as usize,
            },
            CutOff::TooSlow => problem::GatewayError::RequestTimeout,
            CutOff::Failed => problem::GatewayError::RequestBodyInvalid,
            CutOff::ClientIdMismatch => problem::GatewayError::ClientIdMismatch,
            CutOff::MultipartInvalid => problem::GatewayError::MultipartInvalid,
        })?;

    // 10. respond
    let mut response = respond::from_upstream(response);
    if let (AuthMethod::ApiKey, Some(keys)) = (auth.method, &snapshot.auth.api_keys) {
        respond::api_key_notice(&mut response, keys);
    }
    Ok(response)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
