//! The `plugin` action: a WebAssembly component implementing `zimhook:plugin/handler`, run by
//! the [`crate::wasm`] host. Components are compiled when a config is loaded (never per
//! event; an unchanged file is reused across reloads: `config::plugins`), and each call gets a fresh instance with
//! the rule's time limit and `plugins.memory`. A plugin is a pure function of its input (no
//! files, network or environment), so a trap, a timeout, running out of memory or an `err`
//! answer fails the delivery for good (a dead letter) instead of retrying it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::Instrument;

use super::{Inputs, Outcome, Report};
use crate::config::PluginAction;
use crate::metrics::Metrics;
use crate::wasm::{CallLimits, PluginEvent};

/// One call of the rule's plugin (from the snapshot's catalog) for the run's callback.
pub async fn run(
    action: &PluginAction,
    run: &Inputs<'_>,
    timeout: Duration,
    metrics: &Metrics,
) -> Report {
    let Some(plugin) = run.snapshot.compiled.get(&action.path) else {
        return Outcome::fail(format!(
            "plugin {} is not compiled in this config",
            action.path.display()
        ))
        .into();
    };
    let name = action
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let event = PluginEvent {
        name: run.callback.event().to_string(),
        appid: run.callback.appid().to_string(),
        payload: run.callback.json(),
        config: action.config.clone(),
    };
    let limits = CallLimits {
        timeout,
        memory: run.snapshot.plugins.memory as usize,
    };
    let span = tracing::info_span!("plugin", rule = %run.rule.name, delivery_id = %run.delivery_id);
    let started = Instant::now();
    let result = plugin.handle(event, limits).instrument(span).await;
    metrics.plugin_call(&name, started.elapsed());
    match result {
        Ok(outcome) => Outcome::Ok {
            answer: outcome.response.map(Bytes::from),
            emit: outcome.emit,
        }
        .into(),
        Err(e) => Outcome::fail(format!("plugin {name}: {e}")).into(),
    }
}
