//! The catalog of event names ZEGO sends (ZIM and Express RTC), for `zimhook check`'s warnings.

/// ZIM (In-app Chat) callback events.
pub const ZIM: &[&str] = &[
    "user_action",
    "room_create",
    "room_enter",
    "room_exit",
    "room_destroy",
    "group_create",
    "group_join",
    "group_exit",
    "group_destroy",
    "send_msg",
    "before_send_msg",
    "bot_msg",
    "call_create",
    "call_cancel",
    "call_accept",
    "call_reject",
    "call_timeout",
    "call_invite",
];

/// Express RTC callback events (same signature scheme).
pub const RTC: &[&str] = &[
    "room_create",
    "room_close",
    "room_login",
    "room_logout",
    "stream_create",
    "stream_close",
    "mix_start",
    "mix_stop",
    "record",
    "snapshot",
    "compose",
    "procedure",
];

/// The one callback ZEGO waits on for its answer.
pub const BEFORE_SEND_MSG: &str = "before_send_msg";

pub fn all() -> impl Iterator<Item = &'static str> {
    ZIM.iter().chain(RTC.iter()).copied()
}

pub fn is_known(name: &str) -> bool {
    all().any(|e| e == name)
}

/// The closest known name, if one is close enough to be a typo.
pub fn suggest(name: &str) -> Option<&'static str> {
    all()
        .map(|e| (strsim::jaro_winkler(name, e), e))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(suggest("call_timout"), Some("call_timeout"));
        assert_eq!(suggest("room_craete"), Some("room_create"));
        assert_eq!(suggest("missed_call"), None);
    }
}
