//! One test suite for both ledgers: the embedded `redb` file and Redis (a real
//! `redis-server` of our own on a free port). Both must reserve, post, void and expire
//! exactly once, never take a balance below zero under any concurrency, journal every
//! movement so that it sums to the balance, and keep idempotency records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_state::ledger::embedded::{EmbeddedLedger, Options};
use tollgate_state::ledger::shared::SharedLedger;
use tollgate_state::ledger::{
    Account, Adjust, Adjusted, Change, Claim, Claimed, Kind, Ledger, LedgerError, Reservation,
    Reserved, Settle, Settled, StoredAnswer, MAX_TOKENS,
};
use tollgate_state::redis::{Redis, RedisSettings};
use tollgate_testkit::{RedisCluster, RedisServer, TempDir};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn redis_settings(server: &RedisServer) -> RedisSettings {
    settings_for(server.url())
}

fn settings_for(url: String) -> RedisSettings {
    RedisSettings {
        url,
        instances: NonZeroU32::MIN,
        timeout: Duration::from_millis(500),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(300),
        key_prefix: "test".into(),
        tls: None,
        cluster: false,
        cluster_seeds: Vec::new(),
    }
}

fn shared(server: &RedisServer) -> SharedLedger {
    SharedLedger::new(Arc::new(Redis::new(redis_settings(server), 2).unwrap()))
}

fn adjust(client: &str, change: Change) -> Adjust {
    Adjust {
        client: client.into(),
        change,
        reason: "test".into(),
        now_ms: now_ms(),
        request_id: None,
    }
}

fn reservation(client: &str, id: &str, amount: u64, deadline: u64) -> Reservation {
    Reservation {
        id: id.into(),
        client: client.into(),
        amount,
        deadline,
        route: Some("campaigns".into()),
        request_id: Some(format!("req-{id}")),
        idempotency_key: None,
    }
}

async fn balance(ledger: &dyn Ledger, client: &str) -> Account {
    ledger.account(0, client).await.unwrap()
}

/// Everything both ledgers must do alike.
async fn suite(ledger: &dyn Ledger) {
    let later = now_ms() + 60_000;
    // Adjustments: credit, a debit too large, set, and an opening balance applied once.
    assert_eq!(
        ledger
            .adjust(0, adjust("a", Change::Credit(10)))
            .await
            .unwrap(),
        Adjusted::Done { balance: 10 }
    );
    assert_eq!(
        ledger
            .adjust(0, adjust("a", Change::Debit(11)))
            .await
            .unwrap(),
        Adjusted::Short { balance: 10 }
    );
    assert_eq!(
        ledger.adjust(0, adjust("a", Change::Set(8))).await.unwrap(),
        Adjusted::Done { balance: 8 }
    );
    assert_eq!(
        ledger
            .adjust(0, adjust("a", Change::Opening(2)))
            .await
            .unwrap(),
        Adjusted::Done { balance: 10 }
    );
    assert_eq!(
        ledger
            .adjust(0, adjust("a", Change::Opening(2)))
            .await
            .unwrap(),
        Adjusted::AlreadyOpened { balance: 10 }
    );
    // An adjustment made by an admin API call is journaled with its request id.
    let traced = Adjust {
        request_id: Some("ticket-4711".into()),
        ..adjust("traced", Change::Credit(3))
    };
    assert_eq!(
        ledger.adjust(0, traced).await.unwrap(),
        Adjusted::Done { balance: 3 }
    );
    let page = ledger.journal(0, "traced", None, 10).await.unwrap();
    assert_eq!(page.movements.len(), 1);
    assert_eq!(page.movements[0].request_id.as_deref(), Some("ticket-4711"));
    assert_eq!(page.movements[0].reason.as_deref(), Some("test"));
    // No account holds more than MAX_TOKENS, available and held together: beyond it a
    // journal amount or a Lua number would round. Refused whole, never saturated.
    for change in [Change::Credit(u64::MAX), Change::Set(MAX_TOKENS + 1)] {
        assert_eq!(
            ledger.adjust(0, adjust("max", change)).await.unwrap(),
            Adjusted::TooLarge { balance: 0 }
        );
    }
    assert_eq!(
        ledger
            .adjust(0, adjust("max", Change::Credit(MAX_TOKENS)))
            .await
            .unwrap(),
        Adjusted::Done {
            balance: MAX_TOKENS
        }
    );
    assert_eq!(
        ledger
            .reserve(0, reservation("max", "m1", 5, later), now_ms())
            .await
            .unwrap(),
        Reserved::Held {
            balance: MAX_TOKENS - 5
        }
    );
    for change in [
        Change::Credit(1),
        Change::Set(MAX_TOKENS),
        Change::Opening(5),
    ] {
        assert_eq!(
            ledger.adjust(0, adjust("max", change)).await.unwrap(),
            Adjusted::TooLarge {
                balance: MAX_TOKENS - 5
            }
        );
    }
    ledger
        .settle(
            0,
            "max",
            "m1",
            Settle::Void {
                reason: "test".into(),
            },
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(
        balance(ledger, "max").await,
        Account {
            available: MAX_TOKENS,
            held: 0
        }
    );

    // Reserve, then post less than was held: the rest comes back.
    assert_eq!(
        ledger
            .reserve(0, reservation("a", "r1", 6, later), now_ms())
            .await
            .unwrap(),
        Reserved::Held { balance: 4 }
    );
    assert_eq!(
        balance(ledger, "a").await,
        Account {
            available: 4,
            held: 6
        }
    );
    assert_eq!(
        ledger
            .reserve(0, reservation("a", "r2", 5, later), now_ms())
            .await
            .unwrap(),
        Reserved::Short { balance: 4 }
    );
    assert_eq!(
        ledger
            .settle(0, "a", "r1", Settle::Post { amount: 4 }, now_ms())
            .await
            .unwrap(),
        Settled::Done {
            charged: 4,
            balance: 6
        }
    );
    // Exactly once: a second settlement, a void after the post, another client's.
    assert_eq!(
        ledger
            .settle(0, "a", "r1", Settle::Post { amount: 4 }, now_ms())
            .await
            .unwrap(),
        Settled::Gone
    );
    assert_eq!(
        ledger
            .settle(
                0,
                "a",
                "r1",
                Settle::Void {
                    reason: "upstream_5xx".into()
                },
                now_ms()
            )
            .await
            .unwrap(),
        Settled::Gone
    );
    ledger
        .reserve(0, reservation("a", "r3", 3, later), now_ms())
        .await
        .unwrap();
    assert_eq!(
        ledger
            .settle(0, "b", "r3", Settle::Void { reason: "x".into() }, now_ms())
            .await
            .unwrap(),
        Settled::Gone
    );
    assert_eq!(
        ledger
            .settle(
                0,
                "a",
                "r3",
                Settle::Void {
                    reason: "upstream_5xx".into()
                },
                now_ms()
            )
            .await
            .unwrap(),
        Settled::Done {
            charged: 0,
            balance: 6
        }
    );
    // A post never charges more than was held.
    ledger
        .reserve(0, reservation("a", "r4", 2, later), now_ms())
        .await
        .unwrap();
    assert_eq!(
        ledger
            .settle(0, "a", "r4", Settle::Post { amount: 100 }, now_ms())
            .await
            .unwrap(),
        Settled::Done {
            charged: 2,
            balance: 4
        }
    );

    // A reservation past its deadline is voided by a sweep, once; it is gone after.
    let past = now_ms() - 1;
    ledger
        .reserve(0, reservation("a", "r5", 4, past), now_ms())
        .await
        .unwrap();
    ledger
        .reserve(0, reservation("a", "r6", 0, later), now_ms())
        .await
        .unwrap();
    assert_eq!(
        balance(ledger, "a").await,
        Account {
            available: 0,
            held: 4
        }
    );
    assert_eq!(ledger.expire(0, now_ms(), 100).await.unwrap(), 1);
    assert_eq!(ledger.expire(0, now_ms(), 100).await.unwrap(), 0);
    assert_eq!(
        ledger
            .settle(0, "a", "r5", Settle::Post { amount: 4 }, now_ms())
            .await
            .unwrap(),
        Settled::Gone
    );
    assert_eq!(
        balance(ledger, "a").await,
        Account {
            available: 4,
            held: 0
        }
    );

    // The journal, newest first, in pages.
    let first = ledger.journal(0, "a", None, 4).await.unwrap();
    assert_eq!(first.movements.len(), 4);
    assert_eq!(first.movements[0].kind, Kind::Expire);
    assert_eq!(first.movements[0].reason.as_deref(), Some("expired"));
    assert_eq!(first.movements[0].amount, 4);
    assert_eq!(first.movements[0].held_change, -4);
    assert_eq!(first.movements[0].balance, 4);
    assert_eq!(first.movements[1].kind, Kind::Reserve); // r6, still open
    assert!(first.movements.windows(2).all(|w| w[0].seq > w[1].seq));
    let mut all = first.movements.clone();
    let mut cursor = first.next;
    while let Some(before) = cursor {
        let page = ledger.journal(0, "a", Some(before), 4).await.unwrap();
        assert!(page.movements.iter().all(|m| m.seq < before));
        all.extend(page.movements);
        cursor = page.next;
    }
    // 5 adjustments (one refused, one ignored: 3 journaled), 5 reservations held (one
    // was short) and 4 settlements.
    assert_eq!(all.len(), 3 + 5 + 4, "{all:#?}");
    assert_eq!(all.last().unwrap().kind, Kind::Credit);
    assert_eq!(all.iter().map(|m| m.amount).sum::<i64>(), 4);
    assert!(all.iter().all(|m| m.client == "a"));
    let reserve = all
        .iter()
        .find(|m| m.reservation.as_deref() == Some("r1"))
        .unwrap();
    assert_eq!(reserve.route.as_deref(), Some("campaigns"));
    assert_eq!(reserve.request_id.as_deref(), Some("req-r1"));
    assert!(ledger
        .journal(0, "nobody", None, 10)
        .await
        .unwrap()
        .movements
        .is_empty());

    // Idempotency records.
    let claim = |key: &str, fingerprint: &str, hold: u64| Claim {
        client: "a".into(),
        key: key.into(),
        fingerprint: fingerprint.into(),
        now_ms: now_ms(),
        hold_until: now_ms() + hold,
        owner: format!("r-{key}"),
    };
    assert_eq!(
        ledger.claim(0, claim("k1", "f1", 60_000)).await.unwrap(),
        Claimed::New
    );
    assert_eq!(
        ledger.claim(0, claim("k1", "f1", 60_000)).await.unwrap(),
        Claimed::InFlight
    );
    assert_eq!(
        ledger.claim(0, claim("k1", "f2", 60_000)).await.unwrap(),
        Claimed::Mismatch
    );
    let answer = StoredAnswer {
        status: 201,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Some("e30=".into()),
        cost: 3,
        request_digest: Some("9f86d081884c7d65".into()),
    };
    // Only the request that claimed the key keeps its answer there.
    let mut theirs = answer.clone();
    theirs.status = 500;
    ledger
        .answer(0, "a", "k1", "r-other", theirs.clone(), now_ms() + 60_000)
        .await
        .unwrap();
    assert_eq!(
        ledger.claim(0, claim("k1", "f1", 60_000)).await.unwrap(),
        Claimed::InFlight
    );
    ledger
        .answer(0, "a", "k1", "r-k1", answer.clone(), now_ms() + 60_000)
        .await
        .unwrap();
    // A kept answer is never written over, not even by its own request.
    ledger
        .answer(0, "a", "k1", "r-k1", theirs, now_ms() + 60_000)
        .await
        .unwrap();
    ledger.release(0, "a", "k1", "r-k1").await.unwrap(); // an answered key stays
    assert_eq!(
        ledger.claim(0, claim("k1", "f1", 60_000)).await.unwrap(),
        Claimed::Answered(answer.clone())
    );
    assert_eq!(
        ledger.claim(0, claim("k1", "f2", 60_000)).await.unwrap(),
        Claimed::Mismatch
    );
    // Keys are per client.
    let mut other = claim("k1", "f1", 60_000);
    other.client = "b".into();
    assert_eq!(ledger.claim(0, other).await.unwrap(), Claimed::New);
    // A released key (the request was refunded) runs again.
    assert_eq!(
        ledger.claim(0, claim("k2", "f1", 60_000)).await.unwrap(),
        Claimed::New
    );
    // ...freed only by the request that claimed it: one that met it in flight and then
    // lost its client must not free it for a third.
    ledger.release(0, "a", "k2", "r-other").await.unwrap();
    assert_eq!(
        ledger.claim(0, claim("k2", "f1", 60_000)).await.unwrap(),
        Claimed::InFlight
    );
    ledger.release(0, "a", "k2", "r-k2").await.unwrap();
    assert_eq!(
        ledger.claim(0, claim("k2", "f1", 60_000)).await.unwrap(),
        Claimed::New
    );
    // A claim whose request died frees the key when its time is over.
    assert_eq!(
        ledger.claim(0, claim("k3", "f1", 150)).await.unwrap(),
        Claimed::New
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    ledger.prune(0, now_ms()).await.unwrap();
    let retry = Claim {
        owner: "r-retry".into(),
        ..claim("k3", "f1", 60_000)
    };
    assert_eq!(ledger.claim(0, retry).await.unwrap(), Claimed::New);
    // The first request, still running after its claim ran out, answers late: the key
    // is the retry's now, and only the retry's answer is kept.
    ledger
        .answer(0, "a", "k3", "r-k3", answer.clone(), now_ms() + 60_000)
        .await
        .unwrap();
    assert_eq!(
        ledger.claim(0, claim("k3", "f1", 60_000)).await.unwrap(),
        Claimed::InFlight
    );
    let mut retried = answer.clone();
    retried.status = 202;
    ledger
        .answer(0, "a", "k3", "r-retry", retried.clone(), now_ms() + 60_000)
        .await
        .unwrap();
    assert_eq!(
        ledger.claim(0, claim("k3", "f1", 60_000)).await.unwrap(),
        Claimed::Answered(retried)
    );

    // A key is the caller's text: one that makes its record's name end like an
    // account's must not be taken for one (verification failed on its string).
    for key in ["x}:account", "x:account", "{a}:account", "*"] {
        assert_eq!(
            ledger.claim(0, claim(key, "f1", 60_000)).await.unwrap(),
            Claimed::New
        );
    }

    let report = ledger.verify(0).await.unwrap();
    assert!(report.problems.is_empty(), "{report:#?}");
    assert_eq!(report.open_reservations, 1);
    assert!(report.clients >= 1);
}

/// `requests` reservations of one token each, all at once, spread over `ledgers`,
/// against a balance of `balance`: exactly `balance` are held.
async fn concurrent_debits(ledgers: Vec<Arc<dyn Ledger>>, requests: usize, start: u64) {
    ledgers[0]
        .adjust(0, adjust("busy", Change::Credit(start)))
        .await
        .unwrap();
    let later = now_ms() + 60_000;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..requests {
        let ledger = Arc::clone(&ledgers[i % ledgers.len()]);
        tasks.spawn(async move {
            let id = format!("c{i}");
            let outcome = ledger
                .reserve(i % 2, reservation("busy", &id, 1, later), now_ms())
                .await
                .unwrap();
            if let Reserved::Held { .. } = outcome {
                let settled = ledger
                    .settle(i % 2, "busy", &id, Settle::Post { amount: 1 }, now_ms())
                    .await
                    .unwrap();
                assert!(matches!(settled, Settled::Done { charged: 1, .. }));
                true
            } else {
                false
            }
        });
    }
    let mut won = 0;
    while let Some(done) = tasks.join_next().await {
        won += u64::from(done.unwrap());
    }
    assert_eq!(won, start);
    assert_eq!(
        ledgers[0].account(0, "busy").await.unwrap(),
        Account {
            available: 0,
            held: 0
        }
    );
    let report = ledgers[0].verify(0).await.unwrap();
    assert!(report.problems.is_empty(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_ledger_passes_the_suite() {
    let dir = TempDir::new();
    let ledger = EmbeddedLedger::open(&dir.path().join("ledger.redb")).unwrap();
    suite(&ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_ledger_passes_the_suite_with_interval_syncs() {
    let dir = TempDir::new();
    let options = Options {
        sync_every: Some(Duration::from_millis(10)),
        ..Options::default()
    };
    let ledger = EmbeddedLedger::open_with(&dir.path().join("ledger.redb"), options).unwrap();
    suite(&ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_ledger_passes_the_suite() {
    let server = RedisServer::start();
    suite(&shared(&server)).await;
}

/// The suite, and 1,000 debits against 500 from three instances, on a Redis Cluster of
/// three primaries: each client's keys share a slot, the deadline index has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_ledger_passes_the_suite_on_a_cluster() {
    let cluster = RedisCluster::start();
    let settings = || RedisSettings {
        cluster: true,
        timeout: Duration::from_secs(2),
        ..settings_for(cluster.url())
    };
    let ledger = SharedLedger::new(Arc::new(Redis::new(settings(), 2).unwrap()));
    suite(&ledger).await;
    let ledgers: Vec<Arc<dyn Ledger>> = (0..3)
        .map(|_| {
            Arc::new(SharedLedger::new(Arc::new(
                Redis::new(settings(), 2).unwrap(),
            ))) as Arc<dyn Ledger>
        })
        .collect();
    concurrent_debits(Vec::clone(&ledgers), 1_000, 500).await;
    // Verification finds every client, whichever primary holds it.
    for i in 0..20 {
        let spread = format!("spread-{i}");
        ledgers[0]
            .adjust(0, adjust(&spread, Change::Credit(1)))
            .await
            .unwrap();
    }
    let report = ledgers[0].verify(0).await.unwrap();
    assert!(report.problems.is_empty(), "{report:#?}");
    assert!(report.clients >= 21, "{report:#?}");
    // The clients' keys landed on more than one primary.
    let holding = cluster
        .primaries()
        .iter()
        .filter(|(_, keys)| *keys > 0)
        .count();
    assert!(holding >= 2, "{:?}", cluster.primaries());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_debits_never_overdraw_the_embedded_ledger() {
    let dir = TempDir::new();
    let ledger = EmbeddedLedger::open(&dir.path().join("ledger.redb")).unwrap();
    let ledger: Arc<dyn Ledger> = Arc::new(ledger);
    concurrent_debits(vec![ledger], 1_000, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_debits_never_overdraw_redis_from_three_instances() {
    let server = RedisServer::start();
    let ledgers: Vec<Arc<dyn Ledger>> = (0..3)
        .map(|_| Arc::new(shared(&server)) as Arc<dyn Ledger>)
        .collect();
    concurrent_debits(ledgers, 1_000, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_commits_between_concurrent_changes() {
    let dir = TempDir::new();
    let ledger = Arc::new(EmbeddedLedger::open(&dir.path().join("ledger.redb")).unwrap());
    let as_dyn: Arc<dyn Ledger> = Arc::clone(&ledger) as Arc<dyn Ledger>;
    concurrent_debits(vec![as_dyn], 400, 400).await;
    let stats = ledger.stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let changes = stats.changes.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(changes, 1 + 400 + 400);
    assert!(commits < changes, "{commits} commits for {changes} changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_ledger_keeps_everything_across_a_restart() {
    let dir = TempDir::new();
    let path = dir.path().join("ledger.redb");
    {
        let ledger = EmbeddedLedger::open(&path).unwrap();
        ledger
            .adjust(0, adjust("a", Change::Credit(9)))
            .await
            .unwrap();
        ledger
            .reserve(0, reservation("a", "open", 4, now_ms() + 60_000), now_ms())
            .await
            .unwrap();
    }
    // The writer thread lets go of the file once its queue is closed.
    let mut reopened = None;
    for _ in 0..100 {
        match EmbeddedLedger::open(&path) {
            Ok(l) => {
                reopened = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let ledger = reopened.expect("the ledger file reopens");
    assert_eq!(
        balance(&ledger, "a").await,
        Account {
            available: 5,
            held: 4
        }
    );
    assert_eq!(
        ledger
            .settle(
                0,
                "a",
                "open",
                Settle::Void { reason: "x".into() },
                now_ms()
            )
            .await
            .unwrap(),
        Settled::Done {
            charged: 0,
            balance: 9
        }
    );
    assert!(ledger.verify(0).await.unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_an_error_never_a_grant() {
    let server = RedisServer::start();
    let ledger = shared(&server);
    ledger
        .adjust(0, adjust("a", Change::Credit(5)))
        .await
        .unwrap();
    server.freeze();
    assert!(ledger
        .reserve(0, reservation("a", "r", 1, now_ms() + 60_000), now_ms())
        .await
        .is_err());
    server.thaw();
    // Recovers by itself once Redis answers (after the breaker's cooldown).
    let mut held = false;
    for _ in 0..50 {
        if let Ok(Reserved::Held { .. }) = ledger
            .reserve(0, reservation("a", "r2", 1, now_ms() + 60_000), now_ms())
            .await
        {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held);
}

/// No checkpoint while a test runs: everything after opening is in the log alone.
fn long_checkpoints() -> Options {
    Options {
        checkpoint_every: Duration::from_secs(3600),
        ..Options::default()
    }
}

/// Copies the ledger's files as a `kill -9` would leave them on disk.
fn copy_ledger(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The log's segments (`ledger.redb.wal-N`), without the spare a checkpoint keeps for
/// the next one (`ledger.redb.wal-spare`).
fn log_segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.to_string_lossy();
            name.contains(".wal-") && !name.ends_with(".wal-spare")
        })
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_keeps_every_movement_the_log_made_durable() {
    let live = TempDir::new();
    let path = live.path().join("ledger.redb");
    // No checkpoint while it runs: everything after opening is in the log alone.
    let ledger = EmbeddedLedger::open_with(&path, long_checkpoints()).unwrap();
    ledger
        .adjust(0, adjust("a", Change::Credit(100)))
        .await
        .unwrap();
    let later = now_ms() + 60_000;
    for (id, amount) in [("r1", 10), ("r2", 5), ("r3", 1)] {
        ledger
            .reserve(0, reservation("a", id, amount, later), now_ms())
            .await
            .unwrap();
    }
    ledger
        .settle(0, "a", "r1", Settle::Post { amount: 7 }, now_ms())
        .await
        .unwrap();
    ledger
        .settle(
            0,
            "a",
            "r3",
            Settle::Void {
                reason: "upstream_error".into(),
            },
            now_ms(),
        )
        .await
        .unwrap();
    // Settlements are not waited for; they are on disk once the writer wrote them.
    for _ in 0..200 {
        if ledger
            .stats()
            .changes
            .load(std::sync::atomic::Ordering::Relaxed)
            == 6
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        ledger
            .stats()
            .changes
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
    let crashed = TempDir::new();
    copy_ledger(live.path(), crashed.path());
    // A record torn by the crash after the last durable one changes nothing.
    let segments = log_segments(crashed.path());
    assert_eq!(segments.len(), 1, "{segments:?}");
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(&segments[0])
        .unwrap();
    std::io::Write::write_all(&mut torn, &[90, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    drop(torn);

    let recovered = EmbeddedLedger::open(&crashed.path().join("ledger.redb")).unwrap();
    // Recovery checkpointed the log into the file and started the next segment (in
    // the replayed one's file, recycled).
    let fresh = log_segments(crashed.path());
    assert_eq!(fresh.len(), 1);
    assert_ne!(fresh, segments);
    assert_eq!(
        balance(&recovered, "a").await,
        Account {
            available: 88,
            held: 5
        }
    );
    let page = recovered.journal(0, "a", None, 10).await.unwrap();
    let kinds: Vec<Kind> = page.movements.iter().map(|m| m.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Void,
            Kind::Post,
            Kind::Reserve,
            Kind::Reserve,
            Kind::Reserve,
            Kind::Credit
        ]
    );
    // The open reservation survived with its deadline: it settles once, and expires
    // only after its deadline.
    assert_eq!(recovered.expire(0, now_ms(), 10).await.unwrap(), 0);
    assert_eq!(recovered.expire(0, later + 1, 10).await.unwrap(), 1);
    assert_eq!(
        recovered
            .settle(0, "a", "r2", Settle::Post { amount: 5 }, now_ms())
            .await
            .unwrap(),
        Settled::Gone
    );
    let report = recovered.verify(0).await.unwrap();
    assert!(report.problems.is_empty(), "{report:#?}");
    assert_eq!(report.movements, 7);
    drop(ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_move_the_log_into_the_file_and_retire_its_segments() {
    checkpoints_retire_segments(None).await;
}

/// The same with `sync = "interval"`, where each change writes its own records and
/// so also starts the next segment when a checkpoint asks for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_retire_segments_with_interval_syncs() {
    checkpoints_retire_segments(Some(Duration::from_millis(10))).await;
}

async fn checkpoints_retire_segments(sync_every: Option<Duration>) {
    let dir = TempDir::new();
    let path = dir.path().join("ledger.redb");
    let ledger = EmbeddedLedger::open_with(
        &path,
        Options {
            sync_every,
            checkpoint_every: Duration::from_millis(20),
            ..Options::default()
        },
    )
    .unwrap();
    ledger
        .adjust(0, adjust("a", Change::Credit(1_000)))
        .await
        .unwrap();
    let later = now_ms() + 60_000;
    for round in 0..5 {
        for i in 0..20 {
            let id = format!("r{round}-{i}");
            ledger
                .reserve(0, reservation("a", &id, 1, later), now_ms())
                .await
                .unwrap();
            ledger
                .settle(0, "a", &id, Settle::Post { amount: 1 }, now_ms())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    // Five rounds of writes and checkpoints leave the current segment and at most one
    // the next checkpoint retires, besides at most one spare.
    let segments = log_segments(dir.path());
    assert!(
        (1..=2).contains(&segments.len()),
        "{} segments: {segments:?}",
        segments.len()
    );
    let files = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".wal-")
        })
        .count();
    assert!(files <= segments.len() + 1, "{files} log files");
    // History pages run across checkpointed chunks and the log alike.
    let mut seen = 0;
    let mut before = None;
    loop {
        let page = ledger.journal(0, "a", before, 7).await.unwrap();
        seen += page.movements.len();
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, 1 + 5 * 20 * 2);
    let report = ledger.verify(0).await.unwrap();
    assert!(report.problems.is_empty(), "{report:#?}");
    assert_eq!(report.movements, 201);
    if sync_every.is_some() {
        // `kill -9` now loses nothing: every record was written before its answer.
        let crashed = TempDir::new();
        copy_ledger(dir.path(), crashed.path());
        let recovered = EmbeddedLedger::open(&crashed.path().join("ledger.redb")).unwrap();
        assert_eq!(
            balance(&recovered, "a").await,
            Account {
                available: 900,
                held: 0
            }
        );
        assert_eq!(recovered.verify(0).await.unwrap().movements, 201);
    }
    drop(ledger);
    let reopened = EmbeddedLedger::open(&path).unwrap();
    assert_eq!(
        balance(&reopened, "a").await,
        Account {
            available: 900,
            held: 0
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_interval_requests_do_not_wait_for_the_disk_but_operators_do() {
    let commits = |l: &EmbeddedLedger| l.stats().commits.load(std::sync::atomic::Ordering::Relaxed);
    let later = now_ms() + 60_000;

    // The default: each reservation waits for a sync of its own when none is shared.
    let strict_dir = TempDir::new();
    let strict = EmbeddedLedger::open(&strict_dir.path().join("ledger.redb")).unwrap();
    strict
        .adjust(0, adjust("a", Change::Credit(100)))
        .await
        .unwrap();
    for i in 0..10 {
        strict
            .reserve(0, reservation("a", &format!("s{i}"), 1, later), now_ms())
            .await
            .unwrap();
    }
    assert!(commits(&strict) >= 11, "{} syncs", commits(&strict));

    // An hour between syncs: nothing reaches the disk on the timer during the test.
    let live = TempDir::new();
    let path = live.path().join("ledger.redb");
    let options = Options {
        sync_every: Some(Duration::from_secs(3600)),
        checkpoint_every: Duration::from_secs(3600),
        ..Options::default()
    };
    let ledger = EmbeddedLedger::open_with(&path, options).unwrap();
    // An operator's credit still waits for its sync.
    ledger
        .adjust(0, adjust("a", Change::Credit(100)))
        .await
        .unwrap();
    assert_eq!(commits(&ledger), 1);
    for i in 0..50 {
        assert_eq!(
            ledger
                .reserve(0, reservation("a", &format!("r{i}"), 1, later), now_ms())
                .await
                .unwrap(),
            Reserved::Held { balance: 99 - i }
        );
    }
    assert_eq!(commits(&ledger), 1, "a reservation waited for the disk");

    // `kill -9` now: the files as the kernel holds them (what a copy reads) have every
    // reservation, though none was synced: each was written before it was answered.
    // Only a crash of the machine could forgive them.
    let crashed = TempDir::new();
    copy_ledger(live.path(), crashed.path());
    let recovered = EmbeddedLedger::open(&crashed.path().join("ledger.redb")).unwrap();
    assert_eq!(
        balance(&recovered, "a").await,
        Account {
            available: 50,
            held: 50
        }
    );
    assert!(recovered.verify(0).await.unwrap().problems.is_empty());

    // A graceful stop syncs everything first.
    drop(ledger);
    let reopened = EmbeddedLedger::open(&path).unwrap();
    assert_eq!(
        balance(&reopened, "a").await,
        Account {
            available: 50,
            held: 50
        }
    );
    assert!(reopened.verify(0).await.unwrap().problems.is_empty());
}

/// Under load the writer holds a small group open for more records (PostgreSQL's
/// `commit_delay`); a lightly loaded ledger syncs at once, however many reservations are
/// held, a group that fills up is synced without waiting out the delay, and one that
/// does not is synced when the delay ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_ledger_gathers_its_groups_and_an_idle_one_does_not_wait() {
    let commits = |l: &EmbeddedLedger| l.stats().commits.load(std::sync::atomic::Ordering::Relaxed);
    let later = now_ms() + 60_000;
    // No checkpoint during the test: its segment rotation is a write of its own.
    let quiet = Options {
        checkpoint_every: Duration::from_secs(3600),
        ..Options::default()
    };
    // A delay long enough that waiting it out shows in the elapsed time.
    let long = Duration::from_secs(20);

    // Reservations one at a time, each held (requests at a slow backend): every group
    // has one record, so none waits, though more and more reservations are open.
    let idle_dir = TempDir::new();
    let idle = EmbeddedLedger::open_with(
        &idle_dir.path().join("ledger.redb"),
        Options {
            gather_for: long,
            ..quiet
        },
    )
    .unwrap();
    idle.adjust(0, adjust("a", Change::Credit(1_000)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let before = commits(&idle);
    for i in 0..20 {
        idle.reserve(0, reservation("a", &format!("idle{i}"), 1, later), now_ms())
            .await
            .unwrap();
    }
    assert!(started.elapsed() < long / 4, "{:?}", started.elapsed());
    assert_eq!(commits(&idle) - before, 20);

    // Gathering from the first group on: a group that never fills is synced when the
    // delay ends, not before.
    let dir = TempDir::new();
    let path = dir.path().join("ledger.redb");
    let short = Duration::from_millis(300);
    let ledger = EmbeddedLedger::open_with(
        &path,
        Options {
            gather_for: short,
            gather_from: 0,
            ..quiet
        },
    )
    .unwrap();
    let started = std::time::Instant::now();
    ledger
        .adjust(0, adjust("a", Change::Credit(1_000)))
        .await
        .unwrap();
    assert!(started.elapsed() >= short, "{:?}", started.elapsed());
    assert_eq!(commits(&ledger), 1);
    drop(ledger);

    // 32 arriving together share one sync, made as soon as the last is in.
    let mut reopened = None;
    for _ in 0..100 {
        let options = Options {
            gather_for: long,
            gather_from: 0,
            ..quiet
        };
        match EmbeddedLedger::open_with(&path, options) {
            Ok(l) => {
                reopened = Some(Arc::new(l));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let busy = reopened.expect("the ledger file reopens");
    let started = std::time::Instant::now();
    let arriving: Vec<_> = (0..32)
        .map(|i| {
            let busy = Arc::clone(&busy);
            tokio::spawn(async move {
                busy.reserve(0, reservation("a", &format!("busy{i}"), 1, later), now_ms())
                    .await
            })
        })
        .collect();
    for each in arriving {
        assert!(matches!(
            each.await.unwrap().unwrap(),
            Reserved::Held { .. }
        ));
    }
    assert!(started.elapsed() < long / 4, "{:?}", started.elapsed());
    assert_eq!(commits(&busy), 1, "32 reservations, one sync");
    assert_eq!(
        balance(&*busy, "a").await,
        Account {
            available: 1_000 - 32,
            held: 32
        }
    );
}

/// The deadline index holds an open reservation's entry until it is settled; an id
/// already open is refused, affordable or not, without touching the balance; the
/// journal stays numbered without gaps; and a Redis that lost its scripts (a restart, a
/// flush) is taught them again on the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_ledger_indexes_open_reservations_and_refuses_a_reused_id() {
    let server = RedisServer::start();
    let ledger = shared(&server);
    let later = now_ms() + 60_000;
    let redis = redis::Client::open(server.url()).unwrap();
    let direct = redis.get_multiplexed_async_connection().await.unwrap();
    let indexed = |id: &'static str| {
        let mut direct = direct.clone();
        async move {
            redis::cmd("ZSCORE")
                .arg("test:ledger:deadlines")
                .arg(format!("a\n{id}"))
                .query_async::<Option<u64>>(&mut direct)
                .await
                .unwrap()
        }
    };
    ledger
        .adjust(0, adjust("a", Change::Credit(5)))
        .await
        .unwrap();

    assert_eq!(
        ledger
            .reserve(0, reservation("a", "r1", 3, later), now_ms())
            .await
            .unwrap(),
        Reserved::Held { balance: 2 }
    );
    assert_eq!(indexed("r1").await, Some(later));
    assert_eq!(
        ledger
            .reserve(0, reservation("a", "r2", 9, later), now_ms())
            .await
            .unwrap(),
        Reserved::Short { balance: 2 }
    );
    // The same id again, affordable or not: refused, nothing moves.
    for amount in [1, 9] {
        let reused = ledger
            .reserve(0, reservation("a", "r1", amount, later), now_ms())
            .await;
        assert!(
            matches!(reused, Err(LedgerError::Corrupt(ref why)) if why.contains("r1")),
            "{reused:?}"
        );
    }
    assert_eq!(
        balance(&ledger, "a").await,
        Account {
            available: 2,
            held: 3
        }
    );

    // Redis forgets its scripts: the settlement teaches it again and goes through.
    let mut flush = direct.clone();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut flush)
        .await
        .unwrap();
    assert_eq!(
        ledger
            .settle(0, "a", "r1", Settle::Post { amount: 3 }, now_ms())
            .await
            .unwrap(),
        Settled::Done {
            charged: 3,
            balance: 2
        }
    );
    assert_eq!(indexed("r1").await, None);
    let page = ledger.journal(0, "a", None, 10).await.unwrap();
    let seqs: Vec<u64> = page.movements.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![3, 2, 1]);
    assert!(ledger.verify(0).await.unwrap().problems.is_empty());
}
