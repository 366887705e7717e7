//! What `tollgate explain` says about a route: the policy as written, with where it was
//! written. What happens to a request is not guessed here: `explain` plays the request
//! through the real pipeline (the proxy crate's rehearsal) and prints this beside it.

use std::fmt::Write as _;

use http::Method;

use crate::snapshot::{Credential, Mismatch, RouteAction, RouteAuth, Snapshot};
use crate::Route;

/// The policy of `route` (one of `snapshot`'s) for a request with `method`; `path`, the
/// normalized path, shows the values of the route's `{params}`.
pub fn describe(snapshot: &Snapshot, route: &Route, method: &Method, path: Option<&str>) -> String {
    let mut out = String::new();
    let index = snapshot
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, route))
        .map_or_else(|| "(fallback)".to_owned(), |i| format!("#{}", i + 1));
    let _ = writeln!(
        out,
        "route:      {index} `{}` ({}:{}:{})",
        route.name,
        route.origin.file.display(),
        route.origin.line,
        route.origin.column
    );
    let _ = writeln!(out, "  path:     {}", route.path);
    if let Some(params) = path
        .and_then(|p| route.path.params(p))
        .filter(|p| !p.is_empty())
    {
        let list: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "  params:   {}", list.join(", "));
    }
    let methods = route.methods.as_ref().map_or("any".to_owned(), |m| {
        m.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
    });
    let _ = writeln!(out, "  methods:  {methods}");
    let action = match route.action {
        RouteAction::Forward => "forwarded to the backend".to_owned(),
        RouteAction::Deny => "denied (403 FORBIDDEN)".to_owned(),
        RouteAction::Serve(endpoint) => format!("answered by the gateway ({endpoint:?} endpoint)"),
        RouteAction::Login => {
            "forwarded; a successful login is answered with the gateway's tokens".to_owned()
        }
    };
    let _ = writeln!(out, "  action:   {action}");
    let auth = match &route.auth {
        RouteAuth::None => "none",
        RouteAuth::Jwt => "a JWT (401 without one)",
        RouteAuth::ApiKey => "an API key (401 without one)",
        RouteAuth::JwtOrApiKey => "a JWT, or an API key when no JWT is sent (401 without either)",
        RouteAuth::Webhook(_) => "a provider callback's signature or secret",
    };
    let _ = writeln!(out, "  auth:     {auth}");
    if let Some((name, credential)) = &route.upstream_credential {
        let header = match credential.as_ref() {
            Credential::Header { name, .. } => format!("`{name}`, one value for every caller"),
            Credential::ClientMap { name, .. } => format!("`{name}`, the caller's own legacy key"),
        };
        let _ = writeln!(out, "  adds:     credential `{name}` upstream as {header}");
    }
    if route.pass_api_key {
        let _ = writeln!(out, "  passes:   the caller's API key, upstream as sent");
    }
    if let Some(policy) = &route.client_id {
        let mut places = Vec::new();
        if policy.query {
            places.push("query".to_owned());
        }
        if let Some(header) = &policy.header {
            places.push(format!("header {header}"));
        }
        if policy.json {
            places.push("JSON body".to_owned());
        }
        if policy.form {
            places.push("form body".to_owned());
        }
        let spoof = match policy.on_mismatch {
            Mismatch::Reject => {
                "a different one sent by the caller is refused (403 CLIENT_ID_MISMATCH)"
            }
            Mismatch::Overwrite => "a different one sent by the caller is replaced",
        };
        let _ = writeln!(
            out,
            "  client id: `{}` from the token or key, set in {}; {spoof}",
            policy.names.first().map_or("clientId", String::as_str),
            places.join(", ")
        );
    }
    for limit in &route.limits {
        let key: Vec<&str> = limit.key.iter().map(|k| k.as_str()).collect();
        let _ = writeln!(
            out,
            "  limit:    {} — {} per {:?}, burst {}, by {}",
            limit.name,
            limit.quota.limit(),
            limit.quota.period(),
            limit.quota.burst(),
            key.join("+")
        );
    }
    if let Some(cost) = &route.cost {
        let amount = cost.for_method(method);
        let metering = match &snapshot.credits {
            Some(c) if !c.enabled => " (metering is off: [credits] enabled = false)",
            _ => "",
        };
        let settle = cost
            .settle_header
            .as_ref()
            .map(|h| format!(", settled at the backend's `{h}` (at most this)"))
            .unwrap_or_default();
        let refunds: Vec<String> = cost
            .refund
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else if lo % 100 == 0 && *hi == lo + 99 {
                    format!("{}xx", lo / 100)
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "  cost:     {amount} token(s) reserved before forwarding (402 INSUFFICIENT_TOKENS when short){settle}; refunded on {}{metering}",
            refunds.join(", ")
        );
    }
    if let Some(cors) = &route.cors {
        let _ = writeln!(
            out,
            "  cors:     {} (preflights answered by the gateway)",
            cors.name
        );
    }
    out
}
