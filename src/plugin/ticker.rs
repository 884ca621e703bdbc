//! The epoch ticker: one thread that advances the engine's epoch every millisecond while
//! plugin calls are running, so that a call's epoch deadline fires. It parks after a second
//! with no call in flight, so an idle daemon does not wake a thousand times a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
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
}

impl EpochTicker {
    pub(super) fn start(engine: Engine) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
        });
        let thread = thread::Builder::new().name("zimhook-epoch".into()).spawn({
            let shared = shared.clone();
            move || run(&engine, &shared)
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

fn run(engine: &Engine, shared: &Shared) {
    let mut last_busy = Instant::now();
    while !shared.stop.load(SeqCst) {
        if shared.active.load(SeqCst) > 0 {
            last_busy = Instant::now();
        } else if last_busy.elapsed() >= LINGER {
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
    }
}
