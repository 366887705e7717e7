//! The Redis limiter against a real `redis-server` of our own on a free port: the same
//! decisions as the in-process limiter, keys that expire, and an outage that fails fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_state::rate::local::LocalLimiter;
use tollgate_state::rate::shared::{key, SharedLimiter};
use tollgate_state::rate::Quota;
use tollgate_state::redis::{Redis, RedisSettings, RedisTls, StoreError};
use tollgate_testkit::RedisServer;

/// Settings for a test server: short timeouts, a quick breaker.
fn settings(server: &RedisServer) -> RedisSettings {
    RedisSettings {
        url: server.url(),
        instances: NonZeroU32::MIN,
        timeout: Duration::from_millis(200),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(300),
        key_prefix: "test".into(),
        tls: None,
        cluster: false,
        cluster_seeds: Vec::new(),
    }
}

fn quota(limit: u32, period: Duration, burst: u32) -> Quota {
    Quota::new(
        NonZeroU32::new(limit).unwrap(),
        period,
        NonZeroU32::new(burst).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn redis_and_local_limiters_decide_a_burst_alike() {
    let server = RedisServer::start();
    let shared = SharedLimiter::new(Arc::new(Redis::new(settings(&server), 1).unwrap()), 1);
    // One request back per hour: nothing refills while the test runs.
    let q = quota(5, Duration::from_secs(5 * 3600), 5);
    let (local, _clock) = LocalLimiter::manual(q);
    let k = key("test", "p", "client=acme", "");
    for _ in 0..7 {
        let remote = shared.check(0, k.clone(), &q).await.unwrap();
        let here = local.check(&"client=acme".to_owned());
        assert_eq!(remote.allowed, here.allowed);
        assert_eq!(remote.remaining, here.remaining);
        assert_eq!(
            remote.reset_secs().abs_diff(here.reset_secs()),
            0,
            "{remote:?} {here:?}"
        );
        // Redis's clock moved a little between the calls; the manual one did not.
        assert!(remote.retry_after <= here.retry_after);
        assert!(here.retry_after - remote.retry_after < Duration::from_secs(1));
    }
    // The key is tagged, and expires when the allowance would be full again (5 hours).
    assert_eq!(server.cli(&["EXISTS", "test:rl:{client=acme}:p"]), "1");
    let ttl: u64 = server
        .cli(&["PTTL", "test:rl:{client=acme}:p"])
        .parse()
        .unwrap();
    assert!(
        ttl > 5 * 3600 * 1000 - 10_000 && ttl <= 5 * 3600 * 1000,
        "{ttl}"
    );
}

#[tokio::test]
async fn a_key_refills_on_the_redis_clock_and_then_expires() {
    let server = RedisServer::start();
    let shared = SharedLimiter::new(Arc::new(Redis::new(settings(&server), 1).unwrap()), 1);
    // Burst 2, one back every 100 ms.
    let q = quota(10, Duration::from_secs(1), 2);
    let k = key("test", "p", "ip=127.0.0.1", "");
    assert_eq!(shared.check(0, k.clone(), &q).await.unwrap().remaining, 1);
    assert_eq!(shared.check(0, k.clone(), &q).await.unwrap().remaining, 0);
    let refused = shared.check(0, k.clone(), &q).await.unwrap();
    assert!(!refused.allowed);
    assert!(refused.retry_after <= Duration::from_millis(100));
    tokio::time::sleep(refused.retry_after + Duration::from_millis(5)).await;
    assert!(shared.check(0, k.clone(), &q).await.unwrap().allowed);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        server.cli(&["EXISTS", &k]),
        "0",
        "a full allowance is forgotten"
    );
}

#[tokio::test]
async fn an_outage_fails_fast_then_opens_the_circuit_and_recovers() {
    let server = RedisServer::start();
    let shared = SharedLimiter::new(Arc::new(Redis::new(settings(&server), 1).unwrap()), 1);
    let redis = shared.redis();
    let q = quota(100, Duration::from_secs(3600), 100);
    let k = key("test", "p", "global", "");
    assert!(shared.check(0, k.clone(), &q).await.unwrap().allowed);

    let port = server.kill();
    let started = Instant::now();
    let mut errors = Vec::new();
    for _ in 0..6 {
        errors.push(shared.check(0, k.clone(), &q).await.unwrap_err());
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "each call is bounded"
    );
    assert!(
        matches!(errors.last(), Some(StoreError::CircuitOpen(_))),
        "{errors:?}"
    );
    assert!(redis.breaker().is_open());

    // Back on the same port: the next probe after the cooldown closes the circuit, and
    // the script is loaded again into the fresh server.
    let restarted = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match shared.check(0, k.clone(), &q).await {
            Ok(d) => {
                assert_eq!(d.remaining, 99, "a fresh server starts a fresh count");
                break;
            }
            Err(_) => {
                assert!(Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(!redis.breaker().is_open());
    drop(restarted);
}

#[tokio::test]
async fn a_frozen_redis_costs_one_timeout_per_call_until_the_circuit_opens() {
    let server = RedisServer::start();
    let mut settings = settings(&server);
    settings.timeout = Duration::from_millis(100);
    let shared = SharedLimiter::new(Arc::new(Redis::new(settings, 1).unwrap()), 1);
    let redis = shared.redis();
    let q = quota(100, Duration::from_secs(3600), 100);
    let k = key("test", "p", "global", "");
    assert!(shared.check(0, k.clone(), &q).await.unwrap().allowed);

    // Accepts connections, answers nothing: the worst kind of outage.
    server.freeze();
    for _ in 0..3 {
        let started = Instant::now();
        let error = shared.check(0, k.clone(), &q).await.unwrap_err();
        assert!(matches!(error, StoreError::Timeout(_)), "{error:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(300),
            "{took:?}"
        );
    }
    // Open now: no waiting at all.
    let started = Instant::now();
    let error = shared.check(0, k.clone(), &q).await.unwrap_err();
    assert!(matches!(error, StoreError::CircuitOpen(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_millis(5));
    assert_eq!(
        redis
            .errors()
            .timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    server.thaw();
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.check(0, k.clone(), &q).await.is_err() {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!redis.breaker().is_open());
}

#[tokio::test]
async fn concurrent_decisions_batched_together_stay_exact_per_key() {
    let server = RedisServer::start();
    let shared = SharedLimiter::new(Arc::new(Redis::new(settings(&server), 1).unwrap()), 1);
    let q = quota(5, Duration::from_secs(5 * 3600), 5);
    let other = quota(3, Duration::from_secs(3 * 3600), 3);
    // 40 decisions asked for at once on one worker: they go out as a few pipelines, with
    // the same keys (and other tags) side by side in one script call.
    let mut calls = Vec::new();
    for i in 0..40 {
        let (tag, quota) = match i % 4 {
            0 | 1 => ("client=a", q),
            2 => ("client=b", q),
            _ => ("global", other),
        };
        let shared = Arc::clone(&shared);
        calls.push(tokio::spawn(async move {
            let d = shared
                .check(0, key("test", "p", tag, ""), &quota)
                .await
                .unwrap();
            (tag, d)
        }));
    }
    let mut remaining: std::collections::BTreeMap<&str, Vec<u32>> = Default::default();
    let mut refused: std::collections::BTreeMap<&str, usize> = Default::default();
    for call in calls {
        let (tag, d) = call.await.unwrap();
        if d.allowed {
            remaining.entry(tag).or_default().push(d.remaining);
        } else {
            *refused.entry(tag).or_default() += 1;
            assert!(d.retry_after > Duration::from_secs(3500), "{d:?}");
        }
    }
    for list in remaining.values_mut() {
        list.sort_unstable();
    }
    assert_eq!(remaining["client=a"], [0, 1, 2, 3, 4]);
    assert_eq!(remaining["client=b"], [0, 1, 2, 3, 4]);
    assert_eq!(remaining["global"], [0, 1, 2]);
    assert_eq!(refused["client=a"], 15);
    assert_eq!(refused["client=b"], 5);
    assert_eq!(refused["global"], 7);
    // They really went together: far fewer script runs than decisions.
    let stats = server.cli(&["INFO", "commandstats"]);
    let runs: usize = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(runs < 20, "{runs} EVALSHA for 40 decisions");
}

#[tokio::test]
async fn over_tls_with_a_client_certificate() {
    let server = RedisServer::start_tls();
    let pem = |name: &str| std::fs::read(tollgate_testkit::tls_fixture(name)).unwrap();
    let with = |client: Option<(Vec<u8>, Vec<u8>)>| RedisSettings {
        tls: Some(RedisTls {
            ca_pem: Some(pem("ca.pem")),
            client_pem: client,
        }),
        ..settings(&server)
    };
    let q = quota(5, Duration::from_secs(3600), 2);
    let k = key("test", "p", "client=tls", "");

    let identified = with(Some((pem("client.pem"), pem("client.key.pem"))));
    let shared = SharedLimiter::new(Arc::new(Redis::new(identified, 1).unwrap()), 1);
    assert_eq!(shared.check(0, k.clone(), &q).await.unwrap().remaining, 1);
    assert_eq!(shared.check(0, k.clone(), &q).await.unwrap().remaining, 0);
    assert!(!shared.check(0, k.clone(), &q).await.unwrap().allowed);
    assert_eq!(server.cli(&["EXISTS", &k]), "1");

    // Redis checks clients: without a certificate the handshake is refused, and the
    // store reports a failure (it never decides on a guess).
    let anonymous = SharedLimiter::new(Arc::new(Redis::new(with(None), 1).unwrap()), 1);
    assert!(matches!(
        anonymous.check(0, k.clone(), &q).await,
        Err(StoreError::Redis(_) | StoreError::Timeout(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_spreads_the_keys_and_decides_exactly() {
    let cluster = tollgate_testkit::RedisCluster::start();
    let settings = RedisSettings {
        url: cluster.url(),
        cluster: true,
        cluster_seeds: Vec::new(),
        timeout: Duration::from_secs(2),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(300),
        instances: NonZeroU32::MIN,
        key_prefix: "test".into(),
        tls: None,
    };
    let shared = Arc::new(SharedLimiter::new(
        Arc::new(Redis::new(settings, 1).unwrap()),
        1,
    ));
    let q = quota(3, Duration::from_secs(3600), 3);
    // 40 clients asking 5 times each, all at once: batches mix tags on every node.
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..40 {
        for _ in 0..5 {
            let shared = Arc::clone(&shared);
            tasks.spawn(async move {
                let k = key("test", "p", &format!("client=c{client}"), "");
                (client, shared.check(0, k, &q).await.unwrap().allowed)
            });
        }
    }
    let mut allowed = [0u32; 40];
    while let Some(done) = tasks.join_next().await {
        let (client, ok) = done.unwrap();
        allowed[client] += u32::from(ok);
    }
    assert!(allowed.iter().all(|&n| n == 3), "{allowed:?}");
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    assert!(primaries.iter().all(|(_, keys)| *keys > 0), "{primaries:?}");
}
