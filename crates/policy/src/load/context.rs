//! The loader's one context, and the readers every section uses for its fields.
//!
//! A [`Loader`] is what one load shares: where files and environment variables come from
//! ([`Sources`]), every diagnostic found so far, and every byte read (the fingerprint the
//! reload watcher compares, and the files it watches). Field readers report their own
//! errors, with the field's place, and return a usable default, so one bad field never
//! hides the next one.

use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use toml::Spanned;

use crate::diagnostic::{Diagnostic, Severity, SourceFile};
use crate::fingerprint::Fingerprint;
use crate::sources::Sources;

/// The directory name that marks published development keys.
pub const DEV_KEYS_DIR: &str = "dev-keys";

/// Whether a duration of zero means something for a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zero {
    /// A zero would make no sense (a timeout, an interval): refused.
    Refused,
    /// Zero is a real value (no leeway).
    Allowed,
}

/// What one load shares.
pub(crate) struct Loader<'s> {
    sources: &'s dyn Sources,
    /// Relative paths in `gateway.toml` are resolved against this directory.
    base: PathBuf,
    pub diags: Vec<Diagnostic>,
    /// Every byte read, in order.
    pub fingerprint: Fingerprint,
    /// Files `gateway.toml` names (keys, API-key lists, credential maps), in the order
    /// read: the reload watcher watches them too.
    pub referenced: Vec<PathBuf>,
}

impl<'s> Loader<'s> {
    pub fn new(sources: &'s dyn Sources, config: &Path) -> Self {
        Loader {
            sources,
            base: config.parent().unwrap_or(Path::new(".")).to_path_buf(),
            diags: Vec::new(),
            fingerprint: Fingerprint::new(),
            referenced: Vec::new(),
        }
    }

    pub fn sources(&self) -> &'s dyn Sources {
        self.sources
    }

    /// `path` (relative to `gateway.toml`'s directory) made absolute.
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.base.join(path)
    }

    pub fn error(
        &mut self,
        src: &SourceFile,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        self.diags.push(src.error(span, message));
    }

    pub fn warning(
        &mut self,
        src: &SourceFile,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        self.diags.push(src.warning(span, message));
    }

    /// A point to ask [`Loader::errors_since`] about.
    pub fn mark(&self) -> usize {
        self.diags.len()
    }

    /// Whether an error (not a warning) was reported since `mark`.
    pub fn errors_since(&self, mark: usize) -> bool {
        self.diags[mark..]
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// Reads a file the configuration is made of (`gateway.toml`, a policy file): its
    /// bytes go into the fingerprint; an unreadable or non-UTF-8 file is an error.
    pub fn read_text(&mut self, path: &Path) -> Option<String> {
        let read = self.sources.read(path);
        let (line, column, problem) = match read {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    self.fingerprint.file(path, Some(text.as_bytes()));
                    return Some(text);
                }
                // Pointed at where the text stops being UTF-8.
                Err(e) => {
                    let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                    let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                    let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
                    let column = valid[line_start..]
                        .iter()
                        .filter(|b| (**b & 0xC0) != 0x80)
                        .count()
                        + 1;
                    (line, column, format!("not UTF-8 ({})", e.utf8_error()))
                }
            },
            Err(e) => (1, 1, format!("cannot read file: {e}")),
        };
        self.fingerprint.file(path, None);
        self.diags.push(Diagnostic {
            file: path.to_path_buf(),
            line,
            column,
            severity: Severity::Error,
            message: problem,
        });
        None
    }

    /// Reads a file a setting names (a key, a key list, a credential map), relative to
    /// `gateway.toml`; warns when it is a published development key. The file is
    /// fingerprinted and watched.
    pub fn read_named(
        &mut self,
        src: &SourceFile,
        path: &Spanned<String>,
        what: &str,
    ) -> Option<(PathBuf, Vec<u8>)> {
        let full = self.resolve(path.get_ref());
        if full.components().any(|c| c.as_os_str() == DEV_KEYS_DIR) {
            self.warning(
                src,
                Some(path.span()),
                format!(
                    "{what} `{}` is a published development key ({DEV_KEYS_DIR}/): for `tollgate demo` only, never in production",
                    path.get_ref()
                ),
            );
        }
        let read = self.sources.read(&full);
        self.fingerprint
            .file(&full, read.as_ref().ok().map(Vec::as_slice));
        self.referenced.push(full.clone());
        match read {
            Ok(bytes) => Some((full, bytes)),
            Err(e) => {
                self.error(
                    src,
                    Some(path.span()),
                    format!("{what}: cannot read {}: {e}", full.display()),
                );
                None
            }
        }
    }

    /// An environment variable, as the sources see it.
    pub fn env(&self, name: &str) -> Option<String> {
        self.sources.env(name)
    }

    /// A secret from exactly one of an environment variable or a file (trailing
    /// whitespace removed); never from the configuration text itself.
    pub fn secret(
        &mut self,
        src: &SourceFile,
        env: &Option<Spanned<String>>,
        file: &Option<Spanned<String>>,
        span: Range<usize>,
        what: &str,
    ) -> Option<Vec<u8>> {
        let bytes = match (env, file) {
            (Some(env), None) => match self.env(env.get_ref()) {
                Some(v) if !v.is_empty() => v.into_bytes(),
                _ => {
                    self.error(
                        src,
                        Some(env.span()),
                        format!(
                            "{what}: environment variable `{}` is not set",
                            env.get_ref()
                        ),
                    );
                    return None;
                }
            },
            (None, Some(file)) => self.read_named(src, file, what)?.1,
            _ => {
                self.error(src, Some(span), format!("{what}: give exactly one of `*_env` or `*_file` (secrets are never written inline)"));
                return None;
            }
        };
        let trimmed = bytes.trim_ascii_end().to_vec();
        if trimmed.is_empty() {
            self.error(src, Some(span), format!("{what}: the secret is empty"));
            return None;
        }
        Some(trimmed)
    }

    /// A duration field: `default` when absent; an error (and `default`) when it does
    /// not parse, or is zero where zero means nothing.
    pub fn duration(
        &mut self,
        src: &SourceFile,
        value: &Option<Spanned<String>>,
        default: Duration,
        zero: Zero,
    ) -> Duration {
        let Some(value) = value else {
            return default;
        };
        match crate::duration::parse(value.get_ref()) {
            Ok(d) if d.is_zero() && zero == Zero::Refused => {
                self.error(
                    src,
                    Some(value.span()),
                    "a duration must be greater than zero",
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(src, Some(value.span()), e);
                default
            }
        }
    }

    /// A whole-number field within `range`: `default` when absent.
    pub fn size(
        &mut self,
        src: &SourceFile,
        value: &Option<Spanned<i64>>,
        default: usize,
        range: RangeInclusive<usize>,
    ) -> usize {
        let Some(value) = value else {
            return default;
        };
        match usize::try_from(*value.get_ref()) {
            Ok(v) if range.contains(&v) => v,
            _ => {
                self.error(
                    src,
                    Some(value.span()),
                    format!("must be between {} and {}", range.start(), range.end()),
                );
                default
            }
        }
    }

    pub fn address(&mut self, src: &SourceFile, value: &Spanned<String>) -> Option<SocketAddr> {
        match value.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    src,
                    Some(value.span()),
                    format!(
                        "`{}` is not a socket address such as `127.0.0.1:8080`",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub fn header_name(&mut self, src: &SourceFile, value: &Spanned<String>) -> Option<HeaderName> {
        match HeaderName::from_bytes(value.get_ref().as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.error(
                    src,
                    Some(value.span()),
                    format!("`{}` is not a valid header name", value.get_ref()),
                );
                None
            }
        }
    }
}
