//! The endpoints the gateway answers itself (`action = "serve"`), dispatched after
//! routing, authentication and limits like any route, and the hook that re-shapes an
//! upstream's response for the routes that need it (the login).
//!
//! One endpoint, one module: [`jwks`] (the public signing keys), [`refresh`] and
//! [`logout`] (sessions), and [`login`], the wrap of the legacy login's answer.
//! [`tokens`] is what login and refresh hand out. [`credits`] answers the frontend's
//! token-credit questions (balance, costs, preview, history). [`unique`] reads their JSON
//! bodies, refusing a member named twice.

pub(crate) mod credits;
mod jwks;
pub(crate) mod login;
mod logout;
mod refresh;
mod tokens;
mod unique;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tollgate_policy::snapshot::Endpoint;
use tollgate_policy::{Route, RouteAction};

use crate::body::{Reading, RequestBody};
use crate::errors::GatewayError;
use crate::exchange::Exchange;
use crate::respond;
use crate::runtime::Active;

/// A response the gateway makes itself.
pub type Answer = Response<Either<Incoming, Full<Bytes>>>;

/// Answers a request for one of the gateway's own endpoints.
pub async fn serve(
    exchange: &mut Exchange<'_>,
    endpoint: Endpoint,
    request: Request<RequestBody>,
    path: &str,
    active: &Active,
    reading: &Reading,
) -> Result<Answer, GatewayError> {
    exchange.own_answer = true;
    match endpoint {
        Endpoint::Jwks => jwks::serve(exchange, &request),
        Endpoint::Refresh => refresh::serve(exchange, request, &active.sessions, reading).await,
        Endpoint::Logout => {
            logout::serve(exchange, request, &active.sessions, reading, &active.tokens).await
        }
        Endpoint::TokensBalance => credits::balance(exchange, &active.credits).await,
        Endpoint::TokensCosts => Ok(credits::costs(exchange)),
        Endpoint::TokensPreview => {
            credits::preview(exchange, request, &active.credits, reading).await
        }
        Endpoint::TokensHistory => {
            credits::history(exchange, &request, path, &active.credits).await
        }
    }
}

/// The upstream's response as the client gets it: cleaned of hop-by-hop headers, and
/// re-shaped for the routes that ask for it (the login's answer becomes the gateway's).
pub async fn reshape(
    exchange: &mut Exchange<'_>,
    route: &Route,
    response: Response<Incoming>,
    active: &Active,
) -> Result<Answer, GatewayError> {
    match route.action {
        RouteAction::Login => {
            exchange.own_answer = true;
            login::answer(exchange, response, &active.sessions).await
        }
        _ => Ok(respond::from_upstream(
            response,
            &exchange.snapshot.upstream,
        )),
    }
}
