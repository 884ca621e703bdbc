//! What one plugin call owns: its WASI context (closed: no files, network, environment or
//! arguments; stdout and stderr into capped buffers), its memory limiter, and the `host`
//! import the plugin logs through.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::zimhook::plugin::{host, types};

/// Bytes of stdout (and of stderr) kept per call; the rest is counted and dropped.
const OUTPUT_CAP: usize = 64 * 1024;
/// `host.log` messages kept per call, and bytes kept per message.
const MAX_LOG_MESSAGES: u32 = 100;
const MAX_LOG_MESSAGE_LEN: usize = 4096;

/// The `Store` data of one call.
pub(super) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    /// The plugin's file name, for logs.
    pub(super) plugin: Arc<str>,
    logged: u32,
    stdout: CappedPipe,
    stderr: CappedPipe,
}

impl CallState {
    pub(super) fn new(plugin: Arc<str>, memory_limit: usize) -> Self {
        let stdout = CappedPipe::default();
        let stderr = CappedPipe::default();
        // `WasiCtxBuilder::new` already denies every socket address and name lookup; say so
        // anyway, so that a changed default cannot open the network.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        CallState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_limit),
            plugin,
            logged: 0,
            stdout,
            stderr,
        }
    }

    /// Writes what the plugin printed to the log: stdout at info, stderr at warn.
    pub(super) fn log_output(&self) {
        let plugin = &*self.plugin;
        if let Some((text, dropped)) = self.stdout.contents() {
            tracing::info!(plugin, stream = "stdout", dropped_bytes = dropped, "{text}");
        }
        if let Some((text, dropped)) = self.stderr.contents() {
            tracing::warn!(plugin, stream = "stderr", dropped_bytes = dropped, "{text}");
        }
    }

    /// What the plugin last said on stderr (its panic message, if it panicked), for errors.
    pub(super) fn stderr_summary(&self) -> Option<String> {
        self.stderr.summary()
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for CallState {}

impl host::Host for CallState {
    fn log(&mut self, level: host::Level, message: String) {
        self.logged = self.logged.saturating_add(1);
        let plugin = &*self.plugin;
        if self.logged > MAX_LOG_MESSAGES {
            if self.logged == MAX_LOG_MESSAGES + 1 {
                tracing::warn!(
                    plugin,
                    "plugin logged more than {MAX_LOG_MESSAGES} messages in one call; dropping the rest"
                );
            }
            return;
        }
        let message = truncate(&message, MAX_LOG_MESSAGE_LEN);
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, "{message}"),
            host::Level::Info => tracing::info!(plugin, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, "{message}"),
            host::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Caps each linear memory of a call (a Rust plugin has one) and remembers whether the plugin
/// hit the cap, so that the trap that usually follows (Rust aborts when an allocation fails)
/// is reported as what it is.
pub(super) struct MemoryLimiter {
    limit: usize,
    pub(super) hit: bool,
}

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        MemoryLimiter { limit, hit: false }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; the pooling allocator caps their size too.
        Ok(desired <= 100_000)
    }
}

/// An in-memory stdout/stderr that keeps the first `OUTPUT_CAP` bytes and drops the rest
/// silently: a plugin that prints too much must not fail (Rust's `println!` panics on a write
/// error), and must not flood the log.
#[derive(Clone, Default)]
struct CappedPipe(Arc<Mutex<PipeBuffer>>);

#[derive(Default)]
struct PipeBuffer {
    kept: Vec<u8>,
    dropped: usize,
}

impl CappedPipe {
    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = OUTPUT_CAP.saturating_sub(buf.kept.len());
        let keep = bytes.len().min(room);
        buf.kept.extend_from_slice(&bytes[..keep]);
        buf.dropped += bytes.len() - keep;
    }

    /// The text written (lossy UTF-8, blank lines around it trimmed) and the count of bytes
    /// dropped; `None` if nothing was written.
    fn contents(&self) -> Option<(String, usize)> {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if buf.kept.is_empty() && buf.dropped == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&buf.kept).trim().to_owned();
        Some((text, buf.dropped))
    }

    /// A one-line summary of what the plugin last said: a Rust panic message if there is
    /// one (`panicked at src/lib.rs:9:5: boom`), else the last non-empty line.
    fn summary(&self) -> Option<String> {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&buf.kept);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let summary = match lines.iter().rposition(|l| l.contains("panicked at")) {
            Some(start) => {
                let panic = &lines[start..];
                let end = panic
                    .iter()
                    .position(|l| l.starts_with("note: "))
                    .unwrap_or(panic.len());
                let message = panic[..end].join(" ");
                // "thread '<unnamed>' panicked at ..." -> "panicked at ..."
                message[message.find("panicked at")?..].to_owned()
            }
            None => (*lines.last()?).to_owned(),
        };
        Some(truncate(&summary, 512).to_owned())
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready; what does not fit is dropped, not refused.
        Ok(OUTPUT_CAP)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_keeps_the_first_bytes_and_counts_the_rest() {
        let pipe = CappedPipe::default();
        pipe.push(&vec![b'a'; OUTPUT_CAP - 1]);
        pipe.push(b"bcd\n");
        let (text, dropped) = pipe.contents().unwrap();
        assert_eq!(text.len(), OUTPUT_CAP);
        assert!(text.ends_with("ab"));
        assert_eq!(dropped, 3);
        assert!(CappedPipe::default().contents().is_none());
    }

    #[test]
    fn stderr_summary_prefers_the_panic_message() {
        let pipe = CappedPipe::default();
        pipe.push(b"chatter\n\nthread '<unnamed>' panicked at src/lib.rs:3:5:\nboom\nnote: run with `RUST_BACKTRACE=1`\n");
        assert_eq!(
            pipe.summary().as_deref(),
            Some("panicked at src/lib.rs:3:5: boom")
        );
        let pipe = CappedPipe::default();
        pipe.push(b"first\nmemory allocation of 1048576 bytes failed\n\n");
        assert_eq!(
            pipe.summary().as_deref(),
            Some("memory allocation of 1048576 bytes failed")
        );
        assert_eq!(CappedPipe::default().summary(), None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
