//! Stage 10 — respond: the upstream's response is passed back with hop-by-hop headers
//! removed; every response, the gateway's own included, carries the request id.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::access_log::AccessLog;
use crate::body::{Observed, ResponseBody};
use crate::{headers, request_id};

/// The upstream's response, cleaned for the client.
pub fn from_upstream(response: Response<Incoming>) -> Response<Either<Incoming, Full<Bytes>>> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// The answer to `OPTIONS *`: the server is here; ask a path for more.
pub fn server_options() -> Response<Either<Incoming, Full<Bytes>>> {
    let mut response = Response::new(crate::body::full(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// Adds what every response carries and hands the body to the access log.
pub fn finish(
    response: Response<Either<Incoming, Full<Bytes>>>,
    request_id: &str,
    mut log: AccessLog,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        parts.headers.insert(request_id::HEADER, id);
    }
    log.set_status(parts.status);
    Response::from_parts(parts, Observed::new(body, log))
}
