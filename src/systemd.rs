//! systemd's notify protocol: `READY=1`, `RELOADING=1` (with `MONOTONIC_USEC`), `STOPPING=1`,
//! `STATUS=`, and `WATCHDOG=1` pings. Without `NOTIFY_SOCKET` every call does nothing.
//! Commands never see `NOTIFY_SOCKET` or `LISTEN_*`: their environment is cleared.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::shared::Shared;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with the monotonic timestamp systemd asks for.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The last status of a process about to exit: `STATUS=line`, then a `BARRIER=1` so that
/// systemd has read it before the process is gone (a message from a main PID that already
/// exited is dropped, and `systemctl status` would keep showing "stopping").
pub fn stopped(line: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    send(&[NotifyState::Status(line)]);
    if let Err(e) = barrier(Duration::from_secs(1)) {
        tracing::debug!(error = %e, "sd_notify barrier failed");
    }
}

/// sd_notify_barrier(3): sends `BARRIER=1` with the write end of a pipe and waits (at most
/// `timeout`) until systemd has closed it, which it does after handling every earlier message.
fn barrier(timeout: Duration) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::fd::AsFd;
    let (read, write) = nix::unistd::pipe()?;
    sd_notify::notify_with_fds(&[NotifyState::Custom("BARRIER=1")], &[write.as_fd()])?;
    drop(write);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1];
        let _ = tx.send(std::fs::File::from(read).read(&mut buf));
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => r.map(drop),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer to BARRIER=1",
        )),
    }
}

pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// The interval to ping the watchdog at: half of `WATCHDOG_USEC`, when systemd set one.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Pings the watchdog while the daemon really serves: each ping follows a successful
/// `GET /healthz` through the listener, so a wedged runtime or listener stops the pings and
/// systemd restarts the service.
pub async fn watchdog(addr: SocketAddr, every: Duration, http: reqwest::Client) {
    let url = format!("http://{addr}/healthz");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let healthy = http
            .get(&url)
            .timeout(every.max(Duration::from_millis(100)))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if healthy {
            send(&[NotifyState::Watchdog]);
        } else {
            tracing::warn!(%url, "health check failed; watchdog not pinged");
        }
    }
}

/// The one-line summary systemd shows in `systemctl status`.
pub fn summary(app: &Arc<Shared>) -> String {
    let s = app.snapshot();
    let mut line = format!(
        "serving {} rule{}, config {}, {} pending",
        s.rules.len(),
        if s.rules.len() == 1 { "" } else { "s" },
        &s.hash[..12],
        app.queue.pending_len()
    );
    if let Err(err) = app.queue.store().health() {
        line.push_str(&format!("; store failing: {err}"));
    }
    if let Some(err) = app.last_reload_error() {
        line.push_str(&format!("; last reload failed: {err}"));
    }
    line
}
