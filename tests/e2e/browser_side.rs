//! What a browser page on another origin sees: CORS preflights answered from policy
//! (never reaching authentication, limits or the backend), CORS headers on answers and
//! on errors, and cookie mode, where the page never holds a token and state-changing
//! requests need the CSRF header.

use crate::sessions::{post_json, session_config, DEMO_LOGIN, LOGIN_PATH, POLICIES};
use crate::support::{Harness, RawResponse, Setup};

const APP: &str = "http://localhost:5173";

const CORS: &str = r#"
[cors.app]
origins = ["http://localhost:5173", "https://*.example.com"]
credentials = true
max_age = "5m"
expose_headers = ["x-backend-build"]

[[route]]
name = "open-data"
methods = ["GET"]
path = "/pub/*"
auth = "none"
cors = "none"
"#;

fn setup(sessions: &str) -> Setup {
    Setup {
        policies: vec![
            ("05-cors.toml".into(), CORS.into()),
            ("10-sessions.toml".into(), POLICIES.into()),
        ],
        extra: session_config(sessions),
        routing: "cors = \"app\"".into(),
        ..Setup::default()
    }
}

fn preflight_headers<'a>(
    origin: &'a str,
    method: &'a str,
    headers: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if !headers.is_empty() {
        h.push(("access-control-request-headers", headers));
    }
    h
}

fn assert_cors_allowed(r: &RawResponse, origin: &str) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(origin),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let exposed = r
        .header("access-control-expose-headers")
        .unwrap_or_default();
    for name in [
        "x-ratelimit-remaining",
        "x-request-id",
        "retry-after",
        "x-token-balance",
        "deprecation",
        "x-backend-build",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("vary") && v.contains("origin")));
}

#[tokio::test]
async fn preflights_are_answered_by_the_gateway_from_policy() {
    let h = Harness::with(setup("")).await;
    let before = h.backend.requests();
    let r = h
        .send(
            "OPTIONS",
            "/echo/x",
            &preflight_headers(APP, "POST", "Authorization, Content-Type, X-Request-Id"),
            b"",
        )
        .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert_cors_allowed(&r, APP);
    assert_eq!(r.header("access-control-allow-methods"), Some("POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type, x-request-id")
    );
    assert_eq!(r.header("access-control-max-age"), Some("300"));
    // No token, and yet 204: authentication never saw the preflight; nor did the backend.
    assert_eq!(h.backend.requests(), before);
    // A subdomain pattern.
    let r = h
        .send(
            "OPTIONS",
            "/echo/x",
            &preflight_headers("https://app.example.com", "GET", ""),
            b"",
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );

    // Refused: another origin, a look-alike, a header or a method the policy does not
    // allow. The browser gets no CORS header and stops there.
    for (origin, method, headers) in [
        ("https://evil.test", "POST", ""),
        ("https://example.com.evil.test", "GET", ""),
        ("https://example.com", "GET", ""),
        ("null", "GET", ""),
        (APP, "POST", "x-api-key"),
        (APP, "POST", "authorization, x-something"),
    ] {
        let r = h
            .send(
                "OPTIONS",
                "/echo/x",
                &preflight_headers(origin, method, headers),
                b"",
            )
            .await;
        r.assert_problem(403, "CORS_PREFLIGHT_REFUSED");
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{origin} {headers}"
        );
    }
    // A preflight whose method cannot be read is refused as a preflight, not served as
    // an OPTIONS request of its own (which would ask for a token).
    for asked in [vec!["GET", "POST"], vec!["GÉT"]] {
        let mut headers = vec![("origin", APP)];
        headers.extend(asked.iter().map(|m| ("access-control-request-method", *m)));
        let r = h.send("OPTIONS", "/echo/x", &headers, b"").await;
        r.assert_problem(403, "CORS_PREFLIGHT_REFUSED");
    }
    // A method no route serves on the path, or a path no route matches: the refusal
    // is what the page must see, and a browser shows it only after a preflight that
    // succeeded. So the preflight is answered (by the default policy), and the actual
    // request gets its 405 or 404, readable.
    for (path, method, refusal) in [
        (
            "/gateway/auth/refresh",
            "DELETE",
            (405, "METHOD_NOT_ALLOWED"),
        ),
        ("/nowhere", "GET", (404, "ROUTE_NOT_FOUND")),
    ] {
        let r = h
            .send(
                "OPTIONS",
                path,
                &preflight_headers(APP, method, "authorization"),
                b"",
            )
            .await;
        assert_eq!(
            r.status,
            204,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("access-control-allow-origin"), Some(APP));
        assert_eq!(r.header("access-control-allow-methods"), Some(method));
        let r = h
            .send(
                method,
                path,
                &[("origin", APP), ("authorization", "Bearer x")],
                b"",
            )
            .await;
        r.assert_problem(refusal.0, refusal.1);
        assert_cors_allowed(&r, APP);
        // Still refused for an origin the policy does not know.
        let r = h
            .send(
                "OPTIONS",
                path,
                &preflight_headers("https://evil.test", method, ""),
                b"",
            )
            .await;
        assert_ne!(r.status, 204, "{path}");
        assert!(r.header("access-control-allow-origin").is_none());
    }
    assert_eq!(h.backend.requests(), before);
    // A route with cors = "none": the gateway does not answer for it.
    let r = h
        .send("OPTIONS", "/pub/x", &preflight_headers(APP, "GET", ""), b"")
        .await;
    assert!(r.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn answers_and_errors_carry_cors_headers_for_allowed_origins_only() {
    let h = Harness::with(setup("")).await;
    // An error from authentication still reaches the page's script.
    let r = h.get("/echo/x", &[("origin", APP)]).await;
    r.assert_problem(401, "AUTH_REQUIRED");
    assert_cors_allowed(&r, APP);
    // So does a 404 for a path no route matches (the default policy).
    let r = h.get("/nowhere", &[("origin", APP)]).await;
    r.assert_problem(404, "ROUTE_NOT_FOUND");
    assert_cors_allowed(&r, APP);
    // A login from the page: the token and the rate-limit headers are readable.
    let r = post_json(&h, LOGIN_PATH, &[("origin", APP)], DEMO_LOGIN).await;
    assert_eq!(r.status, 200);
    assert_cors_allowed(&r, APP);
    assert!(r.header("x-ratelimit-remaining").is_some());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let r = h
        .get(
            "/echo/x",
            &[
                ("origin", APP),
                ("authorization", &format!("Bearer {token}")),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_cors_allowed(&r, APP);
    // Another origin: the request is served (CORS is the browser's to enforce), but
    // nothing tells the browser to share the answer.
    let r = h
        .get(
            "/echo/x",
            &[
                ("origin", "https://evil.test"),
                ("authorization", &format!("Bearer {token}")),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(r.header("access-control-allow-credentials").is_none());
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("vary") && v.contains("origin")));
    // No Origin: no CORS headers, but `Vary: Origin`, so that a shared cache does not
    // hand this copy to a page (the JWKS document is cacheable for five minutes).
    let vary_origin = |r: &RawResponse| {
        r.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("vary") && v.contains("origin"))
    };
    let r = h
        .get("/echo/x", &[("authorization", &format!("Bearer {token}"))])
        .await;
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(vary_origin(&r), "{:?}", r.headers);
    for path in ["/nowhere", "/.well-known/jwks.json"] {
        let r = h.get(path, &[]).await;
        assert!(r.header("access-control-allow-origin").is_none());
        assert!(vary_origin(&r), "{path}: {:?}", r.headers);
    }
}

/// Every `Set-Cookie` of a response, by cookie name.
fn set_cookies(r: &RawResponse) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| {
            let name = v.split('=').next().unwrap().to_owned();
            (name, v.clone())
        })
        .collect()
}

fn cookie_value(set: &[(String, String)], name: &str) -> String {
    let line = &set
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name}: {set:?}"))
        .1;
    line.split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned()
}

#[tokio::test]
async fn in_cookie_mode_a_login_from_another_site_is_refused() {
    let h = Harness::with(setup("tokens = \"cookie\"")).await;
    // A page elsewhere auto-submitting the attacker's credentials (login CSRF): by what
    // the browser says of the request's site, or by its Origin.
    for headers in [
        vec![
            ("origin", "https://evil.test"),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![("origin", "https://evil.test")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "same-site")],
    ] {
        let r = post_json(&h, LOGIN_PATH, &headers, DEMO_LOGIN).await;
        r.assert_problem(403, "CSRF_TOKEN_INVALID");
        assert!(set_cookies(&r).is_empty(), "{headers:?}");
    }
    // The frontend's origin (allowed by the CORS policy), the gateway's own origin, and
    // a client that is no browser log in.
    for headers in [
        vec![("origin", APP), ("sec-fetch-site", "cross-site")],
        vec![
            ("origin", "http://gw.test"),
            ("sec-fetch-site", "same-origin"),
        ],
        vec![],
    ] {
        let r = post_json(&h, LOGIN_PATH, &headers, DEMO_LOGIN).await;
        assert_eq!(
            r.status,
            200,
            "{headers:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// A CORS policy allowing every origin (`*`, without credentials) names no site as the
/// frontend's: a cookie-mode login from another site is refused as under no policy.
#[tokio::test]
async fn in_cookie_mode_a_policy_open_to_every_origin_trusts_none_for_login() {
    let open = "[cors.open]\norigins = [\"*\"]\n";
    let h = Harness::with(Setup {
        policies: vec![
            ("05-cors.toml".into(), open.into()),
            ("10-sessions.toml".into(), POLICIES.into()),
        ],
        extra: session_config("tokens = \"cookie\""),
        routing: "cors = \"open\"".into(),
        ..Setup::default()
    })
    .await;
    let evil = [
        ("origin", "https://evil.test"),
        ("sec-fetch-site", "cross-site"),
    ];
    let r = post_json(&h, LOGIN_PATH, &evil, DEMO_LOGIN).await;
    r.assert_problem(403, "CSRF_TOKEN_INVALID");
    assert!(set_cookies(&r).is_empty());
    // The policy still applies to what it answers: the refusal carries `*`.
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let own = [
        ("origin", "http://gw.test"),
        ("sec-fetch-site", "same-origin"),
    ];
    let r = post_json(&h, LOGIN_PATH, &own, DEMO_LOGIN).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// A refresh sets the session cookies of whatever refresh token its body names, so a
/// page elsewhere posting the attacker's token would log the victim's browser into the
/// attacker's account, as a login would: held to the login's rule.
#[tokio::test]
async fn in_cookie_mode_a_refresh_from_another_site_is_refused() {
    let h = Harness::with(setup("tokens = \"cookie\"")).await;
    let r = post_json(&h, LOGIN_PATH, &[], DEMO_LOGIN).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let attackers = cookie_value(&set_cookies(&r), "tg_refresh");
    let body = format!(r#"{{"refreshToken":"{attackers}"}}"#);
    for headers in [
        vec![
            ("origin", "https://evil.test"),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "same-site")],
    ] {
        let r = post_json(&h, "/gateway/auth/refresh", &headers, &body).await;
        r.assert_problem(403, "CSRF_TOKEN_INVALID");
        assert!(set_cookies(&r).is_empty(), "{headers:?}");
    }
    // Refused before it was read: the token is not spent, and refreshes from the
    // frontend's origin.
    let r = post_json(&h, "/gateway/auth/refresh", &[("origin", APP)], &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(!set_cookies(&r).is_empty());
}

#[tokio::test]
async fn in_cookie_mode_the_page_never_holds_a_token() {
    let h = Harness::with(setup("tokens = \"cookie\"")).await;
    let r = post_json(&h, LOGIN_PATH, &[("origin", APP)], DEMO_LOGIN).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert!(body.get("token").is_none(), "{body}");
    assert!(body.get("refreshToken").is_none(), "{body}");
    let csrf = body["csrfToken"].as_str().unwrap().to_owned();
    assert_eq!(body["user"]["clientId"], "1001");
    let set = set_cookies(&r);
    for (name, path) in [
        ("tg_refresh", "/gateway/auth"),
        ("tg_access", "/"),
        ("tg_csrf", "/"),
    ] {
        let line = &set.iter().find(|(n, _)| n == name).unwrap().1;
        for attribute in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            &format!("Path={path};"),
        ] {
            assert!(line.contains(attribute), "{line} lacks {attribute}");
        }
    }
    assert_eq!(cookie_value(&set, "tg_csrf"), csrf);
    let access = cookie_value(&set, "tg_access");
    let refresh = cookie_value(&set, "tg_refresh");
    let cookies = format!("theme=dark; tg_access={access}; tg_csrf={csrf}");

    // Reads need only the cookie; the backend never sees the gateway's cookies.
    let r = h
        .get("/echo/x", &[("origin", APP), ("cookie", &cookies)])
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["query"], "clientId=1001");
    assert_eq!(r.echoed_header("cookie"), vec!["theme=dark".to_owned()]);
    // Writes need the CSRF header too, equal to the session's.
    let post = |headers: Vec<(&'static str, String)>| {
        let h = &h;
        async move {
            let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            h.send("POST", "/echo/x", &refs, b"").await
        }
    };
    post(vec![("cookie", cookies.clone())])
        .await
        .assert_problem(403, "CSRF_TOKEN_INVALID");
    post(vec![
        ("cookie", cookies.clone()),
        ("x-csrf-token", "forged".into()),
    ])
    .await
    .assert_problem(403, "CSRF_TOKEN_INVALID");
    let r = post(vec![
        ("cookie", cookies.clone()),
        ("x-csrf-token", csrf.clone()),
    ])
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // An attacker's own session gives them a valid CSRF token, but not the victim's:
    // the header must match the cookie of the session that sent it.
    let other = post_json(&h, LOGIN_PATH, &[], DEMO_LOGIN).await;
    let attacker_csrf = other.json()["csrfToken"].as_str().unwrap().to_owned();
    assert_ne!(attacker_csrf, csrf);
    post(vec![
        ("cookie", cookies.clone()),
        ("x-csrf-token", attacker_csrf.clone()),
    ])
    .await
    .assert_problem(403, "CSRF_TOKEN_INVALID");
    // Nor can a site that plants cookies for this host (a sibling subdomain) pair its
    // own CSRF cookie and header with the victim's access cookie: the access token
    // names its session's CSRF token.
    for planted in [attacker_csrf.as_str(), "planted"] {
        post(vec![
            ("cookie", format!("tg_access={access}; tg_csrf={planted}")),
            ("x-csrf-token", planted.to_owned()),
        ])
        .await
        .assert_problem(403, "CSRF_TOKEN_INVALID");
    }

    // Refresh from the cookie, with the CSRF header; new cookies, the same CSRF token.
    let refresh_cookie = format!("tg_refresh={refresh}; tg_csrf={csrf}");
    h.send(
        "POST",
        "/gateway/auth/refresh",
        &[("cookie", &refresh_cookie)],
        b"",
    )
    .await
    .assert_problem(403, "CSRF_TOKEN_INVALID");
    let r = h
        .send(
            "POST",
            "/gateway/auth/refresh",
            &[("cookie", &refresh_cookie), ("x-csrf-token", &csrf)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json().get("token").is_none());
    assert_eq!(r.json()["csrfToken"], csrf.as_str());
    let set = set_cookies(&r);
    let new_refresh = cookie_value(&set, "tg_refresh");
    let new_access = cookie_value(&set, "tg_access");
    assert_ne!(new_refresh, refresh);

    // Logout clears the cookies and ends the session.
    let cookies = format!("tg_access={new_access}; tg_refresh={new_refresh}; tg_csrf={csrf}");
    let r = h
        .send(
            "POST",
            "/gateway/auth/logout",
            &[("cookie", &cookies), ("x-csrf-token", &csrf)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let cleared = set_cookies(&r);
    assert_eq!(cleared.len(), 3);
    assert!(cleared.iter().all(|(_, line)| line.contains("Max-Age=0")));
    let r = h
        .get("/echo/x", &[("cookie", &format!("tg_access={new_access}"))])
        .await;
    r.assert_problem(401, "TOKEN_REVOKED");
    // A cookie sent twice (a sibling domain may have set one) is no credential.
    let r = h
        .get(
            "/echo/x",
            &[(
                "cookie",
                &format!("tg_access={new_access}; tg_access=other"),
            )],
        )
        .await;
    r.assert_problem(401, "TOKEN_INVALID");
}
