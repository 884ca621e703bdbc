//! The store interface behind the delivery queue and the replay table, and its in-memory
//! implementation. A durable implementation must make [`Store::accept`] atomic and on disk
//! (fsync) before it returns: the reply 2xx is sent only after it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use bytes::Bytes;

use super::{Delivery, DeliveryState};

/// An entry of the replay table: a signed callback's (appid, nonce, timestamp), the hash of the
/// body it came with, and the reply it got (a duplicate gets the same reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayEntry {
    pub key: Vec<u8>,
    pub body_hash: [u8; 32],
    pub reply: Bytes,
    pub expires_ms: u64,
}

/// What an earlier callback with the same replay key left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub body_hash: [u8; 32],
    pub reply: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Written: the replay entry (if any) and every delivery.
    New,
    /// The replay key was taken meanwhile: nothing was written.
    Existing(Seen),
}

#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// The answer to a write handed to the store, to await without holding a thread.
pub type Ticket<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// A ticket that is answered already.
pub fn answered<T: Send + 'static>(result: Result<T, StoreError>) -> Ticket<T> {
    Box::pin(std::future::ready(result))
}

pub trait Store: Send + Sync + 'static {
    /// Whether the store can write now; the reason when it cannot (a full disk, say).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// The live (unexpired) replay entry for `key`, if any.
    fn check_replay(&self, key: &[u8], now_ms: u64) -> Result<Option<Seen>, StoreError>;
    /// Atomically: unless `replay`'s key is live already, record it and queue `deliveries`.
    /// Durable before it returns.
    fn accept(
        &self,
        replay: Option<&ReplayEntry>,
        deliveries: &[Delivery],
        now_ms: u64,
    ) -> Result<Accepted, StoreError>;
    /// Every pending delivery (on start: the queue to resume).
    fn pending(&self) -> Result<Vec<Delivery>, StoreError>;
    /// Every dead letter.
    fn dead(&self) -> Result<Vec<Delivery>, StoreError>;
    fn get(&self, id: &str) -> Result<Option<Delivery>, StoreError>;
    /// Writes a delivery in the table its state names (moving it from the other one).
    fn save(&self, delivery: &Delivery) -> Result<(), StoreError>;
    /// Removes a delivery, pending or dead. True if it was there.
    fn remove(&self, id: &str) -> Result<bool, StoreError>;
    /// Drops expired replay entries; returns how many.
    fn purge_replay(&self, now_ms: u64) -> Result<usize, StoreError>;

    /// [`Store::accept`] for async callers: the write is handed over now, its answer awaited
    /// later. A store with a writer thread of its own overrides this so that no thread waits;
    /// the default answers at once (right for a store that never blocks).
    fn accept_async(
        &self,
        replay: Option<&ReplayEntry>,
        deliveries: &[Delivery],
        now_ms: u64,
    ) -> Ticket<Accepted> {
        answered(self.accept(replay, deliveries, now_ms))
    }

    /// [`Store::save`] for async callers (see [`Store::accept_async`]).
    fn save_async(&self, delivery: &Delivery) -> Ticket<()> {
        answered(self.save(delivery))
    }

    /// [`Store::remove`] for async callers (see [`Store::accept_async`]).
    fn remove_async(&self, id: &str) -> Ticket<bool> {
        answered(self.remove(id))
    }
}

/// Keeps everything in memory: fast, and gone on restart.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    replay: HashMap<Vec<u8>, (Seen, u64)>,
    pending: HashMap<String, Delivery>,
    dead: HashMap<String, Delivery>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn check_replay(&self, key: &[u8], now_ms: u64) -> Result<Option<Seen>, StoreError> {
        let s = self.inner.lock().expect("store lock");
        Ok(s.replay
            .get(key)
            .filter(|(_, expires)| *expires > now_ms)
            .map(|(seen, _)| seen.clone()))
    }

    fn accept(
        &self,
        replay: Option<&ReplayEntry>,
        deliveries: &[Delivery],
        now_ms: u64,
    ) -> Result<Accepted, StoreError> {
        let mut s = self.inner.lock().expect("store lock");
        if let Some(r) = replay {
            if let Some((seen, expires)) = s.replay.get(&r.key)
                && *expires > now_ms
            {
                return Ok(Accepted::Existing(seen.clone()));
            }
            s.replay.insert(
                r.key.clone(),
                (
                    Seen {
                        body_hash: r.body_hash,
                        reply: r.reply.clone(),
                    },
                    r.expires_ms,
                ),
            );
        }
        for d in deliveries {
            s.pending.insert(d.id.clone(), d.clone());
        }
        Ok(Accepted::New)
    }

    fn pending(&self) -> Result<Vec<Delivery>, StoreError> {
        let s = self.inner.lock().expect("store lock");
        Ok(s.pending.values().cloned().collect())
    }

    fn dead(&self) -> Result<Vec<Delivery>, StoreError> {
        let s = self.inner.lock().expect("store lock");
        Ok(s.dead.values().cloned().collect())
    }

    fn get(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        let s = self.inner.lock().expect("store lock");
        Ok(s.pending.get(id).or_else(|| s.dead.get(id)).cloned())
    }

    fn save(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let mut s = self.inner.lock().expect("store lock");
        match delivery.state {
            DeliveryState::Pending => {
                s.dead.remove(&delivery.id);
                s.pending.insert(delivery.id.clone(), delivery.clone());
            }
            DeliveryState::Dead => {
                s.pending.remove(&delivery.id);
                s.dead.insert(delivery.id.clone(), delivery.clone());
            }
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let mut s = self.inner.lock().expect("store lock");
        Ok(s.pending.remove(id).is_some() | s.dead.remove(id).is_some())
    }

    fn purge_replay(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut s = self.inner.lock().expect("store lock");
        let before = s.replay.len();
        s.replay.retain(|_, (_, expires)| *expires > now_ms);
        Ok(before - s.replay.len())
    }
}
