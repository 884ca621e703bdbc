//! Fans Cloud Recording's "files uploaded" callback (`cloud_recording.1`) out: emits one
//! `recording_file` event per uploaded file, with payload
//! `{"task_id", "room_id", "stream_id", "user_id", "file_id", "file_url", "file_size",
//! "duration_ms", "complete"}` (`complete` is false when the callback says only some of the
//! task's files were uploaded), for rules such as
//!
//! ```toml
//! [[rule]]
//! name = "recording-fanout"
//! events = ["cloud_recording.files_uploaded"]
//! plugin = "plugins/recording_files.wasm"
//!
//! [[rule]]
//! name = "recording-index"
//! events = ["recording_file"]
//! forward = "https://media.example.com/recordings/{{ task_id }}"
//! ```
//!
//! With `config = { min_bytes = N }` files smaller than N bytes are left out. Other events,
//! including the other Cloud Recording types, succeed and emit nothing.

use serde::{Deserialize, Serialize};
use zimhook_plugin::{CloudRecordingStatus, Emitted, Event, Handler, Outcome, RecordingEvent};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Config {
    min_bytes: i64,
}

#[derive(Serialize)]
struct RecordingFile<'a> {
    task_id: &'a str,
    room_id: &'a str,
    stream_id: &'a str,
    user_id: &'a str,
    file_id: &'a str,
    file_url: &'a str,
    file_size: i64,
    duration_ms: i64,
    complete: bool,
}

struct RecordingFiles;

impl Handler for RecordingFiles {
    fn handle(event: Event) -> Result<Outcome, String> {
        let Some(status) = event.typed::<CloudRecordingStatus>()? else {
            return Ok(Outcome::ok());
        };
        if status.kind() != RecordingEvent::FilesUploaded {
            return Ok(Outcome::ok());
        }
        let config: Config = event.config_as()?;
        let mut outcome = Outcome::ok();
        for file in &status.detail.file_info {
            if file.file_size < config.min_bytes {
                continue;
            }
            let out = RecordingFile {
                task_id: &status.task_id,
                room_id: &status.room_id,
                stream_id: &file.stream_id,
                user_id: &file.user_id,
                file_id: &file.file_id,
                file_url: &file.file_url,
                file_size: file.file_size,
                duration_ms: file.duration,
                complete: status.detail.upload_status == 1,
            };
            outcome = outcome.emit(Emitted::new("recording_file", &out)?);
        }
        Ok(outcome)
    }
}

zimhook_plugin::export!(RecordingFiles);
