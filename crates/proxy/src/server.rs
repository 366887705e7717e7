//! The listeners: binds, accepts, serves HTTP/1.1 connections through the pipeline, and
//! drains gracefully. What lives across requests (the published snapshot and its state)
//! is [`crate::runtime`]'s; this module only moves connections.
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
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tollgate_policy::Snapshot;

use crate::access_log::AccessSink;
use crate::exchange::Scheme;
use crate::runtime::{Runtime, SnapshotHandle};
use crate::{admin, pipeline};

/// A bound, not yet serving gateway.
pub struct Gateway {
    runtime: Arc<Runtime>,
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
        let runtime = Runtime::new(snapshot, workers, access_sink);
        Ok(Gateway {
            runtime,
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
        SnapshotHandle::new(Arc::clone(&self.runtime))
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight
    /// requests finish for up to `server.shutdown_grace` (read from the snapshot live
    /// at that moment). Returns whether every connection finished in time.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> bool {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut workers = Vec::new();
        for (index, listeners) in self.worker_listeners.into_iter().enumerate() {
            let (done_tx, done_rx) = oneshot::channel();
            let runtime_state = Arc::clone(&self.runtime);
            let stop = stop_rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tollgate-worker-{index}"))
                .spawn(move || {
                    let drained = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => {
                            runtime.block_on(worker(index, listeners, runtime_state, stop))
                        }
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
                    Arc::clone(&self.runtime),
                    graceful,
                    stop_rx.clone(),
                    Service::Admin,
                ))
            });

        // In-process limiters forget keys whose allowance is full again, so memory
        // follows the callers active within one period.
        let sweeper = {
            let runtime = Arc::clone(&self.runtime);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
                loop {
                    every.tick().await;
                    runtime.active().limiters.forget_idle();
                }
            })
        };

        shutdown.await;
        sweeper.abort();
        self.runtime.start_draining();
        let _ = stop_tx.send(true);
        tracing::info!(
            grace_ms = self
                .runtime
                .active()
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
    runtime: Arc<Runtime>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut accept_loops = JoinSet::new();
    for listener in listeners {
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                accept_loops.spawn(accept_loop(
                    listener,
                    Arc::clone(&runtime),
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
    let grace = runtime.active().snapshot.server.shutdown_grace;
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
    runtime: Arc<Runtime>,
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
        let server = runtime.active().snapshot.server.clone();
        if let Service::Gateway { .. } = service {
            // Past the cap a connection is closed at once: slow clients cannot take every
            // file descriptor (held bodies and idle connections also have deadlines).
            if runtime.metrics.connections() >= server.max_connections {
                runtime.metrics.connection_refused();
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
        let conn_runtime = Arc::clone(&runtime);
        let metrics = Arc::clone(&runtime.metrics);
        match service {
            Service::Gateway { worker } => {
                let svc = service_fn(move |request| {
                    let runtime = Arc::clone(&conn_runtime);
                    async move {
                        Ok::<_, Infallible>(
                            pipeline::handle(request, peer, worker, Scheme::Http, &runtime).await,
                        )
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
                    let runtime = Arc::clone(&conn_runtime);
                    async move { Ok::<_, Infallible>(admin::handle(request, &runtime).await) }
                });
                let conn = graceful.watch(builder.serve_connection(io, svc));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
}
