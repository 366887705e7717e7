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

/// The policy files of `dir`, in evaluation order: every `*.toml` whose name does not
/// start with `.`, sorted by name. An entry that is not a readable file (a directory,
/// a symlink whose target is gone) is listed all the same, so loading it is an error:
/// skipping it would drop its rules, a `deny` among them, without a word. Hidden names
/// are editors' (`.#x.toml` lock links, `.x.toml.swp`) and Kubernetes' own.
pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_policy_file_name(p))
        .collect();
    files.sort();
    Ok(files)
}

/// `*.toml`, not hidden.
pub fn is_policy_file_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}

/// Reads a file the configuration names, refusing one over [`MAX_FILE_BYTES`] (a key
/// setting pointed at `/dev/zero` or a huge export would otherwise be read whole, and
/// read again at every reload poll).
pub fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_FILE_BYTES >> 20),
        ));
    }
    Ok(bytes)
}

/// The largest file the configuration may name.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The fingerprint of the configuration as it is on disk now.
pub fn current(config: &Path, referenced: &[PathBuf], policy_dir: &Path) -> u64 {
    let mut f = Fingerprint::new();
    f.file(config, read_capped(config).ok().as_deref());
    for file in referenced {
        f.file(file, read_capped(file).ok().as_deref());
    }
    for file in policy_files(policy_dir).unwrap_or_default() {
        f.file(&file, read_capped(&file).ok().as_deref());
    }
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_never_ends_is_refused_not_read_whole() {
        let e = read_capped(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "larger than 64 MiB");
        let dir = std::env::temp_dir().join(format!("tg-capped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("k");
        std::fs::write(&small, b"key").unwrap();
        assert_eq!(read_capped(&small).unwrap(), b"key");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hidden_files_are_not_policy_files() {
        assert!(is_policy_file_name(Path::new("/p/10-closed.toml")));
        assert!(!is_policy_file_name(Path::new("/p/.#10-closed.toml")));
        assert!(!is_policy_file_name(Path::new("/p/..data")));
        assert!(!is_policy_file_name(Path::new("/p/10-closed.toml~")));
    }
}
