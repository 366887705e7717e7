//! What a snapshot was built from, as one number, so the reload watcher can tell when
//! the files on disk say something else.
//!
//! The loader hashes exactly the bytes it parsed; [`current`] hashes what is on disk now,
//! in the same order (configuration file, the files it names — keys, API-key lists,
//! credential maps — then policy files by name). Equal numbers mean
//! nothing to reload; a file added, removed or edited changes the number.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// Accumulates files in load order.
pub struct Fingerprint(DefaultHasher);

impl Fingerprint {
    pub fn new() -> Self {
        Fingerprint(DefaultHasher::new())
    }

    /// Adds one file: its path and its bytes (`None` when it could not be read).
    pub fn file(&mut self, path: &Path, contents: Option<&[u8]>) {
        path.hash(&mut self.0);
        contents.hash(&mut self.0);
    }

    pub fn finish(&self) -> u64 {
        self.0.finish()
    }
}

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new()
    }
}

/// The policy files of `dir`, in evaluation order: every `*.toml`, sorted by name.
pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The fingerprint of the configuration as it is on disk now.
pub fn current(config: &Path, referenced: &[PathBuf], policy_dir: &Path) -> u64 {
    let mut f = Fingerprint::new();
    f.file(config, std::fs::read(config).ok().as_deref());
    for file in referenced {
        f.file(file, std::fs::read(file).ok().as_deref());
    }
    for file in policy_files(policy_dir).unwrap_or_default() {
        f.file(&file, std::fs::read(&file).ok().as_deref());
    }
    f.finish()
}
