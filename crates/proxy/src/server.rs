//! The listener: binds, accepts, serves HTTP/1.1 connections through the pipeline, and
//! drains gracefully. Also owns the live snapshot and its swap.
//!
//! The data plane runs one worker per core, nginx-style: each worker is a thread with a
//! single-threaded runtime, its own listening socket on the shared address
//! (`SO_REUSEPORT`, so the kernel spreads connections) and its own upstream connection
//! pool. A request then never changes thread: no cross-thread wake-ups between the
//! client connection, the pool and the upstream connection. Measured on 2 cores, this
//! serves about 1.2x the requests of one work-stealing runtime (`tests/bench/load.sh`).
//! The admin listener, signals and reload run on the main runtime.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tollgate_auth::cache::TokenCache;
use tollgate_policy::Snapshot;

use crate::access_log::AccessSink;
use crate::body::BodyBudget;
use crate::forward::UpstreamClient;
use crate::jwks::{JwksRegistry, JwksSet};
use crate::limit::Limiters;
use crate::metrics::Metrics;
use crate::replay::{Replay, ReplayCounts};
use crate::{admin, pipeline};
use tollgate_state::replay::LocalNonces;

/// One published configuration: the snapshot and, per worker, the upstream client
/// built for it.
pub struct Active {
    pub snapshot: Arc<Snapshot>,
    pub upstreams: Vec<UpstreamClient>,
    /// Tokens verified under this snapshot's keys; a reload starts a fresh cache, and so
    /// does a change in a remote key set.
    pub tokens: TokenCache,
    /// The remote key sets this snapshot names.
    pub jwks: Vec<Arc<JwksSet>>,
    /// Rate limiters; counts carry over from the previous snapshot where unchanged.
    pub limiters: Limiters,
    /// Callback nonces: the memory is shared by every snapshot; Redis per `[store]`.
    pub replay: Replay,
}

impl Active {
    fn new(
        snapshot: Snapshot,
        previous: Option<&Active>,
        workers: usize,
        jwks: Vec<Arc<JwksSet>>,
        nonces: &Nonces,
    ) -> Self {
        let upstreams = (0..workers)
            .map(|i| match previous.and_then(|p| p.upstreams.get(i)) {
                Some(client) => client.reuse_or_new(&snapshot.upstream),
                None => UpstreamClient::new(&snapshot.upstream),
            })
            .collect();
        let tokens = TokenCache::new(snapshot.auth.jwt.as_ref().map_or(0, |j| j.cache_entries));
        let limiters = Limiters::new(&snapshot, previous.map(|p| &p.limiters), workers);
        let replay = Replay::new(
            Arc::clone(&nonces.memory),
            limiters.redis(),
            Arc::clone(&nonces.counts),
        );
        Active {
            snapshot: Arc::new(snapshot),
            upstreams,
            tokens,
            jwks,
            limiters,
            replay,
        }
    }
}

/// Callback nonces remembered in process, and the replay counts: kept across reloads.
struct Nonces {
    memory: Arc<LocalNonces>,
    counts: Arc<ReplayCounts>,
}

/// State every connection shares.
pub struct Shared {
    pub active: ArcSwap<Active>,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
    pub access_sink: AccessSink,
    /// Memory held by request bodies, across all requests.
    pub budget: Arc<BodyBudget>,
    nonces: Nonces,
    jwks: JwksRegistry,
    /// Clears the token cache when a remote key set changes.
    on_jwks_change: Arc<dyn Fn() + Send + Sync>,
    workers: usize,
}

impl Shared {
    fn jwks_sets(&self, snapshot: &Snapshot) -> Vec<Arc<JwksSet>> {
        let sources = snapshot.auth.jwt.as_ref().map_or(&[][..], |j| &j.jwks[..]);
        self.jwks.sync(sources, Arc::clone(&self.on_jwks_change))
    }
}

/// Publishes new snapshots to a running gateway (hot reload).
#[derive(Clone)]
pub struct SnapshotHandle {
    shared: Arc<Shared>,
}

impl SnapshotHandle {
    pub fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.shared.active.load().snapshot)
    }

    /// Swaps in a validated snapshot; requests already running finish on the old one.
    pub fn publish(&self, snapshot: Snapshot) {
        let jwks = self.shared.jwks_sets(&snapshot);
        self.shared
            .budget
            .set_max(snapshot.server.bodies.max_buffered);
        let active = Active::new(
            snapshot,
            Some(&self.shared.active.load()),
            self.shared.workers,
            jwks,
            &self.shared.nonces,
        );
        self.shared.active.store(Arc::new(active));
        self.shared.metrics.count_reload(true);
    }

    /// Records a reload that was refused; the current snapshot keeps serving.
    pub fn reload_failed(&self) {
        self.shared.metrics.count_reload(false);
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }
}

/// A bound, not yet serving gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    /// For each worker, one socket per configured address.
    worker_listeners: Vec<Vec<std::net::TcpListener>>,
    admin: Option<std::net::TcpListener>,
}

impl Gateway {
    /// Binds the snapshot's listeners, `server.workers` sockets per address (and the
    /// admin listener, if configured). Access-log lines go to `access_sink`.
    pub async fn bind(snapshot: Snapshot, access_sink: AccessSink) -> io::Result<Self> {
        let workers = snapshot.server.workers.max(1);
        let mut worker_listeners: Vec<Vec<std::net::TcpListener>> =
            (0..workers).map(|_| Vec::new()).collect();
        for addr in &snapshot.server.listen {
            // The first bind resolves port 0; the others share the port it got.
            let first = reuse_port_listener(*addr)?;
            let bound = first.local_addr()?;
            worker_listeners[0].push(first);
            for listeners in worker_listeners.iter_mut().skip(1) {
                listeners.push(reuse_port_listener(bound)?);
            }
        }
        let admin = match &snapshot.admin {
            Some(a) => {
                let listener = std::net::TcpListener::bind(a.listen)?;
                listener.set_nonblocking(true)?;
                Some(listener)
            }
            None => None,
        };
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
            let weak = weak.clone();
            let on_jwks_change: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                if let Some(shared) = weak.upgrade() {
                    shared.active.load().tokens.clear();
                }
            });
            let jwks = JwksRegistry::default();
            let sources = snapshot.auth.jwt.as_ref().map_or(&[][..], |j| &j.jwks[..]);
            let sets = jwks.sync(sources, Arc::clone(&on_jwks_change));
            let nonces = Nonces {
                memory: Replay::local_memory(),
                counts: Arc::new(ReplayCounts::default()),
            };
            let budget = BodyBudget::new(snapshot.server.bodies.max_buffered);
            Shared {
                active: ArcSwap::from_pointee(Active::new(snapshot, None, workers, sets, &nonces)),
                metrics: Arc::new(Metrics::default()),
                draining: AtomicBool::new(false),
                access_sink,
                budget,
                nonces,
                jwks,
                on_jwks_change,
                workers,
            }
        });
        Ok(Gateway {
            shared,
            worker_listeners,
            admin,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.worker_listeners
            .first()
            .into_iter()
            .flatten()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn handle(&self) -> SnapshotHandle {
        SnapshotHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight
    /// requests finish for up to `server.shutdown_grace` (read from the snapshot live
    /// at that moment). Returns whether every connection finished in time.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> bool {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut workers = Vec::new();
        for (index, listeners) in self.worker_listeners.into_iter().enumerate() {
            let (done_tx, done_rx) = oneshot::channel();
            let shared = Arc::clone(&self.shared);
            let stop = stop_rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tollgate-worker-{index}"))
                .spawn(move || {
                    let drained = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime.block_on(worker(index, listeners, shared, stop)),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start a worker runtime");
                            false
                        }
                    };
                    let _ = done_tx.send(drained);
                });
            match spawned {
                Ok(_) => workers.push(done_rx),
                Err(e) => tracing::error!(error = %e, "cannot start a worker thread"),
            }
        }
        let admin = self
            .admin
            .and_then(|l| TcpListener::from_std(l).ok())
            .map(|listener| {
                let graceful = Arc::new(GracefulShutdown::new());
                tokio::spawn(accept_loop(
                    listener,
                    Arc::clone(&self.shared),
                    graceful,
                    stop_rx.clone(),
                    Service::Admin,
                ))
            });

        // In-process limiters forget keys whose allowance is full again, so memory
        // follows the callers active within one period.
        let sweeper = {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
                loop {
                    every.tick().await;
                    shared.active.load().limiters.forget_idle();
                }
            })
        };

        shutdown.await;
        sweeper.abort();
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        tracing::info!(
            grace_ms = self
                .shared
                .active
                .load()
                .snapshot
                .server
                .shutdown_grace
                .as_millis() as u64,
            "stopped accepting; draining in-flight requests"
        );
        let mut drained = true;
        for done in workers {
            drained &= done.await.unwrap_or(false);
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        if drained {
            tracing::info!("all connections closed");
        } else {
            tracing::warn!("shutdown grace period ended with requests still in flight");
        }
        drained
    }
}

/// A non-blocking listening socket that shares its address with the other workers'.
fn reuse_port_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One worker: accept on its sockets until told to stop, then drain its connections.
async fn worker(
    index: usize,
    listeners: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut accept_loops = JoinSet::new();
    for listener in listeners {
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                accept_loops.spawn(accept_loop(
                    listener,
                    Arc::clone(&shared),
                    Arc::clone(&graceful),
                    stop.clone(),
                    Service::Gateway { worker: index },
                ));
            }
            Err(e) => tracing::error!(error = %e, worker = index, "cannot register a listener"),
        }
    }
    let _ = stop.wait_for(|stopped| *stopped).await;
    while accept_loops.join_next().await.is_some() {}
    let grace = shared.active.load().snapshot.server.shutdown_grace;
    // The accept loops have ended and dropped their references.
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[derive(Clone, Copy)]
enum Service {
    Gateway { worker: usize },
    Admin,
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    service: Service,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let server = shared.active.load().snapshot.server.clone();
        if let Service::Gateway { .. } = service {
            // Past the cap a connection is closed at once: slow clients cannot take every
            // file descriptor (held bodies and idle connections also have deadlines).
            if shared.metrics.connections() >= server.max_connections {
                shared.metrics.connection_refused();
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout)
            // Our own limits answer with problem+json; hyper's hard limit sits above them.
            .max_buf_size((server.max_header_bytes + server.max_uri_bytes) * 2 + 16 * 1024);
        let io = TokioIo::new(stream);
        let conn_shared = Arc::clone(&shared);
        let metrics = Arc::clone(&shared.metrics);
        match service {
            Service::Gateway { worker } => {
                let svc = service_fn(move |request| {
                    let shared = Arc::clone(&conn_shared);
                    async move {
                        Ok::<_, Infallible>(pipeline::handle(request, peer, worker, &shared).await)
                    }
                });
                let conn = graceful.watch(builder.serve_connection(io, svc));
                metrics.connection_opened();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "client connection ended with an error");
                    }
                    metrics.connection_closed();
                });
            }
            Service::Admin => {
                let svc = service_fn(move |request| {
                    let response = admin::handle(&request, &conn_shared);
                    async move { Ok::<_, Infallible>(response) }
                });
                let conn = graceful.watch(builder.serve_connection(io, svc));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
}
