//! CORS in the policy files: the named `[cors.NAME]` policies, `[routing] cors` (the
//! default) and each route's `cors = "NAME"` or `"none"`.
//!
//! Origins are exact (`https://app.example.com`, with a port if it is not the default),
//! a subdomain pattern (`https://*.example.com`: every subdomain, never the domain itself
//! nor a look-alike such as `https://evil-example.com`), or `*`. `*` is refused with
//! `credentials = true`, and so is `null`: the gateway never reflects an arbitrary
//! origin together with credentials.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;
use toml::de::DeValue;
use toml::Spanned;

use super::context::{Loader, Zero};
use super::document::deserialize;
use super::file::CorsFile;
use crate::diagnostic::SourceFile;
use crate::snapshot::{CorsPolicy, OriginPattern};

/// Request headers a page may send when a policy lists none.
pub const DEFAULT_ALLOWED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "idempotency-key",
    "x-csrf-token",
    "x-request-id",
];

/// Response headers page scripts may always read: what the gateway itself tells them.
pub const EXPOSED_HEADERS: &[&str] = &[
    "x-request-id",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
    "x-token-cost",
    "x-token-balance",
    "idempotent-replayed",
    "deprecation",
    "sunset",
    "link",
];

/// Browsers cap a preflight's lifetime anyway (Chromium: 2 hours).
const MAX_AGE_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// CORS policies by name; `None` for one declared but invalid (reported where written).
pub(crate) type CorsDefined = HashMap<String, Option<Arc<CorsPolicy>>>;

/// What routes choose from.
pub(crate) struct CorsChoice {
    pub defined: CorsDefined,
    /// `[routing] cors`.
    pub default: Option<Arc<CorsPolicy>>,
}

/// Reads the `[cors.NAME]` tables of one policy file into `defined`.
pub(crate) fn policies(
    l: &mut Loader,
    src: &SourceFile,
    value: Spanned<DeValue>,
    defined: &mut CorsDefined,
) {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        l.error(
            src,
            Some(span),
            "`cors` must hold named tables: [cors.NAME]",
        );
        return;
    };
    for (key, entry) in table {
        let (name, span) = (key.get_ref().to_string(), key.span());
        // Every error in the table is reported, and what is left is still checked.
        let what = format!("[cors.{name}]");
        let entry = Spanned::new(span.clone(), entry.into_inner());
        let policy = deserialize::<CorsFile>(l, src, entry, &what)
            .and_then(|f| policy(l, src, &name, span, f, defined).map(Arc::new));
        defined.entry(name).or_insert(policy);
    }
}

fn policy(
    l: &mut Loader,
    src: &SourceFile,
    name: &str,
    span: Range<usize>,
    f: CorsFile,
    defined: &CorsDefined,
) -> Option<CorsPolicy> {
    let mark = l.mark();
    let what = format!("[cors.{name}]");
    if name == "none"
        || name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        l.error(
            src,
            Some(span.clone()),
            format!("cors policy name `{name}`: use letters, digits, `-` and `_` (and not `none`, which turns CORS off for a route)"),
        );
    } else if defined.contains_key(name) {
        l.error(
            src,
            Some(span.clone()),
            format!("cors policy `{name}` is defined twice"),
        );
    }
    if f.origins.get_ref().is_empty() {
        l.error(
            src,
            Some(f.origins.span()),
            format!("{what} origins: list at least one origin"),
        );
    }
    let origins: Vec<OriginPattern> = f
        .origins
        .get_ref()
        .iter()
        .filter_map(|o| match origin_pattern(o.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                l.error(src, Some(o.span()), format!("{what} origins: {e}"));
                None
            }
        })
        .collect();
    if f.credentials && origins.contains(&OriginPattern::Any) {
        l.error(
            src,
            Some(f.origins.span()),
            format!("{what}: `*` cannot be combined with credentials = true (any site could act with the user's cookies); list the origins"),
        );
    }
    let methods = f.methods.as_ref().map(|list| {
        list.iter()
            .filter_map(|m| {
                let text = m.get_ref();
                let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase());
                match Method::from_bytes(text.as_bytes()) {
                    Ok(method) if valid => Some(method),
                    _ => {
                        l.error(
                            src,
                            Some(m.span()),
                            format!("{what} methods: `{text}` is not an HTTP method in upper case"),
                        );
                        None
                    }
                }
            })
            .collect()
    });
    let headers = match &f.headers {
        None => DEFAULT_ALLOWED_HEADERS
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect(),
        Some(list) => list.iter().filter_map(|h| l.header_name(src, h)).collect(),
    };
    let mut expose: Vec<HeaderName> = EXPOSED_HEADERS
        .iter()
        .map(|h| HeaderName::from_static(h))
        .collect();
    for h in f.expose_headers.iter().flatten() {
        if let Some(name) = l.header_name(src, h) {
            if !expose.contains(&name) {
                expose.push(name);
            }
        }
    }
    let max_age = l.duration(src, &f.max_age, Duration::from_secs(600), Zero::Allowed);
    if max_age > MAX_AGE_LIMIT {
        if let Some(v) = &f.max_age {
            l.error(src, Some(v.span()), format!("{what} max_age: at most 24h"));
        }
    }
    if l.errors_since(mark) {
        return None;
    }
    Some(CorsPolicy {
        name: name.to_owned(),
        origins,
        methods,
        headers,
        credentials: f.credentials,
        max_age,
        expose,
        origin: src.origin(span),
    })
}

/// An allowed origin as written: `*`, `scheme://host[:port]` or `scheme://*.domain[:port]`.
fn origin_pattern(text: &str) -> Result<OriginPattern, String> {
    if text == "*" {
        return Ok(OriginPattern::Any);
    }
    if text.eq_ignore_ascii_case("null") {
        return Err(
            "`null` is the origin of sandboxed frames and local files: anyone can send it".into(),
        );
    }
    let lower = text.to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return Err(format!(
            "`{text}`: write scheme://host[:port], e.g. https://app.example.com"
        ));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("`{text}`: the scheme must be http or https"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(p) if p > 0 => (host, Some(p)),
            _ => {
                return Err(format!(
                    "`{text}`: the port must be a number from 1 to 65535"
                ))
            }
        },
        None => (rest, None),
    };
    let host_ok = |h: &str| {
        !h.is_empty()
            && !h.starts_with('.')
            && !h.ends_with('.')
            && !h.contains("..")
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if let Some(domain) = host.strip_prefix("*.") {
        if !host_ok(domain) || !domain.contains('.') {
            return Err(format!("`{text}`: a pattern covers the subdomains of a registrable domain, e.g. https://*.example.com"));
        }
        return Ok(OriginPattern::Subdomains {
            scheme: scheme.to_owned(),
            suffix: format!(".{domain}"),
            port,
        });
    }
    // IPv6 literals are written in brackets.
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if !bracketed && !host_ok(host) {
        return Err(format!("`{text}`: an origin is scheme://host[:port], with no path, no trailing `/` and `*` only as the first label"));
    }
    Ok(OriginPattern::Exact(lower))
}

/// A `cors = "NAME"` reference (`[routing] cors`, or a route's): the policy, `None` for
/// "none", and an error for a name no policy file defines.
pub(crate) fn reference(
    l: &mut Loader,
    src: &SourceFile,
    name: &Spanned<String>,
    defined: &CorsDefined,
    what: &str,
) -> Result<Option<Arc<CorsPolicy>>, ()> {
    if name.get_ref() == "none" {
        return Ok(None);
    }
    match defined.get(name.get_ref()) {
        Some(Some(policy)) => Ok(Some(Arc::clone(policy))),
        // Invalid where it is defined: reported there.
        Some(None) => Err(()),
        None => {
            l.error(
                src,
                Some(name.span()),
                format!(
                    "{what}: no [cors.{}] in the policy files (or \"none\")",
                    name.get_ref()
                ),
            );
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};
    use super::*;

    const POLICIES: &str = "[cors.web]\norigins = [\"http://localhost:5173\", \"https://*.example.com\"]\ncredentials = true\nmax_age = \"1h\"\nexpose_headers = [\"x-backend-version\"]\n\n[[route]]\nname = \"a\"\npath = \"/a\"\nauth = \"none\"\n\n[[route]]\nname = \"b\"\npath = \"/b\"\nauth = \"none\"\ncors = \"none\"\n";

    #[test]
    fn routes_take_the_default_name_one_or_none() {
        let gateway = GATEWAY.replace(
            "policies = \"policies\"",
            "policies = \"policies\"\ncors = \"web\"",
        );
        let s = load(&gateway, &[("p.toml", POLICIES)]).unwrap();
        let a = s.routes[0].cors.as_ref().unwrap();
        assert_eq!(a.name, "web");
        assert!(a.credentials);
        assert_eq!(a.max_age.as_secs(), 3600);
        assert!(a.expose.iter().any(|h| h == "x-ratelimit-remaining"));
        assert!(a.expose.iter().any(|h| h == "x-backend-version"));
        assert!(a.headers.iter().any(|h| h == "x-csrf-token"));
        assert!(s.routes[1].cors.is_none());
        assert_eq!(s.cors.as_ref().unwrap().name, "web");
        assert_eq!(s.fallback.cors.as_ref().unwrap().name, "web");
        // Without [routing] cors, routes that name none have none.
        let s = load(GATEWAY, &[("p.toml", POLICIES)]).unwrap();
        assert!(s.routes[0].cors.is_none());
    }

    #[test]
    fn each_mistake_is_one_error() {
        let policies = "[cors.open]\norigins = [\"*\"]\ncredentials = true\n\n[cors.none]\norigins = [\"http://a.test\"]\n\n[cors.bad]\norigins = [\"null\", \"https://*.com\"]\nmethods = [\"get\"]\nmax_age = \"2d\"\n\n[[route]]\nname = \"a\"\npath = \"/a\"\nauth = \"none\"\ncors = \"missing\"\n\n[[route]]\nname = \"b\"\npath = \"/b\"\nauth = \"none\"\ncors = \"bad\"\n";
        let e = errors(GATEWAY, &[("p.toml", policies)]);
        for expected in [
            "[cors.open]: `*` cannot be combined with credentials = true",
            "cors policy name `none`",
            "[cors.bad] origins: `null`",
            "[cors.bad] origins: `https://*.com`",
            "[cors.bad] methods: `get`",
            "[cors.bad] max_age: at most 24h",
            "route `a` cors: no [cors.missing]",
        ] {
            assert_eq!(
                e.iter().filter(|m| m.contains(expected)).count(),
                1,
                "{expected}: {e:#?}"
            );
        }
        // `bad` is reported where it is written, not again at route `b`.
        assert!(!e.iter().any(|m| m.contains("route `b`")), "{e:#?}");
        // A value of the wrong type hides none of the table's other mistakes.
        let policies = "[cors.typed]\norigins = [\"null\"]\nmax_age = 5\ncredentials = \"yes\"\n";
        let e = errors(GATEWAY, &[("p.toml", policies)]);
        assert_eq!(
            e,
            [
                "p.toml:2:12: [cors.typed] origins: `null` is the origin of sandboxed frames and local files: anyone can send it",
                "p.toml:3:11: [cors.typed]: invalid type: integer `5`, expected a string in quotes (a duration is written \"2s\", \"500ms\")",
                "p.toml:4:15: [cors.typed]: invalid type: string \"yes\", expected true or false",
            ]
        );
    }

    fn allows(pattern: &str, origin: &str) -> bool {
        origin_pattern(pattern).unwrap().matches(origin)
    }

    #[test]
    fn exact_origins_match_exactly() {
        assert!(allows("http://localhost:5173", "http://localhost:5173"));
        assert!(allows("HTTPS://App.Example.com", "https://app.example.com"));
        assert!(!allows("http://localhost:5173", "http://localhost:5174"));
        assert!(!allows("https://app.example.com", "http://app.example.com"));
        assert!(!allows(
            "https://app.example.com",
            "https://app.example.com.evil.io"
        ));
    }

    #[test]
    fn subdomain_patterns_cover_subdomains_only() {
        let p = "https://*.example.com";
        assert!(allows(p, "https://app.example.com"));
        assert!(allows(p, "https://a.b.example.com"));
        assert!(!allows(p, "https://example.com"));
        assert!(!allows(p, "https://evil-example.com"));
        assert!(!allows(p, "https://app.example.com.evil.io"));
        assert!(!allows(p, "http://app.example.com"));
        assert!(!allows(p, "https://app.example.com:8443"));
        assert!(!allows(p, "https://.example.com"));
        assert!(!allows(p, "https://a_b.example.com"));
        assert!(allows(
            "https://*.example.com:8443",
            "https://app.example.com:8443"
        ));
    }

    #[test]
    fn origins_that_cannot_be_meant_are_refused() {
        for bad in [
            "null",
            "app.example.com",
            "ftp://example.com",
            "https://example.com/",
            "https://example.com/app",
            "https://*.com",
            "https://app.*.example.com",
            "https://example.com:0",
            "https://exa mple.com",
        ] {
            assert!(origin_pattern(bad).is_err(), "{bad}");
        }
        assert_eq!(origin_pattern("*").unwrap(), OriginPattern::Any);
    }
}
