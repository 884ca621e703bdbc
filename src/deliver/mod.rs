//! Queued deliveries: at-least-once. A delivery is one rule to run for one callback; it is
//! written to the [`Store`] before the callback is answered, then workers run it, retry it with
//! exponential backoff and full jitter, and turn it into a dead letter when its attempts run out
//! or it fails for good. What an action does is not this module's business: see [`crate::act`].
//!
//! The scheduler keeps an in-memory index of the pending deliveries (due time, per-rule
//! concurrency, `order_by` chains); the store is the truth it is rebuilt from on start.

pub mod claims;
pub mod redb_store;
mod sched;
pub mod store;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::act::{ActionRunner, Emitted, Inputs, Outcome};
use crate::config::{RetryPolicy, Rule, Snapshot};
use crate::metrics::Metrics;
use crate::receive::Callback;
pub use claims::{Claim, Claims};
pub use redb_store::RedbStore;
use sched::{AcceptedUnder, Sched};
pub use store::{Accepted, MemoryStore, ReplayEntry, Seen, Store, StoreError};

/// Attempts kept in a delivery's history (the newest).
const HISTORY: usize = 10;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new delivery id: time-ordered, unique, stable across retries (forwards send it as
/// `X-Zimhook-Delivery`, an idempotency key).
pub fn new_id() -> String {
    format!("{:012x}{:016x}", now_ms(), rand::random::<u64>())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Dead,
}

/// One attempt, for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub at_ms: u64,
    pub duration_ms: u64,
    pub outcome: String,
    pub error: Option<String>,
    pub output: Option<String>,
}

/// One rule to run for one callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub rule: String,
    pub event: String,
    /// The callback body as received (or an emitted event's payload).
    pub body: String,
    pub order_key: Option<String>,
    /// 0 for a callback; n for an event emitted n plugin runs away from one.
    pub depth: u8,
    pub created_ms: u64,
    pub due_ms: u64,
    pub attempts: u32,
    pub state: DeliveryState,
    pub last_error: Option<String>,
    pub history: Vec<AttemptRecord>,
}

impl Delivery {
    /// Decodes the stored body back into the callback the rule runs on.
    pub fn callback(&self) -> Result<Callback, crate::receive::DecodeError> {
        let mut cb = Callback::decode(Bytes::from(self.body.clone()))?;
        cb.envelope.event = Some(self.event.clone());
        Ok(cb)
    }
}

/// Turns the events a plugin emitted into deliveries, `depth` runs away from the original
/// callback. Routing is not this module's business: the daemon passes the callback path's own
/// (`handle::deliveries_for_emitted`).
pub type RouteEmitted = fn(&Snapshot, &[Emitted], u8) -> Vec<Delivery>;

impl Delivery {
    /// A new pending delivery of `rule` for a callback with this event and body.
    pub fn new(
        id: String,
        rule: &str,
        event: &str,
        body: String,
        order_key: Option<String>,
        depth: u8,
    ) -> Delivery {
        let now = now_ms();
        Delivery {
            id,
            rule: rule.to_string(),
            event: event.to_string(),
            body,
            order_key,
            depth,
            created_ms: now,
            due_ms: now,
            attempts: 0,
            state: DeliveryState::Pending,
            last_error: None,
            history: Vec::new(),
        }
    }
}

/// Why `deliveries move` did nothing.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("the live config has no rule {0:?}")]
    NoSuchRule(String),
    #[error(transparent)]
    Store(StoreError),
}

/// Why deliveries were not accepted; both answer 503 with `Retry-After`.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("queue is full ({0} pending deliveries)")]
    Full(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The delivery queue: accepts deliveries durably, runs them with workers.
#[derive(Clone)]
pub struct DeliveryQueue {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    claims: Arc<Claims>,
    sched: Mutex<Sched>,
    wake: Notify,
    live: Arc<ArcSwap<Snapshot>>,
    runner: ActionRunner,
    route_emitted: RouteEmitted,
    workers: Arc<Semaphore>,
    max_queued: usize,
    tracker: TaskTracker,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

impl DeliveryQueue {
    /// Opens the queue on `store`, resuming every pending delivery it holds (deliveries that
    /// were running when the daemon stopped are due again: at-least-once). Runs actions with
    /// `runner`; what plugins emit becomes deliveries through `route_emitted`.
    pub fn new(
        store: Arc<dyn Store>,
        live: Arc<ArcSwap<Snapshot>>,
        runner: ActionRunner,
        route_emitted: RouteEmitted,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let snapshot = live.load();
        let mut sched = Sched::default();
        let mut pending = store.pending()?;
        pending.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        for d in pending {
            sched.insert(d, None);
        }
        let inner = Inner {
            store,
            claims: Claims::new(),
            sched: Mutex::new(sched),
            wake: Notify::new(),
            workers: Arc::new(Semaphore::new(snapshot.store.workers)),
            max_queued: snapshot.store.max_queued as usize,
            live,
            runner,
            route_emitted,
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            metrics,
        };
        Ok(DeliveryQueue {
            inner: Arc::new(inner),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn pending_len(&self) -> usize {
        self.inner.sched.lock().expect("sched lock").len()
    }

    /// Pending deliveries held because no rule of their name is known.
    pub fn orphaned_len(&self) -> usize {
        self.inner.sched.lock().expect("sched lock").orphaned_len()
    }

    /// Pending deliveries of rule `name` (orphaned ones included).
    pub fn pending_for_rule(&self, name: &str) -> usize {
        self.inner
            .sched
            .lock()
            .expect("sched lock")
            .count_for_rule(name)
    }

    /// Pending deliveries, oldest first, each with whether it is orphaned.
    pub fn pending(&self) -> Vec<(Delivery, bool)> {
        let s = self.inner.sched.lock().expect("sched lock");
        let mut v: Vec<_> = s
            .items
            .values()
            .map(|i| (i.seq, i.delivery.clone(), i.orphaned))
            .collect();
        v.sort_by_key(|(seq, _, _)| *seq);
        v.into_iter().map(|(_, d, o)| (d, o)).collect()
    }

    /// Wakes the scheduler, e.g. after a reload: orphaned deliveries whose rule came back run.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// A read: cheap enough (no fsync, pages cached) to run on the request's own task.
    pub fn check_replay(&self, key: &[u8]) -> Result<Option<Seen>, StoreError> {
        self.inner.store.check_replay(key, now_ms())
    }

    /// The callbacks in flight in this process, by replay key.
    pub fn claims(&self) -> &Arc<Claims> {
        &self.inner.claims
    }

    /// Durably records the replay entry and the deliveries, then schedules them; `claim` (the
    /// callback's hold on its replay key) is released once both are done.
    ///
    /// Committing and scheduling run on a task of their own: once the write is handed to the
    /// store, what it commits is scheduled in this process whether or not the caller is still
    /// waiting (a client that hangs up cancels the request, not the commit).
    ///
    /// Each delivery remembers the rule of `snapshot` it was accepted under: if a reload removes
    /// or renames that rule before the delivery is done, it still runs with it.
    pub async fn accept(
        &self,
        snapshot: &Arc<Snapshot>,
        replay: Option<ReplayEntry>,
        deliveries: Vec<Delivery>,
        claim: Option<Claim>,
    ) -> Result<Accepted, AcceptError> {
        let pending = self.pending_len();
        if !deliveries.is_empty() && pending + deliveries.len() > self.inner.max_queued {
            return Err(AcceptError::Full(pending));
        }
        let ticket = self
            .inner
            .store
            .accept_async(replay.as_ref(), &deliveries, now_ms());
        let queue = self.clone();
        let snapshot = snapshot.clone();
        let committed = tokio::spawn(async move {
            let accepted = ticket.await?;
            if accepted == Accepted::New && !deliveries.is_empty() {
                let mut s = queue.inner.sched.lock().expect("sched lock");
                for d in deliveries {
                    let under = snapshot
                        .rule(&d.rule)
                        .map(|rule| (snapshot.clone(), rule.clone()));
                    s.insert(d, under);
                }
                drop(s);
                queue.inner.wake.notify_one();
            }
            drop(claim);
            Ok(accepted)
        });
        committed
            .await
            .map_err(|e| AcceptError::Store(StoreError(format!("accept task failed: {e}"))))?
    }

    /// Makes a dead letter pending again, with a fresh count of attempts.
    pub async fn retry(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        let store = self.inner.store.clone();
        let id = id.to_string();
        let revived = blocking(move || {
            let Some(mut d) = store.get(&id)? else {
                return Ok(None);
            };
            if d.state != DeliveryState::Dead {
                return Ok(None);
            }
            d.state = DeliveryState::Pending;
            d.attempts = 0;
            d.due_ms = now_ms();
            store.save(&d)?;
            Ok(Some(d))
        })
        .await?;
        if let Some(d) = &revived {
            self.inner
                .sched
                .lock()
                .expect("sched lock")
                .insert(d.clone(), None);
            self.inner.wake.notify_one();
        }
        Ok(revived)
    }

    /// Re-targets every pending delivery of rule `from` that is not running (orphaned ones
    /// included) to rule `to` of the live config; returns their ids. Their `order_by` key is
    /// rendered again with the new rule's template.
    pub async fn move_rule(&self, from: &str, to: &str) -> Result<Vec<String>, MoveError> {
        let snapshot = self.inner.live.load_full();
        let Some(rule) = snapshot.rule(to).cloned() else {
            return Err(MoveError::NoSuchRule(to.to_string()));
        };
        let moved: Vec<Delivery> = {
            let mut s = self.inner.sched.lock().expect("sched lock");
            let ids: Vec<String> = s
                .items
                .values()
                .filter(|i| i.delivery.rule == from && !i.running)
                .map(|i| i.delivery.id.clone())
                .collect();
            ids.iter().filter_map(|id| s.remove(id)).collect()
        };
        let mut done = Vec::with_capacity(moved.len());
        let mut out = Vec::with_capacity(moved.len());
        for mut d in moved {
            d.rule = rule.name.clone();
            d.order_key = rule.order_by.as_ref().and_then(|t| {
                let cb = d.callback().ok()?;
                let ctx = crate::template::callback_context(&cb, Some((&rule.name, &d.id)));
                snapshot.templates.render(t, &ctx).ok()
            });
            out.push(d.id.clone());
            done.push(d);
        }
        let store = self.inner.store.clone();
        let saved = done.clone();
        let result = blocking(move || {
            for d in &saved {
                store.save(d)?;
            }
            Ok(())
        })
        .await;
        // In memory they follow the new rule whatever the store said: a failed save leaves the
        // old name on disk, and a restart finds them under it again (orphaned, or moved again).
        {
            let mut s = self.inner.sched.lock().expect("sched lock");
            for d in done {
                s.insert(d, None);
            }
        }
        self.inner.wake.notify_one();
        result.map_err(MoveError::Store)?;
        tracing::info!(
            from,
            to,
            count = out.len(),
            "pending deliveries moved to another rule"
        );
        Ok(out)
    }

    /// Drops a pending (not running) delivery, orphaned or not, or a dead letter.
    pub async fn drop_delivery(&self, id: &str) -> Result<bool, StoreError> {
        {
            let mut s = self.inner.sched.lock().expect("sched lock");
            if s.items.get(id).is_some_and(|i| i.running) {
                return Ok(false);
            }
            s.remove(id);
        }
        let store = self.inner.store.clone();
        let id = id.to_string();
        blocking(move || store.remove(&id)).await
    }

    /// Runs the scheduler until [`DeliveryQueue::shutdown`].
    pub fn start(&self) {
        let queue = self.clone();
        tokio::spawn(async move { queue.dispatch().await });
        let queue = self.clone();
        tokio::spawn(async move { queue.purge_replay_periodically().await });
    }

    /// Stops starting attempts and waits up to `grace` for running ones. What did not finish
    /// stays pending in the store.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.stop.cancel();
        self.inner.tracker.close();
        tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok()
    }

    async fn purge_replay_periodically(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.stop.cancelled() => return,
            }
            let store = self.inner.store.clone();
            match blocking(move || store.purge_replay(now_ms())).await {
                Ok(n) if n > 0 => tracing::debug!(purged = n, "expired replay entries removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging replay entries failed"),
            }
        }
    }

    async fn dispatch(&self) {
        let mut seen: Option<Arc<Snapshot>> = None;
        loop {
            let live = self.inner.live.load_full();
            if !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &live)) {
                self.adopt_orphans(&live);
                seen = Some(live);
            }
            let next = self.start_due();
            let sleep = match next {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = self.inner.stop.cancelled() => return,
            }
        }
    }

    /// A new config is live: orphaned deliveries whose rule it has may run again.
    fn adopt_orphans(&self, snapshot: &Snapshot) {
        let adopted = self
            .inner
            .sched
            .lock()
            .expect("sched lock")
            .adopt(|rule| snapshot.rule(rule).is_some());
        if adopted > 0 {
            tracing::info!(
                count = adopted,
                "orphaned deliveries run again: their rule is back"
            );
        }
    }

    /// Starts every due delivery that may run now; returns when the next one falls due.
    ///
    /// A delivery runs the live rule of its name; if there is none, the rule it was accepted
    /// under; if this process never had one (found in the store at start, or retried from the
    /// dead letters), it is held as orphaned until a rule of that name is live again.
    fn start_due(&self) -> Option<u64> {
        let live = self.inner.live.load_full();
        let now = now_ms();
        let mut started = Vec::new();
        let next_due;
        {
            let mut s = self.inner.sched.lock().expect("sched lock");
            let mut free = self.inner.workers.available_permits();
            let mut chosen: Vec<(String, AcceptedUnder, Option<OwnedSemaphorePermit>)> = Vec::new();
            let mut orphans = Vec::new();
            let mut saturated: HashSet<&str> = HashSet::new();
            for (due, _, id) in &s.by_due {
                if *due > now || free == 0 {
                    break;
                }
                let item = &s.items[id];
                let (snapshot, rule) = match live.rule(&item.delivery.rule) {
                    Some(rule) => (live.clone(), rule.clone()),
                    None => match &item.accepted_under {
                        Some(under) => under.clone(),
                        None => {
                            orphans.push(id.clone());
                            continue;
                        }
                    },
                };
                if saturated.contains(rule.name.as_str()) {
                    continue;
                }
                let rule_permit = match &rule.concurrency {
                    Some(sem) => match sem.clone().try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => {
                            saturated.insert(item.delivery.rule.as_str());
                            continue;
                        }
                    },
                    None => None,
                };
                free -= 1;
                chosen.push((id.clone(), (snapshot, rule), rule_permit));
            }
            for id in orphans {
                tracing::warn!(delivery_id = %id, rule = %s.items[&id].delivery.rule, "no rule of this name is live; delivery held as orphaned");
                s.orphan(&id);
            }
            for (id, under, rule_permit) in chosen {
                let Ok(worker) = self.inner.workers.clone().try_acquire_owned() else {
                    break;
                };
                if let Some(delivery) = s.start(&id) {
                    started.push((delivery, under, worker, rule_permit));
                }
            }
            next_due = s
                .by_due
                .range((now + 1, 0, String::new())..)
                .next()
                .map(|k| k.0);
        }
        for (delivery, (snapshot, rule), worker, rule_permit) in started {
            let queue = self.clone();
            self.inner.tracker.spawn(async move {
                queue.attempt(snapshot, rule, delivery).await;
                drop(rule_permit);
                drop(worker);
                queue.inner.wake.notify_one();
            });
        }
        next_due
    }

    /// One attempt of one delivery, and what follows from its outcome.
    async fn attempt(&self, snapshot: Arc<Snapshot>, rule: Arc<Rule>, mut d: Delivery) {
        let started = Instant::now();
        let at_ms = now_ms();
        let report = match d.callback() {
            Ok(callback) => {
                let run = Inputs {
                    snapshot: &snapshot,
                    rule: &rule,
                    callback: &callback,
                    delivery_id: &d.id,
                };
                self.inner.runner.run(run).await
            }
            Err(e) => Outcome::fail(format!("stored body cannot be decoded: {e}")).into(),
        };
        let mut outcome = report.outcome;
        if let Outcome::Ok { emit, .. } = &outcome
            && !emit.is_empty()
        {
            let next = (self.inner.route_emitted)(&snapshot, emit, d.depth + 1);
            if let Err(e) = self.accept(&snapshot, None, next, None).await {
                outcome = Outcome::retry(format!("emitted events could not be queued: {e}"));
            }
        }
        let elapsed = started.elapsed();
        d.attempts += 1;
        let error = match &outcome {
            Outcome::Ok { .. } => None,
            Outcome::Retry { reason, .. } | Outcome::Fail { reason } => Some(reason.clone()),
        };
        d.history.push(AttemptRecord {
            at_ms,
            duration_ms: elapsed.as_millis() as u64,
            outcome: outcome.label().to_string(),
            error: error.clone(),
            output: report.output.clone(),
        });
        if d.history.len() > HISTORY {
            d.history.remove(0);
        }
        d.last_error = error;
        let span = tracing::info_span!("delivery", rule = %d.rule, delivery_id = %d.id, event = %d.event, attempt = d.attempts);
        self.conclude(rule, d, outcome, report.output, elapsed)
            .instrument(span)
            .await;
    }

    /// Records an attempt's outcome: done, retry later, or dead letter.
    async fn conclude(
        &self,
        rule: Arc<Rule>,
        mut d: Delivery,
        outcome: Outcome,
        output: Option<String>,
        elapsed: Duration,
    ) {
        let report = crate::act::Report {
            outcome: outcome.clone(),
            output,
        };
        match outcome {
            Outcome::Ok { .. } => {
                self.inner.metrics.rule_run(&rule.name, "ok", elapsed);
                tracing::info!(
                    outcome = "ok",
                    duration_ms = elapsed.as_millis() as u64,
                    output = report.output.as_deref().map(str::trim_end).unwrap_or(""),
                    "delivered"
                );
                self.inner.sched.lock().expect("sched lock").remove(&d.id);
                if let Err(e) = self.inner.store.remove_async(&d.id).await {
                    tracing::error!(error = %e, "delivered, but removing it from the store failed; it may run again");
                }
            }
            Outcome::Retry { reason, after } if d.attempts < rule.retry.attempts => {
                self.inner.metrics.rule_run(&rule.name, "retry", elapsed);
                let delay = retry_delay(&rule.retry, d.attempts, after);
                d.due_ms = now_ms() + delay.as_millis() as u64;
                tracing::warn!(outcome = "retry", duration_ms = elapsed.as_millis() as u64, retry_in_ms = delay.as_millis() as u64, error = %reason, output = report.output.as_deref().unwrap_or(""), "attempt failed; will retry");
                self.persist(d.clone()).await;
                self.inner.sched.lock().expect("sched lock").reschedule(d);
            }
            Outcome::Retry { reason, .. } | Outcome::Fail { reason } => {
                self.inner.metrics.rule_run(&rule.name, "failed", elapsed);
                tracing::error!(outcome = "dead", duration_ms = elapsed.as_millis() as u64, error = %reason, output = report.output.as_deref().unwrap_or(""), "delivery failed; dead-lettered");
                self.inner.sched.lock().expect("sched lock").remove(&d.id);
                d.state = DeliveryState::Dead;
                self.persist(d).await;
            }
        }
    }

    async fn persist(&self, d: Delivery) {
        if let Err(e) = self.inner.store.save_async(&d).await {
            tracing::error!(delivery_id = %d.id, error = %e, "saving delivery state failed");
        }
    }
}

/// The wait before the next attempt: full jitter under the backoff ceiling, or the target's
/// `Retry-After` kept within [ceiling, 2 × ceiling].
pub fn retry_delay(policy: &RetryPolicy, attempts: u32, retry_after: Option<Duration>) -> Duration {
    let ceiling = policy.ceiling(attempts);
    match retry_after {
        Some(after) => after.clamp(ceiling, ceiling * 2),
        None => {
            let ms = ceiling.as_millis() as u64;
            Duration::from_millis(rand::random_range(0..=ms))
        }
    }
}

/// Runs store work (which may block on disk) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError(format!("store task failed: {e}")))?
}

/// A permit for one run of `rule` under its `concurrency` (none if unlimited); sync runs wait
/// for it, the scheduler only takes free ones.
pub async fn acquire(rule: &Rule) -> Option<OwnedSemaphorePermit> {
    match &rule.concurrency {
        Some(sem) => sem.clone().acquire_owned().await.ok(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_stays_within_bounds() {
        let p = RetryPolicy {
            attempts: 8,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for attempt in 1..10 {
            let d = retry_delay(&p, attempt, None);
            assert!(d <= p.ceiling(attempt));
        }
        // Retry-After is honoured, kept within [ceiling, 2 × ceiling].
        assert_eq!(
            retry_delay(&p, 1, Some(Duration::from_millis(150))),
            Duration::from_millis(150)
        );
        assert_eq!(
            retry_delay(&p, 1, Some(Duration::from_secs(60))),
            Duration::from_millis(200)
        );
        assert_eq!(
            retry_delay(&p, 1, Some(Duration::ZERO)),
            Duration::from_millis(100)
        );
    }
}
