//! The upstream client: pooled HTTP/1.1 connections to the legacy API, plain or over
//! TLS (`https://`, with its own CA bundle and client certificate if configured), one
//! pool per data-plane worker, kept across reloads while their settings hold (a
//! runtime part).
//!
//! The response timeout counts from the request body's last movement, not from the
//! start: a long upload is not the upstream's delay, while an upstream that stops taking
//! the body, or answering once it has it, runs out of time.
//!
//! Every new connection's connect (name resolution and TCP connect; the TLS handshake is
//! not in it) is timed (`tollgate_upstream_connect_seconds`):
//! with pooling, connects are rare, so a rising count or latency is the backend (or the
//! network to it) struggling before requests show it.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tollgate_policy::snapshot::{Upstream, UpstreamTls};

use crate::body::{BodyStats, CutOff, Outbound};
use crate::errors::{GatewayError, UpstreamError};
use crate::metrics::{self, Label, NewHistogram};
use crate::part::{Build, Part};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// How long connects to the upstream take (resolution and TCP), by outcome; kept across
/// reloads. A connect abandoned before it ends (its request cancelled) is not counted.
#[derive(Debug)]
pub struct Connects {
    family: Family<Label, Histogram, NewHistogram>,
    ok: Histogram,
    failed: Histogram,
}

impl Default for Connects {
    fn default() -> Connects {
        let family =
            Family::<Label, Histogram, NewHistogram>::new_with_constructor(metrics::latency);
        Connects {
            ok: family.get_or_create_owned(&[("result", "ok")]),
            failed: family.get_or_create_owned(&[("result", "error")]),
            family,
        }
    }
}

/// The plain connector, timing each connect into [`Connects`].
#[derive(Clone)]
pub struct TimedConnector {
    inner: HttpConnector,
    connects: Arc<Connects>,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<tokio::net::TcpStream>, BoxedConnectError>> + Send>>;
type BoxedConnectError = <HttpConnector as tower_service::Service<http::Uri>>::Error;

impl tower_service::Service<http::Uri> for TimedConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxedConnectError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let started = Instant::now();
        let connecting = self.inner.call(uri);
        let connects = Arc::clone(&self.connects);
        Box::pin(async move {
            let connected = connecting.await;
            match &connected {
                Ok(_) => metrics::observe(&connects.ok, started.elapsed()),
                Err(_) => metrics::observe(&connects.failed, started.elapsed()),
            }
            connected
        })
    }
}

/// A pooled HTTP/1.1 client for one upstream configuration.
#[derive(Clone)]
pub struct UpstreamClient {
    /// Plain http passes through the TLS connector untouched.
    client: Client<HttpsConnector<TimedConnector>, Outbound>,
    pool_key: PoolSettings,
}

/// The settings baked into a client; when a reload changes none of them, the client
/// (and its warm connections) is kept.
#[derive(Clone, PartialEq, Eq)]
struct PoolSettings {
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    pool_max_idle: usize,
    /// Rotating the CA bundle or the client certificate replaces the pool.
    tls: Option<UpstreamTls>,
}

impl PoolSettings {
    fn of(upstream: &Upstream) -> Self {
        PoolSettings {
            connect_timeout: upstream.connect_timeout,
            pool_idle_timeout: upstream.pool_idle_timeout,
            pool_max_idle: upstream.pool_max_idle,
            tls: upstream.tls.clone(),
        }
    }
}

/// What the pool trusts over TLS: the loader's configuration for an https upstream;
/// for a plain one, the connector passes connections through and this is never used.
fn tls_config(tls: Option<&UpstreamTls>) -> Result<rustls::ClientConfig, rustls::Error> {
    match tls {
        Some(tls) => Ok(rustls::ClientConfig::clone(&tls.config)),
        None => tollgate_policy::client_config(Vec::new(), None),
    }
}

impl UpstreamClient {
    pub fn new(upstream: &Upstream, connects: &Arc<Connects>) -> Result<Self, rustls::Error> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = TimedConnector {
            inner: connector,
            connects: Arc::clone(connects),
        };
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(upstream.tls.as_ref())?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(upstream.pool_idle_timeout)
            .pool_max_idle_per_host(upstream.pool_max_idle)
            .set_host(false)
            .build(connector);
        Ok(UpstreamClient {
            client,
            pool_key: PoolSettings::of(upstream),
        })
    }

    /// This client if it fits `upstream`, else a new one.
    pub fn reuse_or_new(
        &self,
        upstream: &Upstream,
        connects: &Arc<Connects>,
    ) -> Result<Self, rustls::Error> {
        if self.pool_key == PoolSettings::of(upstream) {
            Ok(self.clone())
        } else {
            UpstreamClient::new(upstream, connects)
        }
    }

    /// Sends the request; the response head must arrive within `timeout` of the body's
    /// last movement (`stats`, kept by the body as it goes).
    pub async fn send(
        &self,
        request: Request<Outbound>,
        timeout: Duration,
        stats: &BodyStats,
    ) -> Result<Response<Incoming>, GatewayError> {
        let started = tokio::time::Instant::now();
        let response = self.client.request(request);
        tokio::pin!(response);
        let mut deadline = started + timeout;
        loop {
            tokio::select! {
                outcome = &mut response => {
                    let response = outcome.map_err(|e| {
                        if stats.cut_off() == CutOff::None {
                            tracing::warn!(error = %e, source = ?e.source(), "upstream request failed");
                        }
                        GatewayError::from(classify(&e))
                    })?;
                    // An answer no client can be given as it is: 502 instead.
                    if let Some(why) = unusable(&response) {
                        tracing::warn!(status = response.status().as_u16(), "the upstream's answer cannot be passed on: {why}");
                        return Err(UpstreamError::Failed.into());
                    }
                    return Ok(response);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let idle = stats.idle_for().unwrap_or_else(|| started.elapsed());
                    if idle >= timeout {
                        return Err(UpstreamError::Timeout.into());
                    }
                    deadline = tokio::time::Instant::now() + (timeout - idle);
                }
            }
        }
    }
}

/// Why an answer hyper read cannot go to the client as it is (it then gets 502, and a
/// metered request is refunded, never charged for it):
/// - a 101: the gateway never asks for an upgrade (`Upgrade` is hop-by-hop and
///   stripped), so the client would get a switch to nothing;
/// - a status past 599, which HTTP does not define (hyper reads up to 999): a client
///   cannot tell success from failure, and it was charged as a success;
/// - `Transfer-Encoding` beside `Content-Length` (RFC 9112 §6.3): hyper framed the body
///   by chunks, but the length went on to the client, which cut the body at it.
fn unusable<B>(response: &Response<B>) -> Option<&'static str> {
    let status = response.status().as_u16();
    if status == 101 {
        return Some("a 101 to a request that asked for no upgrade");
    }
    if status > 599 {
        return Some("a status HTTP does not define");
    }
    let headers = response.headers();
    if headers.contains_key(http::header::TRANSFER_ENCODING)
        && headers.contains_key(http::header::CONTENT_LENGTH)
    {
        return Some("both Transfer-Encoding and Content-Length");
    }
    None
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    if !e.is_connect() {
        return UpstreamError::Failed;
    }
    let mut source = e.source();
    while let Some(s) = source {
        // hyper-util reports `connect_timeout` as an `io::ErrorKind::TimedOut`.
        if s.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            return UpstreamError::Timeout;
        }
        source = s.source();
    }
    UpstreamError::Unavailable
}

/// One client per data-plane worker (a request never leaves its worker's pool).
pub struct Upstreams {
    clients: Vec<UpstreamClient>,
    connects: Arc<Connects>,
}

impl Upstreams {
    pub fn for_worker(&self, worker: usize) -> Option<&UpstreamClient> {
        self.clients.get(worker)
    }
}

impl Part for Upstreams {
    fn build(build: &Build, previous: Option<&Self>) -> Self {
        let upstream = &build.snapshot.upstream;
        let connects = previous.map_or_else(Arc::default, |p| Arc::clone(&p.connects));
        // The loader built and checked the TLS configuration; a failure here (rustls
        // refusing what it accepted there) leaves the worker without a pool, and its
        // requests are answered 500 `INTERNAL` with this logged.
        let clients = (0..build.workers)
            .filter_map(|i| {
                let client = match previous.and_then(|p| p.clients.get(i)) {
                    Some(client) => client.reuse_or_new(upstream, &connects),
                    None => UpstreamClient::new(upstream, &connects),
                };
                client
                    .map_err(|e| tracing::error!(error = %e, "cannot build the upstream pool"))
                    .ok()
            })
            .collect();
        Upstreams { clients, connects }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "tollgate_upstream_connect",
            "Connects to the upstream (name resolution and TCP; new pooled connections), by result",
            Unit::Seconds,
            self.connects.family.clone(),
        );
    }
}
