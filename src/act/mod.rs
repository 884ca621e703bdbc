//! Running one action once, and saying how it went: [`Outcome::Ok`] (with the answer a sync
//! rule replies with), [`Outcome::Retry`] or [`Outcome::Fail`] (permanent). Retry policy,
//! scheduling and records belong to `deliver`, not here.

pub mod command;
pub mod forward;
pub mod plugin;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{Action, Rule, Snapshot};
use crate::metrics::Metrics;
use crate::receive::Callback;
use crate::template::Context;

/// At most this much of a command's stdout and stderr (each) or a forward's response body is
/// kept for the log and the delivery record.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// An event a plugin asked to route like a callback.
pub use crate::wasm::Emitted;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done. `answer` is what a sync rule replies with (command stdout, forward 2xx body, plugin
    /// response); `emit` are events to route next.
    Ok {
        answer: Option<Bytes>,
        emit: Vec<Emitted>,
    },
    /// Worth trying again, after `after` if the other side said so.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Trying again will not help.
    Fail { reason: String },
}

impl Outcome {
    pub fn ok(answer: Option<Bytes>) -> Self {
        Outcome::Ok {
            answer,
            emit: Vec::new(),
        }
    }
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry {
            reason: reason.into(),
            after: None,
        }
    }
    pub fn fail(reason: impl Into<String>) -> Self {
        Outcome::Fail {
            reason: reason.into(),
        }
    }
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Retry { .. } => "retry",
            Outcome::Fail { .. } => "failed",
        }
    }
}

/// What one run reports: the outcome and, for the record, what the action printed or answered.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    pub output: Option<String>,
}

impl From<Outcome> for Report {
    fn from(outcome: Outcome) -> Self {
        Report {
            outcome,
            output: None,
        }
    }
}

/// Runs rules' actions: one for the daemon, shared by the callback path (sync rules) and the
/// delivery workers. Holds what every run shares: the HTTP client (one connection pool) and
/// the metrics plugin calls count in. Plugins come compiled with the snapshot
/// (`Snapshot::compiled`).
#[derive(Clone)]
pub struct ActionRunner {
    pub http: reqwest::Client,
    metrics: Arc<Metrics>,
}

/// What one run of one rule's action gets: the config it runs under, the rule, the callback and
/// the delivery id (stable across retries).
pub struct Inputs<'a> {
    pub snapshot: &'a Snapshot,
    pub rule: &'a Rule,
    pub callback: &'a Callback,
    pub delivery_id: &'a str,
}

impl Inputs<'_> {
    pub fn context(&self) -> Context {
        crate::template::callback_context(self.callback, Some((&self.rule.name, self.delivery_id)))
    }
}

impl ActionRunner {
    pub fn new(metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Ok(ActionRunner {
            http: forward::client()?,
            metrics,
        })
    }

    /// Runs the rule's action once, within the rule's timeout.
    pub async fn run(&self, run: Inputs<'_>) -> Report {
        let timeout = run.rule.timeout;
        match &run.rule.action {
            Action::Command(a) => command::run(a, &run, timeout).await,
            Action::Forward(a) => forward::run(&self.http, a, &run, timeout).await,
            Action::Plugin(a) => plugin::run(a, &run, timeout, &self.metrics).await,
        }
    }
}
