//! The daemon's shared state: the live config snapshot, the delivery queue, the actors.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::act::{Actors, plugin::Plugins};
use crate::config::{self, Snapshot};
use crate::deliver::{DeliveryQueue, Store};
use crate::metrics::Metrics;

pub struct App {
    /// The live config. A request loads it once and uses only that.
    pub live: Arc<ArcSwap<Snapshot>>,
    pub queue: DeliveryQueue,
    pub actors: Actors,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    last_reload_error: Mutex<Option<String>>,
}

impl App {
    /// Builds the daemon around a validated snapshot and an open store: compiles the plugins
    /// the config names, schedules the deliveries the store holds again. Call
    /// [`DeliveryQueue::start`] to run them. A plugin that does not compile fails with a
    /// [`config::ConfigError`] inside the `anyhow::Error`.
    pub fn new(mut snapshot: Snapshot, store: Arc<dyn Store>) -> anyhow::Result<Arc<App>> {
        let metrics = Arc::new(Metrics::new());
        let plugins = Plugins::new(&snapshot.plugins, metrics.clone())?;
        plugins.compile(&mut snapshot, None)?;
        let live = Arc::new(ArcSwap::from_pointee(snapshot));
        let actors = Actors::new(plugins)?;
        let queue = DeliveryQueue::new(store, live.clone(), actors.clone(), metrics.clone())?;
        Ok(Arc::new(App {
            live,
            queue,
            actors,
            metrics,
            ready: AtomicBool::new(true),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_error: Mutex::new(None),
        }))
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// Everything a new snapshot needs, built off the request path: the config parsed and
    /// validated, its secrets resolved, its plugins compiled. Errors as `FILE:LINE:COL: message`
    /// lines.
    pub fn build_snapshot(&self, path: &Path) -> Result<Snapshot, String> {
        let mut snapshot = config::load(path).map_err(|e| e.to_string())?;
        self.actors
            .plugins
            .compile(&mut snapshot, Some(&self.snapshot()))
            .map_err(|e| e.to_string())?;
        Ok(snapshot)
    }

    /// Counts a reload and remembers the error of a failed one (for status lines).
    pub fn record_reload(&self, error: Option<String>) {
        let counter = if error.is_some() {
            &self.reloads_failed
        } else {
            &self.reloads_ok
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics.reload(error.is_none());
        *self.last_reload_error.lock().expect("reload error lock") = error;
    }

    pub fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error
            .lock()
            .expect("reload error lock")
            .clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}
