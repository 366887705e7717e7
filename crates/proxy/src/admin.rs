//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is up) and
//! `/readyz` (it accepts traffic; 503 while draining, and while the session store's
//! revocations are not known yet). Bind it to a private address.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::runtime::Runtime;

pub fn handle<B>(request: &Request<B>, runtime: &Runtime) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            runtime.render_metrics(),
        ),
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
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
