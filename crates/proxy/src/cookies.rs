//! The session cookies of cookie mode (`[sessions] tokens = "cookie"`), and the CSRF
//! check that comes with them.
//!
//! In cookie mode the browser holds the tokens in `HttpOnly; SameSite=Strict` cookies,
//! and page scripts never see them:
//! - `tg_refresh`, scoped to the refresh and logout paths;
//! - `tg_access`, unless `cookie_access_token = false`;
//! - `tg_csrf`.
//!
//! A browser attaches cookies to any request for the gateway's site, including a
//! request a hostile page starts. So a request that changes state must also carry the
//! CSRF token in `X-CSRF-Token`, equal to the `tg_csrf` cookie (double submit). Another
//! site cannot read the token, and it cannot set that header without a preflight this
//! gateway's CORS policy refuses. The page gets the token in the login and refresh
//! answers (`csrfToken`). The access token carries the token's hash (`csh`), so the
//! pair must also be the session's own: a site that can plant cookies for this host (a
//! sibling subdomain) cannot pair a token of its choosing with the victim's access
//! cookie.
//!
//! These cookies are the gateway's credentials: they are removed from every request
//! forwarded upstream, on every route.

use http::header::{HeaderMap, HeaderValue, COOKIE};
use http::Method;
use tollgate_policy::snapshot::{Endpoint, RouteAction, Snapshot};

pub const ACCESS: &str = "tg_access";
pub const REFRESH: &str = "tg_refresh";
pub const CSRF: &str = "tg_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

const OURS: [&str; 3] = [ACCESS, REFRESH, CSRF];

/// A cookie's value. `Err` when it is sent twice (another path or a sibling domain may
/// have set one: which one is ours cannot be told), or with a value that is not text.
///
/// Read as bytes: browsers send every cookie of the site in one field, and another
/// cookie's UTF-8 value (`name=José`, set by the backend or a sibling domain) must not
/// hide ours, as it did when a field that was not all visible ASCII was skipped whole.
pub fn get<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ()> {
    let mut found = None;
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let Some(at) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (key, value) = (&pair[..at], &pair[at + 1..]);
            if key.trim_ascii() != name.as_bytes() {
                continue;
            }
            if found.is_some() {
                return Err(());
            }
            found = Some(std::str::from_utf8(value.trim_ascii()).map_err(|_| ())?);
        }
    }
    Ok(found)
}

/// Joins several `Cookie` fields into one, `; `-separated: HTTP/2 sends each cookie as a
/// field of its own and RFC 9113 §8.2.3 wants them joined for HTTP/1.1, where backends
/// that join repeated fields with `,` (WSGI servers) would misread them.
pub fn join(headers: &mut HeaderMap) {
    if headers.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty())
        .collect();
    let value = HeaderValue::from_bytes(&joined.join(&b"; "[..])).ok();
    headers.remove(COOKIE);
    if let Some(value) = value {
        headers.insert(COOKIE, value);
    }
}

/// Removes the gateway's own cookies from the request's `Cookie` headers, keeping the
/// rest for the backend.
pub fn strip_ours(headers: &mut HeaderMap) {
    if !headers.contains_key(COOKIE) {
        return;
    }
    // Bytes, not text: a backend's own cookie may hold non-ASCII bytes (a UTF-8 value
    // it set), and dropping the header for that would lose every cookie in it.
    let kept: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|h| h.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| {
            let name = pair
                .split(|b| *b == b'=')
                .next()
                .unwrap_or(pair)
                .trim_ascii();
            !pair.is_empty() && !OURS.iter().any(|ours| ours.as_bytes() == name)
        })
        .collect();
    let value = (!kept.is_empty())
        .then(|| HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok())
        .flatten();
    headers.remove(COOKIE);
    if let Some(value) = value {
        headers.insert(COOKIE, value);
    }
}

/// Removes a backend's `Set-Cookie` for one of the gateway's own cookies: a backend
/// could otherwise plant, fix or clear the caller's session (and its CSRF token).
pub fn drop_set_by_backend(headers: &mut HeaderMap) {
    let set_cookie = http::header::SET_COOKIE;
    let theirs = |value: &HeaderValue| {
        let bytes = value.as_bytes();
        let name = bytes
            .split(|b| *b == b'=')
            .next()
            .unwrap_or(bytes)
            .trim_ascii();
        !OURS
            .iter()
            .any(|ours| ours.as_bytes().eq_ignore_ascii_case(name))
    };
    if headers.get_all(&set_cookie).iter().all(theirs) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(&set_cookie)
        .iter()
        .filter(|v| theirs(v))
        .cloned()
        .collect();
    headers.remove(&set_cookie);
    for value in kept {
        headers.append(&set_cookie, value);
    }
}

/// The `csh` claim for a session's CSRF token: its SHA-256, hex, first 128 bits.
pub fn csrf_hash(token: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(token.as_bytes());
    crate::trace_context::hex(&digest[..16])
}

/// Whether the request's CSRF header is the session's own: the one the access token's
/// `csh` names (a token without one, minted before it existed, is not held to it).
pub fn csrf_bound(headers: &HeaderMap, csh: Option<&str>) -> bool {
    let Some(csh) = csh else {
        return true;
    };
    let Some(header) = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    tollgate_auth::secret::equal(csrf_hash(header).as_bytes(), csh.as_bytes())
}

/// Whether a request with this method changes state (and so needs the CSRF header).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the request carries the session's CSRF token in the header, equal to the
/// cookie (compared in constant time).
pub fn csrf_ok(headers: &HeaderMap) -> bool {
    let Ok(Some(cookie)) = get(headers, CSRF) else {
        return false;
    };
    let mut presented = headers.get_all(CSRF_HEADER).iter();
    let (Some(header), None) = (presented.next(), presented.next()) else {
        return false;
    };
    !cookie.is_empty() && tollgate_auth::secret::equal(header.as_bytes(), cookie.as_bytes())
}

/// `Set-Cookie` for one of ours.
pub fn set(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly{secure}; SameSite=Strict"
    ))
    .ok()
}

/// `Set-Cookie` that removes one of ours.
pub fn clear(name: &str, path: &str, secure: bool) -> Option<HeaderValue> {
    set(name, "", path, 0, secure)
}

/// The path the refresh cookie is scoped to: the longest common prefix of the refresh
/// and logout routes (`/gateway/auth`), so the token travels with no other request.
pub fn refresh_path(snapshot: &Snapshot) -> String {
    let mut common: Option<Vec<&str>> = None;
    for route in &snapshot.routes {
        if !matches!(
            route.action,
            RouteAction::Serve(Endpoint::Refresh | Endpoint::Logout)
        ) {
            continue;
        }
        let prefix = route.path.literal_prefix();
        common = Some(match common {
            None => prefix,
            Some(c) => c
                .iter()
                .zip(&prefix)
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    match common {
        Some(segments) if !segments.is_empty() => format!("/{}", segments.join("/")),
        _ => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_cannot_set_the_gateway_s_cookies() {
        let mut h = HeaderMap::new();
        for value in [
            "tg_access=evil; Path=/",
            "theme=dark",
            "TG_REFRESH=evil; Path=/gateway/auth",
            " tg_csrf =x",
            "__Host-tg_access=other",
        ] {
            h.append(http::header::SET_COOKIE, HeaderValue::from_static(value));
        }
        drop_set_by_backend(&mut h);
        let kept: Vec<_> = h.get_all(http::header::SET_COOKIE).iter().collect();
        assert_eq!(kept, ["theme=dark", "__Host-tg_access=other"]);
    }

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn ours_are_read_once_and_never_forwarded() {
        let mut h = headers(&["theme=dark; tg_access=abc", "tg_csrf=xyz;lang=en"]);
        assert_eq!(get(&h, ACCESS), Ok(Some("abc")));
        assert_eq!(get(&h, REFRESH), Ok(None));
        strip_ours(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "theme=dark; lang=en");
        let mut only = headers(&["tg_refresh=r"]);
        strip_ours(&mut only);
        assert!(!only.contains_key(COOKIE));
        // A backend's cookie with raw non-ASCII bytes is kept, byte for byte.
        let mut raw = HeaderMap::new();
        raw.insert(
            COOKIE,
            HeaderValue::from_bytes(b"sess=caf\xe9; tg_access=a; a=1").unwrap(),
        );
        strip_ours(&mut raw);
        assert_eq!(raw[COOKIE].as_bytes(), b"sess=caf\xe9; a=1");
        // Sent twice: ambiguous.
        assert_eq!(
            get(&headers(&["tg_access=a", "tg_access=b"]), ACCESS),
            Err(())
        );
        // Another cookie's UTF-8 (or Latin-1) value beside ours does not hide ours.
        for field in [
            &b"name=Jos\xc3\xa9; tg_access=a; tg_csrf=c"[..],
            b"tg_access=a;x=\xe9;tg_csrf=c",
        ] {
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_bytes(field).unwrap());
            assert_eq!(get(&h, ACCESS), Ok(Some("a")));
            assert_eq!(get(&h, CSRF), Ok(Some("c")));
            assert_eq!(get(&h, REFRESH), Ok(None));
        }
        // Ours with a value that is not text is not ours to read.
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_bytes(b"tg_access=\xff").unwrap());
        assert_eq!(get(&h, ACCESS), Err(()));
    }

    #[test]
    fn the_csrf_header_must_be_the_one_the_access_token_names() {
        let mut h = HeaderMap::new();
        h.insert(CSRF_HEADER, HeaderValue::from_static("abc"));
        assert!(csrf_bound(&h, Some(&csrf_hash("abc"))));
        assert!(!csrf_bound(&h, Some(&csrf_hash("abd"))));
        assert!(csrf_bound(&h, None), "tokens minted before `csh` existed");
        assert!(!csrf_bound(&HeaderMap::new(), Some(&csrf_hash("abc"))));
        assert_eq!(csrf_hash("abc").len(), 32);
    }

    #[test]
    fn csrf_needs_the_header_equal_to_the_cookie() {
        let mut h = headers(&["tg_csrf=token-1"]);
        assert!(!csrf_ok(&h));
        h.insert(CSRF_HEADER, HeaderValue::from_static("token-2"));
        assert!(!csrf_ok(&h));
        h.insert(CSRF_HEADER, HeaderValue::from_static("token-1"));
        assert!(csrf_ok(&h));
        h.append(CSRF_HEADER, HeaderValue::from_static("token-1"));
        assert!(!csrf_ok(&h), "two headers are ambiguous");
        let mut no_cookie = HeaderMap::new();
        no_cookie.insert(CSRF_HEADER, HeaderValue::from_static(""));
        assert!(!csrf_ok(&no_cookie));
        assert!(changes_state(&Method::POST));
        assert!(!changes_state(&Method::GET));
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let v = set(REFRESH, "r", "/gateway/auth", 60, true).unwrap();
        assert_eq!(
            v,
            "tg_refresh=r; Path=/gateway/auth; Max-Age=60; HttpOnly; Secure; SameSite=Strict"
        );
        assert_eq!(
            clear(ACCESS, "/", false).unwrap(),
            "tg_access=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
        );
    }
}
