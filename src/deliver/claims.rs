//! Callbacks in flight, by replay key: the first copy of a callback claims its key before
//! anything runs; a copy arriving meanwhile waits until the claim is released and then looks
//! again (by then the first copy's reply is in the replay table, or the first copy failed and
//! nothing of it was kept). A claim is released when it is dropped, so a request that is
//! cancelled (its client hung up) releases it too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The claims of one process.
#[derive(Default)]
pub struct Claims {
    held: Mutex<HashMap<Vec<u8>, watch::Receiver<()>>>,
}

/// A held claim on one replay key; dropping it releases the key and wakes the waiters.
pub struct Claim {
    key: Vec<u8>,
    claims: Arc<Claims>,
    // Dropped after `Drop::drop` has removed the entry: waiters wake to find the key free.
    _released: watch::Sender<()>,
}

impl Claims {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Claims `key`, or says whom to wait for: the receiver's `changed()` ends once the holder
    /// lets go.
    pub fn try_claim(self: &Arc<Self>, key: Vec<u8>) -> Result<Claim, watch::Receiver<()>> {
        let mut held = self.held.lock().expect("claims lock");
        if let Some(rx) = held.get(&key) {
            return Err(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        held.insert(key.clone(), rx);
        Ok(Claim {
            key,
            claims: self.clone(),
            _released: tx,
        })
    }

    /// Callbacks in flight.
    pub fn len(&self) -> usize {
        self.held.lock().expect("claims lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .held
            .lock()
            .expect("claims lock")
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first_to_be_released() {
        let claims = Claims::new();
        let Ok(first) = claims.try_claim(b"k".to_vec()) else {
            panic!("a free key is claimed");
        };
        let Err(mut wait) = claims.try_claim(b"k".to_vec()) else {
            panic!("a held key is not claimed twice");
        };
        assert!(claims.try_claim(b"other".to_vec()).is_ok());
        let waiter = tokio::spawn(async move {
            let _ = wait.changed().await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(first);
        waiter.await.unwrap();
        assert!(claims.try_claim(b"k".to_vec()).is_ok());
        assert!(claims.is_empty());
    }
}
