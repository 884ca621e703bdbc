//! `zimhook run`: loads the config, opens the store, binds the listener, serves until SIGTERM or
//! SIGINT, then drains.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AssembleError};
use crate::config::{self, ConfigError, Listen, Snapshot, StoreKind, StoreSettings};
use crate::deliver::{MemoryStore, RedbStore, Store};
use crate::shared::Shared;
use crate::{admin, reload, server, systemd};

/// How often the systemd status line is refreshed.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The config asks for something this start does not have (exit 78 like a bad config:
    /// restarting the same way will not help).
    #[error("{0}")]
    Setup(String),
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

/// Loads the config at `path` (positions in every error).
pub fn load(path: &Path) -> Result<Snapshot, ConfigError> {
    let snapshot = config::load(path)?;
    for w in &snapshot.warnings {
        tracing::warn!("{w}");
    }
    Ok(snapshot)
}

/// What to do when `server.listen = "systemd"` but no socket came with the start.
pub const NO_SOCKET_PASSED: &str = "server.listen is \"systemd\" but no socket was passed \
    (LISTEN_FDS is not set): zimhook.socket must be running before zimhook.service starts. \
    Under systemd: systemctl stop zimhook; systemctl enable --now zimhook.socket; \
    systemctl start zimhook. Without socket activation, set server.listen to an address \
    (e.g. \"127.0.0.1:8080\")";

/// Binds the configured listener.
pub async fn bind(listen: &Listen) -> Result<TcpListener, DaemonError> {
    match listen {
        Listen::Tcp(addr) => TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}").into()),
        Listen::Systemd => {
            let mut fds = listenfd::ListenFd::from_env();
            let std = fds
                .take_tcp_listener(0)
                .map_err(|e| DaemonError::Setup(format!("server.listen is \"systemd\": {e}")))?
                .ok_or_else(|| DaemonError::Setup(NO_SOCKET_PASSED.into()))?;
            std.set_nonblocking(true).map_err(anyhow::Error::from)?;
            Ok(TcpListener::from_std(std).map_err(anyhow::Error::from)?)
        }
    }
}

/// Opens the configured store (a redb file left by a crash is repaired here).
pub fn open_store(settings: &StoreSettings) -> anyhow::Result<Arc<dyn Store>> {
    match settings.kind {
        StoreKind::Redb => {
            let store = RedbStore::open(&settings.path)?;
            tracing::info!(path = %settings.path.display(), "store open");
            Ok(Arc::new(store))
        }
        StoreKind::Memory => {
            tracing::warn!("store.kind = \"memory\": queued deliveries are lost on restart");
            Ok(Arc::new(MemoryStore::new()))
        }
    }
}

/// What [`start`] may be given instead of building it from the config (tests running a daemon
/// in-process use this; `zimhook run` gives nothing).
#[derive(Default)]
pub struct Parts {
    /// Instead of the store `[store]` names.
    pub store: Option<Arc<dyn Store>>,
    /// Instead of binding `server.listen`.
    pub listener: Option<TcpListener>,
}

/// A daemon [`start`] started: serving until [`Daemon::stop`] is called, then draining.
pub struct Daemon {
    pub app: Arc<Shared>,
    /// Where the callback listener listens.
    pub addr: SocketAddr,
    reloads: reload::Requests,
    stop: CancellationToken,
    serving: JoinHandle<Result<(), DaemonError>>,
    /// The admin endpoint, reloads and the watchdog: ended once serving has.
    helpers: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Asks for a reload, as SIGHUP does.
    pub async fn reload(&self, trigger: reload::Trigger) {
        let request = reload::Request {
            trigger,
            reply: None,
        };
        let _ = self.reloads.send(request).await;
    }

    /// Begins the stop: no new connections; requests in flight and running deliveries get
    /// `server.shutdown_grace` (once, shared); what is unfinished stays queued.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until the daemon has stopped (after [`Daemon::stop`]); then nothing of it runs
    /// and it holds nothing (the store is closed once the last handle to it is dropped).
    pub async fn stopped(self) -> Result<(), DaemonError> {
        let result = match self.serving.await {
            Ok(result) => result,
            Err(e) => Err(DaemonError::Runtime(anyhow::anyhow!(
                "daemon task failed: {e}"
            ))),
        };
        for helper in self.helpers {
            helper.abort();
            let _ = helper.await;
        }
        result
    }
}

/// Starts a daemon on the config at `path`: opens the store, binds the listeners, builds the
/// parts, resumes queued deliveries, and serves callbacks, the admin endpoint, reloads (file
/// changes and [`Daemon::reload`]) and systemd's notify protocol. `zimhook run` is this plus
/// signal handling.
pub async fn start(path: &Path, parts: Parts) -> Result<Daemon, DaemonError> {
    let snapshot = load(path)?;
    let store = match parts.store {
        Some(store) => store,
        None => open_store(&snapshot.store)?,
    };
    let listener = match parts.listener {
        Some(listener) => listener,
        None => bind(&snapshot.server.listen).await?,
    };
    let admin = match &snapshot.admin {
        Some(a) => Some(admin::bind(&a.listen).await?),
        None => None,
    };
    let grace = snapshot.server.shutdown_grace;
    let rules = snapshot.rules.len();
    let hash = snapshot.hash[..12].to_string();
    let app = app::assemble(snapshot, store).map_err(|e| match e {
        AssembleError::Plugins(config) => DaemonError::Config(config),
        other => DaemonError::Runtime(other.into()),
    })?;
    app.queue.start();
    // Reloads: file changes (watched by the reload task), SIGHUP and `POST /reload`.
    let (reloads, reload_rx) = tokio::sync::mpsc::channel(8);
    let mut helpers = Vec::new();
    if let Some(listener) = admin {
        helpers.push(tokio::spawn(admin::serve(
            listener,
            app.clone(),
            reloads.clone(),
        )));
    }
    let addr = listener.local_addr().map_err(anyhow::Error::from)?;
    tracing::info!(
        listen = %addr,
        config = %path.display(),
        config_hash = %hash,
        rules,
        "zimhook listening"
    );
    helpers.push(tokio::spawn(reload::run(
        app.clone(),
        path.to_path_buf(),
        reload_rx,
    )));
    systemd::ready(&systemd::summary(&app));
    if let Some(every) = systemd::watchdog_interval() {
        let http = app.runner.http.clone();
        helpers.push(tokio::spawn(systemd::watchdog(addr, every, http)));
    }
    let stop = CancellationToken::new();
    let serving = tokio::spawn(serve(app.clone(), listener, grace, stop.clone()));
    Ok(Daemon {
        app,
        addr,
        reloads,
        stop,
        serving,
        helpers,
    })
}

/// Serves until `stop`, then drains within one grace: requests in flight and running deliveries
/// share it (the workers keep running while connections drain), so the stop ends by
/// stop + grace.
async fn serve(
    app: Arc<Shared>,
    listener: TcpListener,
    grace: std::time::Duration,
    stop: CancellationToken,
) -> Result<(), DaemonError> {
    let status_app = app.clone();
    let status_ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(STATUS_EVERY);
        loop {
            tick.tick().await;
            systemd::status(&systemd::summary(&status_app));
        }
    });
    let stop_began = Arc::new(std::sync::OnceLock::new());
    let began = stop_began.clone();
    let shutdown = async move {
        stop.cancelled().await;
        let _ = began.set(Instant::now());
        // From here the status says "stopping" until the final one.
        status_ticker.abort();
        systemd::stopping();
    };
    server::serve(listener, app.clone(), shutdown).await?;
    app.set_ready(false);
    let deadline = *stop_began.get_or_init(Instant::now) + grace;
    if !app
        .queue
        .shutdown(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        tracing::warn!("deliveries still running after the grace period stay queued");
    }
    let pending = app.queue.pending_len();
    tracing::info!(pending, "stopped");
    systemd::stopped(&format!(
        "stopped; {pending} pending deliver{} kept in the store",
        if pending == 1 { "y" } else { "ies" }
    ));
    Ok(())
}

/// `zimhook run`: [`start`], SIGHUP reloads, SIGTERM or SIGINT stops.
pub async fn run(path: &Path) -> Result<(), DaemonError> {
    let mut hup = signal(SignalKind::hangup()).map_err(anyhow::Error::from)?;
    let mut term = signal(SignalKind::terminate()).map_err(anyhow::Error::from)?;
    let mut int = signal(SignalKind::interrupt()).map_err(anyhow::Error::from)?;
    let daemon = start(path, Parts::default()).await?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                daemon.reload(reload::Trigger::Signal).await;
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping");
                break;
            }
        }
    }
    daemon.stop();
    daemon.stopped().await
}
