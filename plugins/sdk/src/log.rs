//! Messages for the daemon's log.
//!
//! Each call becomes one `tracing` event in zimhook at the given level, tagged with the plugin's
//! file name and the rule that ran it. Messages are plain text; format them with `format!`:
//!
//! ```ignore
//! zimhook_plugin::log::info(&format!("blocked message {}", msg.msg_id));
//! ```

pub use crate::Level;

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    crate::bindings::zimhook::plugin::host::log(level, message);
}

pub fn trace(message: &str) {
    log(Level::Trace, message);
}

pub fn debug(message: &str) {
    log(Level::Debug, message);
}

pub fn info(message: &str) {
    log(Level::Info, message);
}

pub fn warn(message: &str) {
    log(Level::Warn, message);
}

pub fn error(message: &str) {
    log(Level::Error, message);
}
