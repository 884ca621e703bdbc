//! Typed callbacks of ZEGO products other than ZIM: Cloud Recording's status callback and AI
//! Agent's events. Field names follow each product's docs (snake_case for Cloud Recording,
//! PascalCase for AI Agent); numbers and strings are read leniently, as for the ZIM types.

use serde::Deserialize;

use crate::event::{TypedEvent, lenient};

/// Cloud Recording's status callback (`cloud_recording.1` … `cloud_recording.202`): what
/// happened to recording task `task_id`, told by `event_type` (see [`kind`](Self::kind)).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct CloudRecordingStatus {
    #[serde(deserialize_with = "lenient::string")]
    pub app_id: String,
    #[serde(deserialize_with = "lenient::int")]
    pub event_type: i64,
    /// Counts the task's callbacks from 0.
    #[serde(deserialize_with = "lenient::int")]
    pub sequence: i64,
    #[serde(deserialize_with = "lenient::string")]
    pub task_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub room_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub message: String,
    /// Empty for types 4, 5, 7, 201 and 202.
    #[serde(deserialize_with = "lenient::object")]
    pub detail: RecordingDetail,
}

impl TypedEvent for CloudRecordingStatus {
    fn is_named(name: &str) -> bool {
        name.starts_with("cloud_recording.")
    }
}

/// What a Cloud Recording status callback reports, by its documented `event_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingEvent {
    /// 1: files uploaded (`detail.upload_status` 1 all, 2 some; `detail.file_info`).
    FilesUploaded,
    /// 2: the recording ended abnormally (`detail.quit_reason`).
    EndedAbnormally,
    /// 3: a background or watermark image failed to download (`detail.image_type`,
    /// `detail.image_url`).
    ImageDownloadFailed,
    /// 4: no stream in the room (repeats every 30 s).
    NoStream,
    /// 5: the recording completed.
    Completed,
    /// 6: a stream to record is missing (`detail.stream_id`).
    StreamMissing,
    /// 7: stopped, uploading.
    Uploading,
    /// 102: a real-time segment's M3U8 address (`detail.stream_id`, `file_id`, `file_url`).
    SegmentUploaded,
    /// 201: paused.
    Paused,
    /// 202: resumed.
    Resumed,
    /// A type the docs did not list when this SDK was written.
    Other(i64),
}

impl CloudRecordingStatus {
    pub fn kind(&self) -> RecordingEvent {
        match self.event_type {
            1 => RecordingEvent::FilesUploaded,
            2 => RecordingEvent::EndedAbnormally,
            3 => RecordingEvent::ImageDownloadFailed,
            4 => RecordingEvent::NoStream,
            5 => RecordingEvent::Completed,
            6 => RecordingEvent::StreamMissing,
            7 => RecordingEvent::Uploading,
            102 => RecordingEvent::SegmentUploaded,
            201 => RecordingEvent::Paused,
            202 => RecordingEvent::Resumed,
            other => RecordingEvent::Other(other),
        }
    }
}

/// A Cloud Recording callback's `detail`: the fields of every type, empty where a type has none.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RecordingDetail {
    /// Type 1: 1 every file uploaded, 2 some.
    #[serde(deserialize_with = "lenient::int")]
    pub upload_status: i64,
    /// Type 1: the uploaded files.
    #[serde(deserialize_with = "lenient::objects")]
    pub file_info: Vec<RecordingFile>,
    /// Type 2: why the recording stopped (1–6, 1001–1011).
    #[serde(deserialize_with = "lenient::int")]
    pub quit_reason: i64,
    /// Type 3: which image failed (1–4) and its URL.
    #[serde(deserialize_with = "lenient::int")]
    pub image_type: i64,
    #[serde(deserialize_with = "lenient::string")]
    pub image_url: String,
    /// Types 6 and 102.
    #[serde(deserialize_with = "lenient::string")]
    pub stream_id: String,
    /// Type 102.
    #[serde(deserialize_with = "lenient::string")]
    pub file_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub file_url: String,
    #[serde(deserialize_with = "lenient::int")]
    pub media_track_type: i64,
}

/// One uploaded file of a type-1 callback.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RecordingFile {
    #[serde(deserialize_with = "lenient::string")]
    pub user_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub user_name: String,
    #[serde(deserialize_with = "lenient::string")]
    pub stream_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub file_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub file_url: String,
    /// Bytes.
    #[serde(deserialize_with = "lenient::int")]
    pub file_size: i64,
    /// Milliseconds.
    #[serde(deserialize_with = "lenient::int")]
    pub duration: i64,
    /// Unix milliseconds.
    #[serde(deserialize_with = "lenient::int")]
    pub begin_timestamp: i64,
    #[serde(deserialize_with = "lenient::int")]
    pub custom_begin_timestamp: i64,
    /// 1 audio, 2 video, 3 both.
    #[serde(deserialize_with = "lenient::int")]
    pub media_track_type: i64,
    #[serde(deserialize_with = "lenient::string")]
    pub output_file_format: String,
    #[serde(deserialize_with = "lenient::int")]
    pub resolution_width: i64,
    #[serde(deserialize_with = "lenient::int")]
    pub resolution_height: i64,
    #[serde(deserialize_with = "lenient::int")]
    pub status: i64,
    #[serde(deserialize_with = "lenient::string")]
    pub video_id: String,
}

/// The AI Agent events zimhook names, as ZEGO spells them.
const AGENT_EVENTS: &[&str] = &[
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

/// An AI Agent callback, any of its events: `event` says which, `data` holds its fields.
///
/// `ASRResult` and `Exception` are the real-time ASR product's names too; [`Event::typed`]
/// gives an `AgentEvent` only for bodies that carry an `AgentInstanceId`.
///
/// [`Event::typed`]: crate::Event::typed
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct AgentEvent {
    #[serde(deserialize_with = "lenient::string")]
    pub app_id: String,
    /// As sent: the docs' status sample spells `AgentInstanceStatus` as `AgentSpeakAction`
    /// (zimhook names that body's event `AgentInstanceStatus`; see [`status`](Self::status)).
    #[serde(deserialize_with = "lenient::string")]
    pub event: String,
    /// Unix milliseconds.
    #[serde(deserialize_with = "lenient::int")]
    pub timestamp: i64,
    #[serde(deserialize_with = "lenient::string")]
    pub agent_instance_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub agent_user_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub agent_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub name: String,
    #[serde(deserialize_with = "lenient::string")]
    pub room_id: String,
    /// Increases with each callback of an instance (not by one).
    #[serde(deserialize_with = "lenient::int")]
    pub sequence: i64,
    #[serde(deserialize_with = "lenient::object")]
    pub data: AgentData,
}

impl TypedEvent for AgentEvent {
    fn is_named(name: &str) -> bool {
        AGENT_EVENTS.contains(&name)
    }

    fn is_own(&self) -> bool {
        !self.agent_instance_id.is_empty()
    }
}

impl AgentEvent {
    /// The agent's state (`IDLE`, `LISTENING`, `THINKING`, `SPEAKING`) if this is a status
    /// event, whichever name it came under.
    pub fn status(&self) -> Option<&str> {
        let named = matches!(
            self.event.as_str(),
            "AgentInstanceStatus" | "AgentSpeakAction"
        );
        (named && !self.data.status.is_empty()).then_some(self.data.status.as_str())
    }
}

/// An AI Agent callback's `Data`: the fields of every event, empty where an event has none.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct AgentData {
    /// The conversation round.
    #[serde(deserialize_with = "lenient::int")]
    pub round: i64,
    /// `ASRResult`, `LLMResult`: the text.
    #[serde(deserialize_with = "lenient::string")]
    pub text: String,
    #[serde(deserialize_with = "lenient::string")]
    pub user_id: String,
    /// `AgentInstanceStatus`: `IDLE`, `LISTENING`, `THINKING`, `SPEAKING`.
    #[serde(deserialize_with = "lenient::string")]
    pub status: String,
    /// `UserSpeakAction` (and the deprecated `AgentSpeakAction`): `SPEAK_BEGIN`, `SPEAK_END`.
    #[serde(deserialize_with = "lenient::string")]
    pub action: String,
    /// `Interrupted`: 1–4.
    #[serde(deserialize_with = "lenient::int")]
    pub reason: i64,
    /// `Exception` and `AgentInstanceDeleted` (0, 1201–1206).
    #[serde(deserialize_with = "lenient::int")]
    pub code: i64,
    #[serde(deserialize_with = "lenient::string")]
    pub message: String,
    #[serde(deserialize_with = "lenient::int")]
    pub created_timestamp: i64,
    #[serde(deserialize_with = "lenient::int")]
    pub deleted_timestamp: i64,
    /// `AgentInstanceDeleted`.
    #[serde(deserialize_with = "lenient::object")]
    pub latency_data: AgentLatency,
    /// `UserAudioData`: sample rate, format (`pcm`) and base64 audio.
    #[serde(deserialize_with = "lenient::int")]
    pub sample_rate: i64,
    #[serde(deserialize_with = "lenient::string")]
    pub format: String,
    #[serde(deserialize_with = "lenient::string")]
    pub audio: String,
    /// `AgentInstanceMetaInfo`: as sent.
    pub meta_info: serde_json::Value,
}

/// `AgentInstanceDeleted`'s latency figures, in milliseconds (`llm_tps` in tokens per second).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct AgentLatency {
    #[serde(rename = "LLMTTFT", deserialize_with = "lenient::float")]
    pub llm_ttft: f64,
    #[serde(rename = "LLMTPS", deserialize_with = "lenient::float")]
    pub llm_tps: f64,
    #[serde(rename = "TTSAudioFirstFrameTime", deserialize_with = "lenient::float")]
    pub tts_audio_first_frame_time: f64,
    #[serde(rename = "TotalCost", deserialize_with = "lenient::float")]
    pub total_cost: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::test_event as event;

    /// A fixture of the main repository's `tests/fixtures`.
    fn fixture(path: &str) -> String {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/");
        std::fs::read_to_string(format!("{root}{path}")).unwrap()
    }

    #[test]
    fn recording_files_uploaded() {
        let e = event(
            "cloud_recording.1",
            &fixture("cloud_recording/recording_status_1.json"),
        );
        let status = e.typed::<CloudRecordingStatus>().unwrap().unwrap();
        assert_eq!(status.kind(), RecordingEvent::FilesUploaded);
        assert_eq!(status.app_id, "1234567890");
        assert_eq!(status.task_id, "YZ4joOE4IwmFAAAT");
        assert_eq!(status.detail.upload_status, 1);
        let file = &status.detail.file_info[0];
        assert_eq!(file.file_size, 25349026);
        assert_eq!(file.stream_id, "800221");
        assert_eq!(file.resolution_width, 1280);
    }

    #[test]
    fn recording_numbers_as_strings_and_empty_detail() {
        let e = event(
            "cloud_recording.2",
            r#"{"app_id":"12","event_type":"2","sequence":"3","detail":{"quit_reason":"1003"}}"#,
        );
        let status = e.typed::<CloudRecordingStatus>().unwrap().unwrap();
        assert_eq!(status.kind(), RecordingEvent::EndedAbnormally);
        assert_eq!((status.sequence, status.detail.quit_reason), (3, 1003));
        for detail in ["null", "{}", "\"\""] {
            let body = format!(r#"{{"event_type":201,"detail":{detail}}}"#);
            let status = event("cloud_recording.201", &body)
                .typed::<CloudRecordingStatus>()
                .unwrap()
                .unwrap();
            assert_eq!(status.kind(), RecordingEvent::Paused);
            assert_eq!(status.detail, RecordingDetail::default());
        }
        let body = r#"{"event_type":1,"detail":{"file_info":"[{\"file_size\":\"9\"}]"}}"#;
        let status = event("cloud_recording.1", body)
            .typed::<CloudRecordingStatus>()
            .unwrap()
            .unwrap();
        assert_eq!(status.detail.file_info[0].file_size, 9);
        assert_eq!(
            event("cloud_player.1", "{}")
                .typed::<CloudRecordingStatus>()
                .unwrap(),
            None
        );
    }

    #[test]
    fn every_recording_fixture_parses() {
        for (n, kind) in [
            (1, RecordingEvent::FilesUploaded),
            (2, RecordingEvent::EndedAbnormally),
            (3, RecordingEvent::ImageDownloadFailed),
            (4, RecordingEvent::NoStream),
            (5, RecordingEvent::Completed),
            (6, RecordingEvent::StreamMissing),
            (7, RecordingEvent::Uploading),
            (102, RecordingEvent::SegmentUploaded),
            (201, RecordingEvent::Paused),
            (202, RecordingEvent::Resumed),
        ] {
            let body = fixture(&format!("cloud_recording/recording_status_{n}.json"));
            let status = event(&format!("cloud_recording.{n}"), &body)
                .typed::<CloudRecordingStatus>()
                .unwrap()
                .unwrap();
            assert_eq!(status.kind(), kind, "{n}");
        }
    }

    #[test]
    fn every_agent_fixture_parses() {
        for name in AGENT_EVENTS {
            let e = event(name, &fixture(&format!("ai_agent/{name}.json")));
            let agent = e.typed::<AgentEvent>().unwrap().unwrap();
            assert_eq!(agent.event, *name);
            assert_eq!(agent.app_id, "1234567");
            assert_eq!(agent.agent_instance_id, "1912124734317838336");
        }
        let deleted = event(
            "AgentInstanceDeleted",
            &fixture("ai_agent/AgentInstanceDeleted.json"),
        )
        .typed::<AgentEvent>()
        .unwrap()
        .unwrap();
        assert_eq!(deleted.data.latency_data.llm_tps, 11.493);
        assert_eq!(deleted.data.latency_data.total_cost, 1693.0);
        let llm = event("LLMResult", &fixture("ai_agent/LLMResult.json"))
            .typed::<AgentEvent>()
            .unwrap()
            .unwrap();
        assert_eq!(llm.data.round, 650459806);
        assert_eq!(llm.data.text, "Hi there, you look full of energy today.");
        assert_eq!(llm.timestamp, 1745502313000);
    }

    #[test]
    fn agent_status_under_either_name() {
        let body = r#"{"AppId":"7","Event":"AgentSpeakAction","AgentInstanceId":"i","Data":{"Status":"THINKING"}}"#;
        let agent = event("AgentInstanceStatus", body)
            .typed::<AgentEvent>()
            .unwrap()
            .unwrap();
        assert_eq!(agent.status(), Some("THINKING"));
        let action = event(
            "AgentSpeakAction",
            &fixture("ai_agent/AgentSpeakAction.json"),
        )
        .typed::<AgentEvent>()
        .unwrap()
        .unwrap();
        assert_eq!(action.status(), None);
        assert_eq!(action.data.action, "SPEAK_BEGIN");
    }

    #[test]
    fn asr_bodies_are_not_agent_events() {
        let asr = fixture("asr/ASRResult.json");
        assert_eq!(
            event("ASRResult", &asr).typed::<AgentEvent>().unwrap(),
            None
        );
        let agent = fixture("ai_agent/ASRResult.json");
        assert!(
            event("ASRResult", &agent)
                .typed::<AgentEvent>()
                .unwrap()
                .is_some()
        );
    }
}
