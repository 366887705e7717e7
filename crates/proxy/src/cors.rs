//! Stage 4 — cors: answers CORS preflights from policy and decides which CORS headers a
//! response carries.
//!
//! The slot is wired (it runs before the method check, so a preflight for a method a
//! path refuses is still its to answer, and [`decorate`] runs on every response), but no
//! policy configures CORS yet: nothing is answered here, and no header is added.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::exchange::{Cors, Exchange};
use crate::route::Selection;

/// Answers a preflight itself, or records what CORS decided and lets the request go on.
pub fn preflight<B>(
    exchange: &mut Exchange<'_>,
    _request: &Request<B>,
    _selection: &Selection<'_>,
) -> Option<Response<Either<Incoming, Full<Bytes>>>> {
    exchange.cors = Cors::NotCors;
    None
}

/// The CORS headers a response carries, from the decision.
pub fn decorate<B>(_response: &mut Response<B>, decision: &Cors) {
    match decision {
        Cors::NotCors => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{exchange_for, snapshot_with_route};

    #[test]
    fn without_a_policy_nothing_is_answered_and_nothing_added() {
        let snapshot = snapshot_with_route();
        let mut exchange = exchange_for(&snapshot);
        let preflight = Request::builder()
            .method("OPTIONS")
            .uri("/x")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "DELETE")
            .body(())
            .unwrap();
        let selection = crate::route::select(&snapshot, preflight.method(), "/x");
        assert!(super::preflight(&mut exchange, &preflight, &selection).is_none());
        assert_eq!(exchange.cors, Cors::NotCors);
        let mut response = Response::new(());
        decorate(&mut response, &exchange.cors);
        assert!(response.headers().is_empty());
    }
}
