//! Stage 3 — route: the first matching route of the snapshot decides; no match gets the
//! configured default (deny by default).

use http::Method;
use tollgate_policy::snapshot::Unmatched;
use tollgate_policy::{Route, RouteAction, RouteMatch, Snapshot};

use crate::problem::GatewayError;

/// The routing decision: the route that matched (if any), and whether to go on.
pub struct Selection<'s> {
    pub route: Option<&'s Route>,
    pub outcome: Result<(), GatewayError>,
}

/// Picks the route; `route` is `None` when nothing matched (forwarded only with
/// `routing.unmatched = "forward"`). Denials are errors in `outcome`.
pub fn select<'s>(snapshot: &'s Snapshot, method: &Method, path: &str) -> Selection<'s> {
    match snapshot.route(method, path) {
        RouteMatch::Route(route) => Selection {
            route: Some(route),
            outcome: match route.action {
                RouteAction::Forward => Ok(()),
                RouteAction::Deny => Err(GatewayError::RouteDenied),
            },
        },
        other => Selection {
            route: None,
            outcome: unmatched(snapshot, other, path),
        },
    }
}

fn unmatched(snapshot: &Snapshot, matched: RouteMatch, path: &str) -> Result<(), GatewayError> {
    match (matched, snapshot.unmatched) {
        // A path some route guards is never forwarded unguarded under another method,
        // whatever `unmatched` says.
        (RouteMatch::MethodNotAllowed, _) => Err(GatewayError::MethodNotAllowed {
            allow: snapshot.allowed_methods(path),
        }),
        (_, Unmatched::Deny) => Err(GatewayError::RouteNotFound),
        (_, Unmatched::Forward) => Ok(()),
    }
}
