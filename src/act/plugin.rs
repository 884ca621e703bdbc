//! The `plugin` action: a WebAssembly component implementing `zimhook:plugin/handler`, run by
//! the [`crate::plugin`] host. Components are compiled when a config is loaded (never per
//! event; an unchanged file is reused across reloads), and each call gets a fresh instance with
//! the rule's time limit and `plugins.memory`. A plugin is a pure function of its input (no
//! files, network or environment), so a trap, a timeout, running out of memory or an `err`
//! answer fails the delivery for good (a dead letter) instead of retrying it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::{Outcome, Report, Run};
use crate::config::{Action, ConfigError, Diagnostic, PluginAction, PluginSettings, Snapshot};
use crate::metrics::Metrics;
use crate::plugin::{CallLimits, HostSettings, Plugin, PluginEvent, PluginHost};

/// Plugin instances alive at once (sync calls and queued workers together); more wait.
const MAX_INSTANCES: u32 = 256;

/// The compiled plugins of one config snapshot, by file.
#[derive(Default, Clone)]
pub struct Compiled(HashMap<PathBuf, Plugin>);

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Compiled {
    pub fn get(&self, path: &Path) -> Option<&Plugin> {
        self.0.get(path)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The daemon's plugin host. Cheap to clone.
#[derive(Clone)]
pub struct Plugins {
    host: PluginHost,
    metrics: Arc<Metrics>,
}

impl Plugins {
    /// One wasmtime engine for the daemon's lifetime, shaped by `settings` as they are at start
    /// (a larger `plugins.memory` needs a restart; a smaller one applies on reload).
    pub fn new(settings: &PluginSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let host = PluginHost::new(HostSettings {
            memory_limit: settings.memory as usize,
            max_instances: MAX_INSTANCES,
            cache_dir: settings.cache_dir.clone(),
        })?;
        Ok(Plugins { host, metrics })
    }

    /// Compiles every plugin `snapshot`'s rules name, reusing those of `previous` whose file
    /// is unchanged. Errors name the rule and where its `plugin` key is.
    pub fn compile(
        &self,
        snapshot: &mut Snapshot,
        previous: Option<&Snapshot>,
    ) -> Result<(), ConfigError> {
        let mut compiled = HashMap::new();
        let mut errors = Vec::new();
        for rule in &snapshot.rules {
            let Action::Plugin(action) = &rule.action else {
                continue;
            };
            if compiled.contains_key(&action.path) {
                continue;
            }
            let fail = |message: String| Diagnostic {
                file: snapshot.path.clone(),
                line: action.line,
                col: action.col,
                message: format!("rule {:?}: {message}", rule.name),
            };
            let bytes = match std::fs::read(&action.path) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(fail(format!(
                        "cannot read plugin {}: {e}",
                        action.path.display()
                    )));
                    continue;
                }
            };
            let digest = hex::encode(Sha256::digest(&bytes));
            let reused = previous
                .and_then(|p| p.compiled.get(&action.path))
                .filter(|p| p.digest() == digest)
                .cloned();
            let plugin = match reused {
                Some(p) => p,
                None => {
                    let started = Instant::now();
                    match self.host.load(&action.path) {
                        Ok(p) => {
                            tracing::info!(plugin = %action.path.display(), took_ms = started.elapsed().as_millis() as u64, "plugin compiled");
                            p
                        }
                        Err(e) => {
                            errors.push(fail(e.to_string()));
                            continue;
                        }
                    }
                }
            };
            compiled.insert(action.path.clone(), plugin);
        }
        if !errors.is_empty() {
            return Err(ConfigError { errors });
        }
        snapshot.compiled = Compiled(compiled);
        Ok(())
    }

    /// One call of the rule's plugin for the run's callback.
    pub async fn run(&self, action: &PluginAction, run: &Run<'_>, timeout: Duration) -> Report {
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
        let span =
            tracing::info_span!("plugin", rule = %run.rule.name, delivery_id = %run.delivery_id);
        let started = Instant::now();
        let result = plugin.handle(event, limits).instrument(span).await;
        self.metrics.plugin_call(&name, started.elapsed());
        match result {
            Ok(outcome) => Outcome::Ok {
                answer: outcome.response.map(Bytes::from),
                emit: outcome.emit,
            }
            .into(),
            Err(e) => Outcome::fail(format!("plugin {name}: {e}")).into(),
        }
    }
}
