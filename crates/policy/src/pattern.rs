//! Route path patterns: literal segments, `{param}` segments and a trailing `*`.
//!
//! Patterns are matched against *normalized* paths (see [`crate::path`]), segment by
//! segment and case-sensitively. `{name}` matches exactly one non-empty segment; a final
//! `*` matches zero or more segments, so `/api/*` matches `/api`, `/api/` and `/api/a/b`.
//! A single trailing slash on the request path is ignored when matching (`/admin/` is
//! judged like `/admin`), because backends commonly serve both alike and a policy that
//! guards one must guard the other. For the same reason a literal segment is compared
//! without the `;parameters` a request adds to it: servlet containers and Spring route
//! `/admin;x=1/users` as `/admin/users`, so `/admin/*` must judge it.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A compiled route path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
    rest: bool,
}

impl PathPattern {
    /// Compiles a pattern; the error says what is wrong with it.
    pub fn parse(source: &str) -> Result<Self, String> {
        if !source.starts_with('/') {
            return Err(format!("path pattern `{source}` must start with '/'"));
        }
        let body = &source[1..];
        let mut parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        let rest = parts.last() == Some(&"*");
        if rest {
            parts.pop();
        }
        let mut segments = Vec::with_capacity(parts.len());
        for part in parts {
            segments.push(parse_segment(source, part)?);
        }
        let mut names: Vec<&str> = segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) => Some(n.as_str()),
                Segment::Literal(_) => None,
            })
            .collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "path pattern `{source}` names `{{{}}}` twice",
                w[0]
            ));
        }
        Ok(PathPattern {
            source: source.to_owned(),
            segments,
            rest,
        })
    }

    /// The literal segments before the first `{param}` or `*`: every path the pattern
    /// matches starts with them (`/gateway/auth/refresh` → `["gateway", "auth",
    /// "refresh"]`).
    pub fn literal_prefix(&self) -> Vec<&str> {
        self.segments
            .iter()
            .map_while(|s| match s {
                Segment::Literal(l) => Some(l.as_str()),
                Segment::Param(_) => None,
            })
            .collect()
    }

    /// `/*`: the pattern every path matches.
    pub fn any() -> PathPattern {
        PathPattern {
            source: "/*".to_owned(),
            segments: Vec::new(),
            rest: true,
        }
    }

    /// Whether every path `other` matches, this pattern matches too.
    pub fn covers(&self, other: &PathPattern) -> bool {
        let fits = if self.rest {
            self.segments.len() <= other.segments.len()
        } else {
            !other.rest && self.segments.len() == other.segments.len()
        };
        fits && self
            .segments
            .iter()
            .zip(&other.segments)
            .all(|(mine, theirs)| match (mine, theirs) {
                (Segment::Param(_), _) => true,
                (Segment::Literal(a), Segment::Literal(b)) => a == b,
                (Segment::Literal(_), Segment::Param(_)) => false,
            })
    }

    /// Whether a normalized path matches.
    pub fn matches(&self, path: &str) -> bool {
        self.captures(path, |_, _| {})
    }

    /// The `{param}` values of a matching path, in pattern order; `None` if it does not match.
    pub fn params<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let mut params = Vec::new();
        self.captures(path, |name, value| params.push((name, value)))
            .then_some(params)
    }

    fn captures<'s, 'p>(
        &'s self,
        path: &'p str,
        mut on_param: impl FnMut(&'s str, &'p str),
    ) -> bool {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let mut request = trimmed.split('/').filter(|_| !trimmed.is_empty());
        for segment in &self.segments {
            let Some(actual) = request.next() else {
                return false;
            };
            match segment {
                Segment::Literal(lit) if lit == without_parameters(actual) => {}
                Segment::Param(name) if !actual.is_empty() => on_param(name, actual),
                _ => return false,
            }
        }
        self.rest || request.next().is_none()
    }
}

/// A path segment without its `;parameters` (`admin;jsessionid=1` → `admin`).
fn without_parameters(segment: &str) -> &str {
    segment.split(';').next().unwrap_or(segment)
}

fn parse_segment(source: &str, part: &str) -> Result<Segment, String> {
    if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        return if valid {
            Ok(Segment::Param(name.to_owned()))
        } else {
            Err(format!(
                "path pattern `{source}`: `{{{name}}}` is not a valid parameter name"
            ))
        };
    }
    if part.is_empty() {
        return Err(format!(
            "path pattern `{source}` has an empty segment (`//` or a trailing `/`)"
        ));
    }
    if part.contains(['{', '}', '*']) {
        return Err(format!(
            "path pattern `{source}`: segment `{part}` mixes `{{`, `}}` or `*` with text; \
             `{{param}}` must be a whole segment and `*` only the last one"
        ));
    }
    if part.contains(';') {
        return Err(format!(
            "path pattern `{source}`: segment `{part}` holds `;`; a request's `;parameters` \
             are not compared, so write the segment without them"
        ));
    }
    if part == "." || part == ".." {
        return Err(format!("path pattern `{source}` contains a dot segment"));
    }
    // Literals are compared with normalized request paths, so they must be normalized too.
    match crate::path::normalize(&format!("/{part}")) {
        Ok(n) if n[1..] == *part => Ok(Segment::Literal(part.to_owned())),
        Ok(n) => Err(format!(
            "path pattern `{source}`: segment `{part}` is not in normalized form; write `{}`",
            &n[1..]
        )),
        Err(e) => Err(format!("path pattern `{source}`: {e}")),
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn covering_patterns() {
        let covers = |a: &str, b: &str| p(a).covers(&p(b));
        assert!(covers("/api/*", "/api/admin"));
        assert!(covers("/api/*", "/api"));
        assert!(covers("/api/*", "/api/*"));
        assert!(covers("/api/*", "/api/{id}/x/*"));
        assert!(covers("/*", "/"));
        assert!(covers("/a/{id}", "/a/b"));
        assert!(covers("/a/{id}", "/a/{other}"));
        assert!(!covers("/a/b", "/a/{id}"));
        assert!(!covers("/a/{id}", "/a/{id}/*"));
        assert!(!covers("/api/x/*", "/api/*"));
        assert!(!covers("/api", "/api/*"));
        assert!(!covers("/a/b", "/a/c"));
        // Every path the covered pattern matches, the covering one matches.
        for (a, b, paths) in [
            ("/api/*", "/api/{id}", &["/api/1", "/api/1/"][..]),
            ("/a/{x}/*", "/a/b/c", &["/a/b/c", "/a/b/c/"][..]),
        ] {
            assert!(covers(a, b));
            for path in paths {
                assert!(p(b).matches(path) && p(a).matches(path), "{a} {b} {path}");
            }
        }
    }

    #[test]
    fn literal_patterns_ignore_one_trailing_slash() {
        assert!(p("/admin").matches("/admin"));
        assert!(p("/admin").matches("/admin/"));
        assert!(!p("/admin").matches("/admin/x"));
        assert!(!p("/admin").matches("/ADMIN"));
        assert!(!p("/admin").matches("/administrator"));
        assert!(p("/").matches("/"));
        assert!(!p("/").matches("/a"));
    }

    #[test]
    fn literal_segments_are_compared_without_their_parameters() {
        let admin = p("/admin/*");
        for path in [
            "/admin;x=1",
            "/admin;/users",
            "/admin;jsessionid=1/users;v=2",
        ] {
            assert!(admin.matches(path), "{path}");
        }
        assert!(p("/campaigns/{id}").matches("/campaigns;v=1/42"));
        assert!(!admin.matches("/admins;x/users"));
        assert!(!admin.matches("/x;admin/users"));
    }

    #[test]
    fn params_match_one_segment() {
        let pat = p("/campaigns/{id}/contacts");
        assert_eq!(
            pat.params("/campaigns/42/contacts"),
            Some(vec![("id", "42")])
        );
        assert!(!pat.matches("/campaigns/contacts"));
        assert!(!pat.matches("/campaigns/42/x/contacts"));
    }

    #[test]
    fn star_matches_zero_or_more_segments() {
        let pat = p("/api/*");
        for path in ["/api", "/api/", "/api/a", "/api/a/b/c"] {
            assert!(pat.matches(path), "{path}");
        }
        assert!(!pat.matches("/apix"));
        assert!(p("/*").matches("/"));
        assert!(p("/*").matches("/anything/at/all"));
    }

    #[test]
    fn a_literal_has_the_one_spelling_requests_are_normalized_to() {
        for (written, canonical) in [
            ("/plivo/calls%3Abulk", "calls:bulk"),
            ("/pub/%40internal/*", "@internal"),
            ("/pub/na\u{ef}ve/*", "na%C3%AFve"),
            ("/pub/caf%c3%a9", "caf%C3%A9"),
        ] {
            let e = PathPattern::parse(written).unwrap_err();
            assert!(
                e.ends_with(&format!("write `{canonical}`")),
                "{written}: {e}"
            );
        }
        // Either spelling of the request reaches the route written canonically.
        let bulk = p("/plivo/calls:bulk");
        for raw in [
            "/plivo/calls:bulk",
            "/plivo/calls%3Abulk",
            "/plivo/calls%3abulk",
        ] {
            assert!(bulk.matches(&crate::path::normalize(raw).unwrap()), "{raw}");
        }
        let cafe = p("/pub/caf%C3%A9/*");
        for raw in [
            "/pub/caf\u{e9}/secret",
            "/pub/caf%C3%A9/secret",
            "/pub/caf%c3%a9/secret",
        ] {
            assert!(cafe.matches(&crate::path::normalize(raw).unwrap()), "{raw}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "admin",
            "/a//b",
            "/a/",
            "/{}",
            "/{1x}",
            "/a*",
            "/*/a",
            "/{id}/{id}",
            "/a/../b",
            "/%61",
            "/a%2Fb",
            "/x{id}",
            "/a;b",
        ] {
            assert!(
                PathPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
