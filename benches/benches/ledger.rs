//! Ledger operations per second, for each store: a metered request's two phases
//! (reserve, then post) against the embedded `redb` file (group commit, every batch
//! fsynced) and against Redis (one Lua script per phase, a redis-server this benchmark
//! starts on a free port, no persistence).
//!
//!   cargo bench --manifest-path benches/Cargo.toml --bench ledger
//!
//! Each store is measured one request at a time (latency: a commit, or two round trips,
//! per request) and 64 requests at once (how a gateway under load uses it: the embedded
//! writer commits them together; Redis pipelines them). Criterion's "thrpt" line is
//! metered requests (reserve + post) per second.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tollgate_state::ledger::embedded::EmbeddedLedger;
use tollgate_state::ledger::shared::SharedLedger;
use tollgate_state::ledger::{Adjust, Change, Ledger, Reservation, Settle};
use tollgate_state::redis::{Redis, RedisSettings};

struct RedisServer(Child, u16);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> RedisServer {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (Debian: redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    RedisServer(child, port)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// One metered request: reserve 1, post 1.
async fn metered(ledger: &dyn Ledger, worker: usize) {
    let id = format!("r{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let reservation = Reservation {
        id: id.clone(),
        client: "bench".into(),
        amount: 1,
        deadline: now_ms() + 60_000,
        route: Some("bench".into()),
        request_id: Some(id.clone()),
        idempotency_key: None,
    };
    ledger.reserve(worker, reservation, now_ms()).await.unwrap();
    ledger
        .settle(worker, "bench", &id, Settle::Post { amount: 1 }, now_ms())
        .await
        .unwrap();
}

fn measure(c: &mut Criterion, name: &str, ledger: Arc<dyn Ledger>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let credit = Adjust {
            client: "bench".into(),
            change: Change::Credit(1 << 50),
            reason: "bench".into(),
            now_ms: now_ms(),
            request_id: None,
        };
        ledger.adjust(0, credit).await.unwrap();
    });
    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function(format!("{name}: one metered request at a time"), |b| {
        b.to_async(&runtime).iter(|| metered(ledger.as_ref(), 0));
    });
    group.bench_function(format!("{name}: 64 metered requests at once"), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                let batches = iters.div_ceil(64);
                for _ in 0..batches {
                    let mut tasks = tokio::task::JoinSet::new();
                    for i in 0..64 {
                        let ledger = Arc::clone(&ledger);
                        tasks.spawn(async move { metered(ledger.as_ref(), i % 2).await });
                    }
                    while tasks.join_next().await.is_some() {}
                }
                started.elapsed().mul_f64(iters as f64 / (batches * 64) as f64)
            })
        })
    });
    group.finish();
}

fn embedded(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("tollgate-ledger-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ledger = EmbeddedLedger::open(&dir.join("ledger.redb")).unwrap();
    measure(c, "embedded (log + redb checkpoints, group commit)", Arc::new(ledger));
    let _ = std::fs::remove_dir_all(&dir);
}

fn shared(c: &mut Criterion) {
    let server = redis_server();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let settings = RedisSettings {
        url: format!("redis://127.0.0.1:{}", server.1),
        instances: std::num::NonZeroU32::MIN,
        timeout: Duration::from_secs(1),
        breaker_failures: 5,
        breaker_cooldown: Duration::from_secs(1),
        key_prefix: "bench".into(),
        tls: None,
        cluster: false,
        cluster_seeds: Vec::new(),
    };
    let ledger = runtime.block_on(async { SharedLedger::new(Arc::new(Redis::new(settings, 2).unwrap())) });
    measure(c, "redis (Lua scripts)", Arc::new(ledger));
    drop(server);
}

criterion_group!(benches, embedded, shared);
criterion_main!(benches);
