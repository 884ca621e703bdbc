//! The catalog of event names ZEGO sends (ZIM, Express RTC and the other products of
//! `zego-callbacks.md` §6), for `zimhook check`'s warnings and for rules on readable aliases.
//!
//! A product whose event is a number has names `family.number` (`cloud_recording.1`), and,
//! where the docs' table gives the number a meaning, an alias (`cloud_recording.files_uploaded`)
//! that rules may name instead.

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

/// RTC single-stream transcoding events.
pub const RTC_TRANSCODING: &[&str] = &["transcode_start", "transcode_stop"];

/// RTC stream moderation (Shumei) events.
pub const RTC_MODERATION: &[&str] = &[
    "censor_audio_v2_result",
    "censor_audio_v2_status",
    "censor_video_v2_audio_result",
    "censor_video_v2_img_result",
    "censor_video_v2_audio_status",
    "censor_video_v2_img_status",
];

/// AI Agent events. `AgentSpeakAction` is deprecated, and the docs' `AgentInstanceStatus`
/// sample still carries that name: both are accepted.
pub const AI_AGENT: &[&str] = &[
    "ASRResult",
    "LLMResult",
    "Exception",
    "Interrupted",
    "UserSpeakAction",
    "AgentInstanceStatus",
    "UserAudioData",
    "AgentInstanceCreated",
    "AgentInstanceDeleted",
    "AgentInstanceMetaInfo",
    "AgentSpeakAction",
];

/// Real-time ASR events (`ASRResult` and `Exception` are AI Agent's names too; AI Agent bodies
/// carry `AgentInstanceId`).
pub const ASR: &[&str] = &["ASRResult", "TranslationResult", "Exception"];

/// SuperBoard file conversion events.
pub const SUPER_BOARD: &[&str] = &["cvt_finish"];

/// Cloud Recording's `event_type`s: (name, alias).
pub const CLOUD_RECORDING: &[(&str, &str)] = &[
    ("cloud_recording.1", "cloud_recording.files_uploaded"),
    ("cloud_recording.2", "cloud_recording.ended_abnormally"),
    ("cloud_recording.3", "cloud_recording.image_download_failed"),
    ("cloud_recording.4", "cloud_recording.no_stream"),
    ("cloud_recording.5", "cloud_recording.completed"),
    ("cloud_recording.6", "cloud_recording.stream_missing"),
    ("cloud_recording.7", "cloud_recording.uploading"),
    ("cloud_recording.102", "cloud_recording.segment_uploaded"),
    ("cloud_recording.201", "cloud_recording.paused"),
    ("cloud_recording.202", "cloud_recording.resumed"),
];

/// Cloud Player's `EventType`s: player tasks 1–4, upload tasks 10001–10006.
pub const CLOUD_PLAYER: &[(&str, &str)] = &[
    ("cloud_player.1", "cloud_player.player_created"),
    ("cloud_player.2", "cloud_player.player_destroyed"),
    ("cloud_player.3", "cloud_player.player_status_changed"),
    ("cloud_player.4", "cloud_player.player_exception"),
    ("cloud_player.10001", "cloud_player.uploaded"),
    ("cloud_player.10002", "cloud_player.upload_failed"),
    ("cloud_player.10003", "cloud_player.upload_status_changed"),
    ("cloud_player.10004", "cloud_player.upload_cancel_failed"),
    ("cloud_player.10005", "cloud_player.upload_exception"),
    ("cloud_player.10006", "cloud_player.upload_expired"),
];

/// Digital Human's `EventType`s.
pub const DIGITAL_HUMAN: &[(&str, &str)] = &[
    ("digital_human.3", "digital_human.stream_task_status"),
    ("digital_human.4", "digital_human.drive_task_status"),
];

/// Mini Game's `ReportType`s.
pub const MINI_GAME: &[(&str, &str)] = &[
    ("mini_game.1", "mini_game.game_started"),
    ("mini_game.2", "mini_game.game_settled"),
];

/// The one callback ZEGO waits on for its answer.
pub const BEFORE_SEND_MSG: &str = "before_send_msg";

fn numbered() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    CLOUD_RECORDING
        .iter()
        .chain(CLOUD_PLAYER)
        .chain(DIGITAL_HUMAN)
        .chain(MINI_GAME)
}

/// Every catalogued name: the named events, the numbered ones and their aliases.
pub fn all() -> impl Iterator<Item = &'static str> {
    ZIM.iter()
        .chain(RTC)
        .chain(RTC_TRANSCODING)
        .chain(RTC_MODERATION)
        .chain(AI_AGENT)
        .chain(ASR)
        .chain(SUPER_BOARD)
        .copied()
        .chain(numbered().flat_map(|(name, alias)| [*name, *alias]))
}

/// The readable alias of a numbered event name (`cloud_recording.1` →
/// `cloud_recording.files_uploaded`).
pub fn alias(name: &str) -> Option<&'static str> {
    numbered().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// The numbered name an alias stands for (`cloud_recording.files_uploaded` →
/// `cloud_recording.1`); a name that is no alias is its own.
pub fn unalias(name: &str) -> &str {
    numbered()
        .find(|(_, a)| *a == name)
        .map(|(n, _)| *n)
        .unwrap_or(name)
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
        assert_eq!(suggest("cloud_recordng.5"), Some("cloud_recording.5"));
        assert_eq!(
            suggest("cloud_recording.file_uploaded"),
            Some("cloud_recording.files_uploaded")
        );
        assert_eq!(suggest("mini_game_1"), Some("mini_game.1"));
        assert_eq!(suggest("AgentInstanceStatu"), Some("AgentInstanceStatus"));
    }

    #[test]
    fn every_documented_name_is_known() {
        for name in [
            "cloud_recording.1",
            "cloud_recording.202",
            "cloud_player.10001",
            "cloud_player.4",
            "digital_human.3",
            "mini_game.1",
            "mini_game.game_settled",
            "transcode_stop",
            "censor_video_v2_img_status",
            "AgentSpeakAction",
            "TranslationResult",
            "cvt_finish",
        ] {
            assert!(is_known(name), "{name}");
        }
        assert!(!is_known("cloud_recording.8"));
    }

    #[test]
    fn aliases_both_ways() {
        assert_eq!(alias("cloud_player.10001"), Some("cloud_player.uploaded"));
        assert_eq!(alias("call_timeout"), None);
        assert_eq!(
            unalias("digital_human.drive_task_status"),
            "digital_human.4"
        );
        assert_eq!(unalias("call_timeout"), "call_timeout");
        for (name, a) in numbered() {
            assert_eq!(alias(name), Some(*a));
            assert_eq!(unalias(a), *name);
            assert_ne!(name, a);
        }
    }
}
