//! The daemon's shared state: the live config snapshot, the delivery queue, the actors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::act::{Actors, plugin::Plugins};
use crate::config::Snapshot;
use crate::deliver::{DeliveryQueue, Store};

pub struct App {
    /// The live config. A request loads it once and uses only that.
    pub live: Arc<ArcSwap<Snapshot>>,
    pub queue: DeliveryQueue,
    pub actors: Actors,
    ready: AtomicBool,
}

impl App {
    /// Builds the daemon around a validated snapshot and an open store; deliveries the store
    /// holds are scheduled again. Call [`DeliveryQueue::start`] to run them.
    pub fn new(
        snapshot: Snapshot,
        store: Arc<dyn Store>,
        plugins: Plugins,
    ) -> anyhow::Result<Arc<App>> {
        let live = Arc::new(ArcSwap::from_pointee(snapshot));
        let actors = Actors::new(plugins)?;
        let queue = DeliveryQueue::new(store, live.clone(), actors.clone())?;
        Ok(Arc::new(App {
            live,
            queue,
            actors,
            ready: AtomicBool::new(true),
        }))
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}
