//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is up) and
//! `/readyz` (it accepts traffic; 503 while draining). Bind it to a private address.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::server::Shared;

fn render_bodies_and_replays(shared: &Shared, replay: &crate::replay::Replay, out: &mut String) {
    use std::fmt::Write as _;
    out.push_str("# HELP tollgate_request_body_buffered_bytes Memory held by request bodies the gateway reads whole (capped by server.max_buffered_body_bytes).\n");
    out.push_str("# TYPE tollgate_request_body_buffered_bytes gauge\n");
    let _ = writeln!(
        out,
        "tollgate_request_body_buffered_bytes {}",
        shared.budget.held()
    );
    let counts = replay.counts();
    out.push_str("# HELP tollgate_callback_replays_total Provider callbacks refused because their nonce was seen before.\n");
    out.push_str("# TYPE tollgate_callback_replays_total counter\n");
    let _ = writeln!(
        out,
        "tollgate_callback_replays_total {}",
        counts.replayed.load(Ordering::Relaxed)
    );
    out.push_str("# HELP tollgate_callback_nonce_fallbacks_total Callback nonces checked in this process alone because Redis could not answer.\n");
    out.push_str("# TYPE tollgate_callback_nonce_fallbacks_total counter\n");
    let _ = writeln!(
        out,
        "tollgate_callback_nonce_fallbacks_total {}",
        counts.fallback.load(Ordering::Relaxed)
    );
}

pub fn handle<B>(request: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", {
            let mut text = shared.metrics.render();
            let active = shared.active.load();
            crate::limit::render_metrics(&active.limiters, &mut text);
            render_bodies_and_replays(shared, &active.replay, &mut text);
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
