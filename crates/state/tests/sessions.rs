//! One test suite for both session stores: the embedded `redb` file and Redis (a real
//! `redis-server` of our own on a free port). Both must rotate, answer a lost response
//! within the grace period, revoke on reuse, let exactly one of many concurrent
//! refreshes win, and publish revocations on their feed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tollgate_state::redis::{Redis, RedisSettings};
use tollgate_state::sessions::embedded::EmbeddedSessions;
use tollgate_state::sessions::shared::SharedSessions;
use tollgate_state::sessions::{
    Family, Next, Revocation, Revoke, Revoked, Rotation, SessionError, SessionStore, When,
};
use tollgate_testkit::{RedisServer, TempDir};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn family(id: &str, now: u64) -> Family {
    let mut user = Map::new();
    user.insert("name".into(), Value::String("Acme".into()));
    Family {
        id: id.into(),
        client_id: Value::from(1001),
        subject: "demo@acme.test".into(),
        user,
        claims: Map::new(),
        created: now,
        ends: now + 3_600,
        idle: 600,
        last_used: now,
        revoked: None,
        current: format!("{id}-h0"),
        previous: None,
        spent: Vec::new(),
        csrf: None,
        tokens_until: 0,
    }
}

fn next(id: &str, n: u32) -> Next {
    Next {
        hash: format!("{id}-h{n}"),
        sealed: format!("{id}-sealed{n}"),
    }
}

fn when(now: u64) -> When {
    When {
        now,
        grace: 5,
        tokens_until: now + 900,
    }
}

fn redis_settings(server: &RedisServer) -> RedisSettings {
    RedisSettings {
        url: server.url(),
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

fn shared(server: &RedisServer) -> SharedSessions {
    SharedSessions::new(
        Arc::new(Redis::new(redis_settings(server), 2).unwrap()),
        Duration::from_secs(3_600),
    )
}

/// Everything both stores must do alike.
async fn suite(store: &dyn SessionStore) {
    let t = now();
    let f = family("fam1", t);
    store.create(0, &f).await.unwrap();
    assert!(matches!(
        store.create(0, &f).await,
        Err(SessionError::Exists)
    ));

    // Rotation: the presented token is spent, the successor is current.
    match store
        .rotate(0, "fam1", "fam1-h0", &next("fam1", 1), when(t + 1))
        .await
        .unwrap()
    {
        Rotation::Rotated(after) => {
            assert_eq!(after.current, "fam1-h1");
            assert_eq!(after.user["name"], "Acme");
        }
        other => panic!("{other:?}"),
    }
    // The lost answer: the spent token within the grace period gets the same successor.
    match store
        .rotate(0, "fam1", "fam1-h0", &next("fam1", 9), when(t + 3))
        .await
        .unwrap()
    {
        Rotation::Grace {
            sealed_next,
            family,
        } => {
            assert_eq!(sealed_next, "fam1-sealed1");
            assert_eq!(family.current, "fam1-h1");
        }
        other => panic!("{other:?}"),
    }
    // A guess at the session changes nothing.
    assert_eq!(
        store
            .rotate(0, "fam1", "guess", &next("fam1", 9), when(t + 3))
            .await
            .unwrap(),
        Rotation::Unknown
    );
    assert_eq!(
        store
            .rotate(0, "nope", "fam1-h1", &next("fam1", 9), when(t + 3))
            .await
            .unwrap(),
        Rotation::Unknown
    );
    // The successor keeps working.
    assert!(matches!(
        store
            .rotate(0, "fam1", "fam1-h1", &next("fam1", 2), when(t + 4))
            .await
            .unwrap(),
        Rotation::Rotated(_)
    ));
    // The first token again, long after: reuse, and the family is gone for everyone.
    assert_eq!(
        store
            .rotate(0, "fam1", "fam1-h0", &next("fam1", 3), when(t + 20))
            .await
            .unwrap(),
        Rotation::Reused {
            family: "fam1".into()
        }
    );
    assert_eq!(
        store
            .rotate(0, "fam1", "fam1-h2", &next("fam1", 3), when(t + 21))
            .await
            .unwrap(),
        Rotation::Revoked
    );

    // Logout, with a token of the family as proof; once.
    let g = family("fam2", t);
    store.create(0, &g).await.unwrap();
    assert_eq!(
        store
            .revoke(0, "fam2", Some("guess"), when(t + 1))
            .await
            .unwrap(),
        Revoke::Unknown
    );
    assert_eq!(
        store
            .revoke(0, "fam2", Some("fam2-h0"), when(t + 1))
            .await
            .unwrap(),
        Revoke::Revoked
    );
    assert_eq!(
        store.revoke(0, "fam2", None, when(t + 2)).await.unwrap(),
        Revoke::AlreadyRevoked
    );
    assert_eq!(
        store.revoke(0, "nope", None, when(t + 2)).await.unwrap(),
        Revoke::Unknown
    );
    store.deny_token(0, "jti-1", t + 900).await.unwrap();

    // The feed holds both revoked sessions and the denied token, in order.
    let feed = store.revocations(0, 0).await.unwrap();
    let ids: Vec<(Revoked, &str)> = feed
        .entries
        .iter()
        .map(|r| (r.kind, r.id.as_str()))
        .collect();
    assert!(ids.contains(&(Revoked::Session, "fam1")), "{ids:?}");
    assert!(ids.contains(&(Revoked::Session, "fam2")), "{ids:?}");
    assert!(ids.contains(&(Revoked::Token, "jti-1")), "{ids:?}");
    assert!(feed.cursor > 0);

    // Tokens signed under a longer lifetime than today's (a reload shortened
    // access_ttl): the revocation lasts until they expire, in the feed every instance
    // reads, whether by logout or by a reused token.
    for (id, reuse) in [("fam4", false), ("fam5", true)] {
        let mut long = family(id, t);
        long.tokens_until = t + 86_400;
        store.create(0, &long).await.unwrap();
        if reuse {
            store
                .rotate(0, id, &format!("{id}-h0"), &next(id, 1), when(t + 1))
                .await
                .unwrap();
            assert!(matches!(
                store
                    .rotate(0, id, &format!("{id}-h0"), &next(id, 2), when(t + 20))
                    .await
                    .unwrap(),
                Rotation::Reused { .. }
            ));
        } else {
            assert_eq!(
                store.revoke(0, id, None, when(t + 2)).await.unwrap(),
                Revoke::Revoked
            );
        }
        let feed = store.revocations(0, 0).await.unwrap();
        let until = feed
            .entries
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.until)
            .unwrap();
        assert!(
            until >= t + 86_400,
            "{id}: until {until}, tokens until {}",
            t + 86_400
        );
    }

    // Idle and absolute expiry.
    let mut h = family("fam3", t);
    h.idle = 10;
    store.create(0, &h).await.unwrap();
    assert_eq!(
        store
            .rotate(0, "fam3", "fam3-h0", &next("fam3", 1), when(t + 11))
            .await
            .unwrap(),
        Rotation::Expired
    );

    // Pruning keeps what still matters.
    store.prune(0, t + 1).await.unwrap();
    assert_eq!(
        store
            .rotate(0, "fam1", "fam1-h2", &next("fam1", 3), when(t + 21))
            .await
            .unwrap(),
        Rotation::Revoked
    );
}

/// Many refreshes of one token at once, through `stores` (one per instance): exactly
/// one rotates, every other gets the grace answer with the same successor.
async fn concurrent_refreshes(stores: Vec<Arc<dyn SessionStore>>) {
    let t = now();
    stores[0].create(0, &family("race", t)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let store = Arc::clone(&stores[i as usize % stores.len()]);
        tasks.push(tokio::spawn(async move {
            store
                .rotate(
                    (i % 2) as usize,
                    "race",
                    "race-h0",
                    &next("race", 100 + i),
                    when(t + 1),
                )
                .await
                .unwrap()
        }));
    }
    let mut rotated = Vec::new();
    let mut graced = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Rotation::Rotated(f) => rotated.push(f.current.clone()),
            Rotation::Grace {
                family,
                sealed_next,
            } => graced.push((family.current, sealed_next)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rotated.len(), 1, "exactly one refresh wins");
    let winner = &rotated[0];
    let sealed = winner.replace("-h", "-sealed");
    for (current, sealed_next) in &graced {
        assert_eq!(current, winner, "never two live successors");
        assert_eq!(sealed_next, &sealed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_passes_the_suite() {
    let dir = TempDir::new();
    let store = EmbeddedSessions::open(&dir.path().join("state/sessions.redb")).unwrap();
    suite(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_passes_the_suite() {
    let server = RedisServer::start();
    let store = shared(&server);
    suite(&store).await;
    // One value per family, hash-tagged, expiring when the session ends.
    assert_eq!(server.cli(&["EXISTS", "test:session:{fam2}"]), "1");
    let ttl: i64 = server.cli(&["TTL", "test:session:{fam2}"]).parse().unwrap();
    assert!((3_500..=3_600).contains(&ttl), "{ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_many_concurrent_refreshes_wins_in_the_embedded_store() {
    let dir = TempDir::new();
    let store: Arc<dyn SessionStore> =
        Arc::new(EmbeddedSessions::open(&dir.path().join("s.redb")).unwrap());
    concurrent_refreshes(vec![store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_many_concurrent_refreshes_wins_across_two_redis_instances() {
    let server = RedisServer::start();
    let a: Arc<dyn SessionStore> = Arc::new(shared(&server));
    let b: Arc<dyn SessionStore> = Arc::new(shared(&server));
    concurrent_refreshes(vec![a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_everything_across_a_restart() {
    let dir = TempDir::new();
    let path = dir.path().join("s.redb");
    let t = now();
    {
        let store = EmbeddedSessions::open(&path).unwrap();
        store.create(0, &family("keep", t)).await.unwrap();
        store
            .rotate(0, "keep", "keep-h0", &next("keep", 1), when(t + 1))
            .await
            .unwrap();
        store.deny_token(0, "jti-9", t + 900).await.unwrap();
    }
    let store = EmbeddedSessions::open(&path).unwrap();
    assert!(matches!(
        store
            .rotate(0, "keep", "keep-h1", &next("keep", 2), when(t + 2))
            .await
            .unwrap(),
        Rotation::Rotated(_)
    ));
    let feed = store.revocations(0, 0).await.unwrap();
    assert_eq!(
        feed.entries,
        vec![Revocation {
            kind: Revoked::Token,
            id: "jti-9".into(),
            until: t + 900
        }]
    );
    // Nothing new after the cursor.
    assert!(store
        .revocations(0, feed.cursor)
        .await
        .unwrap()
        .entries
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_an_error_not_a_decision() {
    let server = RedisServer::start();
    let store = shared(&server);
    let t = now();
    store.create(0, &family("out", t)).await.unwrap();
    server.kill();
    assert!(matches!(
        store
            .rotate(0, "out", "out-h0", &next("out", 1), when(t + 1))
            .await,
        Err(SessionError::Redis(_))
    ));
    assert!(store.revocations(0, 0).await.is_err());
}

/// A reuse whose announcement was lost (the family's compare-and-set landed, the feed
/// write did not: Redis went away between the two) is announced by the next
/// presentation of any of the family's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reuse_announcement_is_made_again() {
    let server = RedisServer::start();
    let store = shared(&server);
    let t = now();
    store.create(0, &family("lost", t)).await.unwrap();
    assert!(matches!(
        store
            .rotate(0, "lost", "lost-h0", &next("lost", 1), when(t + 1))
            .await
            .unwrap(),
        Rotation::Rotated(_)
    ));
    assert!(matches!(
        store
            .rotate(0, "lost", "lost-h0", &next("lost", 2), when(t + 20))
            .await
            .unwrap(),
        Rotation::Reused { .. }
    ));
    // The announcement never reached the feed.
    server.cli(&["DEL", "test:revocations"]);
    assert!(store.revocations(0, 0).await.unwrap().entries.is_empty());
    assert_eq!(
        store
            .rotate(0, "lost", "lost-h1", &next("lost", 3), when(t + 21))
            .await
            .unwrap(),
        Rotation::Revoked
    );
    let feed = store.revocations(0, 0).await.unwrap();
    assert!(
        feed.entries
            .iter()
            .any(|r| r.kind == Revoked::Session && r.id == "lost"),
        "{:?}",
        feed.entries
    );
}
