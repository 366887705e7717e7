//! The listener: binds, accepts, serves HTTP/1.1 connections through the pipeline, and
//! drains gracefully. Also owns the live snapshot and its swap.

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
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tollgate_policy::Snapshot;

use crate::forward::UpstreamClient;
use crate::metrics::Metrics;
use crate::{admin, pipeline};

/// One published configuration: the snapshot and the upstream client built for it.
pub struct Active {
    pub snapshot: Arc<Snapshot>,
    pub upstream: UpstreamClient,
}

/// State every connection shares.
pub struct Shared {
    pub active: ArcSwap<Active>,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
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
        let upstream = self
            .shared
            .active
            .load()
            .upstream
            .reuse_or_new(&snapshot.upstream);
        self.shared.active.store(Arc::new(Active {
            snapshot: Arc::new(snapshot),
            upstream,
        }));
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
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
}

impl Gateway {
    /// Binds the snapshot's listeners (and the admin listener, if configured).
    pub async fn bind(snapshot: Snapshot) -> io::Result<Self> {
        let mut listeners = Vec::new();
        for addr in &snapshot.server.listen {
            listeners.push(TcpListener::bind(addr).await?);
        }
        let admin = match &snapshot.admin {
            Some(a) => Some(TcpListener::bind(a.listen).await?),
            None => None,
        };
        let upstream = UpstreamClient::new(&snapshot.upstream);
        let shared = Arc::new(Shared {
            active: ArcSwap::from_pointee(Active {
                snapshot: Arc::new(snapshot),
                upstream,
            }),
            metrics: Arc::new(Metrics::default()),
            draining: AtomicBool::new(false),
        });
        Ok(Gateway {
            shared,
            listeners,
            admin,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
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
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut accept_loops = JoinSet::new();
        for listener in self.listeners {
            accept_loops.spawn(accept_loop(
                listener,
                Arc::clone(&self.shared),
                Arc::clone(&graceful),
                stop_rx.clone(),
                Service::Gateway,
            ));
        }
        if let Some(listener) = self.admin {
            accept_loops.spawn(accept_loop(
                listener,
                Arc::clone(&self.shared),
                Arc::clone(&graceful),
                stop_rx.clone(),
                Service::Admin,
            ));
        }
        shutdown.await;
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        while accept_loops.join_next().await.is_some() {}
        let grace = self.shared.active.load().snapshot.server.shutdown_grace;
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "stopped accepting; draining in-flight requests"
        );
        // The accept loops have ended and dropped their references.
        let drained = match Arc::try_unwrap(graceful) {
            Ok(graceful) => tokio::time::timeout(grace, graceful.shutdown())
                .await
                .is_ok(),
            Err(_) => false,
        };
        if drained {
            tracing::info!("all connections closed");
        } else {
            tracing::warn!("shutdown grace period ended with requests still in flight");
        }
        drained
    }
}

#[derive(Clone, Copy)]
enum Service {
    Gateway,
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
            _ = stop.changed() => return,
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
        let _ = stream.set_nodelay(true);
        let server = shared.active.load().snapshot.server.clone();
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
            Service::Gateway => {
                let svc = service_fn(move |request| {
                    let shared = Arc::clone(&conn_shared);
                    async move { Ok::<_, Infallible>(pipeline::handle(request, peer, &shared).await) }
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
