//! What the parts of a running daemon share: the live config, the delivery queue, the action
//! runner, the plugin host, metrics, readiness and reload counts. Built and wired by
//! `app`; used by the callback path, the admin endpoint and reloads.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::act::ActionRunner;
use crate::config::{self, ConfigError, Snapshot};
use crate::deliver::DeliveryQueue;
use crate::metrics::{Gauges, Metrics};
use crate::wasm::PluginHost;

pub struct Shared {
    /// The live config. A request loads it once and uses only that.
    pub live: Arc<ArcSwap<Snapshot>>,
    pub queue: DeliveryQueue,
    pub runner: ActionRunner,
    /// Compiles the plugins of every new config.
    pub plugin_host: PluginHost,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    last_reload_error: Mutex<Option<String>>,
}

impl Shared {
    /// The state around parts already built (`app::assemble` builds them).
    pub fn new(
        live: Arc<ArcSwap<Snapshot>>,
        queue: DeliveryQueue,
        runner: ActionRunner,
        plugin_host: PluginHost,
        metrics: Arc<Metrics>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            live,
            queue,
            runner,
            plugin_host,
            metrics,
            ready: AtomicBool::new(true),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_error: Mutex::new(None),
        })
    }

    /// The gauges `/metrics` reports, read now.
    pub fn gauges(&self) -> Gauges {
        let store = self.queue.store();
        Gauges {
            pending: self.queue.pending_len(),
            orphaned: self.queue.orphaned_len(),
            dead: store.dead().ok().map(|d| d.len()),
            store_up: store.health().is_ok(),
            config_hash: self.snapshot().hash.clone(),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// Everything a new snapshot needs, built off the request path: the config parsed and
    /// validated, its secrets resolved, its plugins compiled.
    pub fn build_snapshot(&self, path: &Path) -> Result<Snapshot, ConfigError> {
        let mut snapshot = config::load(path)?;
        snapshot.compile_plugins(&self.plugin_host, Some(&self.snapshot()))?;
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
