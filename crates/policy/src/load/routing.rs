//! `[routing]` and the policy directory: every `*.toml` in it, in file-name order, read
//! whole before any route (a route may use a limit defined in another file); the routes
//! in evaluation order; the fallback route for `unmatched = "forward"`; and the routes
//! that can never match.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use http::Method;
use toml::de::DeValue;

use super::context::Loader;
use super::cors::{self, CorsChoice, CorsDefined};
use super::declared::Declared;
use super::document::{deserialize, parse};
use super::file::{RouteFile, RoutingFile, UnmatchedFile};
use super::limits::{policies, Defined};
use super::route::route;
use super::Refs;
use crate::diagnostic::{Diagnostic, Severity, SourceFile};
use crate::pattern::PathPattern;
use crate::snapshot::{
    ClientIdPolicy, CorsPolicy, LimitPolicy, Mismatch, Origin, Route, RouteAction, RouteAuth,
    Unmatched,
};

/// What the policy directory holds.
pub(crate) struct Routing {
    pub routes: Vec<Route>,
    pub limits: Vec<Arc<LimitPolicy>>,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub unmatched: Unmatched,
    /// `[routing] cors`.
    pub cors: Option<Arc<CorsPolicy>>,
}

/// Reads the policy directory `[routing]` names.
pub(crate) fn routing(
    l: &mut Loader,
    gateway: &SourceFile,
    f: RoutingFile,
    refs: &Refs,
) -> Routing {
    let dir = l.resolve(f.policies.get_ref());
    let unmatched = match f.unmatched.as_ref().map(|u| *u.get_ref()) {
        None | Some(UnmatchedFile::Deny) => Unmatched::Deny,
        Some(UnmatchedFile::Forward) => Unmatched::Forward,
    };
    let files = match l.sources().policy_files(&dir) {
        Ok(files) => files,
        Err(e) => {
            l.error(
                gateway,
                Some(f.policies.span()),
                format!(
                    "[routing] policies: cannot read directory {}: {e}",
                    dir.display()
                ),
            );
            return Routing {
                routes: Vec::new(),
                limits: Vec::new(),
                dir,
                files: Vec::new(),
                unmatched,
                cors: None,
            };
        }
    };
    let texts: Vec<(PathBuf, String)> = files
        .iter()
        .filter_map(|file| l.read_text(file).map(|text| (file.clone(), text)))
        .collect();
    let mut parsed = Vec::new();
    for (file, text) in &texts {
        let src = SourceFile { path: file, text };
        if let Some(sections) = parse(l, &src) {
            parsed.push((src, sections));
        }
    }
    let mut defined = Defined::new();
    let mut cors_defined = CorsDefined::new();
    for (src, sections) in &mut parsed {
        if let Some((_, value)) = sections.remove("limits") {
            policies(l, src, value, &mut defined);
        }
        if let Some((_, value)) = sections.remove("cors") {
            cors::policies(l, src, value, &mut cors_defined);
        }
    }
    let default_cors = f
        .cors
        .as_ref()
        .and_then(|name| cors::reference(l, gateway, name, &cors_defined, "[routing] cors").ok())
        .flatten();
    let declared = Declared {
        limits: defined,
        cors: CorsChoice {
            defined: cors_defined,
            default: default_cors.clone(),
        },
    };
    let mut routes: Vec<Route> = Vec::new();
    let mut names: HashMap<String, Origin> = HashMap::new();
    for (src, sections) in parsed {
        for (key, (key_span, value)) in sections {
            if key != "route" {
                l.error(
                    &src,
                    Some(key_span),
                    format!("unknown key `{key}`; a policy file holds `[[route]]`, `[limits.NAME]` and `[cors.NAME]` tables"),
                );
                continue;
            }
            let span = value.span();
            let DeValue::Array(items) = value.into_inner() else {
                l.error(
                    &src,
                    Some(span),
                    "`route` must be an array of tables: write `[[route]]`",
                );
                continue;
            };
            for item in items {
                let start = item.span();
                let Some(f) = deserialize::<RouteFile>(l, &src, item, "[[route]]") else {
                    continue;
                };
                if let Some(route) = route(l, &src, f, start, refs, &declared, &mut names) {
                    routes.push(route);
                }
            }
        }
    }
    shadowed_routes(l, &routes);
    if let Some(forward) = f
        .unmatched
        .as_ref()
        .filter(|_| unmatched == Unmatched::Forward)
    {
        forward_guards(l, gateway, forward.span(), &routes);
    }
    let mut limits: Vec<Arc<LimitPolicy>> = declared.limits.into_values().flatten().collect();
    limits.sort_by(|a, b| a.name.cmp(&b.name));
    Routing {
        routes,
        limits,
        dir,
        files,
        unmatched,
        cors: default_cors,
    }
}

/// The route a request no route matches is forwarded by, with `unmatched = "forward"`:
/// anyone may call it, it identifies nobody, and it adds nothing upstream.
pub(crate) fn fallback_route(policy_dir: &std::path::Path, cors: Option<Arc<CorsPolicy>>) -> Route {
    Route {
        name: "unmatched".into(),
        methods: None,
        path: PathPattern::any(),
        action: RouteAction::Forward,
        auth: RouteAuth::None,
        upstream_credential: None,
        pass_api_key: false,
        opaque_body_types: Vec::new(),
        client_id: None,
        max_upload_bytes: None,
        limits: Vec::new(),
        username_fields: Vec::new(),
        cors,
        cost: None,
        origin: Origin {
            file: policy_dir.to_path_buf(),
            line: 1,
            column: 1,
        },
    }
}

/// Reports every route that can never match: for each method it serves, an earlier
/// route matches every path it would. Shadowed by a `forward` route it is an error: its
/// own rules never apply (a `deny` or a stricter `auth` written after a broader route
/// looks like protection and protects nothing). Shadowed only by `deny` routes it is a
/// warning: closing a path by putting a `deny` in front is a common, deliberate edit.
fn shadowed_routes(l: &mut Loader, routes: &[Route]) {
    for (index, route) in routes.iter().enumerate() {
        let earlier = &routes[..index];
        let covering = |method: Option<&Method>| {
            earlier.iter().find(|e| {
                e.path.covers(&route.path)
                    && match (method, &e.methods) {
                        (_, None) => true,
                        (Some(m), Some(list)) => list.contains(m),
                        (None, Some(_)) => false,
                    }
            })
        };
        let shadows: Option<Vec<&Route>> = match &route.methods {
            None => covering(None).map(|e| vec![e]),
            Some(methods) => methods.iter().map(|m| covering(Some(m))).collect(),
        };
        let Some(mut shadows) = shadows else {
            continue;
        };
        shadows.dedup_by(|a, b| a.name == b.name);
        let by: Vec<String> = shadows
            .iter()
            .map(|e| {
                format!(
                    "`{}` ({}:{})",
                    e.name,
                    e.origin.file.display(),
                    e.origin.line
                )
            })
            .collect();
        let closed_on_purpose = shadows.iter().all(|e| e.action == RouteAction::Deny);
        l.diags.push(Diagnostic {
            file: route.origin.file.clone(),
            line: route.origin.line,
            column: route.origin.column,
            severity: if closed_on_purpose {
                Severity::Warning
            } else {
                Severity::Error
            },
            message: if closed_on_purpose {
                format!(
                    "route `{}` never matches: {} before it denies every request it would",
                    route.name,
                    by.join(" and ")
                )
            } else {
                format!(
                    "route `{}` can never match: {} before it matches every request it would, so its rules never apply; move it up or remove it",
                    route.name,
                    by.join(" and ")
                )
            },
        });
    }
}

/// `unmatched = "forward"` beside routes that guard something: routes match paths
/// case-sensitively and literally, while Express, ASP.NET and IIS route `/CAMPAIGNS`
/// (and IIS `/campaigns.`) to the `/campaigns` handler: such a spelling is forwarded
/// unauthenticated, uncharged and undenied. Said once, naming a route it concerns.
fn forward_guards(l: &mut Loader, gateway: &SourceFile, span: Range<usize>, routes: &[Route]) {
    let guarded = routes
        .iter()
        .find(|r| r.action == RouteAction::Deny || r.cost.is_some() || r.auth.identifies_caller());
    if let Some(route) = guarded {
        l.warning(
            gateway,
            Some(span),
            format!(
                "[routing] unmatched = \"forward\": a path no route matches goes to the backend unjudged, and routes match case-sensitively; a backend that routes `{}` in another case or spelling (Express, ASP.NET, IIS do) serves what route `{}` guards without its rules. Prefer \"deny\" and a route per path the backend serves",
                route.path, route.name
            ),
        );
    }
}

/// The parameter names any route may read a client id from, as a policy that injects
/// nothing and overwrites (drops) every id a request supplies; `None` when no route
/// has a client-id policy.
pub(crate) fn unvouched_client_id(routes: &[Route]) -> Option<ClientIdPolicy> {
    let mut names: Vec<String> = Vec::new();
    for policy in routes.iter().filter_map(|r| r.client_id.as_ref()) {
        for name in &policy.names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    let first = routes.iter().find_map(|r| r.client_id.as_ref())?;
    Some(ClientIdPolicy {
        query: false,
        header: None,
        json: false,
        form: false,
        names,
        json_pointer: Vec::new(),
        on_mismatch: Mismatch::Overwrite,
        ..first.clone()
    })
}

/// The headers any route may read a client id from: each policy's header and every name
/// and alias that is a valid header name, plus `X-Client-Id`.
pub(crate) fn identity_headers(routes: &[Route]) -> Vec<http::header::HeaderName> {
    let mut names = vec![http::header::HeaderName::from_static("x-client-id")];
    for policy in routes.iter().filter_map(|r| r.client_id.as_ref()) {
        let candidates = policy.header.iter().cloned().chain(
            policy
                .names
                .iter()
                .filter_map(|n| http::header::HeaderName::from_bytes(n.as_bytes()).ok()),
        );
        for name in candidates {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, warnings, GATEWAY};
    use crate::snapshot::{RouteAuth, Unmatched};

    #[test]
    fn files_in_name_order_routes_in_file_order() {
        let s = load(
            GATEWAY,
            &[
                ("20-b.toml", "[[route]]\nname = \"b\"\npath = \"/b\"\nauth = \"none\"\n"),
                ("10-a.toml", "[[route]]\nname = \"a1\"\npath = \"/a\"\nauth = \"none\"\n\n[[route]]\nname = \"a2\"\npath = \"/a2\"\nauth = \"none\"\n"),
                ("notes.txt", "not a policy"),
            ],
        )
        .unwrap();
        let names: Vec<&str> = s.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a1", "a2", "b"]);
        assert_eq!(s.policy_files.len(), 2);
    }

    #[test]
    fn unmatched_requests_have_a_fallback_route_that_identifies_nobody() {
        let s = load(
            &GATEWAY.replace(
                "policies = \"policies\"",
                "policies = \"policies\"\nunmatched = \"forward\"",
            ),
            &[],
        )
        .unwrap();
        assert_eq!(s.unmatched, Unmatched::Forward);
        assert!(matches!(s.fallback.auth, RouteAuth::None));
        assert!(s.fallback.client_id.is_none() && s.fallback.upstream_credential.is_none());
        assert!(s.fallback.path.matches("/anything/at/all"));
    }

    #[test]
    fn forwarding_unmatched_requests_beside_guarded_routes_is_warned_about() {
        let forward = GATEWAY.replace(
            "policies = \"policies\"",
            "policies = \"policies\"\nunmatched = \"forward\"",
        );
        let closed = [(
            "a.toml",
            "[[route]]\nname = \"closed\"\npath = \"/admin/*\"\naction = \"deny\"\n",
        )];
        let w = warnings(&forward, &closed);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("gateway.toml:9:13: [routing] unmatched = \"forward\": a path no route matches goes to the backend unjudged")
                && w[0].contains("`/admin/*`") && w[0].contains("route `closed`"),
            "{w:?}"
        );
        assert!(warnings(GATEWAY, &closed).is_empty());
        let open = [(
            "a.toml",
            "[[route]]\nname = \"pub\"\npath = \"/pub/*\"\nauth = \"none\"\n",
        )];
        assert!(warnings(&forward, &open).is_empty());
    }

    #[test]
    fn routes_that_can_never_match() {
        let file = "[[route]]\nname = \"api\"\npath = \"/api/*\"\nauth = \"none\"\n\n[[route]]\nname = \"admin\"\npath = \"/api/admin\"\naction = \"deny\"\n\n[[route]]\nname = \"closed\"\npath = \"/old/*\"\naction = \"deny\"\n\n[[route]]\nname = \"old\"\nmethods = [\"GET\"]\npath = \"/old/x\"\nauth = \"none\"\n\n[[route]]\nname = \"get-only\"\nmethods = [\"GET\"]\npath = \"/g/*\"\nauth = \"none\"\n\n[[route]]\nname = \"post-too\"\nmethods = [\"GET\", \"POST\"]\npath = \"/g/x\"\nauth = \"none\"\n";
        let policies = [("a.toml", file)];
        assert_eq!(
            errors(GATEWAY, &policies),
            ["a.toml:7:8: route `admin` can never match: `api` (/t/policies/a.toml:2) before it matches every request it would, so its rules never apply; move it up or remove it"]
        );
        // Closing a path with a `deny` first is deliberate: a warning. A route that still
        // serves one method (`post-too` for POST) is not shadowed.
        assert_eq!(
            warnings(&GATEWAY.replace("/api/*", "/nope"), &[("a.toml", &file.replace("path = \"/api/*\"", "path = \"/elsewhere/*\""))]),
            ["a.toml:17:8: route `old` never matches: `closed` (/t/policies/a.toml:12) before it denies every request it would"]
        );
    }

    #[test]
    fn what_a_policy_file_may_hold() {
        let e = errors(
            GATEWAY,
            &[("a.toml", "route = 3\n\n[server]\nlisten = []\n")],
        );
        assert_eq!(
            e,
            [
                "a.toml:1:9: `route` must be an array of tables: write `[[route]]`",
                "a.toml:3:2: unknown key `server`; a policy file holds `[[route]]`, `[limits.NAME]` and `[cors.NAME]` tables",
            ]
        );
        let e = errors(
            &GATEWAY.replace("policies = \"policies\"", "policies = \"nowhere\""),
            &[],
        );
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("gateway.toml:8:12: [routing] policies: cannot read directory"),
            "{e:?}"
        );
    }
}
