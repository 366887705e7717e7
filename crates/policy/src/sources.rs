//! Where the loader reads from: the disk, or files and environment variables held in
//! memory (for unit tests and fuzzing, which then need no files).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

/// Files and environment variables the configuration may name.
pub trait Sources {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The policy files of `dir`, in evaluation order: every `*.toml`, sorted by name.
    fn policy_files(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    fn env(&self, name: &str) -> Option<String>;
}

/// The real files and the process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl Sources for Disk {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        crate::fingerprint::read_capped(path)
    }

    fn policy_files(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        crate::fingerprint::policy_files(dir)
    }

    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Files and variables given in code.
#[derive(Debug, Clone, Default)]
pub struct InMemory {
    files: BTreeMap<PathBuf, Vec<u8>>,
    env: HashMap<String, String>,
}

impl InMemory {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn file(mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        self.files.insert(path.into(), contents.into());
        self
    }

    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }
}

impl Sources for InMemory {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn policy_files(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let files: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir) && crate::fingerprint::is_policy_file_name(p))
            .cloned()
            .collect();
        if files.is_empty() && !self.files.keys().any(|p| p.starts_with(dir)) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(files)
    }

    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
}
