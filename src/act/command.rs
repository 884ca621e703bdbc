//! The `command` action: argv executed directly (never through a shell, so a payload can never
//! become shell code), the callback JSON on stdin, a cleared environment, its own process group,
//! SIGTERM to the group at the timeout and SIGKILL [`KILL_GRACE`] later, output captured up to
//! [`super::OUTPUT_CAP`] per stream. An attempt is bounded by its timeout plus the kill grace:
//! a descendant that left the process group and keeps the pipes open is not waited for. Exit 0
//! is success (stdout is a sync rule's answer); anything else is retried.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::task::JoinHandle;

use super::{Inputs, OUTPUT_CAP, Outcome, Report};
use crate::config::CommandAction;
use crate::template::LazyContext;

/// Time between SIGTERM and SIGKILL for a command past its timeout. A timed-out attempt ends
/// at most this long after its timeout, whatever the command's descendants do.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How long the output pipes may stay open once the program has exited (or its group was
/// killed): a descendant that left the process group can hold them for as long as it lives.
const PIPE_DRAIN: Duration = Duration::from_secs(1);

/// How long to wait for the leader to be reaped after SIGKILL.
const REAP_BOUND: Duration = Duration::from_secs(1);

/// Variables kept from the daemon's own environment; everything else is cleared.
const KEPT_ENV: &[&str] = &["PATH", "HOME", "LANG"];

pub async fn run(action: &CommandAction, run: &Inputs<'_>, timeout: Duration) -> Report {
    let make = || run.context();
    let ctx = LazyContext::new(&make);
    let templates = &run.snapshot.templates;
    let mut argv = Vec::with_capacity(action.argv.len());
    for t in &action.argv {
        match templates.render_lazy(t, &ctx) {
            Ok(a) => argv.push(a),
            Err(e) => return Outcome::fail(e.to_string()).into(),
        }
    }
    let Some((program, args)) = argv.split_first() else {
        return Outcome::fail("command is empty").into();
    };
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    for key in KEPT_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.env("ZIMHOOK_EVENT", run.callback.event())
        .env("ZIMHOOK_RULE", &run.rule.name)
        .env("ZIMHOOK_DELIVERY_ID", run.delivery_id);
    for (key, t) in &action.env {
        match templates.render_lazy(t, &ctx) {
            Ok(v) => {
                cmd.env(key, v);
            }
            Err(e) => return Outcome::fail(e.to_string()).into(),
        }
    }
    if let Some(dir) = &action.workdir {
        cmd.current_dir(dir);
    }
    cmd.process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);

    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::retry(format!("cannot start {program:?}: {e}")).into(),
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));

    let input = run.callback.json();
    let mut stdin = child.stdin.take();
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its stdin is fine: ignore a broken pipe.
            let _ = stdin.write_all(input.as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
        drop(stdin);
    };
    let stdout = Capture::start(child.stdout.take());
    let stderr = Capture::start(child.stderr.take());

    let waited = tokio::time::timeout(timeout, async {
        let (_, status) = tokio::join!(feed, child.wait());
        status
    })
    .await;
    let status = match waited {
        Ok(status) => status,
        Err(_) => {
            let killed_at = Instant::now();
            terminate_group(pgid, &mut child).await;
            // The group is gone; a descendant that left it (setsid) may still hold the pipes.
            // It is not waited for past the kill grace: the attempt ends with what was read.
            let until = (killed_at + KILL_GRACE).min(Instant::now() + PIPE_DRAIN);
            let ((out, _), (err, _)) = tokio::join!(stdout.finish(until), stderr.finish(until));
            return Report {
                outcome: Outcome::retry(format!(
                    "timed out after {}; process group killed",
                    humantime::format_duration(timeout)
                )),
                output: output_text(&out, &err),
            };
        }
    };
    // The program exited; members of its group that still hold the pipes open are stopped so
    // that reading its output cannot hang, and a descendant that left the group is not waited
    // for.
    let until = Instant::now() + PIPE_DRAIN;
    let ((out, out_closed), (err, err_closed)) =
        tokio::join!(stdout.finish(until), stderr.finish(until));
    if !(out_closed && err_closed)
        && let Some(pgid) = pgid
    {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let output = output_text(&out, &err);
    let outcome = match status {
        Ok(s) if s.success() => Outcome::ok(Some(Bytes::from(out))),
        Ok(s) => match s.code() {
            Some(code) => Outcome::retry(format!("exited with status {code}{}", tail(&err))),
            None => Outcome::retry(format!("killed by a signal ({s}){}", tail(&err))),
        },
        Err(e) => Outcome::retry(format!("waiting for the command failed: {e}")),
    };
    Report { outcome, output }
}

/// SIGTERM to the whole group, then SIGKILL after [`KILL_GRACE`] if the leader still runs.
async fn terminate_group(pgid: Option<Pid>, child: &mut tokio::process::Child) {
    let Some(pgid) = pgid else { return };
    let _ = killpg(pgid, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(pgid, Signal::SIGKILL);
        // Reaping a killed process is immediate unless it is stuck in the kernel; then it is
        // left to `kill_on_drop` and the runtime's orphan reaping.
        let _ = tokio::time::timeout(REAP_BOUND, child.wait()).await;
    } else {
        // The leader is gone; make sure no member of its group outlives it.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

/// One output stream, read by its own task into a buffer the attempt shares, so that the attempt
/// can stop reading at any time and keep what arrived. The task never outlives the capture.
struct Capture {
    kept: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Capture {
    fn start<R: AsyncRead + Unpin + Send + 'static>(reader: Option<R>) -> Capture {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(read_capped(reader, kept.clone()));
        Capture { kept, task }
    }

    /// Waits until the stream is closed or `until`, whichever comes first, then stops reading.
    /// Returns what was read and whether the stream was closed.
    async fn finish(mut self, until: Instant) -> (Vec<u8>, bool) {
        let closed = tokio::time::timeout_at(until.into(), &mut self.task)
            .await
            .is_ok();
        if !closed {
            // Wait for the cancelled task to be gone, so that nothing reads (or holds the pipe)
            // once the attempt has its output.
            self.task.abort();
            let _ = (&mut self.task).await;
        }
        let kept = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|e| e.into_inner()));
        (kept, closed)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, kept: Arc<Mutex<Vec<u8>>>) {
    let Some(mut reader) = reader else { return };
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                // Past the cap, keep reading (and dropping) so the command never blocks on a
                // full pipe.
            }
        }
    }
}

fn output_text(out: &[u8], err: &[u8]) -> Option<String> {
    match (out.is_empty(), err.is_empty()) {
        (true, true) => None,
        (false, true) => Some(String::from_utf8_lossy(out).into_owned()),
        (true, false) => Some(format!("stderr: {}", String::from_utf8_lossy(err))),
        (false, false) => Some(format!(
            "{}\nstderr: {}",
            String::from_utf8_lossy(out),
            String::from_utf8_lossy(err)
        )),
    }
}

/// The last line of stderr, to make a failure message useful on its own.
fn tail(err: &[u8]) -> String {
    let text = String::from_utf8_lossy(err);
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => format!(": {}", line.chars().take(200).collect::<String>()),
        None => String::new(),
    }
}
