//! Test fixture for zimhook's plugin host, not an example: `handle` sleeps for an hour. The
//! time is spent waiting in a WASI host call, where epoch interruption cannot reach, so the
//! host must enforce the timeout another way.

use std::time::Duration;

use zimhook_plugin::{Event, Handler, Outcome};

struct Sleep;

impl Handler for Sleep {
    fn handle(_event: Event) -> Result<Outcome, String> {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(Outcome::ok())
    }
}

zimhook_plugin::export!(Sleep);
