//! Live reload: the config file's folder and every plugin file's folder are watched (so editors'
//! rename-on-save, `git pull` and symlink swaps are seen), SIGHUP asks too; bursts are debounced,
//! the whole new snapshot is built off the request path and swapped in atomically. A failed
//! reload changes nothing. Parsing is [`crate::config`]'s business, not this module's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Action, ConfigError, Snapshot};
use crate::shared::Shared;
use crate::systemd;

/// Quiet time after the last change before reloading: an editor's save is several events.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Why a reload asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    File,
    Signal,
    /// `POST /reload` on the admin endpoint (`zimhook reload`, the unit's `ExecReload=`).
    Admin,
}

/// A reload asked for by SIGHUP or the admin endpoint; `reply`, if any, gets the outcome.
pub struct Request {
    pub trigger: Trigger,
    pub reply: Option<oneshot::Sender<Outcome>>,
}

/// What a reload did: the snapshot now live, or why the old one stays.
pub type Outcome = Result<Arc<Snapshot>, ReloadError>;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is not usable: every problem, with its position.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Settings that only a restart applies were changed.
    #[error(
        "{}: {} cannot change while running; restart zimhook to apply (nothing was changed)",
        path.display(),
        fields.join(", ")
    )]
    NeedsRestart {
        path: PathBuf,
        fields: Vec<&'static str>,
    },
    /// The build task itself failed (it panicked or the runtime is shutting down).
    #[error("reload task failed: {0}")]
    Task(String),
}

impl ReloadError {
    /// One line per problem, `FILE:LINE:COL: message` where the config says where.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Config(e) => e.errors.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Where reloads are asked for.
pub type Requests = mpsc::Sender<Request>;

/// Builds a new snapshot from `path`, checks that nothing that cannot change live did, and
/// swaps it in. On error the running snapshot stays.
pub async fn reload(app: &Arc<Shared>, path: &Path) -> Outcome {
    let path_owned = path.to_path_buf();
    let app_for_build = app.clone();
    let built = tokio::task::spawn_blocking(move || app_for_build.build_snapshot(&path_owned))
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))?;
    let new = built?;
    let current = app.snapshot();
    let mut refused = Vec::new();
    if new.server.listen != current.server.listen {
        refused.push("server.listen");
    }
    if new.store.path != current.store.path {
        refused.push("store.path");
    }
    if new.store.kind != current.store.kind {
        refused.push("store.kind");
    }
    if new.admin.as_ref().map(|a| &a.listen) != current.admin.as_ref().map(|a| &a.listen) {
        refused.push("admin.listen");
    }
    if !refused.is_empty() {
        return Err(ReloadError::NeedsRestart {
            path: path.to_path_buf(),
            fields: refused,
        });
    }
    let new = Arc::new(new);
    app.live.store(new.clone());
    for old in &current.rules {
        if new.rule(&old.name).is_none() {
            let pending = app.queue.pending_for_rule(&old.name);
            if pending > 0 {
                tracing::warn!(
                    rule = %old.name,
                    pending,
                    "rule removed with pending deliveries: those accepted since the start run with the removed rule; those found in the store at start are held as orphaned until a rule of that name returns (or `zimhook deliveries move --rule OLD --to NEW`)"
                );
            }
        }
    }
    app.queue.wake();
    Ok(new)
}

/// Runs reloads for the daemon's lifetime: file changes (debounced) and SIGHUP.
pub async fn run(app: Arc<Shared>, path: PathBuf, mut requests: mpsc::Receiver<Request>) {
    let (tx, mut files) = mpsc::channel::<()>(64);
    let interesting = Arc::new(Mutex::new(BTreeSet::new()));
    let mut watcher = match start_watcher(tx, interesting.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch files; reload on SIGHUP only");
            None
        }
    };
    let mut watched = BTreeSet::new();
    if let Some(w) = watcher.as_mut() {
        rewatch(w, &mut watched, &interesting, &path, &app.snapshot());
    }
    loop {
        let Request { trigger, reply } = tokio::select! {
            Some(()) = files.recv() => {
                // Debounce: wait until the burst is over.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, files.recv()).await {}
                Request { trigger: Trigger::File, reply: None }
            }
            Some(r) = requests.recv() => r,
            else => return,
        };
        systemd::reloading();
        let outcome = reload(&app, &path).await;
        match &outcome {
            Ok(snapshot) => {
                app.record_reload(None);
                tracing::info!(?trigger, config_hash = %&snapshot.hash[..12], rules = snapshot.rules.len(), "config reloaded");
                for w in &snapshot.warnings {
                    tracing::warn!("{w}");
                }
                if let Some(w) = watcher.as_mut() {
                    rewatch(w, &mut watched, &interesting, &path, snapshot);
                }
            }
            Err(e) => {
                let lines = e.lines();
                app.record_reload(Some(lines.first().cloned().unwrap_or_default()));
                for line in &lines {
                    tracing::error!(?trigger, "reload failed, old config kept: {line}");
                }
            }
        }
        systemd::ready(&systemd::summary(&app));
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }
}

type Files = Arc<Mutex<BTreeSet<PathBuf>>>;

/// A watcher that signals `tx` when one of the `interesting` files is created, written,
/// renamed or removed (other files in the same folders, such as the store, are ignored).
fn start_watcher(tx: mpsc::Sender<()>, interesting: Files) -> notify::Result<RecommendedWatcher> {
    notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        // Our own reads of the files must not trigger reloads.
        let relevant = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        let files = interesting.lock().expect("watch list lock");
        if relevant && event.paths.iter().any(|p| files.contains(p)) {
            let _ = tx.try_send(());
        }
    })
}

/// Watches the folders of the config file and of every plugin file in use.
fn rewatch(
    watcher: &mut RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    interesting: &Files,
    config: &Path,
    snapshot: &Snapshot,
) {
    let mut files = BTreeSet::new();
    files.insert(absolute(config));
    for rule in &snapshot.rules {
        if let Action::Plugin(p) = &rule.action {
            files.insert(absolute(&p.path));
        }
    }
    let wanted: BTreeSet<PathBuf> = files.iter().map(|f| folder(f)).collect();
    *interesting.lock().expect("watch list lock") = files;
    for gone in watched.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for dir in wanted.difference(watched) {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch folder");
        }
    }
    *watched = wanted;
}

/// The path as the watcher reports it: its folder resolved, its own name kept (the file itself
/// may be a symlink that gets swapped).
fn absolute(path: &Path) -> PathBuf {
    let dir = folder(path);
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

fn folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
