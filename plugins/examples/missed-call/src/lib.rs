//! Fans `call_timeout` out: emits one `missed_call` event per callee who did not answer, with
//! payload `{"call_id": ..., "user_id": ..., "appid": ...}`, for rules such as
//!
//! ```toml
//! [[rule]]
//! name = "missed-call-fanout"
//! events = ["call_timeout"]
//! plugin = "plugins/missed_call.wasm"
//!
//! [[rule]]
//! name = "missed-call-push"
//! events = ["missed_call"]
//! forward = "https://push.example.com/missed/{{ user_id }}"
//! ```
//!
//! No config. Other events succeed and emit nothing.

use serde::Serialize;
use zimhook_plugin::{CallTimeout, Emitted, Event, Handler, Outcome};

#[derive(Serialize)]
struct MissedCall<'a> {
    call_id: &'a str,
    user_id: &'a str,
    appid: &'a str,
}

struct MissedCallFanout;

impl Handler for MissedCallFanout {
    fn handle(event: Event) -> Result<Outcome, String> {
        let Some(call) = event.typed::<CallTimeout>()? else {
            return Ok(Outcome::ok());
        };
        let mut outcome = Outcome::ok();
        for user_id in &call.user_ids {
            let missed = MissedCall {
                call_id: &call.call_id,
                user_id,
                appid: &event.appid,
            };
            outcome = outcome.emit(Emitted::new("missed_call", &missed)?);
        }
        Ok(outcome)
    }
}

zimhook_plugin::export!(MissedCallFanout);
