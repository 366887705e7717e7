//! Sessions in one `redb` file: the default for a single instance.
//!
//! Every change is one write transaction, committed durably (fsynced) before the
//! gateway answers, so a login or a logout survives `kill -9`. redb allows one writer
//! at a time, which makes each rotation atomic. Calls run on Tokio's blocking pool,
//! because a commit waits for the disk.
//!
//! Tables: `families` (id → the family as JSON) and `revocations` (sequence number →
//! feed entry). The sequence number is the feed's cursor.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    decide_revoke, decide_rotation, Family, Feed, Next, Revocation, Revoke, Revoked, Rotation,
    SessionError, SessionStore, When,
};
use crate::BoxFuture;

const FAMILIES: TableDefinition<&str, &[u8]> = TableDefinition::new("families");
const REVOCATIONS: TableDefinition<u64, &str> = TableDefinition::new("revocations");

/// A session store in a local file.
pub struct EmbeddedSessions {
    db: Arc<Database>,
}

impl std::fmt::Debug for EmbeddedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSessions").finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> SessionError {
    SessionError::Embedded(e.to_string())
}

fn decode(bytes: &[u8]) -> Result<Family, SessionError> {
    serde_json::from_slice(bytes).map_err(|e| SessionError::Corrupt(e.to_string()))
}

fn encode(family: &Family) -> Result<Vec<u8>, SessionError> {
    serde_json::to_vec(family).map_err(|e| SessionError::Corrupt(e.to_string()))
}

impl EmbeddedSessions {
    /// Opens (or creates) the store at `path`, creating its directory.
    pub fn open(path: &Path) -> Result<EmbeddedSessions, SessionError> {
        let db = crate::shared_redb(path).map_err(err)?;
        // Create the tables, so that readers find them.
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(FAMILIES).map_err(err)?;
        txn.open_table(REVOCATIONS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(EmbeddedSessions { db })
    }

    /// Runs `f` on the blocking pool.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, SessionError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, SessionError>> {
        let db = Arc::clone(&self.db);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(err)?
        })
    }

    /// Updates one family in one write transaction; `decide` changes it in place and
    /// says whether to write it back and what to append to the feed.
    fn update<T: Send + 'static>(
        &self,
        id: &str,
        decide: impl FnOnce(&mut Family) -> (T, bool, Option<Revocation>) + Send + 'static,
    ) -> BoxFuture<'static, Result<Option<T>, SessionError>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let outcome = {
                let mut families = txn.open_table(FAMILIES).map_err(err)?;
                let stored = match families.get(id.as_str()).map_err(err)? {
                    Some(bytes) => Some(decode(bytes.value())?),
                    None => None,
                };
                let Some(mut family) = stored else {
                    return Ok(None);
                };
                let (outcome, changed, revocation) = decide(&mut family);
                if changed {
                    families
                        .insert(id.as_str(), encode(&family)?.as_slice())
                        .map_err(err)?;
                }
                if let Some(revocation) = revocation {
                    append(&txn, &revocation)?;
                }
                outcome
            };
            txn.commit().map_err(err)?;
            Ok(Some(outcome))
        })
    }
}

impl EmbeddedSessions {
    /// [`SessionStore::revocations`], on the calling thread: for the first read at
    /// startup, so revocations made before a restart hold from the first request on.
    pub fn revocations_now(&self, cursor: u64) -> Result<Feed, SessionError> {
        read_feed(&self.db, cursor)
    }
}

fn read_feed(db: &Database, cursor: u64) -> Result<Feed, SessionError> {
    let txn = db.begin_read().map_err(err)?;
    let feed = txn.open_table(REVOCATIONS).map_err(err)?;
    let mut out = Feed {
        entries: Vec::new(),
        cursor,
    };
    for item in feed.range(cursor.saturating_add(1)..).map_err(err)? {
        let (seq, text) = item.map_err(err)?;
        out.cursor = seq.value();
        if let Some(entry) = Revocation::decode(text.value()) {
            out.entries.push(entry);
        }
    }
    Ok(out)
}

/// Appends one entry to the feed, under the next sequence number.
fn append(txn: &redb::WriteTransaction, revocation: &Revocation) -> Result<(), SessionError> {
    let mut feed = txn.open_table(REVOCATIONS).map_err(err)?;
    let next = match feed.last().map_err(err)? {
        Some((seq, _)) => seq.value() + 1,
        None => 1,
    };
    feed.insert(next, revocation.encode().as_str())
        .map_err(err)?;
    Ok(())
}

impl SessionStore for EmbeddedSessions {
    fn create<'a>(
        &'a self,
        _worker: usize,
        family: &'a Family,
    ) -> BoxFuture<'a, Result<(), SessionError>> {
        let family = family.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut families = txn.open_table(FAMILIES).map_err(err)?;
                if families.get(family.id.as_str()).map_err(err)?.is_some() {
                    return Err(SessionError::Exists);
                }
                families
                    .insert(family.id.as_str(), encode(&family)?.as_slice())
                    .map_err(err)?;
            }
            txn.commit().map_err(err)
        })
    }

    fn rotate<'a>(
        &'a self,
        _worker: usize,
        family: &'a str,
        presented: &'a str,
        next: &'a Next,
        when: When,
    ) -> BoxFuture<'a, Result<Rotation, SessionError>> {
        let (presented, next) = (presented.to_owned(), next.clone());
        let update = self.update(family, move |f| {
            let outcome = decide_rotation(f, &presented, &next, when);
            match &outcome {
                Rotation::Rotated(_) => (outcome, true, None),
                Rotation::Reused { family } => {
                    let revocation = Revocation {
                        kind: Revoked::Session,
                        id: family.clone(),
                        until: f.revoked_until(when),
                    };
                    (outcome, true, Some(revocation))
                }
                _ => (outcome, false, None),
            }
        });
        Box::pin(async move { Ok(update.await?.unwrap_or(Rotation::Unknown)) })
    }

    fn revoke<'a>(
        &'a self,
        _worker: usize,
        family: &'a str,
        proof: Option<&'a str>,
        when: When,
    ) -> BoxFuture<'a, Result<Revoke, SessionError>> {
        let proof = proof.map(str::to_owned);
        let id = family.to_owned();
        let update = self.update(family, move |f| {
            let outcome = decide_revoke(f, proof.as_deref(), when);
            // Announced again when already revoked: the first announcement may be the
            // one that was lost.
            let revocation = (outcome != Revoke::Unknown).then_some(Revocation {
                kind: Revoked::Session,
                id,
                until: f.revoked_until(when),
            });
            (outcome, outcome == Revoke::Revoked, revocation)
        });
        Box::pin(async move { Ok(update.await?.unwrap_or(Revoke::Unknown)) })
    }

    fn deny_token<'a>(
        &'a self,
        _worker: usize,
        token_id: &'a str,
        until: u64,
    ) -> BoxFuture<'a, Result<(), SessionError>> {
        let revocation = Revocation {
            kind: Revoked::Token,
            id: token_id.to_owned(),
            until,
        };
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            append(&txn, &revocation)?;
            txn.commit().map_err(err)
        })
    }

    fn revocations(
        &self,
        _worker: usize,
        cursor: u64,
    ) -> BoxFuture<'_, Result<Feed, SessionError>> {
        self.blocking(move |db| read_feed(db, cursor))
    }

    fn prune(&self, _worker: usize, now: u64) -> BoxFuture<'_, Result<(), SessionError>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut families = txn.open_table(FAMILIES).map_err(err)?;
                // A family is kept until it ends: no token issued from it outlives it
                // (access tokens expire at the session's end at the latest).
                families
                    .retain(|_, bytes| match decode(bytes) {
                        Ok(f) => now < f.ends,
                        // Kept for an operator to look at; never served.
                        Err(_) => true,
                    })
                    .map_err(err)?;
                let mut feed = txn.open_table(REVOCATIONS).map_err(err)?;
                // Keep the last entry even when expired: its number is the cursor.
                let last = feed.last().map_err(err)?.map(|(seq, _)| seq.value());
                feed.retain(|seq, text| {
                    Some(seq) == last || Revocation::decode(text).is_some_and(|r| now < r.until)
                })
                .map_err(err)?;
            }
            txn.commit().map_err(err)
        })
    }
}
