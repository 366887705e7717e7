//! The listeners: binds, accepts, serves HTTP/1.1 and HTTP/2 connections through the
//! pipeline, and drains gracefully. What lives across requests (the published snapshot
//! and its state) is [`crate::runtime`]'s; this module only moves connections.
//!
//! The data plane runs one worker per core, nginx-style: each worker is a thread with a
//! single-threaded runtime, its own listening socket on the shared address
//! (`SO_REUSEPORT`, so the kernel spreads connections) and its own upstream connection
//! pool. A request then never changes thread: no cross-thread wake-ups between the
//! client connection, the pool and the upstream connection. Measured on 2 cores, this
//! serves about 1.2x the requests of one work-stealing runtime (`tests/bench/load.sh`).
//! The admin listener, signals and reload run on the main runtime.
//!
//! A client connection goes through, in order: the PROXY protocol header (only from
//! `server.proxy_protocol_from`), the TLS handshake (on `[server.tls]` listeners, within
//! `header_read_timeout`), then HTTP: HTTP/2 when ALPN chose `h2` (or, with
//! `server.h2c`, when a plain connection opens with the HTTP/2 preface), else HTTP/1.1.
//! Both versions feed the same pipeline. A connection with no request in flight for
//! `header_read_timeout` is closed, whichever the version ([`Activity`]): hyper closes
//! an idle HTTP/1.1 connection itself, but an HTTP/2 client that answers the keep-alive
//! pings would otherwise hold its connection, and a slot of `max_connections`, forever.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tollgate_policy::snapshot::Server;
use tollgate_policy::Snapshot;

use crate::access_log::AccessSink;
use crate::exchange::Scheme;
use crate::proxy_protocol::{self, Origin};
use crate::runtime::{Runtime, SnapshotHandle};
use crate::{admin, pipeline, tls};

/// HTTP/2 streams one client may have open at once (nginx's and Envoy's default order
/// of magnitude); each is a request in the pipeline.
const H2_MAX_STREAMS: u32 = 128;

/// A bound, not yet serving gateway.
pub struct Gateway {
    runtime: Arc<Runtime>,
    /// For each worker, one socket per configured address, plain or TLS.
    worker_listeners: Vec<Vec<(std::net::TcpListener, Scheme)>>,
    admin: Option<std::net::TcpListener>,
    /// Shared by every TLS listener; `None` without `[server.tls]`.
    tls: Option<TlsAcceptor>,
}

impl Gateway {
    /// Binds the snapshot's listeners, `server.workers` sockets per address (and the
    /// admin listener, if configured). Access-log lines go to `access_sink`.
    pub async fn bind(snapshot: Snapshot, access_sink: AccessSink) -> io::Result<Self> {
        let workers = snapshot.server.workers.max(1);
        let mut worker_listeners: Vec<Vec<(std::net::TcpListener, Scheme)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let plain = snapshot.server.listen.iter().map(|a| (a, Scheme::Http));
        let tls_listen = snapshot.server.tls.iter().flat_map(|t| &t.listen);
        let addresses: Vec<_> = plain
            .chain(tls_listen.map(|a| (a, Scheme::Https)))
            .collect();
        // Probed before any is bound: `0.0.0.0:8080` beside `127.0.0.1:8080` would
        // otherwise find this gateway's own socket.
        for (addr, _) in &addresses {
            warn_if_shared(**addr);
        }
        for (addr, scheme) in addresses {
            // The first bind resolves port 0; the others share the port it got.
            let named =
                |e: io::Error| io::Error::new(e.kind(), format!("[server] listener {addr}: {e}"));
            let first = reuse_port_listener(*addr).map_err(named)?;
            let bound = first.local_addr()?;
            worker_listeners[0].push((first, scheme));
            for listeners in worker_listeners.iter_mut().skip(1) {
                listeners.push((reuse_port_listener(bound).map_err(named)?, scheme));
            }
        }
        let admin = match &snapshot.admin {
            Some(a) => {
                let named = |e: io::Error| {
                    io::Error::new(e.kind(), format!("[admin] listener {}: {e}", a.listen))
                };
                let listener = std::net::TcpListener::bind(a.listen).map_err(named)?;
                listener.set_nonblocking(true).map_err(named)?;
                Some(listener)
            }
            None => None,
        };
        let serves_tls = snapshot.server.tls.is_some();
        let runtime = Runtime::new(snapshot, workers, access_sink);
        let tls = match serves_tls {
            true => Some(tls::acceptor(Arc::clone(&runtime)).map_err(io::Error::other)?),
            false => None,
        };
        Ok(Gateway {
            runtime,
            worker_listeners,
            admin,
            tls,
        })
    }

    /// The plain (HTTP) addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.bound(Scheme::Http)
    }

    /// The TLS addresses actually bound.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.bound(Scheme::Https)
    }

    fn bound(&self, scheme: Scheme) -> Vec<SocketAddr> {
        self.worker_listeners
            .first()
            .into_iter()
            .flatten()
            .filter(|(_, s)| *s == scheme)
            .filter_map(|(l, _)| l.local_addr().ok())
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
            let tls = self.tls.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tollgate-worker-{index}"))
                .spawn(move || {
                    let drained = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => {
                            runtime.block_on(worker(index, listeners, runtime_state, tls, stop))
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
        // The admin listener outlives the drain: `/readyz` answers 503 and `/healthz`
        // 200 through it (a liveness probe that found the port closed would kill the
        // process mid-drain), and `/metrics` can still be scraped.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin = self
            .admin
            .and_then(|l| TcpListener::from_std(l).ok())
            .map(|listener| {
                let graceful = Arc::new(GracefulShutdown::new());
                tokio::spawn(accept_loop(
                    listener,
                    Arc::clone(&self.runtime),
                    graceful,
                    admin_stop_rx,
                    Service::Admin,
                    None,
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
        // Not ready, still serving: a balancer that polls `/readyz` takes this instance
        // out before its listeners close, instead of finding them closed (Kubernetes
        // gets the same from a `preStop` pause).
        let delay = self.runtime.active().snapshot.server.drain_delay;
        if !delay.is_zero() {
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "not ready; still accepting until the drain delay ends"
            );
            tokio::time::sleep(delay).await;
        }
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
        if !drained {
            let active = self.runtime.active();
            let refunded = active.credits.refund_cut_off().await;
            if refunded > 0 {
                tracing::warn!(
                    reservations = refunded,
                    "refunded what requests cut off by the shutdown held"
                );
            }
        }
        let _ = admin_stop_tx.send(true);
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

/// Says so when another process listens on `addr` already. `SO_REUSEPORT` lets this
/// one bind beside it (as an overlapping restart needs), and the kernel then splits
/// connections between the two: a second gateway started by mistake would answer half
/// of them, without the first's ledger and sessions (their files are the first's).
/// A bind without `SO_REUSEPORT` probes it: it fails while another socket listens
/// there (`SO_REUSEADDR` lets it past the last run's connections in TIME_WAIT).
fn warn_if_shared(addr: SocketAddr) {
    if addr.port() == 0 {
        return;
    }
    let held = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .and_then(|probe| {
            probe.set_reuse_address(true)?;
            probe.bind(&addr.into())
        })
        .is_err_and(|e| e.kind() == io::ErrorKind::AddrInUse);
    if held {
        tracing::warn!(
            %addr,
            "another process listens on this address already; it and this gateway will share its connections (SO_REUSEPORT). Unless this is an overlapping restart, stop one of them"
        );
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
    listeners: Vec<(std::net::TcpListener, Scheme)>,
    runtime: Arc<Runtime>,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let graceful = Arc::new(GracefulShutdown::new());
    let mut accept_loops = JoinSet::new();
    for (listener, scheme) in listeners {
        let tls = match scheme {
            Scheme::Https => tls.clone(),
            Scheme::Http => None,
        };
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                accept_loops.spawn(accept_loop(
                    listener,
                    Arc::clone(&runtime),
                    Arc::clone(&graceful),
                    stop.clone(),
                    Service::Gateway { worker: index },
                    tls,
                ));
            }
            Err(e) => tracing::error!(error = %e, worker = index, "cannot register a listener"),
        }
    }
    let _ = stop.wait_for(|stopped| *stopped).await;
    while accept_loops.join_next().await.is_some() {}
    let active = runtime.active();
    let deadline = tokio::time::Instant::now() + active.snapshot.server.shutdown_grace;
    // The accept loops have ended and dropped their references.
    let closed = match Arc::try_unwrap(graceful) {
        Ok(graceful) => tokio::time::timeout_at(deadline, graceful.shutdown())
            .await
            .is_ok(),
        Err(_) => false,
    };
    // Exchanges whose clients left (`on_client_abort = "settle"`) and posts written in
    // the background run on the workers' runtimes, which end when this returns: they
    // get the rest of the grace period to settle what they charge.
    let detached = Arc::clone(&active.credits.counters.detached);
    drop(active);
    let settled = tokio::time::timeout_at(deadline, detached.idle())
        .await
        .is_ok();
    closed && settled
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
    tls: Option<TlsAcceptor>,
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
        let _ = stream.set_nodelay(true);
        let peer = canonical(peer);
        let snapshot = Arc::clone(&runtime.active().snapshot);
        match service {
            Service::Gateway { worker } => {
                // Past the cap a connection is closed at once: slow clients cannot take
                // every file descriptor (held bodies and idle connections also have
                // deadlines).
                if runtime.metrics.connections() >= snapshot.server.max_connections {
                    runtime.metrics.connection_refused();
                    drop(stream);
                    continue;
                }
                let client = Client {
                    stream,
                    peer,
                    worker,
                    tls: tls.clone(),
                    snapshot,
                    runtime: Arc::clone(&runtime),
                    watcher: graceful.watcher(),
                };
                let metrics = Arc::clone(&runtime.metrics);
                metrics.connection_opened();
                tokio::spawn(async move {
                    client.serve().await;
                    metrics.connection_closed();
                });
            }
            Service::Admin => {
                let conn_runtime = Arc::clone(&runtime);
                let svc = service_fn(move |request| {
                    let runtime = Arc::clone(&conn_runtime);
                    async move { Ok::<_, Infallible>(admin::handle(request, peer, &runtime).await) }
                });
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(snapshot.server.header_read_timeout);
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
}

/// A peer as every later stage reads it: an IPv4 client reaching a dual-stack (`[::]`)
/// listener is its IPv4 address, not `::ffff:a.b.c.d`, in `X-Forwarded-For`,
/// `X-Real-IP`, the access log and limit keys alike.
fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// An accepted client connection of the data plane.
struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    worker: usize,
    /// `Some` on a TLS listener.
    tls: Option<TlsAcceptor>,
    /// The configuration published when it was accepted (its limits hold for the
    /// connection; each request reads the snapshot live).
    snapshot: Arc<Snapshot>,
    runtime: Arc<Runtime>,
    watcher: Watcher,
}

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// HTTP/2 if it opens with the HTTP/2 preface, else HTTP/1.1 (h2c).
    Either,
}

impl Client {
    async fn serve(self) {
        let Client {
            mut stream,
            mut peer,
            worker,
            tls,
            snapshot,
            runtime,
            watcher,
        } = self;
        let server = &snapshot.server;
        // What happens before the first request is bounded like a request head.
        let deadline = server.header_read_timeout;
        if server
            .proxy_protocol_from
            .iter()
            .any(|cidr| cidr.contains(peer.ip()))
        {
            match tokio::time::timeout(deadline, proxy_protocol::read(&mut stream)).await {
                Ok(Ok(Origin::Client(client))) => peer = canonical(client),
                Ok(Ok(Origin::Local)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "connection closed: bad PROXY protocol header");
                    runtime.metrics.proxy_header_refused();
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "connection closed: no PROXY protocol header in time");
                    runtime.metrics.proxy_header_refused();
                    return;
                }
            }
        }
        let http = Http {
            peer,
            worker,
            server,
            runtime: &runtime,
            watcher,
        };
        let Some(acceptor) = tls else {
            let protocol = match server.h2c {
                true => Protocol::Either,
                false => Protocol::Http1,
            };
            return http.serve(stream, protocol, Scheme::Http).await;
        };
        let stream = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                runtime.metrics.tls_handshake(None);
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                runtime.metrics.tls_handshake(None);
                return;
            }
        };
        let protocol = match stream.get_ref().1.alpn_protocol() {
            Some(tls::ALPN_H2) => Protocol::Http2,
            _ => Protocol::Http1,
        };
        runtime
            .metrics
            .tls_handshake(Some(protocol == Protocol::Http2));
        http.serve(stream, protocol, Scheme::Https).await;
    }
}

/// Serves one plain HTTP/1.1 connection that is not a socket (an in-process stream, for
/// [`crate::rehearsal`]) exactly as a plain listener would serve a client at `peer`.
pub(crate) async fn serve_stream<S>(stream: S, peer: SocketAddr, runtime: &Arc<Runtime>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let snapshot = runtime.active().snapshot.clone();
    let graceful = GracefulShutdown::new();
    let http = Http {
        peer,
        worker: 0,
        server: &snapshot.server,
        runtime,
        watcher: graceful.watcher(),
    };
    http.serve(stream, Protocol::Http1, Scheme::Http).await;
}

/// Serving HTTP on a connection that is ready for it.
struct Http<'a> {
    peer: SocketAddr,
    worker: usize,
    server: &'a Server,
    runtime: &'a Arc<Runtime>,
    watcher: Watcher,
}

impl Http<'_> {
    async fn serve<S>(self, stream: S, protocol: Protocol, scheme: Scheme)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Http {
            peer,
            worker,
            server,
            runtime,
            watcher,
        } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout)
            // Our own limits answer with problem+json; hyper's hard limit sits above them.
            .max_buf_size((server.max_header_bytes + server.max_uri_bytes) * 2 + 16 * 1024);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            // As for HTTP/1.1: our limits answer first, hyper's sit above them.
            .max_header_list_size(
                u32::try_from((server.max_header_bytes + server.max_uri_bytes) * 2)
                    .unwrap_or(u32::MAX),
            )
            .keep_alive_interval(server.header_read_timeout)
            .keep_alive_timeout(server.header_read_timeout);
        let builder = match protocol {
            Protocol::Http1 => builder.http1_only(),
            Protocol::Http2 => builder.http2_only(),
            Protocol::Either => builder,
        };
        let conn_runtime = Arc::clone(runtime);
        let activity = Arc::new(Activity::new());
        let conn_activity = Arc::clone(&activity);
        let max_in_flight = server.max_connections;
        let svc = service_fn(move |request| {
            let runtime = Arc::clone(&conn_runtime);
            // Held until the response body is done (or dropped).
            let busy = conn_activity.begin();
            let in_flight = runtime.metrics.admit(max_in_flight);
            let admission = match &in_flight {
                Some(place) => pipeline::Admission::Admitted(place.clone()),
                None => pipeline::Admission::Full(max_in_flight),
            };
            // HTTP/1 only: HTTP/2 has no `Connection` header (its GOAWAY says the same).
            let http1 = request.version() <= http::Version::HTTP_11;
            async move {
                let mut response =
                    pipeline::handle(request, peer, worker, scheme, admission, &runtime).await;
                // Draining (within `drain_delay`, still serving): the client is told to
                // leave, so its next request goes elsewhere instead of meeting the
                // connection closed under it when the listeners stop.
                if http1 && runtime.draining() {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(response.map(|body| {
                    body.map_frame(move |frame| {
                        let _held = (&busy, &in_flight);
                        frame
                    })
                }))
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let served = watcher.watch(conn.into_owned());
        let idle = server.header_read_timeout;
        tokio::select! {
            ended = served => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, %peer, "client connection ended with an error");
                }
            }
            () = activity.idle_for(idle) => {
                tracing::debug!(%peer, "idle client connection closed");
            }
        }
    }
}

/// What is in flight on one client connection, so an idle one can be closed.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// When the connection opened, or the last request began or ended.
    last: std::sync::Mutex<tokio::time::Instant>,
}

/// A request in flight: its end is noted when dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            last: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.touch();
        Busy(Arc::clone(self))
    }

    fn touch(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = tokio::time::Instant::now();
        }
    }

    /// Resolves once nothing has been in flight for `idle`.
    async fn idle_for(&self, idle: std::time::Duration) {
        loop {
            let since = self.last.lock().map_or(idle, |at| at.elapsed());
            let busy = self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0;
            if !busy && since >= idle {
                return;
            }
            tokio::time::sleep(if busy { idle } else { idle - since }).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.touch();
    }
}
