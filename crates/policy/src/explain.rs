//! `tollgate explain METHOD PATH`: which route a request lands on, and why.

use std::fmt::Write as _;

use http::Method;

use crate::path;
use crate::snapshot::{RouteAction, RouteMatch, Snapshot, Unmatched};

/// A human-readable account of how `snapshot` treats `method` and `raw_path` (the
/// request target as sent, with or without a query).
pub fn explain(snapshot: &Snapshot, method: &Method, raw_path: &str) -> String {
    let mut out = String::new();
    let path_only = raw_path.split('?').next().unwrap_or(raw_path);
    let _ = writeln!(out, "request:    {method} {raw_path}");
    let normalized = match path::normalize(path_only) {
        Ok(n) => n,
        Err(e) => {
            let _ = writeln!(out, "normalized: refused: {e}");
            let _ = writeln!(
                out,
                "outcome:    400 PATH_INVALID (the request never reaches routing)"
            );
            return out;
        }
    };
    let _ = writeln!(out, "normalized: {normalized}");
    match snapshot.route(method, &normalized) {
        RouteMatch::Route(route) => {
            let index = snapshot
                .routes
                .iter()
                .position(|r| std::ptr::eq(r, route))
                .map_or(0, |i| i + 1);
            let _ = writeln!(
                out,
                "route:      #{index} `{}` ({}:{}:{})",
                route.name,
                route.origin.file.display(),
                route.origin.line,
                route.origin.column
            );
            let _ = writeln!(out, "  path:     {}", route.path);
            if let Some(params) = route.path.params(&normalized).filter(|p| !p.is_empty()) {
                let list: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(out, "  params:   {}", list.join(", "));
            }
            let methods = route.methods.as_ref().map_or("any".to_owned(), |m| {
                m.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
            });
            let _ = writeln!(out, "  methods:  {methods}");
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
            match route.action {
                RouteAction::Forward => {
                    let _ = writeln!(
                        out,
                        "outcome:    forwarded to http://{}{}{}",
                        snapshot.upstream.authority, snapshot.upstream.base_path, normalized
                    );
                }
                RouteAction::Deny => {
                    let _ = writeln!(out, "outcome:    403 FORBIDDEN (the route denies)");
                }
                RouteAction::Serve(endpoint) => {
                    let _ = writeln!(
                        out,
                        "outcome:    answered by the gateway ({endpoint:?} endpoint)"
                    );
                }
                RouteAction::Login => {
                    let _ = writeln!(
                        out,
                        "outcome:    forwarded to http://{}{}{}; a successful login is answered with the gateway's tokens",
                        snapshot.upstream.authority, snapshot.upstream.base_path, normalized
                    );
                }
            }
            if let Some(cors) = &route.cors {
                let _ = writeln!(
                    out,
                    "  cors:     {} (preflights answered by the gateway)",
                    cors.name
                );
            }
        }
        RouteMatch::MethodNotAllowed => {
            let allowed: Vec<String> = snapshot
                .allowed_methods(&normalized)
                .iter()
                .map(|m| m.to_string())
                .collect();
            let _ = writeln!(out, "route:      none allows {method} on this path");
            let _ = writeln!(
                out,
                "outcome:    405 METHOD_NOT_ALLOWED (Allow: {})",
                allowed.join(", ")
            );
        }
        RouteMatch::Unmatched => {
            let _ = writeln!(out, "route:      none matches");
            match snapshot.unmatched {
                Unmatched::Deny => {
                    let _ = writeln!(
                        out,
                        "outcome:    404 ROUTE_NOT_FOUND (routing.unmatched = \"deny\")"
                    );
                }
                Unmatched::Forward => {
                    let _ = writeln!(
                        out,
                        "outcome:    forwarded to http://{}{}{} (routing.unmatched = \"forward\")",
                        snapshot.upstream.authority, snapshot.upstream.base_path, normalized
                    );
                }
            }
        }
    }
    out
}
