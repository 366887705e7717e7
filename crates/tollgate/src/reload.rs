//! Hot reload: when `gateway.toml` or any policy file changes (polled), or on SIGHUP, a
//! new snapshot is built and swapped in whole. An invalid edit is logged with every
//! diagnostic, counted, and changes nothing: the old snapshot keeps serving.
//!
//! The watcher polls file contents rather than using inotify: it then works the same on
//! every filesystem, with editors that replace files by renaming, and with Kubernetes
//! ConfigMaps (which swap a symlink), at the cost of reading a few small files a second.
//! It compares what is on disk with what the serving snapshot was built from, so an edit
//! made while the gateway was starting is not missed; and the files are read again after
//! each load, so one written while a load ran (in place, in two writes) is loaded again
//! rather than taken as loaded.

use std::path::{Path, PathBuf};

use tokio::signal::unix::Signal;
use tollgate_policy::{fingerprint, Severity};
use tollgate_proxy::SnapshotHandle;

pub async fn watch(config: PathBuf, handle: SnapshotHandle, mut hangup: Signal) {
    // The files as last tried: a rejected edit is not retried until it changes again.
    // `None` when they changed while being loaded: whatever the load read, the next
    // poll reloads.
    let mut attempted = Some(handle.current().fingerprint);
    // What the last rejected edit named beyond what serves: writing the file it could
    // not read (a new certificate's path) is a change to retry on.
    let mut rejected_named: Vec<PathBuf> = Vec::new();
    loop {
        let current = handle.current();
        let (poll, watching, dir) = (
            current.reload.poll_interval,
            current.reload.watch,
            current.policy_dir.clone(),
        );
        let mut watched = current.referenced_files.clone();
        drop(current);
        watched.extend(rejected_named.iter().cloned());
        // What the files say as the load begins (`None`: nothing to load): a file
        // written while it runs (an editor's second write, the rest of a copy) may be
        // read half by it, and must be loaded again, not taken as what the load saw.
        let before = tokio::select! {
            _ = hangup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                Some(fingerprint::current(&config, &watched, &dir))
            }
            _ = tokio::time::sleep(poll), if watching => {
                let now = fingerprint::current(&config, &watched, &dir);
                let changed = Some(now) != attempted;
                if changed {
                    tracing::info!("configuration files changed: reloading");
                }
                changed.then_some(now)
            }
        };
        let Some(before) = before else {
            continue;
        };
        rejected_named = reload(&config, &handle);
        let moved = fingerprint::current(&config, &watched, &dir) != before;
        let current = handle.current();
        let mut watched = current.referenced_files.clone();
        watched.extend(rejected_named.iter().cloned());
        attempted = if moved {
            tracing::info!("configuration files changed while loading: reloading again");
            None
        } else {
            Some(fingerprint::current(&config, &watched, &current.policy_dir))
        };
    }
}

/// Loads and publishes the configuration; when it is refused, the files it named.
fn reload(config: &Path, handle: &SnapshotHandle) -> Vec<PathBuf> {
    match tollgate_policy::load(config) {
        Ok(snapshot) => {
            for warning in &snapshot.warnings {
                tracing::warn!(diagnostic = %warning, "configuration warning");
            }
            let routes = snapshot.routes.len();
            handle.publish(snapshot);
            tracing::info!(routes, "configuration reloaded");
            Vec::new()
        }
        Err(e) => {
            handle.reload_failed();
            // The warnings a rejected configuration also carries are logged as
            // warnings: the errors that refused it must stand out.
            let mut errors = 0;
            for d in &e.0 {
                if d.severity == Severity::Error {
                    errors += 1;
                    tracing::error!(diagnostic = %d, "configuration rejected");
                } else {
                    tracing::warn!(diagnostic = %d, "configuration warning");
                }
            }
            tracing::error!(
                errors,
                warnings = e.0.len() - errors,
                "reload refused: the previous configuration keeps serving"
            );
            e.1
        }
    }
}
