//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is up) and
//! `/readyz` (it accepts traffic; 503 while draining). Bind it to a private address.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::server::Shared;

pub fn handle<B>(request: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", {
            let mut text = shared.metrics.render();
            crate::limit::render_metrics(&shared.active.load().limiters, &mut text);
            text
        }),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") if shared.draining.load(Ordering::Relaxed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_owned(),
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
