//! The composition root: builds a daemon's parts from a validated config and an open store and
//! wires them together. Only `daemon` (and tests that run a daemon in-process) use it; the
//! parts do not know it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::act::ActionRunner;
use crate::config::{self, ConfigError, Snapshot};
use crate::deliver::{DeliveryQueue, Store, StoreError};
use crate::handle;
use crate::metrics::Metrics;
use crate::shared::Shared;

/// Why a daemon could not be put together.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// A plugin the config names does not compile (positions in every error).
    #[error("{0}")]
    Plugins(#[from] ConfigError),
    /// The store could not be read back.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The plugin host or the HTTP client could not be built.
    #[error("{0:#}")]
    Setup(#[from] anyhow::Error),
}

/// Compiles the plugins `snapshot` names, and builds the action runner, the delivery queue
/// (which schedules the deliveries the store holds again) and the state they share. Call
/// [`DeliveryQueue::start`] to run the deliveries.
pub fn assemble(
    mut snapshot: Snapshot,
    store: Arc<dyn Store>,
) -> Result<Arc<Shared>, AssembleError> {
    let metrics = Arc::new(Metrics::new());
    let plugin_host = config::plugins::host(&snapshot.plugins)?;
    snapshot.compile_plugins(&plugin_host, None)?;
    let live = Arc::new(ArcSwap::from_pointee(snapshot));
    let runner = ActionRunner::new(metrics.clone())?;
    let queue = DeliveryQueue::new(
        store,
        live.clone(),
        runner.clone(),
        handle::deliveries_for_emitted,
        metrics.clone(),
    )?;
    Ok(Shared::new(live, queue, runner, plugin_host, metrics))
}
