//! Token credits end to end: the real gateway, the demo backend, a real `redb` file or a
//! real `redis-server`. Costs are reserved before the backend is called (402 when short,
//! the backend never sees the request), posted on success, refunded exactly once on
//! every kind of failure, replayed for a repeated `Idempotency-Key`; concurrency never
//! overdraws a balance (one instance, or three sharing Redis); `kill -9` loses no
//! committed movement; a Redis outage fails closed and heals by itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    bearer_for, closed_port, eventually, jwt_config, raw, shipped_config, write_config,
    GatewayProcess, Harness, RawResponse, RedisServer, Setup, TempDir,
};

const POLICIES: &str = r#"
[[route]]
name = "metered"
path = "/echo/metered/*"
auth = "jwt"
cost = 5
opaque_body_types = ["text/csv"]

[[route]]
name = "settled"
path = "/echo/settled/*"
auth = "jwt"
cost = 5
settle_header = "x-tokens-used"

[[route]]
name = "strict"
path = "/echo/strict/*"
auth = "jwt"
cost = 1
refund_statuses = ["5xx"]

[[route]]
name = "one"
path = "/echo/one/*"
auth = "jwt"
cost = 1

[[route]]
name = "per-method"
path = "/echo/per-method/*"
auth = "jwt"
cost = { POST = 3 }

[[route]]
name = "free"
path = "/echo/*"
auth = "jwt"

[[route]]
name = "balance"
methods = ["GET"]
path = "/gateway/tokens/balance"
auth = "jwt"
action = "serve"
endpoint = "tokens_balance"

[[route]]
name = "costs"
methods = ["GET"]
path = "/gateway/tokens/costs"
auth = "jwt"
action = "serve"
endpoint = "tokens_costs"

[[route]]
name = "preview"
methods = ["POST"]
path = "/gateway/tokens/preview"
auth = "jwt"
action = "serve"
endpoint = "tokens_preview"

[[route]]
name = "history"
methods = ["GET"]
path = "/gateway/tokens/history"
auth = "jwt"
action = "serve"
endpoint = "tokens_history"
"#;

fn admin_token() -> String {
    std::fs::read_to_string(admin_token_file())
        .unwrap()
        .trim()
        .to_owned()
}

fn admin_token_file() -> std::path::PathBuf {
    crate::support::jwt_fixtures().join("../admin-token")
}

/// A gateway with the policies above, `[credits]` with `credits` extra lines, and
/// `store` (a `[store]` section, or nothing for the embedded ledger).
fn setup(credits: &str, store: &str) -> Setup {
    Setup {
        policies: vec![("10-credits.toml".into(), POLICIES.into())],
        admin: format!("token_file = \"{}\"", admin_token_file().display()),
        extra: format!(
            "{}\n[credits]\npath = \"state/ledger.redb\"\n{credits}\n\n{store}\n",
            jwt_config()
        ),
        ..Default::default()
    }
}

async fn start(credits: &str) -> Harness {
    let h = Harness::with(setup(credits, "")).await;
    h.gateway.wait_ready().await;
    h
}

async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes).await
}

/// A metered call as `client`.
async fn call(g: &GatewayProcess, method: &str, target: &str, client: &str) -> RawResponse {
    let bearer = bearer_for(client);
    send(g.addr, method, target, &[("authorization", &bearer)], b"").await
}

async fn admin(g: &GatewayProcess, method: &str, path: &str, body: &str) -> RawResponse {
    let bearer = format!("Bearer {}", admin_token());
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    send(g.admin, method, path, &headers, body.as_bytes()).await
}

async fn credit(g: &GatewayProcess, client: &str, amount: u64) {
    let r = admin(
        g,
        "POST",
        &format!("/ledger/clients/{client}/credit"),
        &format!("{{\"amount\": {amount}, \"reason\": \"test\"}}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// The client's `(balance, held)`, from the admin API.
async fn account(g: &GatewayProcess, client: &str) -> (u64, u64) {
    let r = admin(g, "GET", &format!("/ledger/clients/{client}?limit=1"), "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    (v["balance"].as_u64().unwrap(), v["held"].as_u64().unwrap())
}

/// Waits (bounded) until the client's account is `expected`: a success is posted in
/// the background, right after its answer.
async fn settled(g: &GatewayProcess, client: &str, expected: (u64, u64)) {
    let reached = eventually(Duration::from_secs(3), || async {
        account(g, client).await == expected
    })
    .await;
    let last = account(g, client).await;
    assert!(
        reached,
        "{client}: {last:?}, expected {expected:?}; journal {:?}; gateway log:\n{}",
        journal(g, client).await,
        g.stderr()
    );
}

async fn journal(g: &GatewayProcess, client: &str) -> Vec<Value> {
    let r = admin(
        g,
        "GET",
        &format!("/ledger/clients/{client}?limit=1000"),
        "",
    )
    .await;
    r.json()["movements"].as_array().unwrap().clone()
}

async fn assert_verified(g: &GatewayProcess) -> Value {
    let r = admin(g, "GET", "/ledger/verify", "").await;
    let v = r.json();
    assert_eq!(r.status, 200, "{v}");
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    v
}

fn metric(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_metered_request_is_charged_and_says_so() {
    let h = start("").await;
    credit(&h.gateway, "c1", 12).await;
    let r = call(&h.gateway, "GET", "/echo/metered/a", "c1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-token-cost"), Some("5"));
    assert_eq!(r.header("x-token-balance"), Some("7"));
    settled(&h.gateway, "c1", (7, 0)).await;

    // Per-method costs: GET is free and says nothing; POST costs 3.
    let r = call(&h.gateway, "GET", "/echo/per-method/x", "c1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-token-cost"), None);
    let r = call(&h.gateway, "POST", "/echo/per-method/x", "c1").await;
    assert_eq!(r.header("x-token-cost"), Some("3"));
    assert_eq!(r.header("x-token-balance"), Some("4"));
    // A method spelled in lower case names no cost, and backends that fold case would
    // run it as the POST: refused before anything is judged, let alone forwarded.
    let seen = h.backend.requests();
    for method in ["post", "Post", "get"] {
        call(&h.gateway, method, "/echo/per-method/x", "c1")
            .await
            .assert_problem(400, "REQUEST_INVALID");
    }
    assert_eq!(h.backend.requests(), seen);
    settled(&h.gateway, "c1", (4, 0)).await;

    // Short: 402 with what it costs and what there is; the backend never sees it.
    let seen = h.backend.requests();
    let r = call(&h.gateway, "GET", "/echo/metered/b", "c1").await;
    r.assert_problem(402, "INSUFFICIENT_TOKENS");
    let v = r.json();
    assert_eq!(
        (v["required"].as_u64(), v["balance"].as_u64()),
        (Some(5), Some(4))
    );
    assert_eq!(r.header("x-token-balance"), Some("4"));
    assert_eq!(h.backend.requests(), seen);
    // A client nobody credited meets 402 at once.
    call(&h.gateway, "GET", "/echo/one/x", "stranger")
        .await
        .assert_problem(402, "INSUFFICIENT_TOKENS");

    // The frontend's view: balance, costs, preview, history.
    let r = call(&h.gateway, "GET", "/gateway/tokens/balance", "c1").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        (v["clientId"].as_str(), v["balance"].as_u64()),
        (Some("c1"), Some(4))
    );
    let costs = call(&h.gateway, "GET", "/gateway/tokens/costs", "c1")
        .await
        .json();
    let routes = costs["routes"].as_array().unwrap();
    let metered = routes.iter().find(|r| r["route"] == "metered").unwrap();
    assert_eq!(metered["costs"]["*"], 5);
    let per_method = routes.iter().find(|r| r["route"] == "per-method").unwrap();
    assert_eq!(per_method["costs"], serde_json::json!({"POST": 3}));
    assert!(routes.iter().all(|r| r["route"] != "free"));
    let bearer = bearer_for("c1");
    let preview = |body: &'static [u8]| {
        let bearer = bearer.clone();
        let addr = h.gateway.addr;
        async move {
            send(
                addr,
                "POST",
                "/gateway/tokens/preview",
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        }
    };
    let body = br#"{"operations": [{"method": "GET", "path": "/echo/metered/z"}, {"method": "POST", "path": "/echo/per-method/q#frag"}, {"method": "GET", "path": "/echo/free"}]}"#;
    let r = preview(body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let costs: Vec<u64> = v["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["cost"].as_u64().unwrap())
        .collect();
    assert_eq!(costs, [5, 3, 0]);
    assert_eq!(v["total"], 8);
    assert_eq!(v["sufficient"], false);
    assert_eq!(v["shortBy"], 4);
    let r = preview(b"{\"operations\": 3}").await;
    r.assert_problem(400, "INVALID_REQUEST_BODY");
    // The preview refuses what the gateway would refuse, rather than pricing it at 0.
    let r = preview(br#"{"operations": [{"method": "post", "path": "/echo/per-method/q"}]}"#).await;
    r.assert_problem(400, "INVALID_REQUEST_BODY");
    // And says which operation, and why.
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("operation 1: `method` is an HTTP method in upper case"),
        "{}",
        r.json()
    );
    let r =
        preview(br#"[{"method": "GET", "path": "/echo/a"}, {"method": "GET", "path": "/a%2fb"}]"#)
            .await;
    r.assert_problem(400, "INVALID_REQUEST_BODY");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("operation 2: `path` is not a path a request could have"),
        "{}",
        r.json()
    );
    // Nor one longer than a request target may be (414 to a request).
    let long = format!(
        r#"{{"method": "POST", "path": "/echo/metered/{}"}}"#,
        "a".repeat(9000)
    );
    let long: &'static str = Box::leak(long.into_boxed_str());
    let r = preview(long.as_bytes()).await;
    r.assert_problem(400, "INVALID_REQUEST_BODY");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("operation 1: `path` is longer than a request target may be"),
        "{}",
        r.json()
    );
    // JSON alone, and said to be: not parsed as JSON on a guess.
    let one = br#"{"method": "GET", "path": "/echo/metered/z"}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=latin1"),
    ] {
        let mut headers = vec![("authorization", bearer.as_str())];
        headers.extend(content_type.map(|t| ("content-type", t)));
        let r = send(
            h.gateway.addr,
            "POST",
            "/gateway/tokens/preview",
            &headers,
            one,
        )
        .await;
        r.assert_problem(415, "UNSUPPORTED_MEDIA_TYPE");
        // And says so, without offering a form.
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(!detail.contains("a form"), "{detail}");
    }
    // Methods a request could never be charged for are priced at nothing: `TRACE` and
    // `TRACK` are never forwarded (405), `CONNECT` is refused (400).
    let r = preview(br#"[{"method": "TRACE", "path": "/echo/metered/z"}, {"method": "TRACK", "path": "/echo/metered/z"}, {"method": "CONNECT", "path": "/echo/metered/z"}, {"method": "PATCH", "path": "/echo/metered/z"}]"#).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let costs: Vec<u64> = v["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["cost"].as_u64().unwrap())
        .collect();
    assert_eq!(costs, [0, 0, 0, 5], "{v}");
    assert_eq!(v["operations"][0]["route"], serde_json::Value::Null);
    // A member given twice says two things: refused, never the last one priced.
    let r = preview(br#"{"method": "POST", "path": "/echo/per-method/q", "method": "GET"}"#).await;
    r.assert_problem(400, "INVALID_REQUEST_BODY");
    let r = call(&h.gateway, "GET", "/gateway/tokens/history?limit=2", "c1").await;
    let v = r.json();
    let kinds: Vec<&str> = v["movements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["post", "reserve"]);
    let next = v["next"].as_str().unwrap().to_owned();
    let older = call(&h.gateway, "GET", &next, "c1").await.json();
    assert_eq!(older["movements"].as_array().unwrap().len(), 2);
    // `next` names the path as the gateway normalized it, never as the caller spelled
    // it: `//gateway/...` would be a reference to the host `gateway`.
    for spelled in [
        "//gateway/tokens/history?limit=1",
        "/gateway/tokens/../tokens/%68istory?limit=1",
    ] {
        let v = call(&h.gateway, "GET", spelled, "c1").await.json();
        let next = v["next"].as_str().unwrap();
        assert!(
            next.starts_with("/gateway/tokens/history?limit=1&before="),
            "{spelled}: {next}"
        );
    }
    for query in [
        "limit=0",
        "limit=501",
        "limit=1&limit=2",
        "before=5&before=9",
        "limit=+1",
        "limit",
        "before=-0",
    ] {
        let r = call(
            &h.gateway,
            "GET",
            &format!("/gateway/tokens/history?{query}"),
            "c1",
        )
        .await;
        r.assert_problem(400, "INVALID_QUERY");
        // The range this endpoint serves, not the admin journal's.
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("limit is 1 to 500 "), "{query}: {detail}");
    }
    // Another client's history is not reachable: it is always the caller's own.
    let other = call(&h.gateway, "GET", "/gateway/tokens/history", "stranger")
        .await
        .json();
    assert_eq!(other["movements"], serde_json::json!([]));
    assert_verified(&h.gateway).await;
    let metrics = h.metrics().await;
    assert_eq!(metric(&metrics, "tollgate_credit_insufficient_total "), 2);
    assert_eq!(metric(&metrics, "tollgate_credit_posts_total "), 2);
    // The embedded ledger says how its group commit does (that groups form under
    // concurrency is the ledger suite's test): the reservations were all written.
    let writes = metric(&metrics, "tollgate_credit_log_writes_total ");
    let movements = metric(&metrics, "tollgate_credit_log_movements_total ");
    assert!(
        writes >= 1 && movements >= 4,
        "{writes} writes carried {movements} movements"
    );
}

/// Clients that hang up at every instant around the reservation: right after the
/// request head, while the ledger is still making the reservation durable, while the
/// backend works. Whatever was held comes back, once each; none waits for its deadline.
async fn hang_ups_leave_nothing_held(g: &GatewayProcess) {
    credit(g, "c7", 100).await;
    let bearer = bearer_for("c7");
    let target = "/echo/metered/a?delay_ms=300";
    // Every fourth request carries an idempotency key: its claim must be freed too.
    let key = |round: u64| round.is_multiple_of(4).then(|| format!("hang-up-{round}"));
    for round in 0..40u64 {
        let mut request =
            format!("GET {target} HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\n");
        if let Some(key) = key(round) {
            request.push_str(&format!("idempotency-key: {key}\r\n"));
        }
        request.push_str("\r\n");
        let mut stream = tokio::net::TcpStream::connect(g.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // From no wait at all to a few milliseconds: across the ledger's commit.
        tokio::time::sleep(Duration::from_micros(round * 150)).await;
        drop(stream);
    }
    settled(g, "c7", (100, 0)).await;
    let movements = journal(g, "c7").await;
    let reserves = movements.iter().filter(|m| m["kind"] == "reserve").count();
    let voids: Vec<&Value> = movements.iter().filter(|m| m["kind"] == "void").collect();
    assert_eq!(reserves, voids.len(), "{movements:?}");
    assert!(
        voids.iter().all(|m| m["reason"] == "client_abort"),
        "{voids:?}"
    );
    assert_verified(g).await;

    // No key is left "in flight": each retry runs, and is charged once.
    let mut retries = tokio::task::JoinSet::new();
    for key in (0..40).filter_map(key) {
        let (addr, bearer) = (g.addr, bearer.clone());
        retries.spawn(async move {
            let headers = [
                ("authorization", bearer.as_str()),
                ("idempotency-key", key.as_str()),
            ];
            send(addr, "GET", target, &headers, b"").await
        });
    }
    while let Some(r) = retries.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    settled(g, "c7", (50, 0)).await;
}

#[tokio::test]
async fn a_client_hanging_up_during_its_reservation_is_refunded_at_once() {
    // The reservation timeout is far beyond the test: only a refund can pass it.
    let h = start("reservation_timeout = \"10m\"").await;
    hang_ups_leave_nothing_held(&h.gateway).await;
}

#[tokio::test]
async fn a_client_hanging_up_during_its_reservation_is_refunded_at_once_on_redis() {
    let redis = RedisServer::start();
    let store = format!("[store]\nredis_url = \"{}\"\ntimeout = \"1s\"", redis.url());
    let h = Harness::with(setup("reservation_timeout = \"10m\"", &store)).await;
    h.gateway.wait_ready().await;
    hang_ups_leave_nothing_held(&h.gateway).await;
}

#[tokio::test]
async fn every_kind_of_failure_refunds_exactly_once() {
    let slow_upstream = Setup {
        upstream: "response_timeout = \"700ms\"".into(),
        ..setup("", "")
    };
    let h = Harness::with(slow_upstream).await;
    h.gateway.wait_ready().await;
    let g = &h.gateway;
    credit(g, "c2", 100).await;

    // The backend fails (5xx), or refuses (4xx: refunded by default).
    let r = call(g, "GET", "/echo/metered/a?status=503", "c2").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-token-cost"), Some("0"));
    assert_eq!(r.header("x-token-balance"), Some("100"));
    let r = call(g, "GET", "/echo/metered/a?status=422", "c2").await;
    assert_eq!((r.status, r.header("x-token-cost")), (422, Some("0")));
    // ...unless the route charges for it.
    let r = call(g, "GET", "/echo/strict/a?status=422", "c2").await;
    assert_eq!((r.status, r.header("x-token-cost")), (422, Some("1")));
    settled(g, "c2", (99, 0)).await;
    // The backend does not answer in time.
    call(g, "GET", "/echo/metered/a?delay_ms=3000", "c2")
        .await
        .assert_problem(504, "UPSTREAM_TIMEOUT");
    assert_eq!(account(g, "c2").await, (99, 0));
    // The gateway refuses the request after reserving: a body naming another client.
    let bearer = bearer_for("c2");
    let r = send(
        g.addr,
        "POST",
        "/echo/metered/a",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        br#"{"clientId": "someone-else"}"#,
    )
    .await;
    r.assert_problem(403, "CLIENT_ID_MISMATCH");
    assert_eq!(r.header("x-token-cost"), Some("0"));
    assert_eq!(account(g, "c2").await, (99, 0));

    // The client goes away before the response head.
    let mut stream = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let request = format!(
        "GET /echo/metered/a?delay_ms=1500 HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            account(g, "c2").await == (94, 5)
        })
        .await
    );
    drop(stream);
    settled(g, "c2", (99, 0)).await;

    // The client goes away in the middle of an upload.
    let mut stream = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let head = format!(
        "POST /echo/metered/upload HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\ncontent-type: text/csv\r\ncontent-length: 1000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; 50_000]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            account(g, "c2").await == (94, 5)
        })
        .await
    );
    drop(stream);
    assert!(
        eventually(Duration::from_secs(3), || async {
            account(g, "c2").await == (99, 0)
        })
        .await
    );

    // Each failure: one reserve and exactly one void.
    let movements = journal(g, "c2").await;
    let count = |kind: &str| movements.iter().filter(|m| m["kind"] == kind).count();
    assert_eq!(count("reserve"), 7);
    assert_eq!(count("void"), 6);
    assert_eq!(count("post"), 1);
    let reasons: Vec<&str> = movements
        .iter()
        .filter(|m| m["kind"] == "void")
        .map(|m| m["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "upstream_status").count(),
        2
    );
    assert_eq!(
        reasons.iter().filter(|r| **r == "upstream_error").count(),
        1
    );
    assert!(reasons.contains(&"client_abort"), "{reasons:?}");
    assert_verified(g).await;

    // The backend cannot be reached at all.
    let unreachable = Setup {
        upstream_addr: Some(closed_port()),
        ..setup("", "")
    };
    let h2 = Harness::with(unreachable).await;
    h2.gateway.wait_ready().await;
    credit(&h2.gateway, "c3", 5).await;
    let r = call(&h2.gateway, "GET", "/echo/metered/a", "c3").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-token-balance"), Some("5"));
    assert_eq!(account(&h2.gateway, "c3").await, (5, 0));
    let metrics = h2.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "tollgate_credit_voids_total{reason=\"upstream_error\"}"
        ),
        1
    );
}

#[tokio::test]
async fn with_on_client_abort_settle_a_client_that_hangs_up_cannot_have_work_done_for_free() {
    let h = start("on_client_abort = \"settle\"").await;
    let g = &h.gateway;
    credit(g, "c7", 100).await;
    let bearer = bearer_for("c7");
    // An ordinary request is charged as ever, and answered.
    let r = call(g, "GET", "/echo/metered/a", "c7").await;
    assert_eq!((r.status, r.header("x-token-cost")), (200, Some("5")));
    settled(g, "c7", (95, 0)).await;

    // Sends the whole request, waits until it is reserved, then hangs up.
    let hang_up = |target: &str, key: Option<&str>| {
        let key = key
            .map(|k| format!("idempotency-key: {k}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST {target} HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\ncontent-type: application/json\r\n{key}content-length: 2\r\n\r\n{{}}"
        );
        let backend = &h.backend;
        async move {
            let before = backend.requests();
            let mut stream = tokio::net::TcpStream::connect(g.addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            // Hangs up while the backend works on it: after the reservation, and after
            // the request reached the backend (leaving earlier is the refund case below).
            assert!(
                eventually(Duration::from_secs(3), || async {
                    account(g, "c7").await.1 == 5 && backend.requests() > before
                })
                .await
            );
            drop(stream);
        }
    };
    // The backend did the work: charged, although nobody read the answer.
    let seen = h.backend.requests();
    hang_up("/echo/metered/b?delay_ms=600", None).await;
    settled(g, "c7", (90, 0)).await;
    assert_eq!(h.backend.requests(), seen + 1);
    // The backend failed: refunded.
    hang_up("/echo/metered/b?delay_ms=600&status=503", None).await;
    settled(g, "c7", (90, 0)).await;
    // With a key: the retry after hanging up is answered from the record, not charged.
    hang_up("/echo/metered/k?delay_ms=600", Some("\"hung-up\"")).await;
    settled(g, "c7", (85, 0)).await;
    let retry = send(
        g.addr,
        "POST",
        "/echo/metered/k?delay_ms=600",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
            ("idempotency-key", "\"hung-up\""),
        ],
        b"{}",
    )
    .await;
    assert_eq!(
        (retry.status, retry.header("idempotent-replayed")),
        (200, Some("true"))
    );
    // The backend's answer, which nobody read, is what the retry is shown (it used to
    // be its status alone: an empty 200).
    assert_eq!(retry.header("content-type"), Some("application/json"));
    let shown = retry.json();
    assert_eq!(
        (&shown["method"], &shown["path"], &shown["body"]["text"]),
        (
            &Value::from("POST"),
            &Value::from("/echo/metered/k"),
            &Value::from(r#"{"clientId":"c7"}"#)
        ),
        "{shown}"
    );
    assert_eq!(account(g, "c7").await, (85, 0));
    // A client that leaves in the middle of its upload is refunded: the backend never
    // had the whole request.
    let mut stream = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let head = format!(
        "POST /echo/metered/upload HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\ncontent-type: text/csv\r\ncontent-length: 1000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; 50_000]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            account(g, "c7").await == (80, 5)
        })
        .await
    );
    drop(stream);
    settled(g, "c7", (85, 0)).await;

    let movements = journal(g, "c7").await;
    let reasons: Vec<&str> = movements
        .iter()
        .filter(|m| m["kind"] == "void")
        .map(|m| m["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["client_abort", "upstream_status"],
        "{movements:#?}"
    );
    assert_eq!(movements.iter().filter(|m| m["kind"] == "post").count(), 3);
    assert_verified(g).await;
}

/// With `on_client_abort = "settle"` an exchange outlives its client. It still counts
/// among the requests in flight: clients that reset at once used to hold any number of
/// backend exchanges while `tollgate_requests_in_flight` read 0 (40 under a bound of 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_that_outlive_their_clients_count_in_flight() {
    let h = Harness::with(Setup {
        server: "max_connections = 4".into(),
        ..setup("on_client_abort = \"settle\"", "")
    })
    .await;
    let g = &h.gateway;
    g.wait_ready().await;
    credit(g, "c13", 100).await;
    let bearer = bearer_for("c13");
    let before = h.backend.requests();
    for i in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(g.addr).await.unwrap();
        let request = format!(
            "POST /echo/metered/s{i}?delay_ms=2000 HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        assert!(
            eventually(Duration::from_secs(3), || async {
                h.backend.requests() == before + i + 1
            })
            .await
        );
        drop(stream);
    }
    // Four exchanges run with nobody waiting: the gateway is full. (Once it has seen the
    // clients go: a fifth connection before that is closed on accept instead.)
    assert!(
        eventually(Duration::from_secs(3), || async {
            let metrics = h.metrics().await;
            metric(&metrics, "tollgate_connections_open ") == 0
                && metric(&metrics, "tollgate_requests_in_flight ") == 4
        })
        .await
    );
    let r = call(g, "GET", "/echo/one/x", "c13").await;
    r.assert_problem(503, "GATEWAY_OVERLOADED");
    // They end (and are charged); room comes back.
    assert!(
        eventually(Duration::from_secs(8), || async {
            call(g, "GET", "/echo/one/x", "c13").await.status == 200
        })
        .await
    );
    settled(g, "c13", (100 - 4 * 5 - 1, 0)).await;
}

/// A metered exchange that could outlive its client takes its request's place in
/// flight, not a second one: it used to count twice while its client waited, so under
/// `max_connections = 2` a second such request was refused 503 with one in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metered_exchange_whose_client_waits_counts_once_in_flight() {
    let h = Harness::with(Setup {
        server: "max_connections = 2".into(),
        ..setup("on_client_abort = \"settle\"", "")
    })
    .await;
    let g = &h.gateway;
    g.wait_ready().await;
    credit(g, "c14", 100).await;
    let bearer = bearer_for("c14");
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let slow = |i: usize| async move {
        let target = format!("/echo/metered/w{i}?delay_ms=1500");
        send(g.addr, "POST", &target, &headers, b"{}").await
    };
    let watch = async {
        // Both wait on the backend: each counts once.
        assert!(
            eventually(Duration::from_secs(3), || async {
                h.backend.requests() >= 2
                    && metric(&h.metrics().await, "tollgate_requests_in_flight ") == 2
            })
            .await
        );
    };
    let (first, second, ()) = tokio::join!(slow(0), slow(1), watch);
    for r in [first, second] {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    settled(g, "c14", (100 - 2 * 5, 0)).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(&h.metrics().await, "tollgate_requests_in_flight ") == 0
        })
        .await
    );
}

/// With `on_client_abort = "settle"`, an exchange whose client has left runs on a task
/// of its own. A graceful stop waits for it within the grace period, as for a request
/// still in flight: it used to end with the worker, so the backend's work was never
/// charged (the reservation expired into a refund).
// Multi-threaded: the demo backend runs on this test's runtime and must answer while
// the test blocks waiting for the gateway to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_waits_for_an_exchange_whose_client_left() {
    let mut h = start("on_client_abort = \"settle\"").await;
    credit(&h.gateway, "c10", 100).await;
    let bearer = bearer_for("c10");
    let before = h.backend.requests();
    let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    let request = format!(
        "POST /echo/metered/slow?delay_ms=1500 HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            account(&h.gateway, "c10").await.1 == 5 && h.backend.requests() > before
        })
        .await
    );
    // The client leaves, then the gateway is told to stop while the backend works.
    drop(stream);
    h.gateway.signal("TERM");
    let exit = h.gateway.wait_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?} {}",
        h.gateway.stderr()
    );
    h.gateway = GatewayProcess::start(&h.dir.path().join("gateway.toml"));
    h.gateway.wait_ready().await;
    assert_eq!(
        account(&h.gateway, "c10").await,
        (95, 0),
        "charged, not held"
    );
    let movements = journal(&h.gateway, "c10").await;
    assert_eq!(movements[0]["kind"], "post", "{movements:#?}");
    assert_verified(&h.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_shutdown_cuts_off_is_refunded_at_once() {
    let mut h = Harness::with(Setup {
        server: "shutdown_grace = \"300ms\"".into(),
        ..setup("reservation_timeout = \"15m\"", "")
    })
    .await;
    h.gateway.wait_ready().await;
    credit(&h.gateway, "c11", 100).await;
    let bearer = bearer_for("c11");
    let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    let request = format!(
        "POST /echo/metered/slow?delay_ms=5000 HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            account(&h.gateway, "c11").await.1 == 5
        })
        .await
    );
    h.gateway.signal("TERM");
    let exit = h.gateway.wait_exit(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    assert!(
        h.gateway
            .stderr()
            .contains("refunded what requests cut off by the shutdown held"),
        "{}",
        h.gateway.stderr()
    );
    // Not held for the 15 minutes of its reservation: refunded before the exit.
    h.gateway = GatewayProcess::start(&h.dir.path().join("gateway.toml"));
    h.gateway.wait_ready().await;
    assert_eq!(account(&h.gateway, "c11").await, (100, 0));
    assert_verified(&h.gateway).await;
}

/// A request still running at its reservation's deadline would be refunded under it by
/// the sweeper, and its answer could then charge nothing: an upload trickled at the
/// slowest allowed rate got its work done free. It is cut off a little before the
/// deadline instead (408 for a body still arriving, 504 for an answer still awaited)
/// and refunded as its own failure; an answer that begins in time is charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_running_at_its_reservations_deadline_is_cut_off_and_refunded() {
    // A reservation of 6 s: the answer must begin within 3 s.
    let h = start("reservation_timeout = \"6s\"").await;
    let g = &h.gateway;
    credit(g, "c9", 100).await;
    let mut stream = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let head = format!(
        "POST /echo/metered/up HTTP/1.1\r\nhost: gw.test\r\nauthorization: {}\r\ncontent-type: text/csv\r\ncontent-length: 100000\r\n\r\n",
        bearer_for("c9")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if writer.write_all(&[b'x'; 100]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), reader.read_to_end(&mut answer)).await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    settled(g, "c9", (100, 0)).await;
    // An answer still awaited at that point: 504, refunded.
    call(g, "GET", "/echo/metered/a?delay_ms=4500", "c9")
        .await
        .assert_problem(504, "UPSTREAM_TIMEOUT");
    settled(g, "c9", (100, 0)).await;
    // One that begins in time is charged.
    let r = call(g, "GET", "/echo/metered/a?delay_ms=1000", "c9").await;
    assert_eq!((r.status, r.header("x-token-cost")), (200, Some("5")));
    settled(g, "c9", (95, 0)).await;
    assert_verified(g).await;
}

#[tokio::test]
async fn a_route_settles_at_the_backends_figure_never_above_the_reservation() {
    let h = start("").await;
    let g = &h.gateway;
    credit(g, "c4", 20).await;
    let r = call(g, "POST", "/echo/settled/bulk?tokens_used=2", "c4").await;
    assert_eq!(
        (r.header("x-token-cost"), r.header("x-token-balance")),
        (Some("2"), Some("18"))
    );
    let r = call(g, "POST", "/echo/settled/bulk?tokens_used=50", "c4").await;
    assert_eq!(
        (r.header("x-token-cost"), r.header("x-token-balance")),
        (Some("5"), Some("13"))
    );
    // No figure: what was reserved.
    let r = call(g, "POST", "/echo/settled/bulk", "c4").await;
    assert_eq!(r.header("x-token-cost"), Some("5"));
    settled(g, "c4", (8, 0)).await;
    assert_verified(g).await;
}

#[tokio::test]
async fn an_idempotency_key_is_charged_once_and_replayed() {
    let h = start("idempotency_ttl = \"2s\"").await;
    let g = &h.gateway;
    credit(g, "c5", 100).await;
    let bearer = bearer_for("c5");
    let post = |key: &'static str, body: &'static [u8], target: &'static str| {
        let bearer = bearer.clone();
        async move {
            send(
                g.addr,
                "POST",
                target,
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                    ("idempotency-key", key),
                ],
                body,
            )
            .await
        }
    };
    let first = post("\"k-1\"", br#"{"name":"a"}"#, "/echo/metered/c").await;
    assert_eq!(first.status, 200);
    // The body read for the fingerprint reached the backend rewritten as on any route:
    // the caller's client id set, the key passed on.
    let echoed = first.json();
    assert_eq!(
        echoed["body"]["text"], r#"{"name":"a","clientId":"c5"}"#,
        "{echoed}"
    );
    assert_eq!(first.echoed_header("idempotency-key"), ["\"k-1\""]);
    assert_eq!(first.header("x-token-cost"), Some("5"));
    let seen = h.backend.requests();
    let again = post("\"k-1\"", br#"{"name":"a"}"#, "/echo/metered/c").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body, "the same answer, byte for byte");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("content-type"), first.header("content-type"));
    assert_eq!(again.header("x-token-cost"), Some("0"));
    assert_eq!(
        h.backend.requests(),
        seen,
        "a replay never reaches the backend"
    );
    // The same request spelled otherwise: the media type in another case, the key as
    // an sf-string with a parameter.
    let respelled = send(
        g.addr,
        "POST",
        "/echo/metered/c",
        &[
            ("authorization", &bearer),
            ("content-type", "Application/JSON"),
            ("idempotency-key", "\"k-1\";v=2"),
        ],
        br#"{"name":"a"}"#,
    )
    .await;
    assert_eq!(respelled.header("idempotent-replayed"), Some("true"));
    assert_eq!(respelled.body, first.body);
    settled(g, "c5", (95, 0)).await;
    // The same key on a different request: another body, another target. Like every
    // metered answer, the refusal says what it cost (nothing) and what is left.
    let mismatch = post("\"k-1\"", br#"{"name":"b"}"#, "/echo/metered/c").await;
    mismatch.assert_problem(422, "IDEMPOTENCY_KEY_MISMATCH");
    assert_eq!(
        (
            mismatch.header("x-token-cost"),
            mismatch.header("x-token-balance")
        ),
        (Some("0"), Some("95"))
    );
    post("\"k-1\"", br#"{"name":"a"}"#, "/echo/metered/d")
        .await
        .assert_problem(422, "IDEMPOTENCY_KEY_MISMATCH");
    // Keys are per client: another client's k-1 is its own.
    let other = bearer_for("c6");
    credit(g, "c6", 5).await;
    let r = send(
        g.addr,
        "POST",
        "/echo/metered/c",
        &[
            ("authorization", &other),
            ("content-type", "application/json"),
            ("idempotency-key", "\"k-1\""),
        ],
        br#"{"name":"a"}"#,
    )
    .await;
    assert_eq!((r.status, r.header("x-token-cost")), (200, Some("5")));
    // While the first is running: 409.
    let slow = tokio::spawn({
        let bearer = bearer.clone();
        let addr = g.addr;
        async move {
            send(
                addr,
                "POST",
                "/echo/metered/slow?delay_ms=800",
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                    ("idempotency-key", "k-2"),
                ],
                b"{}",
            )
            .await
        }
    });
    assert!(
        eventually(Duration::from_secs(2), || async {
            account(g, "c5").await.1 == 5
        })
        .await
    );
    let r = post("k-2", b"{}", "/echo/metered/slow?delay_ms=800").await;
    r.assert_problem(409, "IDEMPOTENCY_KEY_IN_USE");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        (r.header("x-token-cost"), r.header("x-token-balance")),
        (Some("0"), Some("90")),
        "95, less the 5 the running request holds"
    );
    assert_eq!(slow.await.unwrap().status, 200);
    // A refunded request frees its key: the retry runs (and is charged once).
    let failed = post("k-3", b"{}", "/echo/metered/c?status=500").await;
    assert_eq!(failed.status, 500);
    let retried = post("k-3", b"{}", "/echo/metered/c?status=500").await;
    assert_eq!(retried.header("idempotent-replayed"), None);
    // Bad keys.
    let bad = post("\"unterminated", b"{}", "/echo/metered/c").await;
    bad.assert_problem(400, "IDEMPOTENCY_KEY_INVALID");
    assert_eq!(bad.header("x-token-cost"), Some("0"));
    assert_eq!(bad.header("x-token-balance"), Some("90"));
    // A body refused while it is read for the key's fingerprint is a metered answer
    // too: it says what the caller has (and charges nothing).
    // The over-long body is declared, not sent: the gateway refuses it by its
    // `Content-Length` and closes, and 3 MiB still being written then met a reset
    // (EPIPE) before the answer could be read.
    let declared = (3u64 << 20).to_string();
    for (content_type, length, body, status, code) in [
        ("text/plain", "1", &b"x"[..], 415, "UNSUPPORTED_MEDIA_TYPE"),
        (
            "application/json",
            declared.as_str(),
            &b""[..],
            413,
            "PAYLOAD_TOO_LARGE",
        ),
    ] {
        let head = format!(
            "POST /echo/metered/c HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\
             authorization: {bearer}\r\ncontent-type: {content_type}\r\n\
             idempotency-key: \"k-4\"\r\ncontent-length: {length}\r\n\r\n"
        );
        let r = raw(g.addr, &[head.as_bytes(), body].concat()).await;
        r.assert_problem(status, code);
        assert_eq!(
            (r.header("x-token-cost"), r.header("x-token-balance")),
            (Some("0"), Some("90")),
            "{content_type}"
        );
    }
    // After the retention, the key is new again (and charges again).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let late = post("\"k-1\"", br#"{"name":"a"}"#, "/echo/metered/c").await;
    assert_eq!(late.header("idempotent-replayed"), None);
    assert_eq!(late.header("x-token-cost"), Some("5"));
    settled(g, "c5", (85, 0)).await;
    let metrics = h.metrics().await;
    assert_eq!(
        metric(&metrics, "tollgate_credit_idempotent_replays_total "),
        2,
        "the replay, and the same request spelled otherwise"
    );
    assert_verified(g).await;
}

/// Multipart and opaque bodies stream through unread, so their claim cannot hash them:
/// the body's digest, taken as it passes, is kept with the answer, and a retry's body
/// must hash the same (read and let go, never forwarded) to be replayed.
#[tokio::test]
async fn a_streamed_body_is_the_same_request_only_if_it_hashes_the_same() {
    let h = start("").await;
    let g = &h.gateway;
    credit(g, "c8", 100).await;
    let bearer = bearer_for("c8");
    let multipart = |name: &str| {
        format!("--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n--b--\r\n")
    };
    let upload = |key: &'static str, content_type: &'static str, body: String| {
        let bearer = bearer.clone();
        async move {
            send(
                g.addr,
                "POST",
                "/echo/metered/upload",
                &[
                    ("authorization", &bearer),
                    ("content-type", content_type),
                    ("idempotency-key", key),
                ],
                body.as_bytes(),
            )
            .await
        }
    };
    let chunked = |key: &'static str, body: String| {
        let request = format!(
            "POST /echo/metered/upload HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\nauthorization: {bearer}\r\ncontent-type: text/csv\r\nidempotency-key: {key}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        async move { raw(g.addr, request.as_bytes()).await }
    };
    let form = "multipart/form-data; boundary=b";
    let first = upload("m-1", form, multipart("Spring")).await;
    assert_eq!(
        (first.status, first.header("x-token-cost")),
        (200, Some("5"))
    );
    let seen = h.backend.requests();
    // The reported case: the same length, another body.
    upload("m-1", form, multipart("Autumn"))
        .await
        .assert_problem(422, "IDEMPOTENCY_KEY_MISMATCH");
    let again = upload("m-1", form, multipart("Spring")).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    // A browser sending the same form data again picks a new boundary (of another
    // length, so another Content-Length): still the same request, replayed.
    let reframed = multipart("Spring").replace("--b", "------WebKitFormBoundaryR3try");
    let again = upload(
        "m-1",
        "multipart/form-data; boundary=----WebKitFormBoundaryR3try",
        reframed,
    )
    .await;
    assert_eq!(
        again.header("idempotent-replayed"),
        Some("true"),
        "{} {}",
        again.status,
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.body, first.body);
    let reframed = multipart("Autumn").replace("--b", "------WebKitFormBoundaryR3try");
    upload(
        "m-1",
        "multipart/form-data; boundary=----WebKitFormBoundaryR3try",
        reframed,
    )
    .await
    .assert_problem(422, "IDEMPOTENCY_KEY_MISMATCH");
    // Chunked, where no length is declared: a longer body, then the same one.
    let csv = "name,phone\nAda,1\n".to_owned();
    let first = chunked("m-2", csv.clone()).await;
    assert_eq!(
        (first.status, first.header("x-token-cost")),
        (200, Some("5"))
    );
    chunked("m-2", format!("{csv}Grace,2\n"))
        .await
        .assert_problem(422, "IDEMPOTENCY_KEY_MISMATCH");
    chunked("m-2", csv.replace("Ada", "Bob"))
        .await
        .assert_problem(422, "IDEMPOTENCY_KEY_MISMATCH");
    let again = chunked("m-2", csv).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        h.backend.requests(),
        seen + 1,
        "neither a retry nor a mismatch reached the backend"
    );
    settled(g, "c8", (90, 0)).await;
    assert_verified(g).await;
}

/// A backend written in raw bytes: `serve` runs for each connection, with the count of
/// requests it answered.
async fn raw_backend<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicU64>)
where
    F: Fn(tokio::net::TcpStream, Arc<AtomicU64>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&answered);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, Arc::clone(&count)));
        }
    });
    (addr, answered)
}

/// Reads from `stream` into `buf` until it holds `needle`; where it ends, or `None`
/// when the connection ends first.
async fn read_past(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    needle: &[u8],
) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = buf.windows(needle.len()).position(|w| w == needle) {
            return Some(at + needle.len());
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The first answer to `retry` that is not 409 `IDEMPOTENCY_KEY_IN_USE`: the answer a
/// key's first request is still keeping in the background, once it is kept.
async fn out_of_flight<F, Fut>(mut retry: F) -> RawResponse
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = RawResponse>,
{
    for _ in 0..250 {
        let r = retry().await;
        if r.status != 409 {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the key is still in flight after 5 s");
}

/// A backend that answers as soon as it has a request's head, then reads the body to its
/// end (chunked, as the gateway forwards a chunked upload) before the next request on
/// the connection. Counts the requests it answered.
async fn early_answering_backend() -> (SocketAddr, Arc<AtomicU64>) {
    raw_backend(|mut stream, count| async move {
        let mut buf = Vec::new();
        while let Some(head) = read_past(&mut stream, &mut buf, b"\r\n\r\n").await {
            buf.drain(..head);
            count.fetch_add(1, Ordering::SeqCst);
            let body = br#"{"created":true}"#;
            let mut answer = format!(
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            answer.extend_from_slice(body);
            if stream.write_all(&answer).await.is_err() {
                return;
            }
            // Then the rest of the upload: up to the last chunk.
            let Some(end) = read_past(&mut stream, &mut buf, b"0\r\n\r\n").await else {
                return;
            };
            buf.drain(..end);
        }
    })
    .await
}

/// A backend that answers every request with a success whose body breaks off: it
/// declares 1,100 bytes, sends 100 and closes. Counts the requests.
async fn truncating_backend() -> (SocketAddr, Arc<AtomicU64>) {
    raw_backend(|mut stream, count| async move {
        if read_past(&mut stream, &mut Vec::new(), b"\r\n\r\n")
            .await
            .is_none()
        {
            return;
        }
        count.fetch_add(1, Ordering::SeqCst);
        let mut answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1100\r\n\r\n"
                .to_vec();
        answer.extend_from_slice(&[b'x'; 100]);
        let _ = stream.write_all(&answer).await;
    })
    .await
}

/// With an `Idempotency-Key` the answer is read to be kept. One that breaks off used to
/// reach the client as a clean, charged, empty 200 (and be replayed so): now the client
/// is told (502), and a retry gets the same answer, charged once.
/// The shipped demo's provider call answers an upload it does not use. It used to
/// answer before reading it and close, so its kernel reset the connection with the
/// gateway's bytes unread, and the reset often destroyed the answer on its way: the
/// call was placed, the client got 502 and was refunded. Every call must be a charged 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_answers_every_upload_to_a_provider_call_and_each_is_charged() {
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = TempDir::new();
    let config = shipped_config(dir.path(), &format!("http://{}", backend.addr()), |_, t| t);
    let snapshot = tollgate_policy::load(&config).unwrap();
    let gateway = GatewayProcess::start(&config);
    gateway.wait_ready().await;
    let mut claims = serde_json::Map::new();
    claims.insert("clientId".into(), Value::from("1002"));
    let token = tollgate_proxy::rehearsal::sign(&snapshot, &claims).unwrap();
    let bearer = format!("Bearer {token}");
    let balance = || async {
        let r = send(
            gateway.addr,
            "GET",
            "/gateway/tokens/balance",
            &[("authorization", &bearer)],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["balance"].as_u64().unwrap()
    };
    let before = balance().await;
    let mut body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.txt\"\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 200_000));
    body.extend_from_slice(b"\r\n--b--\r\n");
    for i in 0..10 {
        let r = send(
            gateway.addr,
            "POST",
            "/plivo/calls",
            &[
                ("authorization", &bearer),
                ("content-type", "multipart/form-data; boundary=b"),
            ],
            &body,
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "call {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("x-token-cost"), Some("1"), "call {i}");
    }
    assert_eq!(balance().await, before - 10);
}

#[tokio::test]
async fn a_kept_answer_that_breaks_off_is_a_502_not_an_empty_success() {
    let (backend, answered) = truncating_backend().await;
    let h = Harness::with(Setup {
        upstream_addr: Some(backend),
        ..setup("", "")
    })
    .await;
    let g = &h.gateway;
    g.wait_ready().await;
    credit(g, "c11", 100).await;
    let bearer = bearer_for("c11");
    let post = || {
        let bearer = bearer.clone();
        async move {
            send(
                g.addr,
                "POST",
                "/echo/metered/x",
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                    ("idempotency-key", "cut-1"),
                ],
                b"{}",
            )
            .await
        }
    };
    let first = post().await;
    first.assert_problem(502, "UPSTREAM_ERROR");
    assert_eq!(first.header("x-token-cost"), Some("5"));
    let again = post().await;
    again.assert_problem(502, "UPSTREAM_ERROR");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    settled(g, "c11", (95, 0)).await;
    assert_verified(g).await;
}

/// An answer kept for retries is read whole before it is sent on. A client that left
/// while it was read used to drop the reading with it, and the answer was kept as its
/// status and headers alone: its retry got an empty success. The reading now finishes
/// without the client, and the retry is shown the whole answer.
#[tokio::test]
async fn a_client_that_leaves_while_the_answer_is_read_leaves_it_kept_whole() {
    let body = br#"{"created":"slowly"}"#;
    let (backend, answered) = raw_backend(move |mut stream, count| async move {
        if read_past(&mut stream, &mut Vec::new(), b"\r\n\r\n")
            .await
            .is_none()
        {
            return;
        }
        count.fetch_add(1, Ordering::SeqCst);
        let head = format!(
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = stream.write_all(body).await;
    })
    .await;
    let h = Harness::with(Setup {
        upstream_addr: Some(backend),
        ..setup("", "")
    })
    .await;
    let g = &h.gateway;
    g.wait_ready().await;
    credit(g, "c13", 100).await;
    let bearer = bearer_for("c13");
    let mut client = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let request = format!(
        "POST /echo/metered/slow HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\ncontent-type: application/json\r\nidempotency-key: leave-1\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    // The head has reached the gateway (and charged the request); its body has not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(client);
    let retry = || {
        let bearer = bearer.clone();
        async move {
            let headers = [
                ("authorization", bearer.as_str()),
                ("content-type", "application/json"),
                ("idempotency-key", "leave-1"),
            ];
            send(g.addr, "POST", "/echo/metered/slow", &headers, b"{}").await
        }
    };
    let r = out_of_flight(retry).await;
    assert_eq!(
        (r.status, r.header("idempotent-replayed")),
        (201, Some("true")),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.body, body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    settled(g, "c13", (95, 0)).await;
    assert_verified(g).await;
}

/// A retry is "the same request" as the route and the backend see it: another spelling
/// of the same path (`%65` for `e`) or another framing of the same JSON body (chunked
/// instead of `Content-Length`) is replayed, not refused with 422. And it is shown what
/// the first client was shown: the backend's absolute `Location`, built from the `Host`
/// the gateway sent, made relative (it used to be kept as the backend sent it).
#[tokio::test]
async fn a_retry_is_the_same_request_however_it_is_spelled_or_framed() {
    let (backend, answered) = raw_backend(|mut stream, count| async move {
        let mut buf = Vec::new();
        while let Some(head) = read_past(&mut stream, &mut buf, b"\r\n\r\n").await {
            let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
            buf.drain(..head);
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            let length: usize = field("content-length:").map_or(0, |v| v.parse().unwrap());
            let mut chunk = [0u8; 4096];
            while buf.len() < length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..length);
            count.fetch_add(1, Ordering::SeqCst);
            let host = field("host:").unwrap_or_default();
            let answer = format!(
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nlocation: http://{host}/echo/metered/e/7\r\ncontent-length: 8\r\n\r\n{{\"id\":7}}"
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let h = Harness::with(Setup {
        upstream_addr: Some(backend),
        ..setup("", "")
    })
    .await;
    let g = &h.gateway;
    g.wait_ready().await;
    credit(g, "c12", 100).await;
    let bearer = bearer_for("c12");
    let first = send(
        g.addr,
        "POST",
        "/echo/metered/e",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
            ("idempotency-key", "same-1"),
        ],
        br#"{"n":1}"#,
    )
    .await;
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.header("location"), Some("/echo/metered/e/7"));
    let chunked = |target: &str| {
        format!(
            "POST {target} HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\nauthorization: {bearer}\r\ncontent-type: application/json\r\nidempotency-key: same-1\r\ntransfer-encoding: chunked\r\n\r\n7\r\n{{\"n\":1}}\r\n0\r\n\r\n"
        )
    };
    let retry = raw(g.addr, chunked("/echo/metered/%65").as_bytes()).await;
    assert_eq!(
        (retry.status, retry.header("idempotent-replayed")),
        (201, Some("true")),
        "{}",
        String::from_utf8_lossy(&retry.body)
    );
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("location"), Some("/echo/metered/e/7"));
    // An empty query is none: the backend gets the same target.
    let retry = raw(g.addr, chunked("/echo/metered/e?").as_bytes()).await;
    assert_eq!(
        (retry.status, retry.header("idempotent-replayed")),
        (201, Some("true"))
    );
    // Another path is another request.
    raw(g.addr, chunked("/echo/metered/E").as_bytes())
        .await
        .assert_problem(422, "IDEMPOTENCY_KEY_MISMATCH");
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    settled(g, "c12", (95, 0)).await;
}

/// A backend may answer an upload before all of it has arrived. The answer is kept for
/// retries only once the upload has ended, with its digest: meanwhile a retry finds the
/// key in flight (409); afterwards the same upload is replayed and another is refused.
/// (The digest used to be taken with the answer's head, so such an upload was kept as
/// "unfinished" and every retry of it got 422.)
#[tokio::test]
async fn an_upload_answered_before_its_end_is_kept_once_it_ends() {
    let (backend, answered) = early_answering_backend().await;
    let h = Harness::with(Setup {
        upstream_addr: Some(backend),
        ..setup("", "")
    })
    .await;
    let g = &h.gateway;
    g.wait_ready().await;
    credit(g, "c9", 100).await;
    let bearer = bearer_for("c9");
    let csv = "name,phone\nAda,1\n";
    // Retries send it whole (chunked here; with `Content-Length` below).
    let whole = |body: &'static str| {
        let request = format!(
            "POST /echo/metered/upload HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\nauthorization: {bearer}\r\ncontent-type: text/csv\r\nidempotency-key: early-1\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        async move { raw(g.addr, request.as_bytes()).await }
    };

    // The upload's bytes, but not yet its end: the backend answers at once.
    let mut upload = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let head = format!(
        "POST /echo/metered/upload HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\ncontent-type: text/csv\r\nidempotency-key: early-1\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{csv}\r\n",
        csv.len()
    );
    upload.write_all(head.as_bytes()).await.unwrap();
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        crate::support::read_response(&mut upload),
    )
    .await
    .expect("the backend's early answer");
    assert_eq!(
        (first.status, first.header("x-token-cost")),
        (201, Some("5"))
    );
    whole(csv)
        .await
        .assert_problem(409, "IDEMPOTENCY_KEY_IN_USE");

    // The upload ends: from now on its retry is replayed.
    upload.write_all(b"0\r\n\r\n").await.unwrap();
    let again = out_of_flight(|| whole(csv)).await;
    assert_eq!(
        (again.status, again.header("idempotent-replayed")),
        (201, Some("true")),
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.body, first.body);
    whole("name,phone\nBob,1\n")
        .await
        .assert_problem(422, "IDEMPOTENCY_KEY_MISMATCH");
    // The framing is not the request: the same bytes with `Content-Length` are the same
    // upload (its declared length used to be part of the claim: 422), other bytes of
    // the same length are not.
    let declared = |body: &'static str| {
        let bearer = bearer.clone();
        async move {
            let headers = [
                ("authorization", bearer.as_str()),
                ("content-type", "text/csv"),
                ("idempotency-key", "early-1"),
            ];
            send(
                g.addr,
                "POST",
                "/echo/metered/upload",
                &headers,
                body.as_bytes(),
            )
            .await
        }
    };
    let again = declared(csv).await;
    assert_eq!(
        (again.status, again.header("idempotent-replayed")),
        (201, Some("true")),
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.body, first.body);
    declared("name,phone\nAda,2\n")
        .await
        .assert_problem(422, "IDEMPOTENCY_KEY_MISMATCH");
    assert_eq!(
        answered.load(Ordering::SeqCst),
        1,
        "one upload reached the backend"
    );
    settled(g, "c9", (95, 0)).await;
    assert_verified(g).await;
}

/// `requests` concurrent calls of cost 1, spread over `gateways`, against a balance of
/// `balance`: exactly `balance` succeed.
async fn overdraw(
    gateways: &[&GatewayProcess],
    backend: &tollgate_demo_backend::DemoBackend,
    requests: usize,
    balance: u64,
) {
    credit(gateways[0], "busy", balance).await;
    let seen = backend.requests();
    let bearer = bearer_for("busy");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..requests {
        let addr = gateways[i % gateways.len()].addr;
        let bearer = bearer.clone();
        tasks.spawn(async move {
            send(
                addr,
                "GET",
                "/echo/one/x",
                &[("authorization", &bearer)],
                b"",
            )
            .await
            .status
        });
    }
    let (mut ok, mut short, mut other) = (0, 0, Vec::new());
    while let Some(status) = tasks.join_next().await {
        match status.unwrap() {
            200 => ok += 1,
            402 => short += 1,
            s => other.push(s),
        }
    }
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(ok, balance);
    assert_eq!(short, requests as u64 - balance);
    assert_eq!(
        backend.requests() - seen,
        balance,
        "the backend saw exactly the paid calls"
    );
    settled(gateways[0], "busy", (0, 0)).await;
    let report = assert_verified(gateways[0]).await;
    // One credit, and a reserve and a post per paid call: a refused call moves nothing.
    assert_eq!(report["movements"].as_u64(), Some(1 + 2 * balance));
    assert_eq!(report["clients"].as_u64(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_never_overdraw_a_balance_of_500() {
    let h = start("").await;
    overdraw(&[&h.gateway], &h.backend, 1_000, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_sharing_redis_never_overdraw_either() {
    let redis = RedisServer::start();
    let store = format!("[store]\nredis_url = \"{}\"\ntimeout = \"1s\"", redis.url());
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new()).collect();
    let gateways: Vec<GatewayProcess> = dirs
        .iter()
        .map(|dir| {
            write_config(dir.path(), &setup("", &store), backend.addr());
            GatewayProcess::start(&dir.path().join("gateway.toml"))
        })
        .collect();
    for g in &gateways {
        g.wait_ready().await;
    }
    let refs: Vec<&GatewayProcess> = gateways.iter().collect();
    overdraw(&refs, &backend, 1_000, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_committed_movement() {
    kill_9_under_load("").await;
}

/// `sync = "interval"`: nothing waits for the disk, but every change is written to the
/// log before it is answered, so a `kill -9` loses nothing even a whole second after
/// the last sync (only a crash of the machine could forgive that second's charges).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_interval_syncs_loses_no_answered_movement() {
    kill_9_under_load("sync = \"interval\"\nsync_interval = \"1s\"").await;
}

/// `kill -9` under metered load, restart, twice: the journal verifies, open
/// reservations are voided after their deadline, and the charges match the answers
/// within the requests in flight. The second round writes over the spare segment a
/// checkpoint of the first left (`ledger.redb.wal-spare`), longer than what the round
/// writes, so the second restart reads this time's records followed by older ones. The
/// segment the kill left newest is not reused: a crash may have left a torn group in it,
/// with records after the tear that were never acknowledged.
async fn kill_9_under_load(credits: &str) {
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = TempDir::new();
    write_config(
        dir.path(),
        &setup(&format!("reservation_timeout = \"2s\"\n{credits}"), ""),
        backend.addr(),
    );
    let config = dir.path().join("gateway.toml");
    let gateway = GatewayProcess::start(&config);
    gateway.wait_ready().await;
    credit(&gateway, "load", 100_000).await;
    let mut answered = load_then_kill(gateway, 400).await;
    let state = dir.path().join("state");
    let (newest, _) = *log_segments(&state).last().expect("a log segment");
    // A checkpoint of the first round (every half second) left one, unless the round
    // was quicker than two of them.
    let spare = std::fs::metadata(state.join("ledger.redb.wal-spare"))
        .ok()
        .map(|m| m.len());

    let restarted = GatewayProcess::start(&config);
    restarted.wait_ready().await;
    let segments = log_segments(&state);
    assert!(
        segments.iter().all(|(number, _)| *number != newest),
        "the segment the kill left newest is still there: {segments:?}"
    );
    if let Some(spare) = spare {
        assert!(
            segments.iter().any(|(_, length)| *length == spare),
            "the spare ({spare} bytes) was not taken for the next segment: {segments:?}"
        );
    }
    answered += load_then_kill(restarted, 200).await;

    let restarted = GatewayProcess::start(&config);
    restarted.wait_ready().await;
    // Reservations the dead instances left open are refunded after their deadline.
    assert!(
        eventually(Duration::from_secs(6), || async {
            account(&restarted, "load").await.1 == 0
        })
        .await,
        "open reservations were never voided"
    );
    let (balance, _) = account(&restarted, "load").await;
    let charged = 100_000 - balance;
    // Reservations are durable before forwarding and posts follow the answer in the
    // next commit: only the requests in flight at each kill can differ — charged
    // without their answer arriving, or answered with their post not yet committed
    // (then refunded by the expiry, never charged twice).
    let in_flight = 2 * KILL_LOOPS;
    assert!(
        charged + in_flight >= answered,
        "charged {charged}, answered {answered}"
    );
    assert!(
        charged <= answered + in_flight,
        "charged {charged}, answered {answered}"
    );
    assert_verified(&restarted).await;
}

/// The ledger's log segments in `state` (`ledger.redb.wal-N`, not the spare), oldest
/// first: (number, length).
fn log_segments(state: &std::path::Path) -> Vec<(u64, u64)> {
    let mut found: Vec<(u64, u64)> = std::fs::read_dir(state)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let number = e
                .file_name()
                .to_str()?
                .strip_prefix("ledger.redb.wal-")?
                .parse()
                .ok()?;
            Some((number, e.metadata().unwrap().len()))
        })
        .collect();
    found.sort();
    found
}

/// Clients at once in [`load_then_kill`].
const KILL_LOOPS: u64 = 8;

/// Metered requests from [`KILL_LOOPS`] clients until `at_least` were answered, then
/// `kill -9` mid-load; returns how many were answered 200.
async fn load_then_kill(gateway: GatewayProcess, at_least: u64) -> u64 {
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..KILL_LOOPS {
        let (ok, stop, addr) = (Arc::clone(&ok), Arc::clone(&stop), gateway.addr);
        let bearer = bearer_for("load");
        loops.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = format!(
                    "GET /echo/one/x?delay_ms=5 HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\nconnection: close\r\n\r\n"
                );
                let Ok(Some(status)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    crate::support::try_status(addr, request.as_bytes()),
                )
                .await
                else {
                    continue;
                };
                if status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            ok.load(Ordering::Relaxed) >= at_least
        })
        .await
    );
    gateway.signal("KILL");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    while loops.join_next().await.is_some() {}
    drop(gateway);
    ok.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_under_load_posts_every_answered_request() {
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = TempDir::new();
    // The default reservation timeout (15 minutes): nothing expires during the test, so
    // what the restarted gateway shows is what the stopped one committed.
    write_config(dir.path(), &setup("", ""), backend.addr());
    let config = dir.path().join("gateway.toml");
    let mut gateway = GatewayProcess::start(&config);
    gateway.wait_ready().await;
    credit(&gateway, "drain", 100_000).await;

    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (ok, stop, addr) = (Arc::clone(&ok), Arc::clone(&stop), gateway.addr);
        let bearer = bearer_for("drain");
        loops.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = format!(
                    "GET /echo/one/x?delay_ms=5 HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer}\r\nconnection: close\r\n\r\n"
                );
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    crate::support::try_status(addr, request.as_bytes()),
                )
                .await
                {
                    Ok(Some(200)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(_)) => {}
                    // Refused: the gateway stopped accepting.
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        });
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            ok.load(Ordering::Relaxed) >= 200
        })
        .await
    );
    gateway.signal("TERM");
    let exited = tokio::task::spawn_blocking(move || gateway.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(exited.is_some_and(|s| s.success()), "{exited:?}");
    stop.store(true, Ordering::Relaxed);
    while loops.join_next().await.is_some() {}
    let answered = ok.load(Ordering::Relaxed);

    let restarted = GatewayProcess::start(&config);
    restarted.wait_ready().await;
    // Every answered request was posted before the process ended: nothing is left
    // held for the expiry to refund, and the charges are exactly the answers.
    assert_eq!(account(&restarted, "drain").await, (100_000 - answered, 0));
    assert_verified(&restarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_in_a_redis_never_reached_is_not_ready() {
    // Nothing listens there yet (a wrong address or password in the Secret looks the
    // same to the gateway): it must not report ready with every metered route 503.
    let port = crate::support::closed_port().port();
    let store = format!(
        "[store]\nredis_url = \"redis://127.0.0.1:{port}\"\ntimeout = \"200ms\"\nbreaker_cooldown = \"300ms\""
    );
    let h = Harness::with(setup("", &store)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.gateway.readyz().await, 503, "{}", h.gateway.stderr());
    assert!(h.gateway.stderr().contains("cannot reach the token ledger"));
    let _redis = RedisServer::start_on(port);
    h.gateway.wait_ready().await;
    credit(&h.gateway, "r0", 5).await;
    assert_eq!(
        call(&h.gateway, "GET", "/echo/one/x", "r0").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_closed_and_heals_by_itself() {
    let redis = RedisServer::start();
    let store = format!(
        "[store]\nredis_url = \"{}\"\ntimeout = \"200ms\"\nbreaker_cooldown = \"300ms\"",
        redis.url()
    );
    let h = Harness::with(setup("reservation_timeout = \"2s\"", &store)).await;
    h.gateway.wait_ready().await;
    let g = &h.gateway;
    credit(g, "r1", 1_000).await;
    let mut ok = 0;
    for _ in 0..5 {
        assert_eq!(call(g, "GET", "/echo/one/x", "r1").await.status, 200);
        ok += 1;
    }
    redis.freeze();
    let seen = h.backend.requests();
    for _ in 0..5 {
        let r = call(g, "GET", "/echo/one/x", "r1").await;
        r.assert_problem(503, "LEDGER_UNAVAILABLE");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(
        h.backend.requests(),
        seen,
        "nothing is forwarded on a guess"
    );
    redis.thaw();
    assert!(
        eventually(Duration::from_secs(5), || async {
            call(g, "GET", "/echo/one/x", "r1").await.status == 200
        })
        .await
    );
    ok += 1;
    // A reservation Redis took while frozen (its caller gave up) expires, refunded.
    assert!(
        eventually(Duration::from_secs(6), || async {
            account(g, "r1").await.1 == 0
        })
        .await
    );
    assert_eq!(account(g, "r1").await.0, 1_000 - ok);
    assert_verified(g).await;
}

#[tokio::test]
async fn opening_balances_are_credited_once_and_metering_can_be_off() {
    let dir_file = TempDir::new();
    let file = dir_file.path().join("legacy.csv");
    std::fs::write(&file, "clientId,balance\n1001,500\n1002,250\n").unwrap();
    let credits = format!("opening_balances = \"{}\"", file.display());
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = TempDir::new();
    write_config(dir.path(), &setup(&credits, ""), backend.addr());
    let config = dir.path().join("gateway.toml");
    // An operator corrects balances from the command line before the first start. The
    // opening balance goes in first, as the gateway would put it: the start must not
    // add it on top of the correction (1001 came to 600 this way).
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Before anything moved, `show` says the opening balance is still to come, rather
    // than a bare "balance 0" a check before launch would misread.
    let out = cli(&["ledger", "show", "--client", "1001"]);
    assert!(
        out.contains("balance 0")
            && out.contains("opening balance 500 from")
            && out.contains("not in yet"),
        "{out}"
    );
    let out = cli(&["ledger", "show", "--client", "3003"]);
    assert!(!out.contains("opening balance"), "{out}");
    let out = cli(&[
        "ledger",
        "set",
        "--client",
        "1001",
        "--balance",
        "100",
        "--reason",
        "reset",
    ]);
    assert!(
        out.contains("opening balance from") && out.contains("client 1001: balance 100"),
        "{out}"
    );
    let out = cli(&[
        "ledger", "credit", "--client", "1001", "--amount", "25", "--reason", "goodwill",
    ]);
    assert!(!out.contains("opening balance"), "credited once: {out}");
    assert!(out.contains("client 1001: balance 125"), "{out}");
    // A client the file does not name is only changed.
    let out = cli(&[
        "ledger", "credit", "--client", "3003", "--amount", "7", "--reason", "trial",
    ]);
    assert!(out.contains("client 3003: balance 7"), "{out}");
    {
        let mut g = GatewayProcess::start(&config);
        g.wait_ready().await;
        assert_eq!(account(&g, "1001").await, (125, 0));
        assert_eq!(account(&g, "3003").await, (7, 0));
        let kinds: Vec<String> = journal(&g, "1001")
            .await
            .iter()
            .map(|m| format!("{} {}", m["kind"].as_str().unwrap(), m["balance"]))
            .collect();
        assert_eq!(kinds, ["credit 125", "set 100", "opening 500"]);
        assert_eq!(account(&g, "1002").await, (250, 0));
        assert_eq!(call(&g, "GET", "/echo/one/x", "1002").await.status, 200);
        settled(&g, "1002", (249, 0)).await;
        // Stopped, not killed: a post is logged after its answer and not waited for,
        // so a `kill -9` right after it may leave it to expire into a refund (by
        // design; see `kill_9_under_load`). This test is about the opening balances.
        g.signal("TERM");
        assert!(g.wait_exit(Duration::from_secs(10)).is_some());
    }
    // A restart reads the file again and credits nothing twice.
    let g = GatewayProcess::start(&config);
    g.wait_ready().await;
    assert_eq!(account(&g, "1002").await, (249, 0));
    assert_eq!(account(&g, "1001").await, (125, 0));
    assert_verified(&g).await;
    drop(g);

    // enabled = false: every route is free and says nothing.
    let off = format!("{credits}\nenabled = false");
    write_config(dir.path(), &setup(&off, ""), backend.addr());
    let g = GatewayProcess::start(&config);
    g.wait_ready().await;
    let r = call(&g, "GET", "/echo/one/x", "stranger").await;
    assert_eq!((r.status, r.header("x-token-cost")), (200, None));
    let v = call(&g, "GET", "/gateway/tokens/balance", "1002")
        .await
        .json();
    assert_eq!(
        (v["balance"].as_u64(), v["metering"].as_bool()),
        (Some(249), Some(false))
    );
}

/// The ledger is where the money is: a reload naming another file (a typo) opened an
/// empty ledger and credited the opening balances into it, forgiving all that was
/// spent. The ledger in use is kept until a restart, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_move_the_ledger() {
    let dir_file = TempDir::new();
    let file = dir_file.path().join("legacy.csv");
    std::fs::write(&file, "clientId,balance\n1002,250\n").unwrap();
    let credits = format!("opening_balances = \"{}\"", file.display());
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = TempDir::new();
    write_config(dir.path(), &setup(&credits, ""), backend.addr());
    let config = dir.path().join("gateway.toml");
    let g = GatewayProcess::start(&config);
    g.wait_ready().await;
    assert_eq!(call(&g, "GET", "/echo/one/x", "1002").await.status, 200);
    settled(&g, "1002", (249, 0)).await;
    let text = std::fs::read_to_string(&config).unwrap();
    let moved = text.replace("state/ledger.redb", "state/ledgr.redb");
    assert_ne!(text, moved);
    std::fs::write(&config, moved).unwrap();
    g.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            g.stderr().contains("the ledger moves only at a restart")
        })
        .await,
        "{}",
        g.stderr()
    );
    assert_eq!(account(&g, "1002").await, (249, 0));
    assert_eq!(call(&g, "GET", "/echo/one/x", "1002").await.status, 200);
    settled(&g, "1002", (248, 0)).await;
    assert!(!dir.path().join("state/ledgr.redb").exists());
}

/// Every call of the admin API and every refusal on the admin listener leaves a trace:
/// a log line (method, path, status, request id, peer), each problem counted as the
/// data plane's are, and a change journaled with the request id that made it. A guessed
/// token or an unexpected credit used to leave none.
#[tokio::test]
async fn admin_calls_and_refusals_leave_a_trace() {
    let h = start("").await;
    let g = &h.gateway;
    let guess = "Bearer e2e-admin-token-0123456789abcdef0123456789abcdeX";
    for _ in 0..3 {
        let r = send(
            g.admin,
            "GET",
            "/ledger/verify",
            &[("authorization", guess), ("x-request-id", "guess-1")],
            b"",
        )
        .await;
        r.assert_problem(401, "ADMIN_UNAUTHORIZED");
    }
    send(g.admin, "GET", "/nowhere", &[], b"")
        .await
        .assert_problem(404, "ROUTE_NOT_FOUND");
    let token = format!("Bearer {}", admin_token());
    let r = send(
        g.admin,
        "POST",
        "/ledger/clients/t1/credit",
        &[
            ("authorization", &token),
            ("content-type", "application/json"),
            ("x-request-id", "ticket-4711"),
        ],
        br#"{"amount": 7, "reason": "goodwill"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(g.readyz().await, 200);
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "tollgate_problems_total{code=\"ADMIN_UNAUTHORIZED\"} "
        ),
        3,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tollgate_problems_total{code=\"ROUTE_NOT_FOUND\"} "
        ),
        1
    );
    let movements = journal(g, "t1").await;
    assert_eq!(movements.len(), 1, "{movements:?}");
    assert_eq!(movements[0]["requestId"], "ticket-4711", "{movements:?}");
    assert_eq!(movements[0]["reason"], "admin: goodwill");
    let logged = |needles: &[&str]| {
        g.stderr()
            .lines()
            .filter(|line| {
                line.contains("admin request") && needles.iter().all(|n| line.contains(n))
            })
            .count()
    };
    assert!(
        eventually(Duration::from_secs(3), || async {
            logged(&["guess-1", "401", "/ledger/verify", "127.0.0.1"]) == 3
                && logged(&["ticket-4711", "200", "/ledger/clients/t1/credit"]) == 1
                && logged(&["/nowhere", "404"]) == 1
        })
        .await,
        "{}",
        g.stderr()
    );
    // Probes that succeed are not logged: they come every few seconds.
    assert_eq!(logged(&["/readyz"]), 0, "{}", g.stderr());
    assert!(!g.stderr().contains("e2e-admin-token"), "{}", g.stderr());
}

/// An admin change with an `Idempotency-Key` moves money once: a retry after a timeout
/// used to credit twice. A refused change moved nothing and may be retried.
#[tokio::test]
async fn an_admin_change_with_an_idempotency_key_moves_money_once() {
    let h = start("").await;
    let g = &h.gateway;
    let token = format!("Bearer {}", admin_token());
    let change = |method: &'static str, path: String, key: &'static str, body: &'static str| {
        let token = token.clone();
        async move {
            let headers = [
                ("authorization", token.as_str()),
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ];
            send(g.admin, method, &path, &headers, body.as_bytes()).await
        }
    };
    let credit7 = r#"{"amount": 7, "reason": "goodwill"}"#;
    let first = change(
        "POST",
        "/ledger/clients/k1/credit".into(),
        "\"adm-1\"",
        credit7,
    )
    .await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = change(
        "POST",
        "/ledger/clients/k1/credit".into(),
        "\"adm-1\"",
        credit7,
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), first.json());
    assert_eq!(account(g, "k1").await, (7, 0));
    assert_eq!(journal(g, "k1").await.len(), 1);
    // Another change under the key is refused; the same key on another client is its own.
    change(
        "POST",
        "/ledger/clients/k1/credit".into(),
        "\"adm-1\"",
        r#"{"amount": 8, "reason": "goodwill"}"#,
    )
    .await
    .assert_problem(422, "IDEMPOTENCY_KEY_MISMATCH");
    let other = change(
        "POST",
        "/ledger/clients/k2/credit".into(),
        "\"adm-1\"",
        credit7,
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("idempotent-replayed"), None);
    // A refused debit moved nothing: its retry runs again, and passes once it can.
    let debit = r#"{"amount": 100, "reason": "chargeback"}"#;
    for _ in 0..2 {
        change("POST", "/ledger/clients/k1/debit".into(), "adm-2", debit)
            .await
            .assert_problem(402, "INSUFFICIENT_TOKENS");
    }
    credit(g, "k1", 200).await;
    let r = change("POST", "/ledger/clients/k1/debit".into(), "adm-2", debit).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["balance"], 107);
    let r = change("POST", "/ledger/clients/k1/debit".into(), "adm-2", debit).await;
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(account(g, "k1").await, (107, 0));
    // A key that is not one is refused before anything moves.
    change(
        "PUT",
        "/ledger/clients/k1/balance".into(),
        "\"unterminated",
        r#"{"balance": 1, "reason": "x"}"#,
    )
    .await
    .assert_problem(400, "IDEMPOTENCY_KEY_INVALID");
    assert_eq!(account(g, "k1").await, (107, 0));
    assert_verified(g).await;
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_journals_every_change() {
    let h = start("").await;
    let g = &h.gateway;
    let unauthenticated = send(g.admin, "GET", "/ledger/verify", &[], b"").await;
    unauthenticated.assert_problem(401, "ADMIN_UNAUTHORIZED");
    let wrong = send(
        g.admin,
        "POST",
        "/ledger/clients/a/credit",
        &[(
            "authorization",
            "Bearer e2e-admin-token-0123456789abcdef0123456789abcdeX",
        )],
        br#"{"amount": 5, "reason": "x"}"#,
    )
    .await;
    wrong.assert_problem(401, "ADMIN_UNAUTHORIZED");
    credit(g, "a", 10).await;
    let r = admin(
        g,
        "POST",
        "/ledger/clients/a/debit",
        r#"{"amount": 11, "reason": "refund"}"#,
    )
    .await;
    r.assert_problem(402, "INSUFFICIENT_TOKENS");
    let r = admin(
        g,
        "POST",
        "/ledger/clients/a/debit",
        r#"{"amount": 4, "reason": "refund"}"#,
    )
    .await;
    assert_eq!(r.json()["balance"], 6);
    let r = admin(
        g,
        "PUT",
        "/ledger/clients/a/balance",
        r#"{"balance": 40, "reason": "migration fix"}"#,
    )
    .await;
    assert_eq!(r.json()["balance"], 40);
    admin(g, "POST", "/ledger/clients/a/credit", r#"{"amount": 5}"#)
        .await
        .assert_problem(400, "INVALID_REQUEST_BODY");
    admin(
        g,
        "POST",
        "/ledger/clients/a/credit",
        r#"{"amount": -5, "reason": "x"}"#,
    )
    .await
    .assert_problem(400, "INVALID_REQUEST_BODY");
    // A repeated member is refused, not read as whichever one a parser keeps; so is a
    // credit of nothing.
    for body in [
        r#"{"amount": 5, "amount": 500000, "reason": "x"}"#,
        r#"{"amount": 5, "reason": "x", "reason": "y"}"#,
        r#"{"amount": 0, "reason": "x"}"#,
        r#"{"amount": 5, "reason": "x", "Amount": 7}"#,
    ] {
        admin(g, "POST", "/ledger/clients/a/credit", body)
            .await
            .assert_problem(400, "INVALID_REQUEST_BODY");
    }
    // Two credentials are ambiguous; a body declared over the limit is refused at once.
    let token = format!("Bearer {}", admin_token());
    send(
        g.admin,
        "GET",
        "/ledger/clients/a",
        &[("authorization", &token), ("authorization", "Bearer x")],
        b"",
    )
    .await
    .assert_problem(401, "ADMIN_UNAUTHORIZED");
    let mut huge = tokio::net::TcpStream::connect(g.admin).await.unwrap();
    let head = format!(
        "POST /ledger/clients/a/credit HTTP/1.1\r\nhost: a\r\nauthorization: {token}\r\ncontent-type: application/json\r\ncontent-length: 10000000000\r\n\r\n"
    );
    huge.write_all(head.as_bytes()).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        crate::support::read_response(&mut huge),
    )
    .await
    .expect("answered at once, not after the body deadline");
    r.assert_problem(413, "PAYLOAD_TOO_LARGE");
    // The data plane's framing rules hold on the admin listener: a credit another hop
    // would read differently is refused, and nothing moves.
    let before = account(g, "a").await;
    let body = r#"{"amount": 7, "reason": "x"}"#;
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    for request in [
        format!("POST /ledger/clients/a/credit HTTP/1.1\r\nhost: a\r\nauthorization: {token}\r\ncontent-type: application/json\r\ntransfer-encoding: gzip, chunked\r\n\r\n{chunked}"),
        format!("POST /ledger/clients/a/credit HTTP/1.1\r\nhost: a\r\nhost: b\r\nauthorization: {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()),
        format!("GET /ledger/clients/a HTTP/1.1\r\nhost: a\r\nauthorization: {token}\r\ncontent-length: {}\r\n\r\n{body}", body.len()),
    ] {
        let r = crate::support::raw(g.admin, request.as_bytes()).await;
        assert_eq!(r.status, 400, "{request}");
        assert_eq!(r.header("connection"), Some("close"));
    }
    assert_eq!(account(g, "a").await, before);
    // A client id escaped in the path is decoded; one no caller could ever have is
    // refused rather than credited where nobody can spend it.
    credit(g, "dev%3A1%40acme", 1).await;
    assert_eq!(account(g, "dev:1@acme").await, (1, 0));
    for id in ["a%2Fb", "1001%0A", "1003%20", "%00x", "c%2", "c%zz1", "%"] {
        admin(
            g,
            "POST",
            &format!("/ledger/clients/{id}/credit"),
            r#"{"amount": 1, "reason": "x"}"#,
        )
        .await
        .assert_problem(400, "CLIENT_ID_INVALID");
    }
    let movements = journal(g, "a").await;
    let reasons: Vec<&str> = movements
        .iter()
        .map(|m| m["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["admin: migration fix", "admin: refund", "admin: test"]
    );
    let kinds: Vec<&str> = movements
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["set", "debit", "credit"]);
    assert_eq!(movements[0]["amount"], 34);
    assert_verified(g).await;
}

#[tokio::test]
async fn the_ledger_cli_credits_shows_imports_and_verifies() {
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = TempDir::new();
    write_config(dir.path(), &setup("", ""), backend.addr());
    let config = dir.path().join("gateway.toml");
    let tollgate = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // Reading a ledger that does not exist yet creates nothing: an empty file at a
    // mistyped path would pass for a ledger with no money in it.
    let file = dir.path().join("state/ledger.redb");
    let (ok, out) = tollgate(&["ledger", "show", "--client", "1001"]);
    assert!(ok && out.contains("no ledger at"), "{out}");
    let (ok, out) = tollgate(&["ledger", "verify"]);
    assert!(!ok && out.contains("nothing to verify"), "{out}");
    assert!(!file.exists());
    let (ok, out) = tollgate(&[
        "ledger", "credit", "--client", "1001", "--amount", "30", "--reason", "goodwill",
    ]);
    assert!(ok, "{out}");
    assert!(file.exists());
    assert!(out.contains("client 1001: balance 30"), "{out}");
    let (ok, out) = tollgate(&[
        "ledger", "debit", "--client", "1001", "--amount", "31", "--reason", "x",
    ]);
    assert!(!ok && out.contains("nothing was debited"), "{out}");
    let export = dir.path().join("export.json");
    std::fs::write(
        &export,
        r#"[{"clientId": "1001", "tokens": 500}, {"clientId": 1002, "balance": 250}]"#,
    )
    .unwrap();
    let (ok, out) = tollgate(&["ledger", "import", export.to_str().unwrap()]);
    assert!(
        ok && out.contains("2 opening balance(s) credited, 0 skipped"),
        "{out}"
    );
    let (ok, out) = tollgate(&["ledger", "import", export.to_str().unwrap()]);
    assert!(
        ok && out.contains("0 opening balance(s) credited, 2 skipped"),
        "{out}"
    );
    // A large export is credited many at a time (each sync shared), and a re-run names
    // a screenful of the clients it skips, not every one.
    let large = dir.path().join("large.csv");
    let rows: String = (0..3000)
        .map(|i| format!("bulk-{i:04},{}\n", i + 1))
        .collect();
    std::fs::write(&large, format!("clientId,balance\n{rows}")).unwrap();
    let (ok, out) = tollgate(&["ledger", "import", large.to_str().unwrap()]);
    assert!(
        ok && out.contains("3000 opening balance(s) credited, 0 skipped"),
        "{out}"
    );
    let (ok, out) = tollgate(&["ledger", "import", large.to_str().unwrap()]);
    assert!(
        ok && out.contains("0 opening balance(s) credited, 3000 skipped"),
        "{out}"
    );
    assert_eq!(
        out.matches("has its opening balance already").count(),
        20,
        "{out}"
    );
    assert!(out.contains("client bulk-0000: has its opening"), "{out}");
    assert!(out.contains("... and 2980 more client(s)"), "{out}");
    let (ok, out) = tollgate(&["ledger", "show", "--client", "bulk-2999"]);
    assert!(ok && out.contains("balance 3000"), "{out}");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "1003,ten\n").unwrap();
    let (ok, out) = tollgate(&["ledger", "import", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("line 1"), "{out}");
    let (ok, out) = tollgate(&["ledger", "show", "--client", "1001"]);
    assert!(ok && out.contains("balance 530"), "{out}");
    assert!(
        out.contains("opening") && out.contains("cli: goodwill"),
        "{out}"
    );
    let (ok, out) = tollgate(&["ledger", "verify"]);
    assert!(
        ok && out.contains("every journal sums to its balance"),
        "{out}"
    );

    // The gateway then serves from the same file; while it runs, the CLI says why it
    // cannot open it.
    let g = GatewayProcess::start(&config);
    g.wait_ready().await;
    assert_eq!(account(&g, "1002").await, (250, 0));
    let (ok, out) = tollgate(&["ledger", "verify"]);
    assert!(!ok && out.contains("GET /ledger/verify"), "{out}");
    drop(g);
    // A damaged file is not blamed on a running gateway.
    let file = dir.path().join("state/ledger.redb");
    std::fs::write(
        &file,
        b"not a ledger at all, but long enough to be read as one",
    )
    .unwrap();
    let (ok, out) = tollgate(&["ledger", "show", "--client", "1001"]);
    assert!(!ok && out.contains("cannot open"), "{out}");
    assert!(!out.contains("running gateway"), "{out}");
}

/// The admin API refuses reasons with control characters (a journal line that draws
/// another, an escape sequence, a bidi override) with a detail that says so; its journal
/// `limit` detail names its own range; the `Bearer` scheme is read in any case; and a
/// method a resource does not take is 405 with `Allow`, on the probes too.
#[tokio::test]
async fn the_admin_api_refuses_control_characters_and_answers_405_with_allow() {
    let h = start("").await;
    let g = &h.gateway;
    credit(g, "1001", 10).await;
    for reason in [
        r"x\n2026-01-01 +1000 fake line",
        r"a\rb",
        r"tab\there",
        r"red\u001b[31m",
        r"bell\u0007",
        r"del\u007f",
        r"c1\u009b31m",
        r"nel\u0085",
        r"rtl\u202e0001+",
        r"isolate\u2066x\u2069",
    ] {
        let body = format!(r#"{{"amount": 1, "reason": "{reason}"}}"#);
        let r = admin(g, "POST", "/ledger/clients/1001/credit", &body).await;
        assert_eq!(
            r.status,
            400,
            "{reason}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.assert_problem(400, "INVALID_REQUEST_BODY");
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("control character"), "{reason}: {detail}");
    }
    let body = format!(r#"{{"balance": 1, "reason": "{}"}}"#, "x".repeat(501));
    let r = admin(g, "PUT", "/ledger/clients/1001/balance", &body).await;
    r.assert_problem(400, "INVALID_REQUEST_BODY");
    assert!(r.json()["detail"].as_str().unwrap().contains("500 bytes"));
    let r = admin(
        g,
        "POST",
        "/ledger/clients/1001/debit",
        r#"{"amount": 0, "reason": "x"}"#,
    )
    .await;
    r.assert_problem(400, "INVALID_REQUEST_BODY");
    assert!(r.json()["detail"].as_str().unwrap().contains("at least 1"));
    // Letters beyond ASCII are not controls.
    let r = admin(
        g,
        "POST",
        "/ledger/clients/1001/credit",
        r#"{"amount": 1, "reason": "Erstattung für Störung"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(account(g, "1001").await, (11, 0));

    // A change is read only from a body declared JSON (UTF-8), as every JSON body the
    // gateway reads: a form or text that parses as JSON moves no money.
    let bearer = format!("Bearer {}", admin_token());
    let body = br#"{"amount": 5, "reason": "typed"}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=iso-8859-1"),
        Some("json"),
    ] {
        let mut headers = vec![("authorization", bearer.as_str())];
        headers.extend(content_type.map(|t| ("content-type", t)));
        let r = send(
            g.admin,
            "POST",
            "/ledger/clients/1001/credit",
            &headers,
            body,
        )
        .await;
        r.assert_problem(415, "UNSUPPORTED_MEDIA_TYPE");
    }
    let headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json; charset=utf-8"),
    ];
    let r = send(
        g.admin,
        "POST",
        "/ledger/clients/1001/credit",
        &headers,
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(account(g, "1001").await, (16, 0));

    // The limit's detail comes from the range the admin journal serves.
    for limit in ["0", "1001"] {
        let r = admin(g, "GET", &format!("/ledger/clients/1001?limit={limit}"), "").await;
        r.assert_problem(400, "INVALID_QUERY");
        let detail = r.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("limit is 1 to 1000 "), "{detail}");
    }
    let r = admin(g, "GET", "/ledger/clients/1001?limit=1000", "").await;
    assert_eq!(r.status, 200);

    // The scheme in any case; the token itself is still compared exactly.
    let token = admin_token();
    for scheme in ["BEARER", "bearer", "bEaReR", "Bearer"] {
        let value = format!("{scheme} {token}");
        let r = send(
            g.admin,
            "GET",
            "/ledger/verify",
            &[("authorization", &value)],
            b"",
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{scheme}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    for value in [
        format!("BEARER {}", token.to_uppercase()),
        format!("Basic {token}"),
        format!("Bearer{token}"),
        "BEARER".to_owned(),
    ] {
        send(
            g.admin,
            "GET",
            "/ledger/verify",
            &[("authorization", &value)],
            b"",
        )
        .await
        .assert_problem(401, "ADMIN_UNAUTHORIZED");
    }

    // A wrong method on a resource that exists: 405 and what it takes.
    for (method, path, allow) in [
        ("DELETE", "/ledger/clients/1001", "GET"),
        ("POST", "/ledger/clients/1001", "GET"),
        ("POST", "/ledger/verify", "GET"),
        ("GET", "/ledger/clients/1001/credit", "POST"),
        ("PUT", "/ledger/clients/1001/debit", "POST"),
        ("POST", "/ledger/clients/1001/balance", "PUT"),
    ] {
        let r = admin(g, method, path, "").await;
        r.assert_problem(405, "METHOD_NOT_ALLOWED");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    // Without the token it is still 401: the map of resources is for operators. Like
    // every answer of the gateway's own, never sniffed, no referrer.
    let r = send(g.admin, "DELETE", "/ledger/clients/1001", &[], b"").await;
    r.assert_problem(401, "ADMIN_UNAUTHORIZED");
    assert_eq!(
        (
            r.header("x-content-type-options"),
            r.header("referrer-policy")
        ),
        (Some("nosniff"), Some("no-referrer"))
    );
    for (method, path) in [
        ("POST", "/healthz"),
        ("DELETE", "/readyz"),
        ("PUT", "/metrics"),
    ] {
        let r = send(g.admin, method, path, &[], b"").await;
        r.assert_problem(405, "METHOD_NOT_ALLOWED");
        assert_eq!(r.header("allow"), Some("GET"), "{method} {path}");
    }
    // A path that names no resource is still 404.
    for (method, path) in [("GET", "/nope"), ("DELETE", "/ledger/clients/1001/x")] {
        admin(g, method, path, "")
            .await
            .assert_problem(404, "ROUTE_NOT_FOUND");
    }
    let ok = send(g.admin, "GET", "/healthz", &[], b"").await;
    assert_eq!(
        (ok.status, ok.header("x-content-type-options")),
        (200, Some("nosniff"))
    );
    // Balancers' checks may use HEAD (HAProxy's `http-check send meth HEAD`).
    for path in ["/healthz", "/readyz"] {
        // Read to the end: a HEAD answer declares the length of what GET would send.
        let mut stream = tokio::net::TcpStream::connect(g.admin).await.unwrap();
        let request = format!("HEAD {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{path}: {answer}");
        assert!(answer.ends_with("\r\n\r\n"), "{path}: no body: {answer}");
    }
    // A body whose framing breaks is the framing's fault (as on the data plane), not a
    // wrong shape of JSON.
    let broken = format!(
        "POST /ledger/clients/1001/credit HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{{\"amo\r\nzz\r\n",
        admin_token()
    );
    raw(g.admin, broken.as_bytes())
        .await
        .assert_problem(400, "REQUEST_BODY_INVALID");
    // Nothing refused was journaled.
    let reasons: Vec<String> = journal(g, "1001")
        .await
        .iter()
        .map(|m| m["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "admin: typed",
            "admin: Erstattung für Störung",
            "admin: test"
        ]
    );
}

/// The command line applies the admin API's rules, from the same place: a client id
/// no caller can have, a change of nothing, a reason that is empty, too long or holds a
/// control character are refused with exit code 1 and a message naming the option, and
/// no account is created. A journal written before these rules (a reason with a line
/// break, an escape sequence and a bidi override) is shown escaped, on one line.
#[tokio::test]
async fn the_ledger_cli_refuses_what_the_admin_api_refuses_and_prints_journals_escaped() {
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = TempDir::new();
    write_config(dir.path(), &setup("", ""), backend.addr());
    let config = dir.path().join("gateway.toml");
    let tollgate = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let long_id = "a".repeat(129);
    for id in [
        "1001 ",
        "",
        "a\nb",
        &long_id,
        "é",
        "../x",
        "bad id",
        "1001\u{202E}",
    ] {
        for args in [
            vec![
                "ledger", "credit", "--client", id, "--amount", "5", "--reason", "x",
            ],
            vec![
                "ledger", "debit", "--client", id, "--amount", "5", "--reason", "x",
            ],
            vec![
                "ledger",
                "set",
                "--client",
                id,
                "--balance",
                "5",
                "--reason",
                "x",
            ],
            vec!["ledger", "show", "--client", id],
        ] {
            let (code, out, err) = tollgate(&args);
            assert_eq!(code, Some(1), "{args:?}: {out}{err}");
            assert!(
                err.contains("--client") && err.contains("no caller can have this client id"),
                "{args:?}: {err}"
            );
            // The refused id is echoed escaped: no line break or override reaches the
            // terminal.
            assert!(!err.contains("a\nb"), "{args:?}: {err}");
            assert!(!err.contains('\u{202E}'), "{args:?}: {err}");
        }
    }
    let huge = "x".repeat(100_000);
    let just_over = "x".repeat(501);
    for (args, says) in [
        (vec!["credit", "--amount", "0", "--reason", "x"], "--amount"),
        (vec!["debit", "--amount", "0", "--reason", "x"], "--amount"),
        (vec!["credit", "--amount", "5", "--reason", ""], "--reason"),
        (
            vec!["credit", "--amount", "5", "--reason", "  "],
            "--reason",
        ),
        (
            vec!["credit", "--amount", "5", "--reason", &huge],
            "500 bytes",
        ),
        (
            vec!["set", "--balance", "5", "--reason", &just_over],
            "500 bytes",
        ),
        (
            vec!["credit", "--amount", "5", "--reason", "a\nb"],
            "control character",
        ),
        (
            vec!["credit", "--amount", "5", "--reason", "bell\x07"],
            "control character",
        ),
        (
            vec!["credit", "--amount", "5", "--reason", "red\x1b[31m"],
            "control character",
        ),
        (
            vec!["credit", "--amount", "5", "--reason", "del\x7f"],
            "control character",
        ),
        (
            vec!["credit", "--amount", "5", "--reason", "c1\u{9b}1m"],
            "control character",
        ),
        (
            vec!["credit", "--amount", "5", "--reason", "rtl\u{202E}0001+"],
            "control character",
        ),
        (vec!["show", "--limit", "0"], "--limit"),
        (vec!["show", "--limit", "1001"], "1 to 1000"),
    ] {
        let mut full = vec!["ledger", args[0], "--client", "1001"];
        full.extend_from_slice(&args[1..]);
        let (code, out, err) = tollgate(&full);
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Nothing was journaled, no account was made: every refusal came before the ledger
    // was opened, so there is no ledger yet.
    let (code, out, err) = tollgate(&["ledger", "verify"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("nothing to verify"), "{err}");
    // A balance may be set to 0, and a reason of exactly 500 bytes is one.
    let (code, out, err) = tollgate(&[
        "ledger",
        "set",
        "--client",
        "1001",
        "--balance",
        "0",
        "--reason",
        &"y".repeat(500),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");

    // A journal written before these rules, straight through the ledger.
    let spoof = "x\n2026-01-01 00:00:00 credit +1000 -> 1000 fake line\x1b[31m\u{202E}\u{9b}2J";
    {
        use tollgate_state::ledger::embedded::EmbeddedLedger;
        use tollgate_state::ledger::{Adjust, Change, Ledger};
        let ledger = EmbeddedLedger::open(&dir.path().join("state/ledger.redb")).unwrap();
        let adjust = Adjust {
            client: "1001".into(),
            change: Change::Credit(7),
            reason: spoof.into(),
            now_ms: 1_767_225_600_000,
            request_id: None,
        };
        ledger.adjust(0, adjust).await.unwrap();
    }
    let (code, out, err) = tollgate(&["ledger", "show", "--client", "1001"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    // The balance line, the set, the credit: three lines, the spoof inside the last.
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("balance 7"), "{out}");
    assert!(
        lines[1].contains("credit")
            && lines[1].contains("x\\n2026-01-01 00:00:00 credit +1000 -> 1000 fake line\\u{1b}[31m\\u{202e}\\u{9b}2J"),
        "{out}"
    );
    for c in ['\x1b', '\u{202E}', '\u{9b}', '\x07'] {
        assert!(!out.contains(c), "{c:?} printed: {out}");
    }

    // A metered movement shows the idempotency key a client quotes about its charge
    // (escaped like the rest).
    {
        use tollgate_state::ledger::embedded::EmbeddedLedger;
        use tollgate_state::ledger::{Ledger, Reservation};
        let ledger = EmbeddedLedger::open(&dir.path().join("state/ledger.redb")).unwrap();
        let now = 1_767_225_600_000;
        let reservation = Reservation {
            id: "r-1".into(),
            client: "1001".into(),
            amount: 2,
            deadline: now + 60_000,
            route: Some("campaigns".into()),
            request_id: Some("req-9".into()),
            idempotency_key: Some("spring-\x1b1".into()),
        };
        ledger.reserve(0, reservation, now).await.unwrap();
    }
    let (code, out, err) = tollgate(&["ledger", "show", "--client", "1001", "--limit", "1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let reserve = out.lines().nth(1).unwrap_or_default();
    assert!(
        reserve.contains("reserve") && reserve.contains("campaigns req-9 key=spring-\\u{1b}1"),
        "{out}"
    );
}

/// A primary of a three-primary Redis Cluster is killed under metered load: its replica
/// takes its slots. Meanwhile requests whose client lives there are refused 503 (money
/// is never granted on a guess) and every other one is served; nothing answers 500 or
/// hangs; afterwards every client is served again, nobody was charged for an answer
/// they did not get, and the journals still sum to the balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_primary_fails_over_under_load_without_a_500() {
    let mut cluster = crate::support::RedisCluster::start();
    let store = format!(
        "[store]\nredis_url = \"{}\"\ncluster = true\ncluster_nodes = {:?}\ntimeout = \"300ms\"\nbreaker_cooldown = \"300ms\"",
        cluster.url(),
        cluster.addresses()
    );
    let h = Harness::with(setup("reservation_timeout = \"2s\"", &store)).await;
    h.gateway.wait_ready().await;
    let g = &h.gateway;
    let clients: Vec<String> = (0..12).map(|i| format!("fo{i}")).collect();
    for c in &clients {
        credit(g, c, 10_000).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for c in clients.clone() {
        let (addr, stop) = (g.addr, Arc::clone(&stop));
        load.spawn(async move {
            let bearer = bearer_for(&c);
            let mut statuses = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    send(
                        addr,
                        "GET",
                        "/echo/one/x",
                        &[("authorization", &bearer)],
                        b"",
                    ),
                )
                .await
                .expect("no request hangs through a failover");
                statuses.push(r.status);
            }
            (c, statuses)
        });
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (victim, keys) = cluster
        .primaries()
        .into_iter()
        .max_by_key(|(_, keys)| *keys)
        .unwrap();
    assert!(keys > 0);
    cluster.kill(victim);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let mut answered = std::collections::HashMap::new();
    let mut refused = 0;
    while let Some(done) = load.join_next().await {
        let (client, statuses) = done.unwrap();
        for &s in &statuses {
            assert!(s == 200 || s == 503, "{client}: {s}");
        }
        refused += statuses.iter().filter(|&&s| s == 503).count();
        answered.insert(
            client,
            statuses.iter().filter(|&&s| s == 200).count() as u64,
        );
    }
    assert!(
        refused > 0,
        "the killed primary's clients were refused while it was away"
    );

    cluster.wait_healthy(Duration::from_secs(20));
    for c in &clients {
        assert!(
            eventually(Duration::from_secs(10), || async {
                call(g, "GET", "/echo/one/x", c).await.status == 200
            })
            .await,
            "{c} is served again after the failover"
        );
        *answered.get_mut(c).unwrap() += 1;
    }
    // Reservations stranded by the failover expire (2 s), refunded.
    for c in &clients {
        let drained = eventually(Duration::from_secs(8), || async {
            account(g, c).await.1 == 0
        })
        .await;
        assert!(drained, "{c}: nothing stays held");
        let charged = 10_000 - account(g, c).await.0;
        assert!(
            charged <= answered[c],
            "{c}: charged {charged} for {} answers",
            answered[c]
        );
    }
    assert_verified(g).await;
}

/// A caller the route has no backend credential for (a `client_map` without its key) is
/// refused before anything is held: no reserve and void in its journal, no key claimed.
#[tokio::test]
async fn a_caller_without_a_backend_credential_is_refused_before_reserving() {
    let mut s = setup("", "");
    s.policies.insert(
        0,
        (
            "05-keyed.toml".into(),
            "[[route]]\nname = \"keyed\"\npath = \"/echo/keyed/*\"\nauth = \"jwt\"\ncost = 5\nupstream_credential = \"client-key\"\n".into(),
        ),
    );
    s.files.push((
        "client-keys.toml".into(),
        b"\"c1\" = \"legacy-key-of-c1\"\n".to_vec(),
    ));
    s.extra.push_str(
        "\n[credentials.client-key]\nkind = \"client_map\"\nheader = \"x-api-key\"\nfile = \"client-keys.toml\"\n",
    );
    let h = Harness::with(s).await;
    h.gateway.wait_ready().await;
    let g = &h.gateway;
    credit(g, "c1", 10).await;
    credit(g, "c2", 10).await;
    let seen = h.backend.requests();
    let bearer = bearer_for("c2");
    let r = send(
        g.addr,
        "POST",
        "/echo/keyed/x",
        &[("authorization", &bearer), ("idempotency-key", "k-1")],
        b"",
    )
    .await;
    r.assert_problem(403, "FORBIDDEN");
    assert_eq!(h.backend.requests(), seen);
    assert_eq!(account(g, "c2").await, (10, 0));
    let kinds: Vec<String> = journal(g, "c2")
        .await
        .iter()
        .map(|m| m["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["credit"]);
    // A caller short of the cost hears 402 first, as anywhere metered (nothing held).
    let r = send(
        g.addr,
        "POST",
        "/echo/keyed/x",
        &[("authorization", &bearer_for("c3"))],
        b"",
    )
    .await;
    r.assert_problem(402, "INSUFFICIENT_TOKENS");
    assert_eq!(r.json()["required"], 5);
    assert!(journal(g, "c3").await.is_empty());
    // The caller that has one is charged, and its key reaches the backend.
    let r = call(g, "POST", "/echo/keyed/x", "c1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-token-balance"), Some("5"));
    assert_eq!(r.echoed_header("x-api-key"), ["legacy-key-of-c1"]);
    assert_verified(g).await;
}
