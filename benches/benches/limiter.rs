//! Rate-limit decisions per second: in process (governor) and in Redis (the GCRA script,
//! one EVALSHA per decision) against a redis-server this benchmark starts on a free port.
//!
//!   cargo bench --manifest-path benches/Cargo.toml --bench limiter
//!
//! Redis is measured two ways: one decision at a time (a round trip each: latency), and
//! 64 decisions asked for at once by one worker (how a gateway under load uses it: they
//! go out as pipelines). Criterion's "thrpt" line is decisions per second.

use std::hint::black_box;
use std::net::TcpListener;
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tollgate_state::rate::local::LocalLimiter;
use tollgate_state::rate::shared::{key, SharedLimiter};
use tollgate_state::rate::Quota;
use tollgate_state::redis::{Redis, RedisSettings};

fn quota() -> Quota {
    // Never trips: the decision's full cost, every time.
    Quota::new(
        NonZeroU32::new(1_000_000).unwrap(),
        Duration::from_secs(1),
        NonZeroU32::new(1_000_000).unwrap(),
    )
    .unwrap()
}

struct RedisServer(Child, u16);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> RedisServer {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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

fn local(c: &mut Criterion) {
    let limiter = LocalLimiter::new(quota());
    let keys: Vec<String> = (0..1024).map(|i| format!("client=c{i}")).collect();
    let mut group = c.benchmark_group("limiter");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("local decision (1024 keys)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check(&keys[i]))
        })
    });
    group.finish();
}

fn shared(c: &mut Criterion) {
    let server = redis_server();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = std::sync::Arc::new(
        Redis::new(
            RedisSettings {
                url: format!("redis://127.0.0.1:{}", server.1),
                instances: std::num::NonZeroU32::MIN,
                timeout: Duration::from_secs(1),
                breaker_failures: 5,
                breaker_cooldown: Duration::from_secs(1),
                key_prefix: "bench".into(),
                tls: None,
                cluster: false,
                cluster_seeds: Vec::new(),
            },
            1,
        )
        .unwrap(),
    );
    let limiter = SharedLimiter::new(redis, 1);
    let q = quota();
    let keys: Vec<String> = (0..1024)
        .map(|i| key("bench", "p", &format!("client=c{i}"), ""))
        .collect();
    let mut group = c.benchmark_group("limiter");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("redis decision, one at a time", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            runtime
                .block_on(limiter.check(0, keys[i].clone(), &q))
                .unwrap()
        })
    });
    const IN_FLIGHT: usize = 64;
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    group.bench_function("redis decisions, 64 in flight", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut calls = Vec::with_capacity(IN_FLIGHT);
                for n in 0..IN_FLIGHT {
                    let k = &keys[(i + n) % keys.len()];
                    calls.push(limiter.check(0, k.clone(), &q));
                }
                i = (i + IN_FLIGHT) % keys.len();
                for call in join_all(calls).await {
                    call.unwrap();
                }
            })
        })
    });
    group.finish();
}

/// Polls every future on this task until all are done (no extra dependency).
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, out) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

criterion_group!(benches, local, shared);
criterion_main!(benches);
