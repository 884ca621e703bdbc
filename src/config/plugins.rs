//! The plugins a config's rules name: the Wasm host shaped by `[plugins]`, and compiling every
//! plugin file into the snapshot's [`Catalog`] (an unchanged file is reused across reloads).

use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{Action, ConfigError, Diagnostic, PluginSettings, Snapshot};
use crate::wasm::{Catalog, HostSettings, PluginHost};

/// Plugin instances alive at once (sync calls and queued workers together); more wait.
const MAX_INSTANCES: u32 = 256;

/// One wasmtime engine for the daemon's lifetime, shaped by `settings` as they are at start (a
/// larger `plugins.memory` needs a restart; a smaller one applies on reload).
pub fn host(settings: &PluginSettings) -> anyhow::Result<PluginHost> {
    PluginHost::new(HostSettings {
        memory_limit: settings.memory as usize,
        max_instances: MAX_INSTANCES,
        cache_dir: settings.cache_dir.clone(),
    })
}

impl Snapshot {
    /// Compiles every plugin the rules name into [`Snapshot::compiled`], reusing those
    /// of `previous` whose file is unchanged. Errors name the rule and where its `plugin` key
    /// is.
    pub fn compile_plugins(
        &mut self,
        host: &PluginHost,
        previous: Option<&Snapshot>,
    ) -> Result<(), ConfigError> {
        let mut catalog = Catalog::default();
        let mut errors = Vec::new();
        for rule in &self.rules {
            let Action::Plugin(action) = &rule.action else {
                continue;
            };
            if catalog.contains(&action.path) {
                continue;
            }
            let fail = |message: String| Diagnostic {
                file: self.path.clone(),
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
                    match host.load(&action.path) {
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
            catalog.insert(action.path.clone(), plugin);
        }
        if !errors.is_empty() {
            return Err(ConfigError { errors });
        }
        self.compiled = catalog;
        Ok(())
    }
}
