//! Decoding a request body into a [`Callback`]: a JSON object, or else a form-urlencoded body
//! (ZEGO's "POST/FORM" option), decided by content since ZEGO documents no Content-Type.
//! Numbers keep their exact digits; the raw bytes are kept for forwarding unchanged.
//! Secrets and signatures are not this module's business: see `verify`.

use bytes::Bytes;
use serde_json::{Map, Value};

mod family;
pub use family::{Family, PASCAL, Spelling};

/// How the body was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Form,
}

/// The envelope fields every callback carries, as their literal text, read under its
/// [`Family`]'s spelling. For the families that name events, lower-case (`appid`, `event`, ...)
/// and PascalCase (`AppId`, `Event`, ...) spellings are both accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub family: Family,
    pub appid: Option<String>,
    /// The event name; for a family whose event is a number, `prefix.number`
    /// (`cloud_recording.1`).
    pub event: Option<String>,
    pub nonce: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
}

/// One decoded callback.
#[derive(Debug, Clone)]
pub struct Callback {
    /// The body exactly as received.
    pub raw: Bytes,
    pub format: BodyFormat,
    pub object: Map<String, Value>,
    pub envelope: Envelope,
}

/// Why a body could not be decoded; the text goes back in the 400 reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not valid JSON: {message} at line {line} column {column}")]
    Json {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("body is JSON but not an object (found {0})")]
    NotObject(&'static str),
    #[error("body is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("body is neither a JSON object nor form-urlencoded: {0}")]
    Neither(String),
    #[error("body is empty")]
    Empty,
}

impl Callback {
    /// Decodes a request body.
    pub fn decode(raw: Bytes) -> Result<Callback, DecodeError> {
        let text = std::str::from_utf8(&raw).map_err(|e| DecodeError::NotUtf8(e.valid_up_to()))?;
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return Err(DecodeError::Empty);
        }
        let (object, format) = if trimmed.starts_with(['{', '[', '"']) || !text.contains('=') {
            (decode_json(text)?, BodyFormat::Json)
        } else {
            (decode_form(text)?, BodyFormat::Form)
        };
        let envelope = Envelope::from_object(&object);
        Ok(Callback {
            raw,
            format,
            object,
            envelope,
        })
    }

    /// An event a plugin emitted: no envelope to verify, the payload is its own raw body.
    pub fn emitted(name: &str, payload: &str) -> Result<Callback, DecodeError> {
        let object = decode_json(payload)?;
        let mut envelope = Envelope::from_object(&object);
        envelope.event = Some(name.to_string());
        Ok(Callback {
            raw: Bytes::copy_from_slice(payload.as_bytes()),
            format: BodyFormat::Json,
            object,
            envelope,
        })
    }

    pub fn event(&self) -> &str {
        self.envelope.event.as_deref().unwrap_or("")
    }

    pub fn appid(&self) -> &str {
        self.envelope.appid.as_deref().unwrap_or("")
    }

    /// The callback as JSON text: the raw body when it was JSON, the decoded form fields as a
    /// JSON object otherwise. Commands get this on stdin, plugins as `payload`.
    pub fn json(&self) -> String {
        match self.format {
            BodyFormat::Json => String::from_utf8_lossy(&self.raw).into_owned(),
            BodyFormat::Form => {
                serde_json::to_string(&self.object).expect("a JSON map always serializes")
            }
        }
    }

    /// The Content-Type that describes the raw body.
    pub fn content_type(&self) -> &'static str {
        match self.format {
            BodyFormat::Json => "application/json",
            BodyFormat::Form => "application/x-www-form-urlencoded",
        }
    }
}

fn decode_json(text: &str) -> Result<Map<String, Value>, DecodeError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(DecodeError::NotObject(kind(&other))),
        Err(e) => Err(DecodeError::Json {
            message: json_reason(&e),
            line: e.line(),
            column: e.column(),
        }),
    }
}

/// serde_json's message without its trailing " at line L column C" (we say that ourselves).
fn json_reason(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}

/// With `arbitrary_precision`, serde_json reads an object whose first key is this as a number:
/// a form field of that name would give a [`Callback::json`] that zimhook itself cannot read
/// back as the object (serde-rs/json#826). A JSON body is read that way from the start.
const SERDE_NUMBER_KEY: &str = "$serde_json::private::Number";

fn decode_form(text: &str) -> Result<Map<String, Value>, DecodeError> {
    let mut map = Map::new();
    for (i, (key, value)) in form_urlencoded::parse(text.trim_end().as_bytes()).enumerate() {
        if key.is_empty() {
            return Err(DecodeError::Neither(format!(
                "form field {} has an empty name",
                i + 1
            )));
        }
        if key == SERDE_NUMBER_KEY {
            return Err(DecodeError::Neither(format!(
                "form field {} has a reserved name {key:?}",
                i + 1
            )));
        }
        let value = value.into_owned();
        // A value that is itself JSON array/object text is taken as that structure.
        let parsed = if value.trim_start().starts_with(['[', '{']) {
            serde_json::from_str::<Value>(&value).unwrap_or(Value::String(value))
        } else {
            Value::String(value)
        };
        map.insert(key.into_owned(), parsed);
    }
    if map.is_empty() {
        return Err(DecodeError::Neither("no fields".into()));
    }
    Ok(map)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Envelope {
    fn from_object(object: &Map<String, Value>) -> Envelope {
        let family = Family::detect(object);
        let own = family.spelling();
        // The named family takes either case, field by field; the others only their own.
        let other = if family == Family::Named { PASCAL } else { own };
        let field = |name: fn(&Spelling) -> &'static str| {
            object
                .get(name(&own))
                .or_else(|| object.get(name(&other)))
                .and_then(literal_text)
        };
        let event = field(|s| s.event).map(|e| agent_status_name(object, e));
        Envelope {
            family,
            appid: field(|s| s.appid),
            event: match family.prefix() {
                Some(prefix) => event.map(|n| format!("{prefix}.{n}")),
                None => event,
            },
            nonce: field(|s| s.nonce),
            timestamp: field(|s| s.timestamp),
            signature: field(|s| s.signature),
        }
    }
}

/// AI Agent's status event under its documented name. The docs' `AgentInstanceStatus` sample
/// is spelled `AgentSpeakAction` (the deprecated event's name); a body so spelled that carries a
/// `Data.Status` and no `Data.Action` is a status event, and rules on `AgentInstanceStatus` get
/// it. The body itself is not changed.
fn agent_status_name(object: &Map<String, Value>, event: String) -> String {
    if event != "AgentSpeakAction" || !object.contains_key("AgentInstanceId") {
        return event;
    }
    match object.get("Data").and_then(Value::as_object) {
        Some(data) if data.contains_key("Status") && !data.contains_key("Action") => {
            "AgentInstanceStatus".to_owned()
        }
        _ => event,
    }
}

/// A scalar's literal text: strings as they are, numbers with their exact digits.
pub fn literal_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Callback, DecodeError> {
        Callback::decode(Bytes::from(s.to_string()))
    }

    #[test]
    fn json_envelope_keeps_literal_digits() {
        let cb = decode(
            r#"{"appid":1234567890123,"event":"call_timeout","nonce":9223372036854775809,"timestamp":"1499676978","signature":"ab"}"#,
        )
        .unwrap();
        assert_eq!(cb.format, BodyFormat::Json);
        assert_eq!(cb.envelope.appid.as_deref(), Some("1234567890123"));
        assert_eq!(cb.envelope.nonce.as_deref(), Some("9223372036854775809"));
        assert_eq!(cb.envelope.timestamp.as_deref(), Some("1499676978"));
        assert_eq!(cb.event(), "call_timeout");
    }

    #[test]
    fn pascal_case_envelope() {
        let cb = decode(
            r#"{"AppId":1,"Event":"x","Nonce":"n","Timestamp":1700000000000,"Signature":"s"}"#,
        )
        .unwrap();
        assert_eq!(cb.envelope.appid.as_deref(), Some("1"));
        assert_eq!(cb.envelope.timestamp.as_deref(), Some("1700000000000"));
        assert_eq!(cb.event(), "x");
    }

    #[test]
    fn form_bodies_are_url_decoded_with_json_values() {
        let cb = decode(
            "appid=1&event=call_timeout&user_ids=%5B%22a%22%2C%22b%22%5D&msg_body=hi%20there",
        )
        .unwrap();
        assert_eq!(cb.format, BodyFormat::Form);
        assert_eq!(cb.object["user_ids"], serde_json::json!(["a", "b"]));
        assert_eq!(cb.object["msg_body"], "hi there");
        let json: Value = serde_json::from_str(&cb.json()).unwrap();
        assert_eq!(json["event"], "call_timeout");
    }

    #[test]
    fn broken_json_names_line_and_column() {
        let err = decode("{\n\"a\": 1\n\"b\": 2}").unwrap_err();
        match err {
            DecodeError::Json { line, column, .. } => assert_eq!((line, column), (3, 1)),
            other => panic!("{other:?}"),
        }
        assert!(
            decode("[1,2]")
                .unwrap_err()
                .to_string()
                .contains("an array")
        );
        assert!(decode("").is_err());
        assert!(decode("hello").is_err());
    }

    #[test]
    fn form_field_named_like_serde_json_numbers_is_refused() {
        for body in [
            "$serde_json::private::Number=%7D",
            "$serde_json::private::Number=5&event=x",
            "event=x&%24serde_json%3A%3Aprivate%3A%3ANumber=5",
        ] {
            match decode(body) {
                Err(DecodeError::Neither(reason)) => {
                    assert!(reason.contains("reserved"), "{reason}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn big_numbers_survive_reserialization() {
        let body = r#"{"room_session_id":858012925204410400123,"x":1.5}"#;
        let cb = decode(body).unwrap();
        assert_eq!(serde_json::to_string(&cb.object).unwrap(), body);
    }

    fn fixture(path: &str) -> Callback {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(path);
        Callback::decode(Bytes::from(std::fs::read(&path).unwrap())).unwrap()
    }

    #[test]
    fn every_fixture_has_a_whole_envelope() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut seen = 0;
        for dir in std::fs::read_dir(&root).unwrap() {
            let dir = dir.unwrap().path();
            if !dir.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&dir).unwrap() {
                let file = file.unwrap().path();
                let name = format!(
                    "{}/{}",
                    dir.file_name().unwrap().to_string_lossy(),
                    file.file_name().unwrap().to_string_lossy()
                );
                let e = fixture(&name).envelope;
                for (field, value) in [
                    ("appid", &e.appid),
                    ("event", &e.event),
                    ("nonce", &e.nonce),
                    ("timestamp", &e.timestamp),
                    ("signature", &e.signature),
                ] {
                    assert!(value.is_some(), "{name}: no {field} in {e:?}");
                }
                seen += 1;
            }
        }
        assert!(seen >= 47, "only {seen} fixtures");
    }

    #[test]
    fn numeric_event_types_get_family_names() {
        for (path, family, event) in [
            (
                "cloud_recording/recording_status_1.json",
                Family::CloudRecording,
                "cloud_recording.1",
            ),
            (
                "cloud_recording/recording_status_102.json",
                Family::CloudRecording,
                "cloud_recording.102",
            ),
            (
                "cloud_player/player_3.json",
                Family::CloudPlayer,
                "cloud_player.3",
            ),
            (
                "cloud_player/upload_10001.json",
                Family::CloudPlayer,
                "cloud_player.10001",
            ),
            (
                "digital_human/stream_task_status_3.json",
                Family::DigitalHuman,
                "digital_human.3",
            ),
            (
                "digital_human/drive_task_status_4.json",
                Family::DigitalHuman,
                "digital_human.4",
            ),
            (
                "mini_game/report_game_info_1.json",
                Family::MiniGame,
                "mini_game.1",
            ),
            (
                "mini_game/report_game_info_2.json",
                Family::MiniGame,
                "mini_game.2",
            ),
        ] {
            let cb = fixture(path);
            assert_eq!(cb.envelope.family, family, "{path}");
            assert_eq!(cb.event(), event, "{path}");
        }
        // A type sent as a string names the same event.
        let cb = decode(
            r#"{"AppID":"1","EventType":"10002","Nonce":"n","Timestamp":"1","Signature":"s"}"#,
        )
        .unwrap();
        assert_eq!(cb.event(), "cloud_player.10002");
    }

    #[test]
    fn string_timestamps_keep_their_text() {
        let cb = fixture("cloud_recording/recording_status_1.json");
        assert_eq!(cb.envelope.timestamp.as_deref(), Some("1637753949"));
        assert_eq!(cb.envelope.nonce.as_deref(), Some("100480"));
        assert_eq!(cb.appid(), "1234567890");
        let cb = fixture("cloud_player/upload_10001.json");
        assert_eq!(cb.envelope.timestamp.as_deref(), Some("1737451074"));
        assert_eq!(cb.appid(), "123456789");
        let cb = fixture("digital_human/drive_task_status_4.json");
        assert_eq!(cb.envelope.timestamp.as_deref(), Some("1681221510"));
        // Leading zeros or spaces in a string stay: the signature is over the literal text.
        let cb = decode(
            r#"{"app_id":1,"event_type":1,"nonce":"n","timestamp":" 0017","signature":"s"}"#,
        )
        .unwrap();
        assert_eq!(cb.envelope.timestamp.as_deref(), Some(" 0017"));
    }

    #[test]
    fn numeric_appids_keep_their_digits() {
        for (path, appid) in [
            ("digital_human/stream_task_status_3.json", "123456789"),
            ("cloud_player/player_1.json", "123456789"),
            ("mini_game/report_game_info_1.json", "1234567890"),
            ("ai_agent/ASRResult.json", "1234567"),
            ("rtc_moderation/censor_audio_v2_result.json", "1"),
        ] {
            assert_eq!(fixture(path).appid(), appid, "{path}");
        }
        let cb = decode(r#"{"AppId":98765432109876543210,"EventType":3,"Nonce":"n","Timestamp":"1","Signature":"s"}"#)
            .unwrap();
        assert_eq!(cb.appid(), "98765432109876543210");
    }

    #[test]
    fn nineteen_digit_nonces_stay_exact() {
        let cb = fixture("ai_agent/LLMResult.json");
        assert_eq!(cb.envelope.nonce.as_deref(), Some("7450395512627324902"));
        for body in [
            r#"{"AppId":1,"Event":"ASRResult","Nonce":9223372036854775809,"Timestamp":1745502313000,"Signature":"s"}"#,
            r#"{"AppId":1,"SignatureNonce":9223372036854775809,"ReportType":1,"Timestamp":1,"Signature":"s"}"#,
            r#"{"app_id":1,"event_type":1,"nonce":9223372036854775809,"timestamp":"1","signature":"s"}"#,
        ] {
            let cb = decode(body).unwrap();
            assert_eq!(
                cb.envelope.nonce.as_deref(),
                Some("9223372036854775809"),
                "{body}"
            );
        }
    }

    #[test]
    fn ai_agent_status_event_spelled_both_ways() {
        // The docs' AgentInstanceStatus sample says "AgentSpeakAction": a status body is the
        // status event under either name; the deprecated speak action keeps its own.
        let status = fixture("ai_agent/AgentInstanceStatus.json");
        assert_eq!(status.event(), "AgentInstanceStatus");
        let old = fixture("ai_agent/AgentSpeakAction.json");
        assert_eq!(old.event(), "AgentSpeakAction");
        for cb in [&status, &old] {
            assert_eq!(cb.envelope.family, Family::Named);
            assert!(crate::events::is_known(cb.event()), "{}", cb.event());
        }
        let mut body: Map<String, Value> = serde_json::from_slice(&status.raw).unwrap();
        body.insert("Event".into(), Value::from("AgentSpeakAction"));
        let raw = serde_json::to_string(&body).unwrap();
        let cb = decode(&raw).unwrap();
        assert_eq!(cb.event(), "AgentInstanceStatus");
        assert_eq!(cb.envelope.nonce, status.envelope.nonce);
        assert_eq!(cb.raw, raw.as_bytes());
    }

    #[test]
    fn transcoding_appid_spelled_exactly_so() {
        let cb = fixture("rtc_transcoding/transcode_start.json");
        assert_eq!(cb.envelope.family, Family::RtcTranscoding);
        assert_eq!(cb.appid(), "111111");
        assert_eq!(cb.event(), "transcode_start");
        assert_eq!(cb.envelope.timestamp.as_deref(), Some("1499676978"));
        // Other cases of the name are not `Appid`.
        for body in [
            r#"{"APPID":"1","Event":"transcode_start"}"#,
            r#"{"appId":"1","Event":"transcode_start"}"#,
        ] {
            let cb = decode(body).unwrap();
            assert_eq!(cb.envelope.family, Family::Named, "{body}");
            assert_eq!(cb.envelope.appid, None, "{body}");
        }
    }

    #[test]
    fn numeric_families_take_only_their_own_spelling() {
        // A Cloud Player body with a lower-case nonce has no nonce.
        let cb = decode(r#"{"AppID":1,"EventType":1,"nonce":"n","Timestamp":"1","Signature":"s"}"#)
            .unwrap();
        assert_eq!(cb.envelope.nonce, None);
        // Mini Game's nonce is `SignatureNonce`, not `Nonce`.
        let cb = decode(r#"{"AppId":1,"SignatureNonce":"a","Nonce":"b","ReportType":2,"Timestamp":1,"Signature":"s"}"#)
            .unwrap();
        assert_eq!(cb.envelope.nonce.as_deref(), Some("a"));
    }
}
