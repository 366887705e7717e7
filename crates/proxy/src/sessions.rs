//! The runtime part for login sessions: the session store `[store]` names, and this
//! instance's copy of the revocations.
//!
//! The store is Redis when `[store]` has a URL; otherwise a `redb` file at
//! `[store] path`. It is opened once and kept across reloads while that setting
//! holds. redb locks its file, so reopening it on every reload would fail.
//!
//! Every access token the gateway issues carries its session (`sid`) and its own id
//! (`jti`). [`Revocations`] holds the sessions and tokens that were revoked, until the
//! tokens they cover expire. Verification checks this set, a hash lookup, and the
//! store is never called on the request path. A poller reads the store's revocation
//! feed every [`POLL`] into this set, so a logout on another instance is seen here
//! within a second. A revocation made here is added at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tollgate_policy::snapshot::RedisSettings;
use tollgate_state::sessions::embedded::EmbeddedSessions;
use tollgate_state::sessions::shared::SharedSessions;
use tollgate_state::sessions::{Revocation, Revoked, SessionError, SessionStore};

use crate::errors::{AuthError, GatewayError, SessionRefusal};
use crate::metrics::Label;
use crate::part::{Build, Part};

/// How often the revocation feed is read.
pub const POLL: Duration = Duration::from_millis(250);
/// How often the store forgets what no longer matters.
const PRUNE: Duration = Duration::from_secs(300);

/// Which store a snapshot asks for: kept across reloads while this is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Embedded(PathBuf),
    Redis(RedisSettings),
}

/// Sessions and tokens revoked, each until the tokens it covers expire.
#[derive(Debug, Default)]
pub struct Revocations {
    sessions: RwLock<HashMap<String, u64>>,
    tokens: RwLock<HashMap<String, u64>>,
    /// Entries in both maps: lets the common case (nothing revoked) skip the locks.
    count: AtomicU64,
}

impl Revocations {
    pub fn add(&self, revocation: &Revocation) {
        let map = match revocation.kind {
            Revoked::Session => &self.sessions,
            Revoked::Token => &self.tokens,
        };
        let mut map = map.write().unwrap_or_else(|p| p.into_inner());
        let until = map.entry(revocation.id.clone()).or_insert(0);
        if *until == 0 {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        *until = (*until).max(revocation.until);
    }

    /// Whether a token of session `session` with id `token` (its client and `jti`) is
    /// revoked at `now`.
    pub fn is_revoked(&self, session: Option<&str>, token: Option<(&str, &str)>, now: u64) -> bool {
        if self.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let token = token.map(|(client, jti)| token_key(client, jti));
        let token = token.as_deref();
        let hit = |map: &RwLock<HashMap<String, u64>>, id: Option<&str>| {
            id.is_some_and(|id| {
                map.read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(id)
                    .is_some_and(|until| now < *until)
            })
        };
        hit(&self.sessions, session) || hit(&self.tokens, token)
    }

    /// Forgets entries whose tokens have all expired.
    pub fn prune(&self, now: u64) {
        for map in [&self.sessions, &self.tokens] {
            let mut map = map.write().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, until| now < *until);
            self.count
                .fetch_sub((before - map.len()) as u64, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// What a logged-out access token is revoked as: its `jti` within its client, so that a
/// token of another client (another issuer's, whose ids may repeat) with the same `jti`
/// is not refused with it. Hashed, so an issuer's long ids stay small in the store.
pub fn token_key(client_id: &str, jti: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    // Length-prefixed, so no two pairs hash the same bytes.
    hasher.update((client_id.len() as u64).to_le_bytes());
    hasher.update(client_id.as_bytes());
    hasher.update(jti.as_bytes());
    let digest = hasher.finalize();
    let mut key = String::with_capacity(34);
    key.push_str("t1");
    for b in &digest[..16] {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// Counters of the session endpoints, kept across reloads: one family by `event`, each
/// event's counter resolved once.
#[derive(Debug)]
pub struct SessionCounters {
    events: Family<Label, Counter>,
    pub logins: Counter,
    pub logins_refused: Counter,
    pub refreshes: Counter,
    pub grace_answers: Counter,
    pub reuses: Counter,
    pub logouts: Counter,
    pub store_errors: Counter,
}

impl Default for SessionCounters {
    fn default() -> SessionCounters {
        let events = Family::<Label, Counter>::default();
        let event = |name| events.get_or_create_owned(&[("event", name)]);
        SessionCounters {
            logins: event("login"),
            logins_refused: event("login_refused"),
            refreshes: event("refresh"),
            grace_answers: event("grace"),
            reuses: event("reuse"),
            logouts: event("logout"),
            store_errors: event("store_error"),
            events,
        }
    }
}

/// The store a snapshot names, and what goes with it.
pub struct SessionState {
    location: Location,
    /// Set once the store is open and its revocations were read: until then session
    /// endpoints answer 503, and so do the gateway's own tokens (whether one was
    /// revoked cannot be known yet). The poller retries opening an embedded store
    /// whose file another process still holds (a restart that overlaps).
    store: OnceLock<Arc<dyn SessionStore>>,
    pub revoked: Arc<Revocations>,
    /// The Redis connection slot for the poller (0 for the embedded store).
    background: usize,
    /// Redis's store, before its first feed read succeeded.
    pending: Option<Arc<dyn SessionStore>>,
}

impl SessionState {
    /// The store, once it is open and its revocations are known.
    pub fn store(&self) -> Option<&Arc<dyn SessionStore>> {
        self.store.get()
    }
}

/// The part: `None` without `[sessions]`.
pub struct Sessions {
    state: Option<Arc<SessionState>>,
    pub counters: Arc<SessionCounters>,
}

impl Sessions {
    /// Whether session tokens can be checked: true without sessions, else once the
    /// store is open and its revocations were read (`/readyz` waits for it).
    pub fn ready(&self) -> bool {
        self.state.as_ref().is_none_or(|s| s.store().is_some())
    }

    /// The open store, or 503.
    pub fn store(&self) -> Result<(&SessionState, &Arc<dyn SessionStore>), GatewayError> {
        let state = self
            .state
            .as_deref()
            .ok_or(SessionRefusal::StoreUnavailable)?;
        let store = state.store().ok_or(SessionRefusal::StoreUnavailable)?;
        Ok((state, store))
    }

    /// Refuses an access token whose session or id was revoked. A token of a session
    /// (`sid`) is refused with 503 while the revocations are not known yet.
    pub fn check(
        &self,
        session: Option<&str>,
        token: Option<(&str, &str)>,
        now: u64,
    ) -> Result<(), GatewayError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        // A token a logout could have ended (one of a session, or any with a `jti`:
        // minted ones, external ones) is not taken while the revocations are unknown.
        if (session.is_some() || token.is_some()) && state.store().is_none() {
            return Err(SessionRefusal::StoreUnavailable.into());
        }
        if state.revoked.is_revoked(session, token, now) {
            return Err(AuthError::Revoked.into());
        }
        Ok(())
    }
}

fn location(build: &Build) -> Option<Location> {
    build.snapshot.sessions.as_ref()?;
    Some(match &build.snapshot.store.redis {
        Some(settings) => Location::Redis(settings.clone()),
        None => Location::Embedded(build.snapshot.store.path.clone()),
    })
}

/// Opens the embedded store and reads the revocations it holds into `revoked`.
/// Returns the store and where its feed continues.
fn open_embedded(
    path: &std::path::Path,
    revoked: &Revocations,
) -> Result<(Arc<dyn SessionStore>, u64), String> {
    let store = EmbeddedSessions::open(path)
        .map_err(|e| format!("cannot open the session store {}: {e}", path.display()))?;
    let feed = store
        .revocations_now(0)
        .map_err(|e| format!("cannot read the revocations in {}: {e}", path.display()))?;
    for entry in &feed.entries {
        revoked.add(entry);
    }
    Ok((Arc::new(store), feed.cursor))
}

/// Redis's store (its feed is read by the poller's first round).
fn shared_store(build: &Build) -> Option<(Arc<dyn SessionStore>, usize)> {
    let redis = build.redis.redis()?;
    // Revocations matter as long as the longest access token lives.
    let retention = build
        .snapshot
        .auth
        .jwt
        .as_ref()
        .map_or(Duration::from_secs(24 * 3600), |j| {
            j.access_ttl + Duration::from_secs(j.rules.leeway_secs)
        });
    Some((
        Arc::new(SharedSessions::new(Arc::clone(redis), retention)),
        redis.background_worker(),
    ))
}

impl Part for Sessions {
    fn build(build: &Build, previous: Option<&Self>) -> Self {
        let counters = previous.map_or_else(Arc::default, |p| Arc::clone(&p.counters));
        let Some(location) = location(build) else {
            return Sessions {
                state: None,
                counters,
            };
        };
        if let Some(state) = previous
            .and_then(|p| p.state.as_ref())
            .filter(|s| s.location == location)
        {
            return Sessions {
                state: Some(Arc::clone(state)),
                counters,
            };
        }
        let revoked: Arc<Revocations> = previous
            .and_then(|p| p.state.as_ref())
            .map_or_else(Arc::default, |s| Arc::clone(&s.revoked));
        let mut state = SessionState {
            location: location.clone(),
            store: OnceLock::new(),
            revoked,
            background: 0,
            pending: None,
        };
        let mut cursor = 0;
        match &location {
            // Opened here, so a normal start serves sessions from the first request.
            Location::Embedded(path) => match open_embedded(path, &state.revoked) {
                Ok((store, at)) => {
                    let _ = state.store.set(store);
                    cursor = at;
                }
                Err(e) => tracing::error!("{e}; retrying every {POLL:?}"),
            },
            Location::Redis(_) => match shared_store(build) {
                Some((store, background)) => {
                    state.pending = Some(store);
                    state.background = background;
                }
                None => tracing::error!(
                    "the configured redis cannot be used: login sessions are unavailable"
                ),
            },
        }
        let state = Arc::new(state);
        spawn_poller(Arc::downgrade(&state), cursor);
        Sessions {
            state: Some(state),
            counters,
        }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        let Some(state) = &self.state else {
            return;
        };
        registry.register(
            "tollgate_sessions",
            "Session events: logins, refused logins, refreshes, grace answers, reused refresh tokens (sessions revoked), logouts, store errors",
            self.counters.events.clone(),
        );
        registry.register(
            "tollgate_sessions_store_ready",
            "Whether the session store is open and its revocations known",
            ConstGauge::new(i64::from(state.store().is_some())),
        );
        registry.register(
            "tollgate_revocations",
            "Revoked sessions and access tokens this instance refuses",
            ConstGauge::new(i64::try_from(state.revoked.len()).unwrap_or(i64::MAX)),
        );
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads the revocation feed into the instance's set every [`POLL`], from `cursor`, and
/// prunes now and then, for as long as the state is in use.
fn spawn_poller(state: Weak<SessionState>, cursor: u64) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!("no runtime for the revocation poller: revocations from other instances will not be seen");
        return;
    };
    runtime.spawn(async move {
        let mut cursor = cursor;
        let mut last_prune = std::time::Instant::now();
        let mut failing = false;
        loop {
            let Some(state) = state.upgrade() else {
                return;
            };
            match state.store.get().or(state.pending.as_ref()) {
                Some(store) => {
                    match store.revocations(state.background, cursor).await {
                        Ok(feed) => {
                            for entry in &feed.entries {
                                state.revoked.add(entry);
                            }
                            cursor = feed.cursor;
                            if let Some(pending) = &state.pending {
                                // Redis: ready once its revocations are known.
                                let _ = state.store.set(Arc::clone(pending));
                            }
                            if failing {
                                tracing::info!("the revocation feed is readable again");
                                failing = false;
                            }
                        }
                        Err(e) => {
                            if !failing {
                                tracing::warn!(error = %e, "cannot read the revocation feed; revocations from other instances are not seen until it answers");
                                failing = true;
                            }
                        }
                    }
                    if last_prune.elapsed() >= PRUNE {
                        last_prune = std::time::Instant::now();
                        let now = unix_now();
                        state.revoked.prune(now);
                        if let Err(e) = store.prune(state.background, now).await {
                            tracing::warn!(error = %e, "cannot prune the session store");
                        }
                    }
                }
                None => {
                    if let Location::Embedded(path) = &state.location {
                        let (path, revoked) = (path.clone(), Arc::clone(&state.revoked));
                        let opened =
                            tokio::task::spawn_blocking(move || open_embedded(&path, &revoked))
                                .await;
                        if let Ok(Ok((store, at))) = opened {
                            tracing::info!("the session store is open");
                            let _ = state.store.set(store);
                            cursor = at;
                        }
                    }
                }
            }
            drop(state);
            tokio::time::sleep(POLL).await;
        }
    });
}

/// A store error as the endpoints report it (the store's own words go to the log only:
/// they may name files or hosts).
pub fn unavailable(
    counters: &SessionCounters,
    error: &SessionError,
) -> crate::errors::GatewayError {
    counters.store_errors.inc();
    tracing::warn!(error = %error, "session store error");
    crate::errors::SessionRefusal::StoreUnavailable.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_hold_until_their_tokens_expire() {
        let r = Revocations::default();
        assert!(!r.is_revoked(Some("s1"), Some(("1001", "t1")), 100));
        r.add(&Revocation {
            kind: Revoked::Session,
            id: "s1".into(),
            until: 200,
        });
        r.add(&Revocation {
            kind: Revoked::Token,
            id: token_key("1001", "t9"),
            until: 150,
        });
        // Seen twice (the feed overlaps): counted once.
        r.add(&Revocation {
            kind: Revoked::Session,
            id: "s1".into(),
            until: 180,
        });
        assert_eq!(r.len(), 2);
        assert!(r.is_revoked(Some("s1"), None, 100));
        assert!(r.is_revoked(None, Some(("1001", "t9")), 100));
        // The same `jti` of another client is not the revoked token.
        assert!(!r.is_revoked(None, Some(("1002", "t9")), 100));
        assert!(r.is_revoked(Some("other"), Some(("1001", "t9")), 149));
        assert!(!r.is_revoked(Some("s2"), Some(("1001", "t1")), 100));
        assert!(!r.is_revoked(Some("s1"), None, 200));
        r.prune(160);
        assert_eq!(r.len(), 1);
        r.prune(200);
        assert_eq!(r.len(), 0);
        assert!(!r.is_revoked(Some("s1"), Some(("1001", "t9")), 100));
        assert_ne!(token_key("a", "b\0c"), token_key("a\0b", "c"));
    }
}
