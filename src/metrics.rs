//! Prometheus metrics (OpenMetrics text at the admin `/metrics`). Recorded at the edges: the
//! reply a callback got, each rule run, each reload; queue depth and dead letters are read at
//! scrape time.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::Snapshot;
use crate::events;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallbackLabels {
    event: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    rule: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigLabels {
    hash: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~100 s
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

/// What `/metrics` reports as it is at the moment of the scrape.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub pending: usize,
    pub orphaned: usize,
    /// `None` when the store cannot say (the gauge keeps its last value).
    pub dead: Option<usize>,
    pub store_up: bool,
    /// The live config's hash.
    pub config_hash: String,
}

/// Every metric zimhook exports.
pub struct Metrics {
    registry: Registry,
    callbacks: Family<CallbackLabels, Counter>,
    rule_runs: Family<RunLabels, Counter>,
    rule_seconds: Family<RuleLabels, Histogram, fn() -> Histogram>,
    plugin_seconds: Family<PluginLabels, Histogram, fn() -> Histogram>,
    reloads: Family<ResultLabels, Counter>,
    queue_depth: Gauge,
    dead_letters: Gauge,
    store_up: Gauge,
    orphaned: Gauge,
    config: Family<ConfigLabels, Gauge>,
    log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let callbacks = Family::<CallbackLabels, Counter>::default();
        registry.register(
            "zimhook_callbacks",
            "Callbacks received, by event and outcome (accepted, duplicate, bad_signature, stale, malformed, too_large, overloaded, ...)",
            callbacks.clone(),
        );
        let rule_runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "zimhook_rule_runs",
            "Rule action runs, by rule and result (ok, retry, failed)",
            rule_runs.clone(),
        );
        let rule_seconds: Family<RuleLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "zimhook_rule_duration_seconds",
            "Time one run of a rule's action took",
            rule_seconds.clone(),
        );
        let plugin_seconds: Family<PluginLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "zimhook_plugin_duration_seconds",
            "Time one plugin call took (instantiate, run, answer)",
            plugin_seconds.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "zimhook_reloads",
            "Config reloads, by result (ok, failed)",
            reloads.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "zimhook_queue_depth",
            "Pending queued deliveries",
            queue_depth.clone(),
        );
        let dead_letters = Gauge::default();
        registry.register(
            "zimhook_dead_letters",
            "Deliveries in the dead-letter list",
            dead_letters.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "zimhook_store_up",
            "1 while the store can write, 0 while it cannot (e.g. a full disk; /status says why)",
            store_up.clone(),
        );
        let orphaned = Gauge::default();
        registry.register(
            "zimhook_orphaned_deliveries",
            "Pending deliveries held because no rule of their name is live",
            orphaned.clone(),
        );
        let config = Family::<ConfigLabels, Gauge>::default();
        registry.register(
            "zimhook_config_info",
            "The live config, by the sha256 of its file (value 1)",
            config.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "zimhook_log_lines_dropped",
            "Log lines dropped because the log writer was too far behind (stderr or the journal slower than the daemon)",
            log_dropped.clone(),
        );
        // An info metric as a gauge of 1: Prometheus's text format has no `info` type.
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("zimhook_build_info", "Build information (value 1)", build);
        Metrics {
            registry,
            callbacks,
            rule_runs,
            rule_seconds,
            plugin_seconds,
            reloads,
            queue_depth,
            dead_letters,
            store_up,
            orphaned,
            config,
            log_dropped,
        }
    }

    /// Counts a callback's reply. The event label is the event name only where it is known
    /// (catalog or a rule's pattern): unsigned senders must not be able to grow the label set.
    pub fn callback(&self, snapshot: &Snapshot, event: Option<&str>, outcome: &str) {
        let event = match event {
            None => "none",
            Some(e) if events::is_known(e) || snapshot.rules.iter().any(|r| r.matches_event(e)) => {
                e
            }
            Some(_) => "other",
        };
        self.callbacks
            .get_or_create(&CallbackLabels {
                event: event.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn rule_run(&self, rule: &str, result: &str, took: Duration) {
        self.rule_runs
            .get_or_create(&RunLabels {
                rule: rule.to_string(),
                result: result.to_string(),
            })
            .inc();
        self.rule_seconds
            .get_or_create(&RuleLabels {
                rule: rule.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn plugin_call(&self, plugin: &str, took: Duration) {
        self.plugin_seconds
            .get_or_create(&PluginLabels {
                plugin: plugin.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }

    /// The text to serve at `/metrics`: OpenMetrics when the scraper asks for it (Prometheus
    /// does), else the classic Prometheus text format (curl, promtool). `now` are the gauges
    /// read at this moment.
    pub fn render(&self, now: &Gauges, openmetrics: bool) -> String {
        self.queue_depth.set(now.pending as i64);
        self.orphaned.set(now.orphaned as i64);
        if let Some(dead) = now.dead {
            self.dead_letters.set(dead as i64);
        }
        self.store_up.set(i64::from(now.store_up));
        let dropped = crate::logging::dropped_lines() as u64;
        self.log_dropped
            .inc_by(dropped.saturating_sub(self.log_dropped.get()));
        self.config.clear();
        self.config
            .get_or_create(&ConfigLabels {
                hash: now.config_hash.clone(),
            })
            .set(1);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        if openmetrics {
            out
        } else {
            to_prometheus_text(&out)
        }
    }
}

/// OpenMetrics → Prometheus text format 0.0.4: counters are described under their `_total`
/// sample name, and there is no `# EOF`.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}
