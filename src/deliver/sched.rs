//! The scheduler's in-memory index of pending deliveries: which may run when, in which order.
//!
//! `by_due` holds only the deliveries that could start now or later: not running, not held
//! behind an earlier delivery of their `order_by` chain, not orphaned. A chain therefore costs one
//! entry however long it is (its first delivery), and the next one enters `by_due` when the first
//! is done. Orphaned deliveries (their rule is in neither the live config nor the config they
//! were accepted under) wait in `orphaned` until a rule of their name returns.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use super::Delivery;
use crate::config::{Rule, Snapshot};

/// The config a delivery was accepted under: it runs with that rule when the live config no
/// longer has a rule of its name.
pub type AcceptedUnder = (Arc<Snapshot>, Arc<Rule>);

#[derive(Default)]
pub struct Sched {
    seq: u64,
    /// Startable deliveries, by (due, arrival).
    pub by_due: BTreeSet<(u64, u64, String)>,
    pub items: HashMap<String, Item>,
    /// Deliveries of one rule with one `order_by` key, in arrival order: only the first runs.
    chains: HashMap<(String, String), VecDeque<String>>,
    /// Held because no rule of their name is known, by arrival.
    orphaned: BTreeSet<(u64, String)>,
}

pub struct Item {
    pub delivery: Delivery,
    pub seq: u64,
    pub running: bool,
    pub orphaned: bool,
    pub accepted_under: Option<AcceptedUnder>,
}

impl Item {
    fn due_key(&self) -> (u64, u64, String) {
        (self.delivery.due_ms, self.seq, self.delivery.id.clone())
    }
}

impl Sched {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn orphaned_len(&self) -> usize {
        self.orphaned.len()
    }

    /// Adds a pending delivery at the end of its chain.
    pub fn insert(&mut self, d: Delivery, accepted_under: Option<AcceptedUnder>) {
        self.seq += 1;
        let seq = self.seq;
        let first_of_chain = match &d.order_key {
            None => true,
            Some(key) => {
                let chain = self
                    .chains
                    .entry((d.rule.clone(), key.clone()))
                    .or_default();
                chain.push_back(d.id.clone());
                chain.len() == 1
            }
        };
        let item = Item {
            delivery: d,
            seq,
            running: false,
            orphaned: false,
            accepted_under,
        };
        if first_of_chain {
            self.by_due.insert(item.due_key());
        }
        self.items.insert(item.delivery.id.clone(), item);
    }

    /// Takes a startable delivery out of `by_due` and marks it running.
    pub fn start(&mut self, id: &str) -> Option<Delivery> {
        let item = self.items.get_mut(id)?;
        self.by_due.remove(&item.due_key());
        item.running = true;
        Some(item.delivery.clone())
    }

    /// Puts a delivery back after a failed attempt (it keeps its place in its chain).
    pub fn reschedule(&mut self, d: Delivery) {
        if let Some(item) = self.items.get_mut(&d.id) {
            item.running = false;
            item.delivery = d;
            self.by_due.insert(item.due_key());
        }
    }

    /// Holds a delivery whose rule is unknown until [`Sched::adopt`] finds one.
    pub fn orphan(&mut self, id: &str) {
        if let Some(item) = self.items.get_mut(id) {
            self.by_due.remove(&item.due_key());
            item.orphaned = true;
            self.orphaned.insert((item.seq, id.to_string()));
        }
    }

    /// Makes the orphaned deliveries whose rule `known` now names startable again; returns how
    /// many.
    pub fn adopt(&mut self, known: impl Fn(&str) -> bool) -> usize {
        let back: Vec<(u64, String)> = self
            .orphaned
            .iter()
            .filter(|(_, id)| self.items.get(id).is_some_and(|i| known(&i.delivery.rule)))
            .cloned()
            .collect();
        for key in &back {
            self.orphaned.remove(key);
            if let Some(item) = self.items.get_mut(&key.1) {
                item.orphaned = false;
                self.by_due.insert(item.due_key());
            }
        }
        back.len()
    }

    /// Forgets a delivery (done, dead, dropped or moved); the next of its chain becomes
    /// startable.
    pub fn remove(&mut self, id: &str) -> Option<Delivery> {
        let item = self.items.remove(id)?;
        self.by_due.remove(&item.due_key());
        self.orphaned.remove(&(item.seq, id.to_string()));
        if let Some(key) = &item.delivery.order_key {
            let chain_key = (item.delivery.rule.clone(), key.clone());
            if let Some(chain) = self.chains.get_mut(&chain_key) {
                let was_first = chain.front().is_some_and(|first| first == id);
                chain.retain(|x| x != id);
                let next = chain.front().cloned();
                if chain.is_empty() {
                    self.chains.remove(&chain_key);
                }
                if was_first
                    && let Some(next) = next
                    && let Some(n) = self.items.get(&next)
                    && !n.running
                    && !n.orphaned
                {
                    self.by_due.insert(n.due_key());
                }
            }
        }
        Some(item.delivery)
    }

    /// Pending deliveries of rule `name`.
    pub fn count_for_rule(&self, name: &str) -> usize {
        self.items
            .values()
            .filter(|i| i.delivery.rule == name)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::DeliveryState;

    fn delivery(id: &str, key: Option<&str>) -> Delivery {
        Delivery {
            id: id.into(),
            rule: "r".into(),
            event: "e".into(),
            body: "{}".into(),
            order_key: key.map(String::from),
            depth: 0,
            created_ms: 0,
            due_ms: 0,
            attempts: 0,
            state: DeliveryState::Pending,
            last_error: None,
            history: vec![],
        }
    }

    fn startable(s: &Sched) -> Vec<String> {
        s.by_due.iter().map(|k| k.2.clone()).collect()
    }

    #[test]
    fn only_the_first_of_a_chain_is_startable() {
        let mut s = Sched::default();
        s.insert(delivery("a", Some("k")), None);
        s.insert(delivery("b", Some("k")), None);
        s.insert(delivery("c", Some("other")), None);
        s.insert(delivery("d", None), None);
        assert_eq!(startable(&s), ["a", "c", "d"]);
        // A running first one holds the chain; so does its retry.
        s.start("a");
        assert_eq!(startable(&s), ["c", "d"]);
        let mut a = s.items["a"].delivery.clone();
        a.due_ms = 10;
        s.reschedule(a);
        assert_eq!(startable(&s), ["c", "d", "a"]);
        s.remove("a");
        assert_eq!(startable(&s), ["b", "c", "d"]);
        s.remove("b");
        assert!(!s.chains.contains_key(&("r".into(), "k".into())));
    }

    #[test]
    fn a_long_blocked_chain_is_one_entry() {
        let mut s = Sched::default();
        for i in 0..10_000 {
            s.insert(delivery(&format!("k{i:05}"), Some("k")), None);
        }
        s.insert(delivery("free", None), None);
        assert_eq!(startable(&s), ["k00000", "free"]);
    }

    #[test]
    fn orphans_wait_until_adopted() {
        let mut s = Sched::default();
        s.insert(delivery("a", None), None);
        s.orphan("a");
        assert!(startable(&s).is_empty());
        assert_eq!(s.orphaned_len(), 1);
        assert_eq!(s.adopt(|rule| rule == "other"), 0);
        assert_eq!(s.adopt(|rule| rule == "r"), 1);
        assert_eq!(startable(&s), ["a"]);
        assert_eq!(s.orphaned_len(), 0);
    }
}
