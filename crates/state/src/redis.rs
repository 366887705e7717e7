//! The Redis connection the shared features use, and how its trouble is contained.
//!
//! - One multiplexed connection per data-plane worker, created lazily on the worker's
//!   own runtime, so a request never hops threads to reach Redis; concurrent requests
//!   pipeline on it. `redis`'s connection manager reconnects in the background.
//! - With `cluster = true`, that connection is a Redis Cluster client instead: each
//!   command goes to the primary of its key's slot, and a moved slot (a failover, a
//!   resharding) is followed. Every key a decision touches shares one hash tag, so each
//!   script runs on one node; the callers never pipeline across tags in cluster mode
//!   ([`Redis::is_cluster`]).
//! - Every call is bounded by `timeout` (connecting included).
//! - A [`Breaker`] stops calling after consecutive failures; callers then get
//!   [`StoreError::CircuitOpen`] at once and apply their failure mode. One probe per
//!   cooldown finds out when Redis is back; recovery needs nobody.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;
use thiserror::Error;

use crate::breaker::{Admission, Breaker};

pub use tollgate_policy::snapshot::{RedisSettings, RedisTls};

/// Why a Redis call gave no answer.
#[derive(Debug, Error, Clone)]
pub enum StoreError {
    #[error("redis is skipped for {0:?} after repeated failures")]
    CircuitOpen(Duration),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl StoreError {
    /// How long a caller refused because of this error should wait before retrying.
    pub fn retry_after(&self) -> Duration {
        match self {
            StoreError::CircuitOpen(d) => (*d).max(Duration::from_secs(1)),
            _ => Duration::from_secs(1),
        }
    }
}

/// Calls that failed, by reason.
#[derive(Debug, Default)]
pub struct RedisErrors {
    pub timeouts: AtomicU64,
    pub failures: AtomicU64,
    /// Calls not made because the circuit was open.
    pub skipped: AtomicU64,
}

/// A connection to Redis: one server, or a cluster.
#[derive(Clone)]
pub enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the connections go. (One per process: the variants' sizes do not matter.)
#[allow(clippy::large_enum_variant)]
enum Target {
    Single {
        client: redis::Client,
        connections: Vec<OnceLock<Option<ConnectionManager>>>,
    },
    /// Connected on first use; a failed connect is tried again by the next call.
    Cluster {
        client: ClusterClient,
        connections: Vec<OnceCell<ClusterConnection>>,
    },
}

/// A Redis server (or cluster) shared by the instances, as seen from this one.
pub struct Redis {
    settings: RedisSettings,
    target: Target,
    breaker: Breaker,
    errors: RedisErrors,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("settings", &self.settings)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl Redis {
    /// Checks the URL; connects lazily, one connection per worker, on first use.
    pub fn new(settings: RedisSettings, workers: usize) -> Result<Redis, redis::RedisError> {
        // Decisions are small writes pipelined on one connection: Nagle's algorithm would
        // hold each behind the previous one's ACK.
        let info = settings
            .url
            .as_str()
            .into_connection_info()?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let certificates = settings.tls.as_ref().map(|tls| redis::TlsCertificates {
            client_tls: tls
                .client_pem
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: tls.ca_pem.clone(),
        });
        // One per worker, and one for background tasks (the revocation poller).
        let slots = workers.max(1) + 1;
        let target = if settings.cluster {
            let mut seeds = vec![info];
            for seed in &settings.cluster_seeds {
                seeds.push(seed.as_str().into_connection_info()?);
            }
            let mut builder = ClusterClient::builder(seeds)
                .connection_timeout(settings.timeout)
                .response_timeout(settings.timeout)
                // A moved slot is followed at once; waiting out a failover is the
                // breaker's and the failure modes' job, not a retry loop's.
                .retries(2)
                .min_retry_wait(5)
                .max_retry_wait(u64::try_from(settings.timeout.as_millis()).unwrap_or(u64::MAX));
            if let Some(certificates) = certificates {
                builder = builder.certs(certificates);
            }
            Target::Cluster {
                client: builder.build()?,
                connections: (0..slots).map(|_| OnceCell::new()).collect(),
            }
        } else {
            let client = match certificates {
                None => redis::Client::open(info)?,
                Some(certificates) => redis::Client::build_with_tls(info, certificates)?,
            };
            Target::Single {
                client,
                connections: (0..slots).map(|_| OnceLock::new()).collect(),
            }
        };
        let breaker = Breaker::new(
            settings.breaker_failures,
            settings.breaker_cooldown,
            Instant::now(),
        );
        Ok(Redis {
            target,
            breaker,
            errors: RedisErrors::default(),
            settings,
        })
    }

    /// The connection slot for work outside the data-plane workers.
    pub fn background_worker(&self) -> usize {
        match &self.target {
            Target::Single { connections, .. } => connections.len() - 1,
            Target::Cluster { connections, .. } => connections.len() - 1,
        }
    }

    /// A Redis Cluster: a pipeline must not mix hash tags (each goes to its own node).
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    pub fn errors(&self) -> &RedisErrors {
        &self.errors
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Worker `worker`'s connection; created on the calling runtime the first time.
    async fn connection(&self, worker: usize) -> Result<Link, redis::RedisError> {
        let (client, connections) = match &self.target {
            Target::Single {
                client,
                connections,
            } => (client, connections),
            Target::Cluster {
                client,
                connections,
            } => {
                let slot = &connections[worker % connections.len()];
                let connection = slot
                    .get_or_try_init(|| client.get_async_connection())
                    .await?;
                return Ok(Link::Cluster(connection.clone()));
            }
        };
        let slot = &connections[worker % connections.len()];
        let manager = slot.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.settings.timeout))
                .set_response_timeout(Some(self.settings.timeout))
                // Reconnection is retried by the next call; the breaker paces those.
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(self.settings.timeout);
            match ConnectionManager::new_lazy_with_config(client.clone(), config) {
                Ok(manager) => Some(manager),
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up a redis connection");
                    None
                }
            }
        });
        manager.clone().map(Link::Single).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "the redis connection could not be set up",
            ))
        })
    }

    /// Runs one call on worker `worker`'s connection, bounded by the timeout and
    /// guarded by the circuit breaker.
    pub async fn call<T, F, Fut>(&self, worker: usize, f: F) -> Result<T, StoreError>
    where
        F: Fn(Link) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if let Admission::Skip(wait) = self.breaker.admit(Instant::now()) {
            self.errors.skipped.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::CircuitOpen(wait));
        }
        let attempts = async {
            let connection = self.connection(worker).await?;
            match f(connection.clone()).await {
                // This worker's connection went stale while Redis was away (the probe
                // that closed the circuit may have used another worker's): the manager
                // reconnects, and the call is tried once more.
                Err(e) if e.is_connection_dropped() => f(connection).await,
                other => other,
            }
        };
        // Bounded whole, connecting included.
        let outcome = tokio::time::timeout(self.settings.timeout, attempts).await;
        match outcome {
            Ok(Ok(value)) => {
                self.breaker.record_success();
                Ok(value)
            }
            // The connection's own response timeout (the same bound) fired first.
            Ok(Err(e)) if e.is_timeout() => {
                self.errors.timeouts.fetch_add(1, Ordering::Relaxed);
                self.breaker.record_failure(Instant::now());
                Err(StoreError::Timeout(self.settings.timeout))
            }
            Ok(Err(e)) => {
                self.errors.failures.fetch_add(1, Ordering::Relaxed);
                self.breaker.record_failure(Instant::now());
                // Said while the circuit is closed (so a few times per outage), with the
                // reason: a refused AUTH must not hide behind "circuit open".
                if !self.breaker.is_open() {
                    tracing::warn!(error = %e, "redis call failed");
                }
                Err(StoreError::Redis(e))
            }
            Err(_) => {
                self.errors.timeouts.fetch_add(1, Ordering::Relaxed);
                self.breaker.record_failure(Instant::now());
                Err(StoreError::Timeout(self.settings.timeout))
            }
        }
    }
}
