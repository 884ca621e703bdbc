//! The epoch ticker: one thread that advances the engine's epoch every millisecond while
//! plugin calls are running, so that a call's epoch deadline fires. It parks after a second
//! with no call in flight, so an idle daemon does not wake a thousand times a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// How often the epoch advances: the granularity of plugin time limits.
pub(super) const TICK: Duration = Duration::from_millis(1);

/// How long the ticker keeps ticking with no call in flight before it parks.
const LINGER: Duration = Duration::from_secs(1);

pub(super) struct EpochTicker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    /// Calls in flight.
    active: AtomicUsize,
    /// Whether the thread is parked, or about to park.
    parked: AtomicBool,
    /// Epochs advanced, for tests.
    ticks: AtomicU64,
}

impl EpochTicker {
    pub(super) fn start(engine: Engine) -> std::io::Result<Self> {
        Self::start_with_linger(engine, LINGER)
    }

    fn start_with_linger(engine: Engine, linger: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        });
        let thread = thread::Builder::new().name("zimhook-epoch".into()).spawn({
            let shared = shared.clone();
            move || run(&engine, &shared, linger)
        })?;
        Ok(EpochTicker {
            shared,
            thread: Some(thread),
        })
    }

    /// Marks a call in flight until the guard drops, waking the ticker if it is parked.
    pub(super) fn busy(&self) -> Busy<'_> {
        self.shared.active.fetch_add(1, SeqCst);
        // Paired with `run`: either it sees `active > 0` before parking, or we see `parked`.
        if self.shared.parked.load(SeqCst)
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
        Busy(self)
    }
}

pub(super) struct Busy<'a>(&'a EpochTicker);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.shared.active.fetch_sub(1, SeqCst);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn run(engine: &Engine, shared: &Shared, linger: Duration) {
    let mut last_busy = Instant::now();
    while !shared.stop.load(SeqCst) {
        if shared.active.load(SeqCst) > 0 {
            last_busy = Instant::now();
        } else if last_busy.elapsed() >= linger {
            shared.parked.store(true, SeqCst);
            if shared.active.load(SeqCst) == 0 && !shared.stop.load(SeqCst) {
                thread::park();
            }
            shared.parked.store(false, SeqCst);
            last_busy = Instant::now();
            continue;
        }
        thread::sleep(TICK);
        engine.increment_epoch();
        shared.ticks.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn parks_when_idle_and_ticks_again_for_a_call() {
        let engine = Engine::default();
        let ticker = EpochTicker::start_with_linger(engine, Duration::from_millis(20)).unwrap();
        let shared = ticker.shared.clone();
        wait_for("the ticker to park", || shared.parked.load(SeqCst));
        let parked_at = shared.ticks.load(Relaxed);
        thread::sleep(Duration::from_millis(20));
        assert_eq!(shared.ticks.load(Relaxed), parked_at, "ticked while parked");

        let busy = ticker.busy();
        wait_for("ticks to resume", || {
            shared.ticks.load(Relaxed) >= parked_at + 5
        });
        drop(busy);
        wait_for("the ticker to park again", || shared.parked.load(SeqCst));
    }

    #[test]
    fn dropping_the_ticker_stops_its_thread() {
        let ticker = EpochTicker::start(Engine::default()).unwrap();
        let shared = ticker.shared.clone();
        drop(ticker);
        assert!(shared.stop.load(SeqCst));
        assert_eq!(
            Arc::strong_count(&shared),
            1,
            "the thread still holds its state"
        );
    }
}
