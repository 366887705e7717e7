//! Tollgate's shared state: what a decision about one request remembers of earlier ones.
//!
//! Every kind of state is a trait with an in-process implementation and a Redis one, so
//! one instance needs nothing else and several share exact state:
//!
//! - [`rate`]: rate limiting with GCRA ([`rate::RateStore`]) — in process with
//!   `governor`, or in Redis as one atomic Lua script.
//! - [`replay`]: callback nonces remembered for a window ([`replay::NonceStore`]).
//! - [`sessions`]: login sessions — refresh-token families rotated with reuse
//!   detection, and the revocation feed ([`sessions::SessionStore`]) — in a `redb` file
//!   (durable, one instance) or in Redis.
//! - [`redis`]: the one Redis connection layer every shared feature uses — a pipelined
//!   connection per data-plane worker, short timeouts, and a [`breaker`] so an outage
//!   costs no latency.
//!
//! - [`ledger`]: token credits — balances, two-phase reservations, the journal and
//!   idempotency records ([`ledger::Ledger`]) — in memory over a group-committed log
//!   and a `redb` file, or in Redis as one Lua script per change.
//!
//! Nothing here speaks HTTP.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod ledger;
pub mod members;
pub mod rate;
pub mod redis;
pub mod replay;
pub mod sessions;

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so stores can be chosen at run time (`Arc<dyn RateStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The page cache of each `redb` file. redb's default is 1 GiB, which a busy ledger fills
/// with journal pages it never reads again: the process grew ~20 MB/s under metered load
/// towards it. The working sets (accounts, open reservations, sessions, idempotency
/// records) are small, and a checkpoint's write buffer (half of this) spills to the file.
pub const REDB_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Creates or opens a `redb` file with the bounded cache.
pub fn open_redb(path: &std::path::Path) -> Result<redb::Database, redb::DatabaseError> {
    redb::Database::builder()
        .set_cache_size(REDB_CACHE_BYTES)
        .create(path)
}

/// The open `redb` file at `path`, shared within this process: redb lets one handle
/// hold a file, and the sessions and the callback nonces both live in `[store] path`.
/// Opened (and its directory created) by the first caller; closed when the last lets go.
pub fn shared_redb(
    path: &std::path::Path,
) -> Result<std::sync::Arc<redb::Database>, redb::DatabaseError> {
    use std::sync::{Arc, Mutex, Weak};
    type Open = Vec<(std::path::PathBuf, Weak<redb::Database>)>;
    static OPEN: Mutex<Open> = Mutex::new(Vec::new());
    let key = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    open.retain(|(_, db)| db.strong_count() > 0);
    if let Some(db) = open
        .iter()
        .find(|(p, _)| *p == key)
        .and_then(|(_, db)| db.upgrade())
    {
        return Ok(db);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(redb::StorageError::from)?;
    }
    let db = Arc::new(open_redb(path)?);
    open.push((key, Arc::downgrade(&db)));
    Ok(db)
}
