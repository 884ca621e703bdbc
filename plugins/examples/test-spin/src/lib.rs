//! Test fixture for zimhook's plugin host, not an example: `handle` loops forever, so the host
//! must stop it at its time limit.

use zimhook_plugin::{Event, Handler, Outcome};

struct Spin;

impl Handler for Spin {
    fn handle(_event: Event) -> Result<Outcome, String> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

zimhook_plugin::export!(Spin);
