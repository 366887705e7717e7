//! The gateway's own login, refresh and logout against the demo backend's legacy login
//! (a bare array, `[]` on bad credentials): the answer's shape, tokens the gateway's own
//! JWT check accepts, rotation with reuse detection and a grace answer, concurrent
//! refreshes, logout everywhere within a second (two instances sharing Redis), sessions
//! that survive `kill -9`, and signing-key rotation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::support::{
    bearer_with, eventually, jwt_config, jwt_fixtures, write_config, GatewayProcess, Harness,
    RawResponse, RedisServer, Setup, TempDir,
};

pub const LOGIN_PATH: &str = "/interlogue/get-client";
pub const DEMO_LOGIN: &str = r#"{"username":"demo@acme.test","password":"demo-password"}"#;

pub const POLICIES: &str = r#"
[limits.login-per-ip]
rate = 1000
period = "1m"
key = ["ip"]

[[route]]
name = "login"
methods = ["POST"]
path = "/interlogue/get-client"
auth = "none"
action = "login"
limits = ["login-per-ip"]

[[route]]
name = "refresh"
methods = ["POST"]
path = "/gateway/auth/refresh"
auth = "none"
action = "serve"
endpoint = "refresh"

[[route]]
name = "logout"
methods = ["POST"]
path = "/gateway/auth/logout"
auth = "none"
action = "serve"
endpoint = "logout"

[[route]]
name = "jwks"
methods = ["GET"]
path = "/.well-known/jwks.json"
auth = "none"
action = "serve"
endpoint = "jwks"

[[route]]
name = "echo"
path = "/echo/*"
auth = "jwt"
"#;

/// `[jwt]` with the fixtures' HS256 key (for the other tests' tokens) and the gateway's
/// Ed25519 signing key after it (the newest signs), `[sessions]` with `sessions` extra
/// lines, and `[login]` for the demo backend.
pub fn session_config(sessions: &str) -> String {
    let keys = jwt_fixtures().join("keys");
    format!(
        "{}\n[[jwt.key]]\nid = \"gateway-ed\"\nalgorithm = \"EdDSA\"\npublic_key_file = \"{}\"\nprivate_key_file = \"{}\"\n\n[sessions]\nreuse_grace = \"2s\"\n{sessions}\n\n[login]\nsubject = \"/0/email\"\nuser_fields = [\"clientId\", \"name\", \"email\"]\ntoken_claims = [\"email\"]\n",
        jwt_config(),
        keys.join("ed25519.pub.pem").display(),
        keys.join("ed25519.key.pem").display(),
    )
}

fn setup(sessions: &str, extra: &str) -> Setup {
    Setup {
        policies: vec![("10-sessions.toml".into(), POLICIES.into())],
        extra: format!("{}\n{extra}", session_config(sessions)),
        ..Setup::default()
    }
}

pub async fn post_json(
    h: &Harness,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawResponse {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    h.send("POST", path, &all, body.as_bytes()).await
}

async fn login(h: &Harness) -> Value {
    let r = post_json(h, LOGIN_PATH, &[], DEMO_LOGIN).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn refresh(h: &Harness, token: &str) -> RawResponse {
    post_json(
        h,
        "/gateway/auth/refresh",
        &[],
        &format!(r#"{{"refreshToken":"{token}"}}"#),
    )
    .await
}

async fn echo(h: &Harness, access: &str) -> RawResponse {
    h.get(
        "/echo/me",
        &[("authorization", &format!("Bearer {access}"))],
    )
    .await
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// The header and claims of a JWT, unverified (the tests verify through the gateway).
fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let mut next = || -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap()
    };
    (next(), next())
}

#[tokio::test]
async fn login_answers_with_a_session_whose_token_opens_protected_routes() {
    let h = Harness::with(setup("", "")).await;
    let r = post_json(&h, LOGIN_PATH, &[], DEMO_LOGIN).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    let text = String::from_utf8_lossy(&r.body).to_string();
    // The legacy apiKey is nowhere: not in user, not in data, not in the token.
    assert!(!text.contains("apiKey"), "{text}");
    assert!(!text.contains("demo-legacy-key-1001"), "{text}");
    let body = r.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "Login successful");
    assert_eq!(
        body["user"],
        serde_json::json!({"clientId": "1001", "name": "Acme Telecom", "email": "demo@acme.test"})
    );
    assert_eq!(body["tokenType"], "Bearer");
    assert_eq!(body["expiresIn"], "24h");
    assert_eq!(body["data"][0]["clientId"], "1001");
    assert_eq!(body["data"][0]["tokens"], 500);
    // expiresAt is RFC 3339, and agrees with the token's exp.
    let (header, claims) = parts(s(&body["token"]));
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["kid"], "gateway-ed");
    assert_eq!(claims["iss"], "https://issuer.test");
    assert_eq!(claims["aud"], "legacy-api");
    assert_eq!(claims["sub"], "demo@acme.test");
    assert_eq!(claims["clientId"], "1001");
    assert_eq!(claims["email"], "demo@acme.test");
    assert!(claims["jti"].is_string() && claims["sid"].is_string());
    let exp = claims["exp"].as_u64().unwrap();
    assert_eq!(exp - claims["iat"].as_u64().unwrap(), 24 * 3600);
    let expires_at = s(&body["expiresAt"]);
    assert_eq!(expires_at, rfc3339_by_httpdate(exp));
    // The refresh token is opaque: no JWT, the session id and 256 bits.
    let refresh_token = s(&body["refreshToken"]);
    let (sid, secret) = refresh_token.split_once('.').unwrap();
    assert_eq!(sid, s(&claims["sid"]));
    assert_eq!(URL_SAFE_NO_PAD.decode(secret).unwrap().len(), 32);

    // The gateway's own JWT check accepts its tokens with no more configuration, and
    // the backend gets the caller's id.
    let r = echo(&h, s(&body["token"])).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["query"], "clientId=1001");
    assert!(r.echoed_header("authorization").is_empty());

    // A form login works the same; the credentials reach the legacy login untouched.
    let r = h
        .send(
            "POST",
            LOGIN_PATH,
            &[("content-type", "application/x-www-form-urlencoded")],
            b"email=ops%40globex.test&password=globex-password",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["user"]["clientId"], "1002");
}

/// RFC 3339 for `secs`, through another formatter (the HTTP date of `httpdate`).
fn rfc3339_by_httpdate(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let http = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(secs));
    // "Tue, 01 Dec 2026 04:32:34 GMT"
    let f: Vec<&str> = http.split(' ').collect();
    let month = MONTHS.iter().position(|m| *m == f[2]).unwrap() + 1;
    format!("{}-{month:02}-{}T{}Z", f[3], f[1], f[4])
}

#[tokio::test]
async fn a_refused_login_is_one_answer_whether_the_account_exists_or_not() {
    let h = Harness::with(setup("", "")).await;
    let mut answers = Vec::new();
    for body in [
        r#"{"username":"demo@acme.test","password":"wrong"}"#,
        r#"{"username":"nobody@nowhere.test","password":"wrong"}"#,
        r#"{"username":"","password":""}"#,
    ] {
        let r = post_json(&h, LOGIN_PATH, &[], body).await;
        r.assert_problem(401, "INVALID_CREDENTIALS");
        let mut problem = r.json();
        problem.as_object_mut().unwrap().remove("requestId");
        answers.push(problem);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("tollgate_sessions_total{event=\"login_refused\"} 3"),
        "{metrics}"
    );
}

/// A refresh or logout body naming its token twice says two things (serde keeps the
/// last, another reader the first): refused, and neither token is spent or ended.
#[tokio::test]
async fn a_session_body_naming_its_token_twice_is_refused() {
    let h = Harness::with(setup("", "")).await;
    let first = login(&h).await;
    let token = s(&first["refreshToken"]).to_owned();
    let other = s(&login(&h).await["refreshToken"]).to_owned();
    let twice = format!(r#"{{"refreshToken":"{other}","refreshToken":"{token}"}}"#);
    for path in ["/gateway/auth/refresh", "/gateway/auth/logout"] {
        post_json(&h, path, &[], &twice)
            .await
            .assert_problem(400, "INVALID_REQUEST_BODY");
    }
    for live in [&token, &other] {
        let r = refresh(&h, live).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_whole_session() {
    let h = Harness::with(setup("", "")).await;
    let first = login(&h).await;
    let r0 = s(&first["refreshToken"]).to_owned();
    let t0 = s(&first["token"]).to_owned();

    let r = refresh(&h, &r0).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let second = r.json();
    let r1 = s(&second["refreshToken"]).to_owned();
    let t1 = s(&second["token"]).to_owned();
    assert_ne!(r1, r0);
    assert_ne!(t1, t0);
    assert_eq!(second["user"]["clientId"], "1001");
    assert_eq!(parts(&t1).1["sid"], parts(&t0).1["sid"], "same session");
    assert_eq!(echo(&h, &t1).await.status, 200);

    // The answer was lost: the same token again within the grace period gets the same
    // successor (and a fresh access token), not a revocation.
    let again = refresh(&h, &r0).await;
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(s(&again.json()["refreshToken"]), r1);

    // Past the grace period the spent token is a stolen copy: the session ends, with
    // every access token issued from it.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let reused = refresh(&h, &r0).await;
    reused.assert_problem(401, "REFRESH_REUSED");
    // A refused refresh token is a refused token (RFC 6750 §3), as errors.md says.
    assert!(
        reused.header("www-authenticate").is_some_and(
            |v| v.contains("error=\"invalid_token\"") && v.contains("error_description=")
        ),
        "{:?}",
        reused.headers
    );
    refresh(&h, &r1)
        .await
        .assert_problem(401, "SESSION_REVOKED");
    echo(&h, &t1).await.assert_problem(401, "TOKEN_REVOKED");
    echo(&h, &t0).await.assert_problem(401, "TOKEN_REVOKED");
    let www = echo(&h, &t1).await;
    assert!(www
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));

    // Other sessions are untouched.
    let other = login(&h).await;
    assert_eq!(echo(&h, s(&other["token"])).await.status, 200);

    // Tokens that were never issued change nothing.
    refresh(&h, "not-a-token")
        .await
        .assert_problem(401, "REFRESH_TOKEN_INVALID");
    let sid = s(&parts(s(&other["token"])).1["sid"]).to_owned();
    let guess = format!("{sid}.{}", "A".repeat(43));
    refresh(&h, &guess)
        .await
        .assert_problem(401, "REFRESH_TOKEN_INVALID");
    assert_eq!(refresh(&h, s(&other["refreshToken"])).await.status, 200);
    // A refresh token is read from the body only, never from the URL (where logs and
    // referrers would keep it); one sent there anyway is not logged.
    let leaked = s(&other["refreshToken"]).to_owned();
    h.send(
        "POST",
        &format!("/gateway/auth/refresh?refreshToken={leaked}"),
        &[],
        b"",
    )
    .await
    .assert_problem(401, "AUTH_REQUIRED");
    assert!(
        h.gateway
            .wait_for_log("/gateway/auth/refresh", Duration::from_secs(2))
            .await
    );
    assert!(
        !h.gateway.stderr().contains(&leaked),
        "a refresh token reached the log"
    );
    post_json(&h, "/gateway/auth/refresh", &[], "[1]")
        .await
        .assert_problem(400, "INVALID_REQUEST_BODY");
    post_json(&h, "/gateway/auth/refresh", &[], "{}")
        .await
        .assert_problem(401, "AUTH_REQUIRED");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("tollgate_sessions_total{event=\"reuse\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_sessions_total{event=\"grace\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_leave_one_live_successor() {
    let h = std::sync::Arc::new(Harness::with(setup("", "")).await);
    let first = login(&h).await;
    let r0 = s(&first["refreshToken"]).to_owned();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let h = std::sync::Arc::clone(&h);
        let r0 = r0.clone();
        tasks.push(tokio::spawn(async move { refresh(&h, &r0).await }));
    }
    let mut successors = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        successors.push(s(&r.json()["refreshToken"]).to_owned());
    }
    successors.dedup();
    assert_eq!(successors.len(), 1, "exactly one successor: {successors:?}");
    assert_eq!(refresh(&h, &successors[0]).await.status, 200);
}

#[tokio::test]
async fn logout_ends_the_session_and_the_token_it_was_called_with() {
    let h = Harness::with(setup("", "")).await;
    let first = login(&h).await;
    let t0 = s(&first["token"]).to_owned();
    let r0 = s(&first["refreshToken"]).to_owned();
    let bearer = format!("Bearer {t0}");
    let r = h
        .send(
            "POST",
            "/gateway/auth/logout",
            &[("authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["success"], true);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    echo(&h, &t0).await.assert_problem(401, "TOKEN_REVOKED");
    refresh(&h, &r0)
        .await
        .assert_problem(401, "SESSION_REVOKED");
    // Twice is fine.
    let r = h
        .send(
            "POST",
            "/gateway/auth/logout",
            &[("authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);

    // With the refresh token alone (the access token has expired, say).
    let second = login(&h).await;
    let r = post_json(
        &h,
        "/gateway/auth/logout",
        &[],
        &format!(r#"{{"refreshToken":"{}"}}"#, s(&second["refreshToken"])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    echo(&h, s(&second["token"]))
        .await
        .assert_problem(401, "TOKEN_REVOKED");

    // Nothing to prove a session: refused.
    h.send("POST", "/gateway/auth/logout", &[], b"")
        .await
        .assert_problem(401, "AUTH_REQUIRED");
    let forged = format!("{}.{}", s(&parts(&t0).1["sid"]), "B".repeat(43));
    post_json(
        &h,
        "/gateway/auth/logout",
        &[],
        &format!(r#"{{"refreshToken":"{forged}"}}"#),
    )
    .await
    .assert_problem(401, "REFRESH_TOKEN_INVALID");
    h.send(
        "POST",
        "/gateway/auth/logout",
        &[("authorization", "Bearer not.a.jwt")],
        b"",
    )
    .await
    .assert_problem(401, "TOKEN_INVALID");
}

#[tokio::test]
async fn a_logged_out_token_stays_refused_through_the_leeway() {
    let h = Harness::with(setup("", "")).await;
    // Verification accepts a token until `exp` plus the leeway (30 s here): a revocation
    // that ended at `exp` let it back in for those seconds.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let token = bearer_with(json!({"clientId": "1001", "jti": "short-lived", "exp": exp}));
    let r = h
        .send(
            "POST",
            "/gateway/auth/logout",
            &[("authorization", &token)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    tokio::time::sleep(Duration::from_secs(4)).await;
    h.get("/echo/me", &[("authorization", &token)])
        .await
        .assert_problem(401, "TOKEN_REVOKED");
}

#[tokio::test]
async fn a_logout_ends_only_what_belongs_to_its_caller() {
    let h = Harness::with(setup("", "")).await;
    // Another issuer's tokens may repeat a `jti` across clients: logging one out
    // revokes that client's token, not every token with the id.
    let a = bearer_with(json!({"clientId": "1001", "jti": "shared-id"}));
    let b = bearer_with(json!({"clientId": "1002", "jti": "shared-id"}));
    let r = h
        .send(
            "POST",
            "/gateway/auth/logout",
            &[("authorization", &a)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    h.get("/echo/me", &[("authorization", &a)])
        .await
        .assert_problem(401, "TOKEN_REVOKED");
    assert_eq!(
        h.get("/echo/me", &[("authorization", &b)]).await.status,
        200
    );

    // Each credential ends what it proves. An access token beside a refresh token of
    // another login ends both sessions (that refresh token alone could log its session
    // out, and refresh it); beside one that proves nothing, it still ends its own: a
    // tab holding a stale refresh token must be able to log out.
    let mine = login(&h).await;
    let theirs = login(&h).await;
    let r = post_json(
        &h,
        "/gateway/auth/logout",
        &[("authorization", &format!("Bearer {}", s(&mine["token"])))],
        &format!(r#"{{"refreshToken":"{}"}}"#, s(&theirs["refreshToken"])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for ended in [&mine, &theirs] {
        echo(&h, s(&ended["token"]))
            .await
            .assert_problem(401, "TOKEN_REVOKED");
        assert_eq!(refresh(&h, s(&ended["refreshToken"])).await.status, 401);
    }
    let mine = login(&h).await;
    let r = post_json(
        &h,
        "/gateway/auth/logout",
        &[("authorization", &format!("Bearer {}", s(&mine["token"])))],
        r#"{"refreshToken":"garbage"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    echo(&h, s(&mine["token"]))
        .await
        .assert_problem(401, "TOKEN_REVOKED");
    assert_eq!(refresh(&h, s(&mine["refreshToken"])).await.status, 401);
    // Another issuer's token without `jti` is revoked as itself (by its hash): it, and
    // no other token of its client.
    let bare = bearer_with(json!({"clientId": "1001"}));
    let other = bearer_with(json!({"clientId": "1001", "sub": "other"}));
    let r = h
        .send(
            "POST",
            "/gateway/auth/logout",
            &[("authorization", &bare)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    h.get("/echo/me", &[("authorization", &bare)])
        .await
        .assert_problem(401, "TOKEN_REVOKED");
    assert_eq!(
        h.get("/echo/me", &[("authorization", &other)]).await.status,
        200
    );
    // A refresh token no session knows, alone, proves nothing.
    let r = post_json(
        &h,
        "/gateway/auth/logout",
        &[],
        r#"{"refreshToken":"garbage"}"#,
    )
    .await;
    r.assert_problem(401, "REFRESH_TOKEN_INVALID");
    // An access token that does not verify (unreadable, for another audience, signed by
    // a key since rotated out) does not keep the refresh token beside it from ending its
    // session: a client whose token outlived its key must still be able to log out.
    for unverified in [
        "Bearer not.a.jwt".to_owned(),
        bearer_with(json!({"clientId": "1001", "aud": "another-api"})),
        format!("{}x", bearer_with(json!({"clientId": "1001"}))),
    ] {
        let mine = login(&h).await;
        let r = post_json(
            &h,
            "/gateway/auth/logout",
            &[("authorization", &unverified)],
            &format!(r#"{{"refreshToken":"{}"}}"#, s(&mine["refreshToken"])),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        echo(&h, s(&mine["token"]))
            .await
            .assert_problem(401, "TOKEN_REVOKED");
        assert_eq!(refresh(&h, s(&mine["refreshToken"])).await.status, 401);
    }
    // Alone, it is refused as it is anywhere.
    h.send(
        "POST",
        "/gateway/auth/logout",
        &[(
            "authorization",
            &bearer_with(json!({"clientId": "1001", "aud": "another-api"})),
        )],
        b"",
    )
    .await
    .assert_problem(403, "AUDIENCE_MISMATCH");
    let mine = login(&h).await;
    // The pair of one session still logs out together.
    let r = post_json(
        &h,
        "/gateway/auth/logout",
        &[("authorization", &format!("Bearer {}", s(&mine["token"])))],
        &format!(r#"{{"refreshToken":"{}"}}"#, s(&mine["refreshToken"])),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    echo(&h, s(&mine["token"]))
        .await
        .assert_problem(401, "TOKEN_REVOKED");
}

#[tokio::test]
async fn sessions_and_revocations_survive_kill_9() {
    let mut h = Harness::with(setup("", "")).await;
    let kept = login(&h).await;
    let ended = login(&h).await;
    // A token of no session (as `tollgate token mint` makes, or an external issuer's),
    // logged out by its `jti`.
    let loose = bearer_with(json!({"clientId": "1001", "jti": "loose-1"}));
    let r = h
        .send(
            "POST",
            "/gateway/auth/logout",
            &[("authorization", &loose)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let bearer = format!("Bearer {}", s(&ended["token"]));
    let r = h
        .send(
            "POST",
            "/gateway/auth/logout",
            &[("authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    // A second process on the same store while the first still holds it (a restart
    // that overlaps): it cannot know the revocations yet, so it refuses session tokens
    // with 503 rather than accept a revoked one.
    let config = h.dir.path().join("gateway.toml");
    let second = GatewayProcess::start(&config);
    let early = Harness {
        gateway: second,
        backend: tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap(),
        dir: TempDir::new(),
    };
    echo(&early, s(&kept["token"]))
        .await
        .assert_problem(503, "SESSION_STORE_UNAVAILABLE");
    early
        .get("/echo/me", &[("authorization", &loose)])
        .await
        .assert_problem(503, "SESSION_STORE_UNAVAILABLE");
    assert_eq!(
        early.gateway.readyz().await,
        503,
        "not ready while it cannot check"
    );
    // SIGKILL to the first: no chance to flush anything. The second opens the store.
    h.gateway.signal("KILL");
    assert!(h.gateway.wait_exit(Duration::from_secs(5)).is_some());
    let opened = eventually(Duration::from_secs(5), || async {
        echo(&early, s(&kept["token"])).await.status != 503
    })
    .await;
    assert!(opened, "{}", early.gateway.stderr());
    assert_eq!(early.gateway.readyz().await, 200);
    drop(early);
    h.gateway = GatewayProcess::start(&config);
    assert!(h.dir.path().join("state/tollgate.redb").exists());
    // The revocations hold from the first request on.
    echo(&h, s(&ended["token"]))
        .await
        .assert_problem(401, "TOKEN_REVOKED");
    h.get("/echo/me", &[("authorization", &loose)])
        .await
        .assert_problem(401, "TOKEN_REVOKED");
    refresh(&h, s(&ended["refreshToken"]))
        .await
        .assert_problem(401, "SESSION_REVOKED");
    // The other session goes on.
    assert_eq!(echo(&h, s(&kept["token"])).await.status, 200);
    let r = refresh(&h, s(&kept["refreshToken"])).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn a_logout_is_seen_by_every_instance_sharing_redis_within_a_second() {
    let redis = RedisServer::start();
    let store = format!(
        "[store]\nredis_url = \"{}\"\ntimeout = \"500ms\"\n",
        redis.url()
    );
    let a = Harness::with(setup("", &store)).await;
    let dir = TempDir::new();
    write_config(dir.path(), &setup("", &store), a.backend.addr());
    let b = Harness {
        gateway: GatewayProcess::start(&dir.path().join("gateway.toml")),
        backend: tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap(),
        dir,
    };
    // Each is ready once it has read the revocation feed (a load balancer waits for
    // /readyz; until then session tokens would get 503).
    a.gateway.wait_ready().await;
    b.gateway.wait_ready().await;
    let session = login(&a).await;
    let token = s(&session["token"]).to_owned();
    // One store: B refreshes what A issued, and A sees the rotation.
    assert_eq!(echo(&b, &token).await.status, 200);
    let rotated = refresh(&b, s(&session["refreshToken"])).await;
    assert_eq!(
        rotated.status,
        200,
        "{}",
        String::from_utf8_lossy(&rotated.body)
    );
    let t1 = s(&rotated.json()["token"]).to_owned();
    assert_eq!(echo(&b, &t1).await.status, 200);

    let bearer = format!("Bearer {t1}");
    let r = a
        .send(
            "POST",
            "/gateway/auth/logout",
            &[("authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let logged_out = Instant::now();
    let seen = eventually(Duration::from_secs(3), || async {
        echo(&b, &t1).await.status == 401
    })
    .await;
    let took = logged_out.elapsed();
    eprintln!("the other instance refused the revoked token {took:?} after the logout");
    assert!(seen, "instance B never refused the revoked token");
    assert!(took < Duration::from_secs(1), "seen after {took:?}");
    echo(&b, &t1).await.assert_problem(401, "TOKEN_REVOKED");
    echo(&b, &token).await.assert_problem(401, "TOKEN_REVOKED");
    // The feed lives in Redis under the store's prefix.
    assert_ne!(redis.cli(&["ZCARD", "tollgate:revocations"]), "0");
}

#[tokio::test]
async fn a_new_signing_key_signs_while_the_old_one_keeps_verifying() {
    let h = Harness::with(setup("", "")).await;
    let before = login(&h).await;
    assert_eq!(parts(s(&before["token"])).0["kid"], "gateway-ed");

    // Rotation: a newer key is added at the end; the gateway reloads.
    let keys = jwt_fixtures().join("keys");
    let config = h.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let rotated = text.replacen(
        "\n[sessions]",
        &format!(
            "\n[[jwt.key]]\nid = \"gateway-es\"\nalgorithm = \"ES256\"\npublic_key_file = \"{}\"\nprivate_key_file = \"{}\"\n\n[sessions]",
            keys.join("ec256.pub.pem").display(),
            keys.join("ec256.key.pem").display()
        ),
        1,
    );
    std::fs::write(&config, rotated).unwrap();
    let reloaded = eventually(Duration::from_secs(10), || async {
        let r = h.get("/.well-known/jwks.json", &[]).await;
        r.status == 200 && r.json()["keys"].as_array().is_some_and(|k| k.len() == 2)
    })
    .await;
    assert!(reloaded, "{}", h.gateway.stderr());
    let after = login(&h).await;
    assert_eq!(parts(s(&after["token"])).0["kid"], "gateway-es");
    assert_eq!(parts(s(&after["token"])).0["alg"], "ES256");
    // Both verify: the old key's tokens live out their lifetime.
    assert_eq!(echo(&h, s(&before["token"])).await.status, 200);
    assert_eq!(echo(&h, s(&after["token"])).await.status, 200);
    // A refresh of the old session is signed with the new key.
    let r = refresh(&h, s(&before["refreshToken"])).await;
    assert_eq!(parts(s(&r.json()["token"])).0["kid"], "gateway-es");
}

/// A legacy login that compresses its answer when the request allows it (Spring's and
/// nginx's `gzip on` do): the gateway, which reads the answer as JSON, asks for it
/// uncompressed whatever the browser allows.
#[tokio::test]
async fn a_login_is_read_whole_from_a_backend_that_would_compress() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = Arc::clone(&asked);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let mut body = vec![0u8; length];
                stream.read_exact(&mut body).await.unwrap();
                let encoding = head
                    .lines()
                    .find_map(|l| l.strip_prefix("accept-encoding:"))
                    .map_or(String::new(), |v| v.trim().to_owned());
                seen.lock().unwrap().push(encoding.clone());
                let answer: Vec<u8> = if encoding.contains("gzip") {
                    // What a compressing backend sends: not JSON to a reader that
                    // does not decode it.
                    let gz = [0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03];
                    [
                        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n", gz.len()).into_bytes(),
                        gz.to_vec(),
                    ]
                    .concat()
                } else {
                    let json = r#"[{"clientId":"1001","name":"Demo","email":"demo@acme.test"}]"#;
                    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}", json.len()).into_bytes()
                };
                let _ = stream.write_all(&answer).await;
            });
        }
    });
    let h = Harness::with(Setup {
        upstream_addr: Some(upstream),
        ..setup("", "")
    })
    .await;
    let r = post_json(
        &h,
        LOGIN_PATH,
        &[("accept-encoding", "gzip, deflate, br, zstd")],
        DEMO_LOGIN,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["user"]["clientId"], "1001");
    assert_eq!(*asked.lock().unwrap(), vec!["identity".to_owned()]);
}
