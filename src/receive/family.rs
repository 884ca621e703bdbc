//! Which ZEGO product a callback comes from, told by its envelope's spelling (`zego-callbacks.md`
//! §6). Every family signs the same way (sorted SHA-1 over its own timestamp and nonce fields);
//! they differ in what the five envelope fields are called and in how the event is named.

use serde_json::{Map, Value};

/// A product family's envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Family {
    /// The event by name, under `appid`/`event`/`nonce`/`timestamp`/`signature` or their
    /// PascalCase spellings `AppId`/`Event`/...: ZIM, Express RTC, SuperBoard, AI Agent, ASR,
    /// RTC moderation.
    #[default]
    Named,
    /// `app_id`, numeric `event_type`, `nonce`, `timestamp` (a string), `signature`.
    CloudRecording,
    /// `AppID`, numeric `EventType`, `Nonce`, `Timestamp`, `Signature`.
    CloudPlayer,
    /// `AppId`, numeric `EventType`, `Nonce`, `Timestamp`, `Signature`.
    DigitalHuman,
    /// `Appid` (this exact case), `Event`, `Nonce`, `Timestamp`, `Signature`.
    RtcTranscoding,
    /// `AppId`, `SignatureNonce`, `Timestamp`, `Signature`, and no event field: the event is the
    /// numeric `ReportType`.
    MiniGame,
}

/// The names a family gives its envelope fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spelling {
    pub appid: &'static str,
    pub event: &'static str,
    pub nonce: &'static str,
    pub timestamp: &'static str,
    pub signature: &'static str,
}

/// The lower-case spelling of [`Family::Named`] (its PascalCase one is [`PASCAL`]).
const LOWER: Spelling = Spelling {
    appid: "appid",
    event: "event",
    nonce: "nonce",
    timestamp: "timestamp",
    signature: "signature",
};

/// The PascalCase spelling of [`Family::Named`].
pub const PASCAL: Spelling = Spelling {
    appid: "AppId",
    event: "Event",
    nonce: "Nonce",
    timestamp: "Timestamp",
    signature: "Signature",
};

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Named,
        Family::CloudRecording,
        Family::CloudPlayer,
        Family::DigitalHuman,
        Family::RtcTranscoding,
        Family::MiniGame,
    ];

    /// The family of a decoded body. A body with an `event`/`Event` field is always read by
    /// that field (so every body accepted before keeps its meaning); the numeric families are
    /// told apart by the case of their appid field, where their event numbers collide (3 and 4
    /// are used by Cloud Recording, Cloud Player and Digital Human alike).
    pub fn detect(object: &Map<String, Value>) -> Family {
        let has = |k: &str| object.contains_key(k);
        if has("event") || has("Event") {
            if has("Appid") && !has("appid") && !has("AppId") {
                return Family::RtcTranscoding;
            }
            return Family::Named;
        }
        if has("event_type") || has("app_id") {
            Family::CloudRecording
        } else if has("EventType") {
            if has("AppID") || (!has("AppId") && (has("PlayerId") || has("UploadTaskId"))) {
                Family::CloudPlayer
            } else {
                Family::DigitalHuman
            }
        } else if has("SignatureNonce") {
            Family::MiniGame
        } else if has("AppID") {
            Family::CloudPlayer
        } else if has("Appid") && !has("appid") && !has("AppId") {
            Family::RtcTranscoding
        } else {
            Family::Named
        }
    }

    /// The family's field names (for [`Family::Named`], the lower-case ones; it accepts the
    /// PascalCase ones too).
    pub fn spelling(self) -> Spelling {
        match self {
            Family::Named => LOWER,
            Family::CloudRecording => Spelling {
                appid: "app_id",
                event: "event_type",
                ..LOWER
            },
            Family::CloudPlayer => Spelling {
                appid: "AppID",
                event: "EventType",
                ..PASCAL
            },
            Family::DigitalHuman => Spelling {
                event: "EventType",
                ..PASCAL
            },
            Family::RtcTranscoding => Spelling {
                appid: "Appid",
                ..PASCAL
            },
            Family::MiniGame => Spelling {
                event: "ReportType",
                nonce: "SignatureNonce",
                ..PASCAL
            },
        }
    }

    /// For a family whose event is a number: the prefix of its event names
    /// (`cloud_recording.1`).
    pub fn prefix(self) -> Option<&'static str> {
        match self {
            Family::CloudRecording => Some("cloud_recording"),
            Family::CloudPlayer => Some("cloud_player"),
            Family::DigitalHuman => Some("digital_human"),
            Family::MiniGame => Some("mini_game"),
            Family::Named | Family::RtcTranscoding => None,
        }
    }

    /// The family whose event names start with `name`'s prefix (`cloud_recording.1` → Cloud
    /// Recording), with the number; `None` for a name without such a prefix.
    pub fn of_numbered(name: &str) -> Option<(Family, &str)> {
        let (prefix, number) = name.split_once('.')?;
        Family::ALL
            .into_iter()
            .find(|f| f.prefix() == Some(prefix))
            .map(|f| (f, number))
    }

    /// The reply a callback of this family gets when no sync rule answers.
    pub fn default_reply(self) -> &'static [u8] {
        match self {
            // The report page requires a body: `Code` 200 is success.
            Family::MiniGame => br#"{"Code":200,"Message":"succeed"}"#,
            _ => br#"{"code":0}"#,
        }
    }

    /// The family's timestamp as its docs type it: a string where the docs say String.
    pub fn timestamp_is_text(self) -> bool {
        matches!(
            self,
            Family::CloudRecording
                | Family::CloudPlayer
                | Family::DigitalHuman
                | Family::RtcTranscoding
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn told_apart_by_spelling() {
        for (json, family) in [
            (r#"{"appid":1,"event":"x"}"#, Family::Named),
            (r#"{"AppId":1,"Event":"x"}"#, Family::Named),
            (
                r#"{"Appid":"1","Event":"transcode_start"}"#,
                Family::RtcTranscoding,
            ),
            (r#"{"app_id":1,"event_type":3}"#, Family::CloudRecording),
            (r#"{"AppID":1,"EventType":3}"#, Family::CloudPlayer),
            (r#"{"EventType":3,"UploadTaskId":"u"}"#, Family::CloudPlayer),
            (
                r#"{"AppId":1,"EventType":3,"TaskId":"t"}"#,
                Family::DigitalHuman,
            ),
            (
                r#"{"AppId":1,"SignatureNonce":"n","ReportType":1}"#,
                Family::MiniGame,
            ),
            (r#"{"app_id":1,"event":"x"}"#, Family::Named),
            (r#"{"appid":1,"Appid":"2","Event":"x"}"#, Family::Named),
            (r#"{}"#, Family::Named),
        ] {
            assert_eq!(Family::detect(&object(json)), family, "{json}");
        }
    }

    #[test]
    fn numbered_names() {
        assert_eq!(
            Family::of_numbered("cloud_player.10001"),
            Some((Family::CloudPlayer, "10001"))
        );
        assert_eq!(Family::of_numbered("call_timeout"), None);
        assert_eq!(Family::of_numbered("other.1"), None);
        for f in Family::ALL {
            if let Some(p) = f.prefix() {
                assert_eq!(Family::of_numbered(&format!("{p}.1")), Some((f, "1")));
            }
        }
    }
}
