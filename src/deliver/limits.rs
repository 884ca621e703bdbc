//! Per-rule `concurrency`: how many runs of a rule are going on, counted by the rule's name for
//! the daemon's lifetime. A reload does not reset the count: runs started under the old config
//! still count against the new limit, and a lowered limit holds new runs back until enough of
//! the old ones have finished. The limit itself is read from the rule a run starts under.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::config::Rule;

/// The running counts of every rule that has a `concurrency` limit.
#[derive(Default)]
pub struct Limits {
    rules: Mutex<HashMap<String, Arc<Count>>>,
}

#[derive(Default)]
struct Count {
    running: Mutex<usize>,
    freed: Notify,
}

/// One run of a limited rule; the count goes down when it is dropped.
pub struct Permit {
    count: Arc<Count>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        *self.count.running.lock().expect("limit lock") -= 1;
        self.count.freed.notify_waiters();
    }
}

impl Limits {
    fn count(&self, name: &str) -> Arc<Count> {
        let mut rules = self.rules.lock().expect("limits lock");
        rules.entry(name.to_string()).or_default().clone()
    }

    /// A run of `rule` if it may start now: `Ok(None)` when the rule has no limit, `Err(())`
    /// when `concurrency` runs of it are going on.
    #[allow(clippy::result_unit_err)]
    pub fn try_acquire(&self, rule: &Rule) -> Result<Option<Permit>, ()> {
        let Some(max) = rule.concurrency else {
            return Ok(None);
        };
        take(self.count(&rule.name), max).map(Some).ok_or(())
    }

    /// A run of `rule`, waiting until one of its runs ends if `concurrency` are going on (sync
    /// rules wait; the scheduler only takes free ones).
    pub async fn acquire(&self, rule: &Rule) -> Option<Permit> {
        let max = rule.concurrency?;
        let count = self.count(&rule.name);
        loop {
            let freed = count.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(permit) = take(count.clone(), max) {
                return Some(permit);
            }
            freed.await;
        }
    }
}

fn take(count: Arc<Count>, max: usize) -> Option<Permit> {
    let mut running = count.running.lock().expect("limit lock");
    if *running >= max {
        return None;
    }
    *running += 1;
    drop(running);
    Some(Permit { count })
}
