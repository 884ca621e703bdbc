//! The `plugin` action: a WebAssembly component run by the plugin host.

use std::time::Duration;

use super::{Outcome, Report, Run};
use crate::config::PluginAction;

/// The compiled plugins of the live config.
#[derive(Clone, Default)]
pub struct Plugins {}

impl Plugins {
    pub async fn run(&self, action: &PluginAction, _run: &Run<'_>, _timeout: Duration) -> Report {
        Outcome::fail(format!(
            "plugin {}: this build has no plugin host yet",
            action.path.display()
        ))
        .into()
    }
}
