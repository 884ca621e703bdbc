//! Test fixture for zimhook's plugin host, not an example: `handle` always returns an error,
//! naming the event and how many calls this instance has seen (always 1, if every call gets a
//! fresh instance as it must).

use std::sync::atomic::{AtomicU32, Ordering};

use zimhook_plugin::{Event, Handler, Outcome};

static CALLS: AtomicU32 = AtomicU32::new(0);

struct Fail;

impl Handler for Fail {
    fn handle(event: Event) -> Result<Outcome, String> {
        let call = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        Err(format!(
            "test-fail refuses `{}` (call {call} of this instance)",
            event.name
        ))
    }
}

zimhook_plugin::export!(Fail);
