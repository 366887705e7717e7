//! Stage 7 — meter: token credits. Reserves a route's cost before the request is
//! forwarded (refusing what the caller cannot pay), then settles it from the upstream's
//! answer; [`decorate`] tells the client what it cost.
//!
//! The slot is wired — [`reserve`] runs after the limits and before the rewrite, and
//! [`decorate`] on every response — but no route has a cost yet: every request is free.

use http::Response;
use tollgate_policy::Route;

use crate::errors::GatewayError;
use crate::exchange::{Exchange, Metering};

/// Reserves what `route` costs the caller, or refuses the request.
pub fn reserve(exchange: &mut Exchange<'_>, _route: &Route) -> Result<(), GatewayError> {
    exchange.metering = Metering::Free;
    Ok(())
}

/// The credit headers a response carries, from what was reserved.
pub fn decorate<B>(_response: &mut Response<B>, metering: &Metering) {
    match metering {
        Metering::Free => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{exchange_for, snapshot_with_route};

    #[test]
    fn a_route_without_a_cost_is_free_and_says_nothing() {
        let snapshot = snapshot_with_route();
        let mut exchange = exchange_for(&snapshot);
        assert!(reserve(&mut exchange, &snapshot.routes[0]).is_ok());
        assert_eq!(exchange.metering, Metering::Free);
        let mut response = Response::new(());
        decorate(&mut response, &exchange.metering);
        assert!(response.headers().is_empty());
    }
}
