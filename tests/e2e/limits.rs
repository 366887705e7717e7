//! Rate limits counted in the gateway's own process: the headers on every limited
//! response, 429 with `Retry-After`, several policies on one route, the login limited per
//! IP and per username, client addresses through trusted proxies only, and reloads that
//! keep the counts. (Redis-backed limits are in `shared_limits.rs`.)

use crate::support::{eventually, Harness, RawResponse, Setup};

use crate::support::{bearer_for, jwt_config};

const POLICIES: &str = r#"
[limits.per-client]
rate = 3
period = "1h"
key = ["client"]

[limits.roomy-per-client]
rate = 10
period = "1h"
key = ["client"]

[limits.everyone]
rate = 4
period = "1h"
key = ["global"]

[limits.login-ip]
rate = 5
period = "1h"
key = ["ip"]

[limits.login-user]
rate = 3
period = "1h"
key = ["username"]

[[route]]
name = "one-limit"
path = "/echo/one/*"
limits = ["per-client"]

[[route]]
name = "two-limits"
path = "/echo/two/*"
limits = ["roomy-per-client", "everyone"]

[[route]]
name = "login"
methods = ["POST"]
path = "/echo/login"
auth = "none"
username_fields = ["username", "email"]
limits = ["login-ip", "login-user"]

[[route]]
name = "login-per-account"
methods = ["POST"]
path = "/echo/login2"
auth = "none"
username_fields = ["username", "email"]
limits = ["login-user"]

[[route]]
name = "unlimited"
path = "/echo/free/*"
"#;

async fn harness(server: &str) -> Harness {
    Harness::with(Setup {
        policies: vec![("10.toml".into(), POLICIES.into())],
        extra: jwt_config(),
        server: server.into(),
        ..Setup::default()
    })
    .await
}

fn header_u64(r: &RawResponse, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn every_limited_response_says_where_the_caller_stands_and_429_says_when_to_retry() {
    let h = harness("").await;
    let alice = bearer_for("alice");
    for (n, remaining) in [2u64, 1, 0].into_iter().enumerate() {
        let r = h.get("/echo/one/x", &[("authorization", &alice)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(header_u64(&r, "x-ratelimit-remaining"), remaining);
        // One request back every 20 minutes; full again after the used ones are back.
        let reset = 1200 * (n as u64 + 1);
        assert_eq!(header_u64(&r, "x-ratelimit-reset"), reset);
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"per-client\";q=3;w=3600")
        );
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"per-client\";r={remaining};t={reset}").as_str())
        );
        assert!(r.header("retry-after").is_none());
    }
    let before = h.backend.requests();
    let r = h.get("/echo/one/x", &[("authorization", &alice)]).await;
    r.assert_problem(429, "RATE_LIMITED");
    let retry = header_u64(&r, "retry-after");
    assert!((1199..=1200).contains(&retry), "{retry}");
    assert_eq!(r.json()["retryAfter"], retry);
    assert!(r.json()["detail"].as_str().unwrap().contains("per-client"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(
        r.header("ratelimit"),
        Some(
            format!(
                "\"per-client\";r=0;t={}",
                header_u64(&r, "x-ratelimit-reset")
            )
            .as_str()
        )
    );
    assert_eq!(
        h.backend.requests(),
        before,
        "a refused request never reaches the backend"
    );

    // Counted per client: another caller is unaffected; a route without limits says nothing.
    let r = h
        .get("/echo/one/x", &[("authorization", &bearer_for("bob"))])
        .await;
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (200, Some("2"))
    );
    let r = h.get("/echo/free/x", &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-ratelimit-limit").is_none());

    // Errors after the limit stage carry the headers too (and were counted).
    let r = h
        .get(
            "/echo/one/x?clientId=mallory",
            &[("authorization", &bearer_for("carol"))],
        )
        .await;
    r.assert_problem(403, "CLIENT_ID_MISMATCH");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));

    let metrics = h.metrics().await;
    assert!(
        metrics.contains(
            "tollgate_rate_limit_decisions_total{policy=\"per-client\",store=\"local\",outcome=\"limited\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "tollgate_rate_limit_decisions_total{policy=\"per-client\",store=\"local\",outcome=\"allowed\"} 5"
    ));
}

#[tokio::test]
async fn with_two_limits_the_headers_describe_the_one_closest_to_exhaustion() {
    let h = harness("").await;
    // roomy-per-client: 10 per hour per client; everyone: 4 per hour in all.
    let r = h
        .get("/echo/two/x", &[("authorization", &bearer_for("a"))])
        .await;
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"everyone\";q=4;w=3600")
    );
    assert_eq!(r.header("x-ratelimit-remaining"), Some("3"));
    for client in ["b", "c", "d"] {
        let r = h
            .get("/echo/two/x", &[("authorization", &bearer_for(client))])
            .await;
        assert_eq!(r.status, 200);
    }
    // A new client has all of its own allowance but none of everyone's.
    let r = h
        .get("/echo/two/x", &[("authorization", &bearer_for("e"))])
        .await;
    r.assert_problem(429, "RATE_LIMITED");
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"everyone\";q=4;w=3600")
    );
    assert!(r.json()["detail"].as_str().unwrap().contains("everyone"));
}

#[tokio::test]
async fn login_is_limited_per_username_and_per_address_and_bodies_pass_intact() {
    let h = harness("").await;
    let json = |user: &str| format!("{{\"username\":\"{user}\",\"password\":\"guess\"}}");
    // Three tries for one username, however it is spelled, encoded or named.
    let by_email = "{\"email\":\" Alice@ACME.test\",\"password\":\"guess\"}".to_owned();
    for body in [json("alice@acme.test"), by_email] {
        let r = h
            .send(
                "POST",
                "/echo/login",
                &[("content-type", "application/json")],
                body.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["body"]["bytes"],
            body.len(),
            "the body reaches the backend whole"
        );
    }
    let form = b"password=guess&username=alice%40acme.test";
    let r = h
        .send(
            "POST",
            "/echo/login",
            &[("content-type", "application/x-www-form-urlencoded")],
            form,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"login-user\";q=3;w=3600")
    );
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let r = h
        .send(
            "POST",
            "/echo/login",
            &[("content-type", "application/json")],
            json("ALICE@acme.test").as_bytes(),
        )
        .await;
    r.assert_problem(429, "RATE_LIMITED");
    assert!(r.json()["detail"].as_str().unwrap().contains("login-user"));

    // Another username still gets in, until the address has used its five.
    let r = h
        .send(
            "POST",
            "/echo/login",
            &[("content-type", "application/json")],
            json("bob@acme.test").as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = h
        .send(
            "POST",
            "/echo/login",
            &[("content-type", "application/json")],
            json("carol@acme.test").as_bytes(),
        )
        .await;
    r.assert_problem(429, "RATE_LIMITED");
    assert!(r.json()["detail"].as_str().unwrap().contains("login-ip"));
    // An untrusted peer cannot claim another address.
    let r = h
        .send(
            "POST",
            "/echo/login",
            &[
                ("content-type", "application/json"),
                ("x-forwarded-for", "203.0.113.9"),
            ],
            json("dave@acme.test").as_bytes(),
        )
        .await;
    r.assert_problem(429, "RATE_LIMITED");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_counted() {
    let h = harness("trusted_proxies = [\"127.0.0.0/8\"]").await;
    let login = |ip: &'static str, user: usize| {
        let body = format!("{{\"username\":\"user{user}\"}}");
        let h = &h;
        async move {
            h.send(
                "POST",
                "/echo/login",
                &[
                    ("content-type", "application/json"),
                    ("x-forwarded-for", ip),
                ],
                body.as_bytes(),
            )
            .await
            .status
        }
    };
    let mut statuses = Vec::new();
    for user in 0..6 {
        statuses.push(login("203.0.113.1", user).await);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    // A different client address behind the proxy has its own count.
    assert_eq!(login("203.0.113.2", 100).await, 200);
}

#[tokio::test]
async fn a_reload_keeps_the_counts_of_unchanged_limits() {
    let h = harness("").await;
    let alice = bearer_for("alice");
    for _ in 0..3 {
        assert_eq!(
            h.get("/echo/one/x", &[("authorization", &alice)])
                .await
                .status,
            200
        );
    }
    let path = h.policy_path("10.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("path = \"/echo/free/*\"", "path = \"/echo/free2/*\""),
    )
    .unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            h.get("/echo/free2/x", &[("authorization", &alice)])
                .await
                .status
                == 200
        })
        .await,
        "the edit was not picked up"
    );
    let r = h.get("/echo/one/x", &[("authorization", &alice)]).await;
    r.assert_problem(429, "RATE_LIMITED");
}

#[test]
fn check_reports_every_limit_mistake_with_file_and_line() {
    let dir = crate::support::TempDir::new();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\n[routing]\npolicies = \"policies\"\n\n[store]\nredis_url = \"http://127.0.0.1:6379\"\ninstances = 0\n\n{}",
            jwt_config()
        ),
    )
    .unwrap();
    std::fs::write(
        policies.join("a.toml"),
        r#"[limits.ok]
rate = 10
period = "1m"
key = ["client"]

[limits.bad]
rate = 0
period = "soon"
key = ["client", "client"]

[limits.mixed]
rate = 5
period = "1m"
key = ["global", "ip"]

[limits.typo]
rate = 5
period = "1m"
key = ["ip"]
burts = 3

[[route]]
name = "open-route"
path = "/a"
auth = "none"
limits = ["ok", "nope"]

[[route]]
name = "login"
path = "/login"
auth = "none"
limits = ["bad"]

[limits.forever]
rate = 1
period = "3650d"
burst = 2
key = ["ip"]
"#,
    )
    .unwrap();
    let config = dir.path().join("gateway.toml").display().to_string();
    let (ok, out) = crate::cli::tollgate(&["check", "--config", &config]);
    assert!(!ok, "check must fail: {out}");
    let gw = config.as_str();
    let a = policies.join("a.toml").display().to_string();
    for expected in [
        format!("{gw}:11:13: error: [store]: the Redis URL must start with redis://"),
        format!("{gw}:12:13: error: [store]: instances must be at least 1"),
        format!("{a}:7:8: error: limit `bad`: rate must be a whole number from 1"),
        format!("{a}:8:10: error: limit `bad`: `soon` is not a duration"),
        format!("{a}:9:18: error: limit `bad`: `client` is listed twice"),
        format!("{a}:14:7: error: limit `mixed`: `global` is one count for everyone"),
        format!("{a}:20:1: error: [limits.typo]: unknown field `burts`"),
        format!("{a}:26:11: error: route `open-route`: limit `ok` counts by `client`, but the route has no authenticated caller"),
        format!("{a}:26:17: error: route `open-route`: no [limits.nope] in the policy files (defined: bad, forever, mixed, ok, typo)"),
        format!("{a}:36:10: error: limit `forever`: a full burst would take over ten years to come back"),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    // `bad` and `typo` are reported where they are written, not again where used.
    assert!(!out.contains("no [limits.bad]"), "{out}");
}

/// The gateway reads a login body for its per-account limit, so it judges a `_method`
/// in it as it would on an identified caller's route: Rails or Symfony would otherwise
/// run the login's POST as a method no route allows on that path.
#[tokio::test]
async fn a_login_body_cannot_turn_its_post_into_another_method() {
    let h = harness("").await;
    let seen = h.backend.requests();
    for (content_type, body) in [
        (
            "application/json",
            r#"{"username":"a@acme.test","_method":"DELETE"}"#,
        ),
        (
            "application/x-www-form-urlencoded",
            "username=a%40acme.test&_method=DELETE",
        ),
        (
            "application/x-www-form-urlencoded",
            "username=b&_method%5D=PUT",
        ),
    ] {
        h.send(
            "POST",
            "/echo/login2",
            &[("content-type", content_type)],
            body.as_bytes(),
        )
        .await
        .assert_problem(400, "METHOD_OVERRIDE_REFUSED");
    }
    // A multipart or compressed login would hide the account and the `_method` from
    // the gateway (Rack reads a multipart `_method` as readily as a form's).
    let multipart = "--b\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\na\r\n--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n";
    h.send(
        "POST",
        "/echo/login2",
        &[("content-type", "multipart/form-data; boundary=b")],
        multipart.as_bytes(),
    )
    .await
    .assert_problem(415, "UNSUPPORTED_MEDIA_TYPE");
    h.send(
        "POST",
        "/echo/login2",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        b"\x1f\x8b",
    )
    .await
    .assert_problem(415, "UNSUPPORTED_MEDIA_TYPE");
    assert_eq!(h.backend.requests(), seen, "none reached the backend");
    // Its own method passes, body intact.
    let body = b"username=c&_method=POST";
    let r = h
        .send(
            "POST",
            "/echo/login2",
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"]["bytes"], body.len());
}

#[tokio::test]
async fn a_per_account_limit_cannot_be_dodged_by_naming_the_account_differently() {
    let h = harness("").await;
    let post = |content_type: &'static str, body: String| {
        let h = &h;
        async move {
            h.send(
                "POST",
                "/echo/login2",
                &[("content-type", content_type)],
                body.as_bytes(),
            )
            .await
        }
    };
    const JSON: &str = "application/json";
    const FORM: &str = "application/x-www-form-urlencoded";
    // Three tries for the victim, each hiding it behind a decoy the gateway might read
    // first: a re-cased member, a repeated form field, the other configured field, and a
    // fullwidth spelling. Each counts against the victim's account.
    for (kind, body) in [
        (
            JSON,
            r#"{"username":"decoy1","UserName":"victim@acme.test"}"#.to_owned(),
        ),
        (
            FORM,
            "username=decoy2&username=victim%40acme.test".to_owned(),
        ),
        (
            JSON,
            r#"{"username":"decoy3","email":"ＶＩＣＴＩＭ@acme.test"}"#.to_owned(),
        ),
    ] {
        assert_eq!(post(kind, body).await.status, 200);
    }
    let r = post(JSON, r#"{"username":"victim@acme.test"}"#.to_owned()).await;
    r.assert_problem(429, "RATE_LIMITED");
    let r = post(FORM, "email=decoy4&USERNAME=Victim%40ACME.test".to_owned()).await;
    r.assert_problem(429, "RATE_LIMITED");
    // A value a backend coerces to the name is the name: JavaScript's String(["x"]) is "x".
    let r = post(JSON, r#"{"username":["victim@acme.test"]}"#.to_owned()).await;
    r.assert_problem(429, "RATE_LIMITED");
    // Nor does naming it in the query beside a decoy body (PHP's $_REQUEST, Spring).
    let r = h
        .send(
            "POST",
            "/echo/login2?username=victim%40acme.test",
            &[("content-type", FORM)],
            b"username=decoy5",
        )
        .await;
    r.assert_problem(429, "RATE_LIMITED");
    // A phone number sent as a JSON number is one account, however it is typed.
    for body in [
        r#"{"username":5551234}"#,
        r#"{"username":"5551234"}"#,
        r#"{"username":[5551234]}"#,
    ] {
        assert_eq!(post(JSON, body.to_owned()).await.status, 200, "{body}");
    }
    // Node's JSON.parse and PHP's json_decode read a whole number written with a
    // fraction or an exponent as the same number: it is the same account.
    for body in [
        r#"{"username":5551234}"#,
        r#"{"username":5551234.0}"#,
        r#"{"username":5551234.00}"#,
        r#"{"username":5551234e0}"#,
        r#"{"username":5551234E0}"#,
        r#"{"username":55512340e-1}"#,
        r#"{"username":[5.551234e6]}"#,
    ] {
        post(JSON, body.to_owned())
            .await
            .assert_problem(429, "RATE_LIMITED");
    }
    // The decoys were counted too, each once so far.
    let r = post(JSON, r#"{"username":"decoy1"}"#.to_owned()).await;
    assert_eq!(
        (r.status, r.header("x-ratelimit-remaining")),
        (200, Some("1"))
    );
    // Naming more than four accounts at once is refused outright.
    let many = r#"{"username":"a","email":"b","Username":"c","EMAIL":"d","username":"e"}"#;
    post(JSON, many.to_owned())
        .await
        .assert_problem(400, "LOGIN_AMBIGUOUS");
}

#[tokio::test]
async fn a_login_body_the_gateway_cannot_read_whole_is_refused_not_counted_as_nobody() {
    let h = harness("").await;
    let post = |path: &'static str, content_type: &'static str, body: Vec<u8>| {
        let h = &h;
        async move {
            h.send("POST", path, &[("content-type", content_type)], &body)
                .await
        }
    };
    const JSON: &str = "application/json";
    // Express, PHP and Python read the victim's name in each of these; serde_json
    // refuses them. Counting them as "no username" (or under a decoy in the query) let
    // one account be guessed at without end. They are refused, and reach no backend.
    let refused: Vec<Vec<u8>> = vec![
        br#"{"username":"victim@acme.test","password":"g","x":1e400}"#.to_vec(),
        br#"{"x":-1e400,"username":"victim@acme.test"}"#.to_vec(),
        b"\xef\xbb\xbf{\"username\":\"victim@acme.test\"}".to_vec(),
        br#"{"username":"victim@acme.test","x":"\ud800"}"#.to_vec(),
        br#"{"username":"victim@acme.test"} {"username":"decoy"}"#.to_vec(),
        format!(
            r#"{{"username":"victim@acme.test","x":{}0{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        )
        .into_bytes(),
    ];
    for body in refused {
        let r = post("/echo/login2?username=decoy", JSON, body.clone()).await;
        r.assert_problem(400, "INVALID_JSON");
        // Whatever it says it is.
        let r = post("/echo/login2?username=decoy", "text/plain", body).await;
        r.assert_problem(400, "INVALID_JSON");
    }
    // A charset names other bytes for the same names: refused.
    let r = post(
        "/echo/login2",
        "application/json; charset=utf-16le",
        br#"{"username":"x"}"#.to_vec(),
    )
    .await;
    r.assert_problem(415, "UNSUPPORTED_MEDIA_TYPE");
    // Accented spellings are one account to an accent-insensitive database collation
    // (MariaDB's default): they share the victim's count.
    for name in ["victim@acme.test", "vïctim@acme.test", "VÍCTIM@ACMÉ.TEST"] {
        let body = format!(r#"{{"username":"{name}"}}"#).into_bytes();
        assert_eq!(post("/echo/login2", JSON, body).await.status, 200, "{name}");
    }
    let body = r#"{"username":"vıctım@acmè.test"}"#.as_bytes().to_vec();
    post("/echo/login2", JSON, body)
        .await
        .assert_problem(429, "RATE_LIMITED");
}

/// The login's per-address limit is counted before its body is read: a body refused
/// as unreadable uses up an attempt and says so, as a wrong password does (frontend.md,
/// question 5), so broken bodies are no free probe.
#[tokio::test]
async fn a_refused_login_body_counts_against_the_address() {
    let h = harness("").await;
    let mut left = Vec::new();
    for (content_type, body, status) in [
        (
            "application/json; charset=utf-16le",
            &br#"{"username":"x"}"#[..],
            415,
        ),
        ("application/json", br#"{"username":"x","y":1e400}"#, 400),
        ("application/json", br#"{"username":"x"}"#, 200),
    ] {
        let r = h
            .send(
                "POST",
                "/echo/login",
                &[("content-type", content_type)],
                body,
            )
            .await;
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        left.push(r.header("x-ratelimit-remaining").map(str::to_owned));
    }
    let five_per_hour = ["4", "3", "2"].map(|n| Some(n.to_owned()));
    assert_eq!(left, five_per_hour);
}

#[tokio::test]
async fn a_reload_that_changes_a_limits_numbers_keeps_its_metric_counting() {
    let h = harness("").await;
    let alice = bearer_for("alice");
    for _ in 0..3 {
        let r = h.get("/echo/one/x", &[("authorization", &alice)]).await;
        assert_eq!(r.status, 200);
    }
    let allowed = "tollgate_rate_limit_decisions_total{policy=\"per-client\",store=\"local\",outcome=\"allowed\"}";
    assert!(h.metrics().await.contains(&format!("{allowed} 3\n")));
    // 3 per hour becomes 5 per hour: the allowance starts afresh (new numbers), the
    // counter of decisions does not go back to zero.
    let path = h.policy_path("10.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("rate = 3\nperiod = \"1h\"", "rate = 5\nperiod = \"1h\"", 1),
    )
    .unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            h.get("/echo/one/x", &[("authorization", &alice)])
                .await
                .header("x-ratelimit-limit")
                == Some("5")
        })
        .await,
        "the edit was not picked up"
    );
    let metrics = h.metrics().await;
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(allowed)?.trim().parse().ok())
        .unwrap();
    // Three before the reload, at least the one that saw the new limit after it (plus
    // any the wait sent before the edit landed, which were refused).
    assert!(count >= 4, "{metrics}");
}
