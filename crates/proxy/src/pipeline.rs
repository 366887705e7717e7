//! The request pipeline, top to bottom. Each stage is one module with one entry point;
//! this file is the whole order, and the only place that knows it.
//!
//! 1. **accept** — size limits and framing checks; the request id.
//! 2. **normalize** — the path, once; what routing sees is what is forwarded.
//! 3. **route** — the first matching route of the snapshot, or the default (deny).
//! 4. cors, 5. authenticate, 6. limit, 7. meter — later stages slot in here, each
//!    taking the request head and the route and returning an error or a decision.
//! 8. **rewrite** — strip hop-by-hop and spoofable headers, then set ours and the target.
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
use crate::body::{Observed, ResponseBody};
use crate::rewrite::Caller;
use crate::server::{Active, Shared};
use crate::{accept, forwarded, normalize, problem, request_id, respond, rewrite, route};

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
    let response = match run(request, &caller, &active, worker, &mut log).await {
        Ok(response) => response,
        Err(error) => {
            shared.metrics.count_error(&error);
            problem::respond(&error, &request_id)
        }
    };
    respond::finish(response, &request_id, log)
}

async fn run(
    request: Request<Incoming>,
    caller: &Caller<'_>,
    active: &Active,
    worker: usize,
    log: &mut AccessLog,
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

    // 8. rewrite
    let (mut head, body) = request.into_parts();
    rewrite::upstream_head(
        &mut head,
        &path,
        caller,
        &snapshot.server,
        &snapshot.upstream,
    )?;
    let body_stats = log.bytes_in();
    let upstream_request = Request::from_parts(head, Observed::new(body, Arc::clone(&body_stats)));

    // 9. forward
    let upstream = active
        .upstreams
        .get(worker)
        .ok_or(problem::GatewayError::UpstreamUnavailable)?;
    let response = upstream
        .send(upstream_request, snapshot.upstream.response_timeout)
        .await
        .map_err(|e| {
            if body_stats.failed() {
                problem::GatewayError::RequestBodyInvalid
            } else {
                e
            }
        })?;

    // 10. respond
    Ok(respond::from_upstream(response))
}
