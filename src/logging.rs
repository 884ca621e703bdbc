//! Log setup: `tracing` to stderr as text, JSON (`--log-format json`), or, when systemd runs
//! the daemon with stderr connected to the journal (`JOURNAL_STREAM`), text with syslog level
//! prefixes (`<3>` error … `<7>` debug) so that `journalctl -p warning` works, and no timestamp
//! of our own (the journal adds one).

use std::fmt;
use std::sync::OnceLock;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Lines waiting for the log writer thread at most, unless `log.buffer_lines` says otherwise;
/// beyond that, new lines are dropped (and counted, see [`dropped_lines`]) rather than slowing
/// the callbacks down.
pub const BUFFERED_LINES: usize = 16_384;

/// The buffers `log.buffer_lines` may ask for.
pub const BUFFER_LINES: std::ops::RangeInclusive<usize> = 1..=1_000_000;

static DROPPED: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Flushes the lines still buffered when dropped: hold it until the daemon has stopped.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Installs the global subscriber. `level` is a level or a filter (`"info"`,
/// `"zimhook=debug,info"`). Lines are formatted on the thread that logs them and written to
/// stderr by a writer thread of their own, through a buffer of `buffer_lines` lines
/// ([`BUFFERED_LINES`] by default), so a slow stderr (a busy journal, a full pipe) never holds
/// a request up.
pub fn init(format: LogFormat, level: &str, buffer_lines: usize) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(buffer_lines.max(1))
        .thread_name("zimhook-log")
        // Buffered: the writer thread drains every line waiting, then flushes, so a burst of
        // lines costs one write(2), not one each.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text if under_journald() => builder
            .event_format(Journald(Format::default().without_time()))
            .init(),
        LogFormat::Text => builder.init(),
    }
    LogGuard(guard)
}

/// Log lines dropped because the writer was its buffer behind (0 before [`init`]).
pub fn dropped_lines() -> usize {
    DROPPED.get().map_or(0, |c| c.dropped_lines())
}

/// How bad a line a command prints for people is, as a syslog priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

/// Prints `text` to stderr, line by line, each prefixed with `<N>` (its syslog priority) when
/// stderr is the journal: a command run by the unit (`ExecStartPre=`, `ExecReload=`) then
/// logs its errors as errors, so `journalctl -p warning` shows why a start or reload was
/// refused. On a terminal the lines are printed as they are.
pub fn report(priority: Priority, text: &str) {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let journal = *JOURNAL.get_or_init(under_journald);
    for line in text.lines() {
        if journal {
            eprintln!("<{}>{line}", priority as u8);
        } else {
            eprintln!("{line}");
        }
    }
}

/// stderr is the journal's stream when `JOURNAL_STREAM` names stderr's device and inode.
fn under_journald() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let stream = stream.to_string_lossy();
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

/// syslog priority of a tracing level.
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

struct Journald(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}
