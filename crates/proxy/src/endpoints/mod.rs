//! The endpoints the gateway answers itself (`action = "serve"`), dispatched after
//! routing, authentication and limits like any route, and the hook that re-shapes an
//! upstream's response for the routes that need it.
//!
//! One endpoint, one module: [`jwks`] today; the login, refresh, logout and token-credit
//! endpoints join it.

mod jwks;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tollgate_policy::snapshot::Endpoint;
use tollgate_policy::Route;

use crate::body::RequestBody;
use crate::errors::GatewayError;
use crate::exchange::Exchange;

/// A response the gateway makes itself.
pub type Answer = Response<Either<Incoming, Full<Bytes>>>;

/// Answers a request for one of the gateway's own endpoints.
pub async fn serve(
    exchange: &mut Exchange<'_>,
    endpoint: Endpoint,
    request: Request<RequestBody>,
) -> Result<Answer, GatewayError> {
    match endpoint {
        Endpoint::Jwks => jwks::serve(exchange, &request),
    }
}

/// Re-shapes an upstream's response for a route that asks for it (the login wrap will);
/// every other response passes as it is.
pub fn reshape(_route: &Route, response: Answer) -> Answer {
    response
}
