//! Remote key sets (JWKS): fetched when the gateway starts, refreshed in the background,
//! and refetched — at most once per `min_refetch` — when a token names a `kid` the
//! gateway does not know. When the endpoint fails or serves nothing usable, the last
//! good set keeps serving. Symmetric (`oct`) keys are never taken from a key set.
//!
//! Sets are keyed by URL and outlive snapshot reloads, so a reload does not refetch.
//! https URLs are verified against the public web roots, or only against `ca_file`.
//!
//! [`Tokens`] is the runtime part authentication uses: the key sets of the snapshot and
//! the cache of tokens verified under its keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::ACCEPT;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use thiserror::Error;
use tokio::time::Instant;
use tollgate_auth::cache::TokenCache;
use tollgate_auth::jwt::VerifyKey;
use tollgate_policy::snapshot::JwksSource;

use crate::part::{Build, Part};

/// Why a key set could not be fetched (the last good set keeps serving).
#[derive(Debug, Error)]
pub enum JwksError {
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("request: {0}")]
    Request(String),
    #[error("status {0}")]
    Status(StatusCode),
    #[error("body: {0}")]
    Body(String),
    #[error("not a JSON key set: {0}")]
    Json(#[from] serde_json::Error),
}

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_SET_BYTES: usize = 1024 * 1024;

/// One remote key set.
pub struct JwksSet {
    source: JwksSource,
    keys: ArcSwap<Vec<Arc<VerifyKey>>>,
    /// When an unknown kid last caused a fetch; held across that fetch, so concurrent
    /// callers wait for it instead of fetching again. Scheduled refreshes do not count.
    last_triggered: tokio::sync::Mutex<Option<Instant>>,
    /// One download at a time.
    downloading: tokio::sync::Mutex<()>,
    /// A hash of the last good set's bytes.
    digest: AtomicU64,
    client: Result<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>, String>,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// An http(s) client that trusts `ca_pem` only, or else the public web roots.
fn client(
    ca_pem: Option<&[u8]>,
) -> Result<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>, String> {
    let roots = match ca_pem {
        Some(pem) => CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("ca_file: {e}"))?,
        None => Vec::new(),
    };
    let config =
        tollgate_policy::client_config(roots, None).map_err(|e| format!("ca_file: {e}"))?;
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

impl JwksSet {
    fn new(source: JwksSource) -> Self {
        let client = client(source.ca_pem.as_deref());
        JwksSet {
            source,
            keys: ArcSwap::from_pointee(Vec::new()),
            last_triggered: tokio::sync::Mutex::new(None),
            downloading: tokio::sync::Mutex::new(()),
            digest: AtomicU64::new(0),
            client,
        }
    }

    pub fn keys(&self) -> Arc<Vec<Arc<VerifyKey>>> {
        self.keys.load_full()
    }

    /// For a token whose kid no key has: fetches the set, unless an unknown kid already
    /// did within `min_refetch`; true if the keys changed.
    pub async fn refetch(&self) -> bool {
        let mut last = self.last_triggered.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.source.min_refetch) {
            return false;
        }
        *last = Some(Instant::now());
        self.fetch().await
    }

    /// Fetches the set now; true if the keys changed.
    async fn fetch(&self) -> bool {
        let _one_at_a_time = self.downloading.lock().await;
        let url = self.source.url.to_string();
        match tokio::time::timeout(FETCH_TIMEOUT, self.download()).await {
            Ok(Ok((keys, digest))) if !keys.is_empty() => {
                // Compared by the set's bytes, not just kids and algs: a key replaced under
                // the same kid must still clear the tokens it verified.
                let changed = self.digest.swap(digest, Ordering::Relaxed) != digest;
                tracing::info!(%url, keys = keys.len(), changed, "key set fetched");
                self.keys.store(Arc::new(keys));
                changed
            }
            Ok(Ok(_)) => {
                tracing::warn!(%url, "key set has no usable keys; keeping the last good set");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(%url, error = %e, "key set fetch failed; keeping the last good set");
                false
            }
            Err(_) => {
                tracing::warn!(%url, "key set fetch timed out; keeping the last good set");
                false
            }
        }
    }

    async fn download(&self) -> Result<(Vec<Arc<VerifyKey>>, u64), JwksError> {
        let request = Request::get(self.source.url.clone())
            .header(ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| JwksError::Request(e.to_string()))?;
        let client: &HttpsClient = self
            .client
            .as_ref()
            .map_err(|e| JwksError::Tls(e.clone()))?;
        let response = client.request(request).await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            JwksError::Request(text)
        })?;
        if response.status() != StatusCode::OK {
            return Err(JwksError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_SET_BYTES)
            .collect()
            .await
            .map_err(|e| JwksError::Body(e.to_string()))?
            .to_bytes();
        let set: tollgate_auth::jwt::JwkSet = serde_json::from_slice(&body)?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            match VerifyKey::from_jwk(jwk, self.source.algorithm) {
                Ok(key) => keys.push(Arc::new(key)),
                Err(e) => {
                    tracing::warn!(kid = ?jwk.common.key_id, error = %e, "skipping a key of the set")
                }
            }
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&body[..], &mut hasher);
        Ok((keys, std::hash::Hasher::finish(&hasher)))
    }

    /// Refreshes the set every `refresh`, until the task is aborted.
    async fn refresh_forever(self: Arc<Self>, on_change: Arc<dyn Fn() + Send + Sync>) {
        loop {
            if self.fetch().await {
                on_change();
            }
            tokio::time::sleep(self.source.refresh).await;
        }
    }
}

/// All remote key sets, by URL, with their refresh tasks.
#[derive(Default)]
pub struct JwksRegistry {
    sets: Mutex<HashMap<String, (Arc<JwksSet>, tokio::task::AbortHandle)>>,
}

impl JwksRegistry {
    /// Makes the registry hold exactly `sources`: new ones are created and their refresh
    /// tasks spawned on the current runtime; ones no longer configured stop.
    /// `on_change` runs whenever a set's keys change.
    pub fn sync(
        &self,
        sources: &[JwksSource],
        on_change: Arc<dyn Fn() + Send + Sync>,
    ) -> Vec<Arc<JwksSet>> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: Vec<String> = sources.iter().map(|s| s.url.to_string()).collect();
        sets.retain(|url, (set, task)| {
            let keep = wanted.contains(url) && sources.iter().any(|s| *s == set.source);
            if !keep {
                task.abort();
            }
            keep
        });
        let mut out = Vec::new();
        for source in sources {
            let url = source.url.to_string();
            let entry = sets.entry(url).or_insert_with(|| {
                let set = Arc::new(JwksSet::new(source.clone()));
                let task = tokio::spawn(Arc::clone(&set).refresh_forever(Arc::clone(&on_change)));
                (set, task.abort_handle())
            });
            out.push(Arc::clone(&entry.0));
        }
        out
    }
}

impl Drop for JwksRegistry {
    fn drop(&mut self) {
        let sets = self.sets.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, (_, task)) in sets.drain() {
            task.abort();
        }
    }
}

/// What authentication verifies tokens with, for one published snapshot: the remote key
/// sets it names (their registry, with its refresh tasks, lives across reloads) and the
/// tokens verified under its keys (a reload starts a fresh cache, and so does a change
/// in a remote set).
pub struct Tokens {
    registry: Arc<JwksRegistry>,
    sets: Vec<Arc<JwksSet>>,
    cache: TokenCache,
}

impl Tokens {
    pub fn sets(&self) -> &[Arc<JwksSet>] {
        &self.sets
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }
}

impl Part for Tokens {
    fn build(build: &Build, previous: Option<&Self>) -> Self {
        let registry = previous.map_or_else(Arc::default, |p| Arc::clone(&p.registry));
        let jwt = build.snapshot.auth.jwt.as_ref();
        let sources = jwt.map_or(&[][..], |j| &j.jwks[..]);
        let sets = registry.sync(sources, Arc::clone(build.on_keys_changed));
        Tokens {
            registry,
            sets,
            cache: TokenCache::new(jwt.map_or(0, |j| j.cache_entries)),
        }
    }
}
