//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is up),
//! `/readyz` (it accepts traffic; 503 while draining, while the session store's
//! revocations are not known yet, and while the token ledger is not open), and the
//! admin API of [`ledger`] behind `[admin] token`. Bind it to a private address.
//!
//! Requests are held to the data plane's framing rules ([`crate::accept`]) first.
//! Every answer of its own is problem+json: 404 `ROUTE_NOT_FOUND` for a path it does
//! not serve, 405 `METHOD_NOT_ALLOWED` with `Allow` for a method a resource does not
//! take (`POST /healthz`), as on the data plane. Each problem is counted in
//! `tollgate_problems_total`, and every call of the admin API and every refusal is
//! logged (method, path, status, request id, peer): a guessed token or a change of
//! money leaves a trace. Scrapes and probes are not logged unless refused (they come
//! every few seconds).

mod ledger;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::exchange::Scheme;
use crate::runtime::Runtime;

/// What the admin listener answers with.
pub type AdminResponse = Response<Either<Incoming, Full<Bytes>>>;

pub async fn handle(
    request: Request<Incoming>,
    peer: std::net::SocketAddr,
    runtime: &Runtime,
) -> AdminResponse {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = answer(request, runtime).await;
    let status = response.status();
    // A probe's 503 (starting, draining) is the probe's answer, not a refusal.
    if path.starts_with("/ledger") || status.is_client_error() {
        let request_id = response
            .headers()
            .get(crate::request_id::HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let log = &runtime.active().snapshot.log;
        let path =
            crate::access_log::redact_path(&path, &log.redact_query_params, &log.redact_values);
        tracing::info!(
            %method,
            path = %crate::access_log::bounded(path),
            status = status.as_u16(),
            request_id,
            peer = %peer.ip(),
            "admin request"
        );
    }
    // Every answer here is the gateway's own: never sniffed into another type, no
    // referrer leaked (as the data plane's own answers).
    let headers = response.headers_mut();
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn answer(mut request: Request<Incoming>, runtime: &Runtime) -> AdminResponse {
    // The data plane's framing rules hold here too: this listener moves money, and a
    // request another hop reads differently (`Transfer-Encoding: gzip, chunked`, two
    // `Host`s, a body on GET) is no more acceptable for being internal.
    let snapshot = std::sync::Arc::clone(&runtime.active().snapshot);
    let framed = match crate::accept::check(&request, &snapshot.server, Scheme::Http) {
        Ok(()) => {
            let timeout = snapshot.server.bodies.timeout;
            crate::accept::refuse_body_on_bodiless_method(&mut request, timeout).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = framed {
        let mut response = ledger::refuse(&request, e, runtime);
        // The body is left unread: the connection cannot be read on reliably.
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    if request.uri().path().starts_with("/ledger/") || request.uri().path() == "/ledger" {
        return ledger::handle(request, runtime).await;
    }
    // The three probes take GET (and HEAD, which balancers' checks use; hyper sends no
    // body to it); anything else on them is 405, not "no such path".
    let method = match *request.method() {
        Method::HEAD => Method::GET,
        ref other => other.clone(),
    };
    if matches!(request.uri().path(), "/metrics" | "/healthz" | "/readyz") && method != Method::GET
    {
        return ledger::method_not_allowed(&request, Method::GET, runtime);
    }
    let (status, content_type, body) = match (&method, request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let (body, content_type) = runtime.render_metrics(wants_openmetrics(&request));
            (StatusCode::OK, content_type, body)
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") if runtime.draining() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_owned(),
        ),
        (&Method::GET, "/readyz") if !runtime.active().sessions.ready() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "session store not ready\n".to_owned(),
        ),
        (&Method::GET, "/readyz") if !runtime.active().credits.ready() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "token ledger not ready\n".to_owned(),
        ),
        (&Method::GET, "/readyz") => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        // Every answer the gateway makes itself is problem+json, here too.
        _ => return ledger::not_found(&request, runtime),
    };
    let mut response = Response::new(crate::body::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Whether a scraper asks for OpenMetrics (Prometheus does when it may): its `Accept`
/// gives `application/openmetrics-text` a quality above zero and at least the one it
/// gives the text format (`text/plain`, else `*/*`).
fn wants_openmetrics(request: &Request<Incoming>) -> bool {
    let (mut openmetrics, mut text, mut any) = (None::<f32>, None::<f32>, None::<f32>);
    let ranges = request
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for range in ranges {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(0.0);
        let slot = match media.as_str() {
            "application/openmetrics-text" => &mut openmetrics,
            "text/plain" => &mut text,
            "*/*" => &mut any,
            _ => continue,
        };
        *slot = Some(slot.map_or(quality, |q| q.max(quality)));
    }
    let plain = text.or(any).unwrap_or(0.0);
    openmetrics.is_some_and(|q| q > 0.0 && q >= plain)
}
