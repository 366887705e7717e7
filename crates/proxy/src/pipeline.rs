//! The request pipeline, top to bottom. Each stage is one module with one entry point
//! that takes the request's [`Exchange`] by `&mut`; this file is the whole order, and the
//! only place that knows it.
//!
//! 1. **accept** — size limits and framing checks (following the connection's scheme
//!    and version).
//! 2. **normalize** — the path, once; what routing sees is what is forwarded.
//! 3. **route** — the first matching route of the snapshot, the fallback route
//!    (`unmatched = "forward"`), or a refusal — not final until CORS has looked.
//! 4. **cors** — preflights answered here, before the method check; the decision is
//!    kept for the response headers.
//! 5. **authenticate** — by the route's rule: JWT, API key, either, a provider
//!    callback's signature, or none; the caller goes into the exchange.
//! 6. **limit** — the route's rate-limit policies, counted here or in Redis; the
//!    decision closest to exhaustion goes into the exchange.
//! 7. **meter** — token credits reserved before anything reaches the backend (402
//!    when short; a retry with a kept `Idempotency-Key` is answered here). Settled
//!    from the response head in stage 10, refunded when the request fails.
//!    Routes the gateway serves itself (`action = "serve"`) are answered here, by
//!    [`crate::endpoints`], after the same authentication and limits.
//! 8. **rewrite** — strip hop-by-hop, spoofable and the caller's own credentials, then
//!    set ours: the backend credential, the caller's client id (query, header, JSON,
//!    form; spoofs refused), forwarding headers and the target. The body is classified:
//!    JSON and form rewritten, multipart watched, opaque passed, anything else refused.
//! 9. **forward** — stream to the upstream; wait (bounded) for its response head.
//! 10. **respond** — clean the upstream's response (and re-shape it where the route
//!     says); every response, error or not, is decorated from the exchange in
//!     [`respond::decorate`]; every error becomes problem+json in [`problem::render`];
//!     the access log is written when the body is done.
//!
//! A request reads the published configuration once, at the top, and uses only that.

use std::net::SocketAddr;

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use tollgate_policy::snapshot::FollowSampled;
use tollgate_policy::RouteAction;

use crate::access_log::AccessLog;
use crate::body::Outbound;
use crate::endpoints::{self, Answer};
use crate::errors::{GatewayError, LimitError};
use crate::exchange::{Exchange, Scheme};
use crate::metrics::{InFlight, Metrics};
use crate::respond::ResponseBody;
use crate::runtime::{Active, Runtime};
use crate::trace_context::TraceContext;
use crate::{
    accept, authenticate, cors, forward, limit, meter, normalize, problem, request_id, respond,
    rewrite, route, x_forwarded,
};

/// Whether the gateway had room for one more request in flight (see
/// [`Metrics::admit`]).
pub enum Admission {
    /// Its place in flight, shared with whatever outlives the answer.
    Admitted(InFlight),
    /// This many were in flight: the request is refused (503) before anything is read.
    Full(usize),
}

/// Serves one request from a client connected from `peer`, over a connection of
/// `scheme`, on worker `worker`.
pub async fn handle(
    request: Request<Incoming>,
    peer: SocketAddr,
    worker: usize,
    scheme: Scheme,
    admission: Admission,
    runtime: &Runtime,
) -> Response<ResponseBody> {
    let active = runtime.active();
    let snapshot = &active.snapshot;
    let request_id = request_id::from_headers(request.headers(), &snapshot.log.redact_values);
    let follow_sampled = match snapshot.tracing.follow_sampled {
        FollowSampled::Anyone => true,
        FollowSampled::TrustedProxies => {
            x_forwarded::trusted(peer.ip(), &snapshot.server.trusted_proxies)
        }
        FollowSampled::Nobody => false,
    };
    let trace = TraceContext::from_headers(
        request.headers(),
        snapshot.tracing.sample_new,
        follow_sampled,
    );
    let client = x_forwarded::client_addr(
        peer.ip(),
        request.headers(),
        &snapshot.server.trusted_proxies,
    );
    let mut log = AccessLog::start(
        std::sync::Arc::clone(&runtime.access_sink),
        std::sync::Arc::clone(snapshot),
        std::sync::Arc::clone(&runtime.metrics),
        &request_id,
        request.method(),
        request.uri().path(),
        request.uri().query(),
        client,
        active.traces.exporter(),
    );
    log.set_trace(&trace);
    let body_unread_on_refusal = declares_body(&request);
    let head = request.method() == http::Method::HEAD;
    let mut exchange = Exchange {
        snapshot,
        worker,
        peer: peer.ip(),
        client,
        scheme,
        request_id,
        trace,
        now: unix_now(),
        route: None,
        caller: Default::default(),
        rate_limit: None,
        cors: Default::default(),
        metering: Default::default(),
        hold: None,
        key_claim: None,
        own_answer: false,
        in_flight: None,
        log,
    };
    let ran = match admission {
        Admission::Admitted(place) => {
            exchange.in_flight = Some(place);
            run(&mut exchange, request, &active, &runtime.metrics).await
        }
        Admission::Full(limit) => Err(LimitError::TooManyInFlight { limit }.into()),
    };
    let response = match ran {
        Ok(response) => response,
        Err(error) => {
            meter::refund(&mut exchange, &error).await;
            runtime.metrics.count_problem(&error);
            exchange.own_answer = true;
            let mut response = problem::render(&error, &exchange.request_id);
            if body_unread_on_refusal {
                // hyper closes a connection whose request body was not read to its end
                // (what is left of it would be read as the next request), but says
                // nothing: a client that sends its next request on it gets a reset.
                // Saying so lets it open a new one instead.
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            response
        }
    };
    // A HEAD answer has no content. hyper leaves it out over HTTP/1.1, but over HTTP/2
    // it sent the gateway's own problem document as DATA, which clients refuse as a
    // protocol error.
    let response = if head {
        response.map(|_| Either::Right(http_body_util::Full::new(bytes::Bytes::new())))
    } else {
        response
    };
    respond::finish(response, exchange)
}

async fn run(
    exchange: &mut Exchange<'_>,
    mut request: Request<Incoming>,
    active: &Active,
    metrics: &Metrics,
) -> Result<Answer, GatewayError> {
    let snapshot = exchange.snapshot;

    // 1. accept
    accept::check(&request, &snapshot.server, exchange.scheme)?;
    accept::refuse_body_on_bodiless_method(&mut request, snapshot.server.bodies.timeout).await?;
    accept::host_from_authority(&mut request);
    if accept::is_server_options(&request) {
        return Ok(respond::server_options());
    }

    // 2. normalize
    let path = normalize::path(request.uri(), snapshot.server.max_uri_bytes)?;
    exchange.log.set_path(&path);

    // 3. route
    let selection = route::select(snapshot, request.method(), &path);
    if let Some(route) = selection.route() {
        exchange.log.set_route(&route.name);
        exchange.route = Some(route);
    }

    // 4. cors
    if let Some(answer) = cors::preflight(exchange, &request, &path, &selection)? {
        return Ok(answer);
    }
    let route = selection.into_route()?;

    // 5. authenticate (a login in cookie mode proves it comes from the frontend's site;
    // so does a refresh, which sets the session cookies of the token in its body)
    if matches!(
        route.action,
        RouteAction::Login | RouteAction::Serve(tollgate_policy::snapshot::Endpoint::Refresh)
    ) {
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        endpoints::login::refuse_cross_site(exchange, request.headers(), host)?;
    }
    let reading = active.bodies.reading(snapshot.server.bodies);
    let keys = authenticate::Keys {
        tokens: &active.tokens,
        replay: &active.replay,
        reading: &reading,
        sessions: &active.sessions,
    };
    let request = authenticate::authenticate(exchange, route, request, &keys).await?;
    let caller = &exchange.caller;
    exchange.log.set_auth(
        caller.method.as_str(),
        caller.identity.as_ref().map(|i| i.client_id.as_str()),
    );
    metrics.count_auth(
        caller.method,
        caller.identity.as_ref().and_then(|i| i.key_id.as_deref()),
    );

    // 6. limit
    let request = limit::check(exchange, route, request, &active.limiters, &reading).await?;

    // 7. meter (after refusing a caller stage 8 could not give the backend credential:
    // nothing is held or claimed for a request that could never run)
    if let Err(refused) = rewrite::require_credential(exchange, route) {
        let method = request.method().clone();
        return Err(
            meter::refuse_unreserved(exchange, route, &method, &active.credits, refused).await,
        );
    }
    let request =
        match meter::reserve(exchange, route, request, &path, &active.credits, &reading).await? {
            meter::Reserve::Forward(request) => request,
            meter::Reserve::Replay(answer) => return Ok(answer),
        };
    if let RouteAction::Serve(endpoint) = route.action {
        return endpoints::serve(exchange, endpoint, request, &path, active, &reading).await;
    }

    // 8. rewrite
    let (mut head, body) = request.into_parts();
    rewrite::upstream_head(exchange, route, &mut head, &path)?;
    let (body, scanner) =
        rewrite::upstream_body(exchange, route, &mut head, body, &reading).await?;
    let streamed = matches!(body, Either::Left(_));
    let mut outbound = Outbound::new(
        body,
        route.max_upload_bytes,
        snapshot.server.bodies,
        scanner,
        exchange.log.bytes_in(),
    );
    // An idempotent request's body that was not read before its key was claimed: its
    // digest, kept with the answer, tells a retry with another body from the same one.
    if let Some(claim) = exchange.key_claim.as_mut().filter(|_| streamed) {
        let boundary = claim.boundary().map(str::to_owned);
        outbound = outbound.digesting(claim.digest_streamed_body(), boundary.as_deref());
    }

    // 9. forward
    let response = forward::forward(
        exchange,
        route,
        Request::from_parts(head, outbound),
        route.max_upload_bytes,
        &active.upstreams,
    )
    .await?;

    // 10. respond
    meter::settle(exchange, route, response.status(), response.headers()).await;
    let answer = endpoints::reshape(exchange, route, response, active).await?;
    Ok(meter::remember(exchange, answer).await)
}

/// Whether an HTTP/1 request comes with a body (a refusal may leave it unread).
fn declares_body<B>(request: &Request<B>) -> bool {
    let headers = request.headers();
    request.version() <= http::Version::HTTP_11
        && (headers.contains_key(http::header::TRANSFER_ENCODING)
            || headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0"))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
