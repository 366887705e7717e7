//! Stage 3 — route: the first matching route of the snapshot decides. A request no
//! route matches gets the configured default: denied (404), or forwarded by the
//! snapshot's fallback route (`unmatched = "forward"`). A path some route guards under
//! other methods is never forwarded unguarded: 405 with `Allow`.
//!
//! The selection is not final until the CORS stage has looked at it: a preflight for a
//! method the path refuses is still the CORS stage's to answer.

use http::Method;
use tollgate_policy::snapshot::{is_trace, Unmatched, STANDARD_METHODS};
use tollgate_policy::{Route, RouteAction, RouteMatch, Snapshot};

use crate::errors::{AccessError, GatewayError};

/// What routing found.
pub enum Selection<'s> {
    Route(&'s Route),
    /// Routes match the path, none the method; these methods would be allowed.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matches and unmatched requests are denied.
    NotFound,
}

impl<'s> Selection<'s> {
    /// The route, or why there is none. A route that denies is a refusal too.
    pub fn into_route(self) -> Result<&'s Route, GatewayError> {
        match self {
            Selection::Route(route) if route.action == RouteAction::Deny => {
                Err(AccessError::RouteDenied.into())
            }
            Selection::Route(route) => Ok(route),
            Selection::MethodNotAllowed(allow) => {
                Err(AccessError::MethodNotAllowed { allow }.into())
            }
            Selection::NotFound => Err(AccessError::RouteNotFound.into()),
        }
    }

    /// The route that matched, whatever it does.
    pub fn route(&self) -> Option<&'s Route> {
        match self {
            Selection::Route(route) => Some(route),
            _ => None,
        }
    }
}

/// Chooses the route for a normalized path.
pub fn select<'s>(snapshot: &'s Snapshot, method: &Method, path: &str) -> Selection<'s> {
    if is_trace(method) {
        return trace_refused(snapshot, path);
    }
    match snapshot.route(method, path) {
        RouteMatch::Route(route) => Selection::Route(route),
        RouteMatch::MethodNotAllowed => Selection::MethodNotAllowed(snapshot.allowed_methods(path)),
        RouteMatch::Unmatched => match snapshot.unmatched {
            Unmatched::Deny => Selection::NotFound,
            Unmatched::Forward => Selection::Route(&snapshot.fallback),
        },
    }
}

/// `TRACE` is never forwarded ([`is_trace`]): 405 where a route serves the path, 404
/// where none does and unmatched requests are denied. A route that lists no methods is
/// taken to serve the standard ones.
fn trace_refused<'s>(snapshot: &'s Snapshot, path: &str) -> Selection<'s> {
    let mut serving = snapshot
        .routes
        .iter()
        .filter(|r| r.path.matches(path))
        .peekable();
    if serving.peek().is_none() && snapshot.unmatched == Unmatched::Deny {
        return Selection::NotFound;
    }
    let mut allow = snapshot.allowed_methods(path);
    if allow.is_empty() || serving.any(|r| r.methods.is_none()) {
        allow = STANDARD_METHODS.into();
    }
    Selection::MethodNotAllowed(allow)
}
