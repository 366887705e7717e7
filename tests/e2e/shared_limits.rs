//! Rate limits shared through a real Redis of the test's own: exact across three gateway
//! processes, and an outage (Redis killed mid-load, then restarted) handled per failure
//! mode with no 500 and no hang.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{bearer_for, jwt_config};
use crate::support::{
    eventually, read_next, write_config, GatewayProcess, Harness, RawResponse, RedisServer, Setup,
    TempDir,
};

/// One response of a load run: when its request was sent and how long it took.
struct Timed {
    response: RawResponse,
    sent: Instant,
    took: Duration,
}

/// Sends `total` requests for `path` with `headers` (stopping early at `until`), over
/// `connections` keep-alive connections spread round-robin over `gateways`, all at once.
async fn hammer(
    gateways: &[SocketAddr],
    total: usize,
    connections: usize,
    path: &str,
    headers: &[(&str, &str)],
    until: Option<Instant>,
) -> Vec<Timed> {
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: gw.test\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let addr = gateways[c % gateways.len()];
        let request = request.clone().into_bytes();
        let count = total / connections + usize::from(c < total % connections);
        tasks.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let mut pending = Vec::new();
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                let sent = Instant::now();
                if until.is_some_and(|u| sent > u) {
                    break;
                }
                stream.write_all(&request).await.unwrap();
                let response = tokio::time::timeout(
                    Duration::from_secs(10),
                    read_next(&mut stream, &mut pending),
                )
                .await
                .expect("a response within 10 s: no hangs");
                out.push(Timed {
                    response,
                    sent,
                    took: sent.elapsed(),
                });
            }
            out
        });
    }
    let mut all = Vec::with_capacity(total);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all
}

const EXACT_POLICY: &str = r#"
[limits.per-client]
rate = 500
period = "1d"
key = ["client"]
on_redis_error = "closed"

[[route]]
name = "campaigns"
path = "/echo/campaigns/*"
limits = ["per-client"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_sharing_redis_admit_exactly_the_limit() {
    const LIMIT: usize = 500;
    const REQUESTS: usize = 10_000;
    let redis = RedisServer::start();
    // A generous timeout: this test is about exactness under load, not outages.
    let store = format!(
        "[store]\nredis_url = \"{}\"\ninstances = 3\ntimeout = \"2s\"\n",
        redis.url()
    );
    let setup = || Setup {
        policies: vec![("10.toml".into(), EXACT_POLICY.into())],
        extra: format!("{}\n{store}", jwt_config()),
        ..Setup::default()
    };
    let first = Harness::with(setup()).await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let dir = TempDir::new();
        write_config(dir.path(), &setup(), first.backend.addr());
        let gateway = GatewayProcess::start(&dir.path().join("gateway.toml"));
        others.push((gateway, dir));
    }
    let gateways: Vec<SocketAddr> = std::iter::once(first.gateway.addr)
        .chain(others.iter().map(|(g, _)| g.addr))
        .collect();

    let token = bearer_for("acme");
    let responses = hammer(
        &gateways,
        REQUESTS,
        150,
        "/echo/campaigns/list",
        &[("authorization", &token)],
        None,
    )
    .await;
    assert_eq!(responses.len(), REQUESTS);

    let mut remaining_seen = Vec::new();
    let mut refused = 0;
    for Timed { response: r, .. } in &responses {
        assert_eq!(r.header("x-ratelimit-limit"), Some("500"));
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"per-client\";q=500;w=86400")
        );
        match r.status {
            200 => {
                remaining_seen.push(
                    r.header("x-ratelimit-remaining")
                        .unwrap()
                        .parse::<usize>()
                        .unwrap(),
                );
            }
            429 => {
                refused += 1;
                r.assert_problem(429, "RATE_LIMITED");
                assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
                // One request comes back every 172.8 s.
                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=173).contains(&retry), "{retry}");
                assert_eq!(r.json()["retryAfter"], retry);
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!(remaining_seen.len(), LIMIT, "exactly the limit is admitted");
    assert_eq!(refused, REQUESTS - LIMIT);
    // Every admitted request took exactly one unit: the remainders are 499 down to 0,
    // each seen once, whichever gateway answered.
    remaining_seen.sort_unstable();
    assert_eq!(remaining_seen, (0..LIMIT).collect::<Vec<_>>());
    assert_eq!(first.backend.requests(), LIMIT as u64);
    // One key, tagged by client, in the shared Redis.
    assert_eq!(
        redis.cli(&["EXISTS", "tollgate:rl:{client=acme}:per-client"]),
        "1"
    );
}

const OUTAGE_POLICY: &str = r#"
[limits.local-mode]
rate = 100
period = "1d"
key = ["client"]
on_redis_error = "local"

[limits.open-mode]
rate = 100
period = "1d"
key = ["client"]
on_redis_error = "open"

[limits.closed-mode]
rate = 100
period = "1d"
key = ["client"]
on_redis_error = "closed"

[[route]]
name = "local"
path = "/echo/local/*"
limits = ["local-mode"]

[[route]]
name = "open"
path = "/echo/open/*"
limits = ["open-mode"]

[[route]]
name = "closed"
path = "/echo/closed/*"
limits = ["closed-mode"]

[[route]]
name = "mixed"
path = "/echo/mixed/*"
limits = ["local-mode", "closed-mode"]
"#;

/// Requests for one client on one route until the first 429 (at most `max`): how many
/// passed.
async fn admitted_until_refused(h: &Harness, path: &str, token: &str, max: usize) -> usize {
    for n in 0..max {
        let r = h.get(path, &[("authorization", token)]).await;
        match r.status {
            200 => continue,
            429 => return n,
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_each_mode_holds_and_recovers() {
    let redis = RedisServer::start();
    let store = format!(
        "[store]\nredis_url = \"{}\"\ninstances = 2\ntimeout = \"100ms\"\nbreaker_failures = 3\nbreaker_cooldown = \"300ms\"\n",
        redis.url()
    );
    let h = Harness::with(Setup {
        policies: vec![("10.toml".into(), OUTAGE_POLICY.into())],
        extra: format!("{}\n{store}", jwt_config()),
        ..Setup::default()
    })
    .await;
    let load_token = bearer_for("load");
    for route in ["local", "open", "closed"] {
        let r = h
            .get(
                &format!("/echo/{route}/x"),
                &[("authorization", &load_token)],
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));
    }

    // Load on all three routes while Redis goes away: 1.2 s of it, Redis killed 0.4 s in.
    let gateway = h.gateway.addr;
    let until = Instant::now() + Duration::from_millis(1200);
    let mut load = Vec::new();
    for route in ["local", "open", "closed"] {
        let path = format!("/echo/{route}/x");
        let token = load_token.clone();
        load.push(tokio::spawn(async move {
            hammer(
                &[gateway],
                1_000_000,
                4,
                &path,
                &[("authorization", &token)],
                Some(until),
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let killing = Instant::now();
    let port = redis.kill();
    let killed = Instant::now();
    for (route, task) in ["local", "open", "closed"].into_iter().zip(load) {
        let responses = task.await.unwrap();
        let after: Vec<&Timed> = responses.iter().filter(|t| t.sent > killed).collect();
        assert!(
            after.len() > 20 && responses.len() - after.len() > 20,
            "{route}: the load must run on both sides of the kill"
        );
        for t in &responses {
            assert!(
                t.took < Duration::from_secs(1),
                "{route}: a request took {:?}",
                t.took
            );
            let r = &t.response;
            // While Redis was up, the load client used up its 100 there: 429s are right.
            // Requests in flight during the kill may get either answer.
            let by_redis = matches!(r.status, 200 | 429);
            let by_mode = match route {
                "local" => matches!(r.status, 200 | 429),
                "open" => r.status == 200,
                _ => r.status == 503,
            };
            let expected = if t.sent + t.took < killing {
                by_redis
            } else if t.sent > killed {
                by_mode
            } else {
                by_redis || by_mode
            };
            assert!(
                expected,
                "{route}: unexpected {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            if r.status == 503 {
                r.assert_problem(503, "RATE_LIMIT_UNAVAILABLE");
            }
        }
    }

    // With Redis down, for a fresh client: `local` counts here at this instance's share
    // (100 / 2 instances), `open` lets everything through unreported, `closed` refuses.
    let fresh = bearer_for("fresh");
    assert_eq!(
        admitted_until_refused(&h, "/echo/local/x", &fresh, 80).await,
        50
    );
    let r = h.get("/echo/local/x", &[("authorization", &fresh)]).await;
    r.assert_problem(429, "RATE_LIMITED");
    assert_eq!(r.header("x-ratelimit-limit"), Some("50"));
    for _ in 0..120 {
        let r = h.get("/echo/open/x", &[("authorization", &fresh)]).await;
        assert_eq!(r.status, 200);
        assert!(r.header("x-ratelimit-limit").is_none());
    }
    let started = Instant::now();
    let r = h.get("/echo/closed/x", &[("authorization", &fresh)]).await;
    r.assert_problem(503, "RATE_LIMIT_UNAVAILABLE");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(r.json()["retryAfter"], retry);
    assert!(started.elapsed() < Duration::from_millis(500));
    // Where another policy of the route was counted first (locally), the 503 carries
    // none of its headers: they would read as the unavailable one's.
    let unspent = bearer_for("unspent");
    let r = h.get("/echo/mixed/x", &[("authorization", &unspent)]).await;
    r.assert_problem(503, "RATE_LIMIT_UNAVAILABLE");
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "ratelimit",
        "ratelimit-policy",
    ] {
        assert!(r.header(name).is_none(), "{name}: {:?}", r.header(name));
    }
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("tollgate_redis_circuit_open 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "tollgate_rate_limit_decisions_total{policy=\"local-mode\",store=\"fallback\",outcome=\"limited\"}"
    ));
    assert!(!metrics.contains("tollgate_redis_circuit_opened_total 0"));

    // Redis comes back (empty): decisions resume there without anyone's help.
    let redis = RedisServer::start_on(port);
    let recovered = eventually(Duration::from_secs(10), || async {
        h.get("/echo/closed/x", &[("authorization", &bearer_for("probe"))])
            .await
            .status
            == 200
    })
    .await;
    assert!(recovered, "decisions never resumed on redis");
    // The fresh client now gets the whole shared allowance from Redis, not the share.
    assert_eq!(
        admitted_until_refused(&h, "/echo/local/x", &fresh, 120).await,
        100
    );
    assert_eq!(
        redis.cli(&["EXISTS", "tollgate:rl:{client=fresh}:local-mode"]),
        "1"
    );
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("tollgate_redis_circuit_open 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn two_gateways_share_a_redis_over_tls_with_client_certificates() {
    let redis = RedisServer::start_tls();
    let fixture = |name: &str| crate::support::tls_fixture(name).display().to_string();
    let store = format!(
        "[store]\nredis_url = \"{}\"\ninstances = 2\ntimeout = \"2s\"\nredis_ca_file = \"{}\"\nredis_client_cert_file = \"{}\"\nredis_client_key_file = \"{}\"\n",
        redis.url(),
        fixture("ca.pem"),
        fixture("client.pem"),
        fixture("client.key.pem"),
    );
    assert!(redis.url().starts_with("rediss://"));
    let policy = EXACT_POLICY.replace("rate = 500", "rate = 5");
    let setup = || Setup {
        policies: vec![("10.toml".into(), policy.clone())],
        extra: format!("{}\n{store}", jwt_config()),
        ..Setup::default()
    };
    let first = Harness::with(setup()).await;
    let dir = TempDir::new();
    write_config(dir.path(), &setup(), first.backend.addr());
    let second = GatewayProcess::start(&dir.path().join("gateway.toml"));

    let token = bearer_for("tls-client");
    let responses = hammer(
        &[first.gateway.addr, second.addr],
        12,
        2,
        "/echo/campaigns/list",
        &[("authorization", &token)],
        None,
    )
    .await;
    let admitted = responses
        .iter()
        .filter(|t| t.response.status == 200)
        .count();
    let refused = responses
        .iter()
        .filter(|t| t.response.status == 429)
        .count();
    assert_eq!(
        (admitted, refused),
        (5, 7),
        "one allowance, counted in Redis over TLS"
    );
    assert_eq!(
        redis.cli(&["EXISTS", "tollgate:rl:{client=tls-client}:per-client"]),
        "1"
    );
}

/// Where shared state lives is bound at start-up: a reload naming another Redis keeps
/// the one in use (with a warning), so one instance's limits, sessions and revocations
/// do not split from the others' (found by review: a reload moved the rate limits and
/// revocations to the new Redis, and a token logged out on one instance was let in on
/// the other). The tuning in `[store]` still reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_move_shared_state_to_another_redis() {
    let first = RedisServer::start();
    let second = RedisServer::start();
    let store = |url: String| format!("[store]\nredis_url = \"{url}\"\ntimeout = \"100ms\"\n");
    let h = Harness::with(Setup {
        policies: vec![("10.toml".into(), OUTAGE_POLICY.into())],
        extra: format!("{}\n{}", jwt_config(), store(first.url())),
        ..Setup::default()
    })
    .await;
    let token = bearer_for("mover");
    let remaining = |r: &RawResponse| r.header("x-ratelimit-remaining").map(str::to_owned);
    let r = h.get("/echo/local/x", &[("authorization", &token)]).await;
    assert_eq!(remaining(&r).as_deref(), Some("99"));

    let config = h.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&first.url(), &second.url())).unwrap();
    assert!(
        h.gateway
            .wait_for_log(
                "shared state moves only at a restart",
                Duration::from_secs(10)
            )
            .await,
        "{}",
        h.gateway.stderr()
    );
    // Still counted in the first Redis: the count goes on, and the second holds no key.
    let r = h.get("/echo/local/x", &[("authorization", &token)]).await;
    assert_eq!(remaining(&r).as_deref(), Some("98"));
    assert_eq!(second.cli(&["DBSIZE"]).trim(), "0");
    assert_ne!(first.cli(&["DBSIZE"]).trim(), "0");
}
