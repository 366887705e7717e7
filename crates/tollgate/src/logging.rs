//! Logging set-up: `tracing` to stderr, JSON or text, filtered by `log.level`, plus the
//! data plane's access-log lines.
//!
//! `RUST_LOG`, when set, overrides the configured level. Nothing in the data plane logs
//! header values, so credentials cannot reach the logs through it.
//!
//! Lines are appended to one shared buffer that a writer thread empties every 50 ms: a
//! worker never makes a syscall, nor wakes another thread, to log. (A `write` per line
//! cost about a fifth of passthrough throughput on 2 cores, and waking a writer thread
//! per line nearly as much.) When the buffer passes 1 MiB because stderr is slow, the
//! worker that fills it writes it out itself, so memory stays bounded. [`LogGuard`]
//! writes out what is left when the process ends. The writer swaps in its own emptied
//! buffer, so both keep their capacity: a fresh one grew from nothing every 50 ms, and
//! its reallocations faulted in new pages on the request path.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tollgate_policy::snapshot::{Log, LogFormat};
use tollgate_proxy::AccessSink;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const HIGH_WATER: usize = 1024 * 1024;

/// The shared line buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock cannot leave the bytes invalid: keep going.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn append(&self, line: &[u8]) {
        let mut buffer = self.lock();
        buffer.extend_from_slice(line);
        if buffer.len() >= HIGH_WATER {
            write_out(&mut buffer);
        }
    }

    /// Writes out what is queued, through `spare` (empty on return, capacity kept).
    fn flush(&self, spare: &mut Vec<u8>) {
        std::mem::swap(&mut *self.lock(), spare);
        if !spare.is_empty() {
            write_out(spare);
        }
    }
}

fn write_out(bytes: &mut Vec<u8>) {
    let _ = io::stderr().lock().write_all(bytes);
    bytes.clear();
}

/// Writes out queued log lines when dropped.
pub struct LogGuard {
    buffer: Buffer,
}

impl LogGuard {
    /// Where the data plane writes its access-log lines: the same buffer, so lines keep
    /// their order with the rest of the log.
    pub fn access_sink(&self) -> AccessSink {
        let buffer = self.buffer.clone();
        Arc::new(move |line: String| buffer.append(line.as_bytes()))
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.buffer.flush(&mut Vec::new());
    }
}

pub fn init(log: &Log) -> LogGuard {
    let buffer = Buffer::default();
    let flusher = buffer.clone();
    // If the thread cannot start, lines are still written at the high-water mark and at exit.
    let _ = std::thread::Builder::new()
        .name("tollgate-log".into())
        .spawn(move || {
            let mut spare = Vec::new();
            loop {
                std::thread::sleep(FLUSH_EVERY);
                flusher.flush(&mut spare);
            }
        });
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(buffer.clone());
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    LogGuard { buffer }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer {
            line: Vec::with_capacity(256),
            buffer: self.clone(),
        }
    }
}

/// One event's text, appended whole to the shared buffer when the formatter is done.
struct LineBuffer {
    line: Vec<u8>,
    buffer: Buffer,
}

impl Write for LineBuffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.buffer.append(&self.line);
        }
    }
}
