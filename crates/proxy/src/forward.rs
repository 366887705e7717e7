//! Stage 9 — forward: send the rewritten request to the legacy upstream over the
//! worker's pool and wait (bounded) for its response head; bodies stream both ways.
//! With `[credits] on_client_abort = "settle"`, a metered exchange runs on a task of
//! its own that outlives a client who hangs up, and its answer settles the cost. A
//! request body cut off on the client's side (too large, too slow, broken, a multipart
//! field naming another client) is the client's error, whatever the upstream connection
//! then reported.

use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::body::BodyStats;
use tollgate_policy::Route;

use crate::body::{CutOff, Outbound};
use crate::errors::{AccessError, Bug, GatewayError, RequestError, UpstreamError};
use crate::exchange::Exchange;
use crate::meter;
use crate::upstream::Upstreams;

/// Sends the request; the upstream's response head, or why there is none.
pub async fn forward(
    exchange: &mut Exchange<'_>,
    route: &Route,
    request: Request<Outbound>,
    upload_limit: Option<u64>,
    upstreams: &Upstreams,
) -> Result<Response<Incoming>, GatewayError> {
    let stats = exchange.log.bytes_in();
    let upstream = upstreams.for_worker(exchange.worker).ok_or(Bug::NoPool)?;
    let timeout = exchange.snapshot.upstream.response_timeout;
    let started = std::time::Instant::now();
    let settle_by = exchange.hold.as_ref().and_then(|h| h.settle_by);
    let bodyless = request.body().is_end_stream();
    let sent = match meter::outlive_client(exchange, route) {
        None => {
            within(
                settle_by,
                bodyless,
                &stats,
                upstream.send(request, timeout, &stats),
            )
            .await
        }
        Some(orphan) => {
            // A metered exchange runs on a task of its own, so a client that hangs up
            // cannot stop it: when nobody waits for the answer, the answer settles it.
            let (answer, waiting) = oneshot::channel();
            let (upstream, task_stats) = (upstream.clone(), Arc::clone(&stats));
            // The request keeps its place in flight for as long as this runs, client
            // or not: the bound on requests in flight (and so on upstream connections)
            // would otherwise not hold for exchanges whose clients reset them at once.
            // A shared place, so a request whose client waits counts once, not twice.
            let in_flight = exchange.in_flight.clone();
            tokio::spawn(async move {
                let _in_flight = in_flight;
                let send = upstream.send(request, timeout, &task_stats);
                let sent = within(settle_by, bodyless, &task_stats, send).await;
                if let Err((sent, orphan)) = answer.send((sent, orphan)) {
                    settle_alone(sent, orphan, &task_stats).await;
                }
            });
            let mut waiting = Unclaimed {
                waiting,
                stats: Arc::clone(&stats),
            };
            let (sent, orphan) = (&mut waiting.waiting).await.map_err(|_| Bug::Detached)?;
            orphan.adopt(exchange);
            sent
        }
    };
    exchange.log.set_upstream_time(started.elapsed());
    let client_error = |cut: CutOff| -> Option<GatewayError> {
        Some(match cut {
            CutOff::None => return None,
            CutOff::OverLimit => RequestError::PayloadTooLarge {
                limit: upload_limit.unwrap_or_default(),
            }
            .into(),
            CutOff::TooSlow => RequestError::BodyTooSlow.into(),
            CutOff::Failed => RequestError::BodyInvalid.into(),
            CutOff::ClientIdMismatch => AccessError::ClientIdMismatch.into(),
            CutOff::MultipartInvalid => RequestError::MultipartInvalid.into(),
            CutOff::MethodOverride => RequestError::MethodOverride.into(),
        })
    };
    match sent {
        // A backend may answer a body cut off under it (multer answers 200 to a form
        // that ends early, with no fields): the client is told why it was cut off, not
        // what the backend made of the rest, and nothing is charged for it.
        Ok(response) => match client_error(stats.cut_off()) {
            Some(e) => Err(e),
            None => Ok(response),
        },
        Err(e) => Err(client_error(stats.cut_off()).unwrap_or(e)),
    }
}

/// `send`, cut off at a metered request's `settle_by`: past it the reservation could be
/// refunded under the request, so the upload stops (408, the client was too slow) or the
/// wait for the answer does (504), and the request is refunded now, as its own failure.
async fn within(
    settle_by: Option<tokio::time::Instant>,
    bodyless: bool,
    stats: &BodyStats,
    send: impl std::future::Future<Output = Result<Response<Incoming>, GatewayError>>,
) -> Result<Response<Incoming>, GatewayError> {
    let Some(at) = settle_by else {
        return send.await;
    };
    match tokio::time::timeout_at(at, send).await {
        Ok(sent) => sent,
        Err(_) if !bodyless && !stats.finished() => Err(RequestError::BodyTooSlow.into()),
        Err(_) => Err(UpstreamError::Timeout.into()),
    }
}

type Sent = (Result<Response<Incoming>, GatewayError>, meter::Orphan);

async fn settle_alone(
    sent: Result<Response<Incoming>, GatewayError>,
    orphan: meter::Orphan,
    stats: &BodyStats,
) {
    let cut_off = stats.cut_off() != CutOff::None;
    orphan.settle_alone(sent.ok(), cut_off).await;
}

/// The request's end of a detached exchange. The answer can arrive in the instant the
/// client hangs up: sent (so the task no longer has it), but never taken, because the
/// request was dropped before it looked. Then it is settled here, as the task would
/// have, instead of leaving the reservation held until it expires.
struct Unclaimed {
    waiting: oneshot::Receiver<Sent>,
    stats: Arc<BodyStats>,
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Ok((sent, orphan)) = self.waiting.try_recv() {
            let stats = Arc::clone(&self.stats);
            tokio::spawn(async move { settle_alone(sent, orphan, &stats).await });
        }
    }
}
