//! Test fixture for zimhook's plugin host, not an example: `handle` panics, which traps.

use zimhook_plugin::{Event, Handler, Outcome};

struct Panic;

impl Handler for Panic {
    fn handle(event: Event) -> Result<Outcome, String> {
        panic!("test-panic was handed `{}`", event.name)
    }
}

zimhook_plugin::export!(Panic);
