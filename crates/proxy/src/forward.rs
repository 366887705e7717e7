//! Stage 9 — forward: send the rewritten request to the legacy upstream over the
//! worker's pool and wait (bounded) for its response head; bodies stream both ways. A
//! request body cut off on the client's side (too large, too slow, broken, a multipart
//! field naming another client) is the client's error, whatever the upstream connection
//! then reported.

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::{CutOff, Outbound};
use crate::errors::{AccessError, Bug, GatewayError, RequestError};
use crate::exchange::Exchange;
use crate::upstream::Upstreams;

/// Sends the request; the upstream's response head, or why there is none.
pub async fn forward(
    exchange: &Exchange<'_>,
    request: Request<Outbound>,
    upload_limit: Option<u64>,
    upstreams: &Upstreams,
) -> Result<Response<Incoming>, GatewayError> {
    let stats = exchange.log.bytes_in();
    let upstream = upstreams.for_worker(exchange.worker).ok_or(Bug::NoPool)?;
    upstream
        .send(request, exchange.snapshot.upstream.response_timeout, &stats)
        .await
        .map_err(|e| match stats.cut_off() {
            CutOff::None => e,
            CutOff::OverLimit => RequestError::PayloadTooLarge {
                limit: upload_limit.unwrap_or_default(),
            }
            .into(),
            CutOff::TooSlow => RequestError::BodyTooSlow.into(),
            CutOff::Failed => RequestError::BodyInvalid.into(),
            CutOff::ClientIdMismatch => AccessError::ClientIdMismatch.into(),
            CutOff::MultipartInvalid => RequestError::MultipartInvalid.into(),
        })
}
