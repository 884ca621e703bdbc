//! Building what a plugin returns: an [`Outcome`], the `before_send_msg` [`Answer`], and
//! [`Emitted`] events.

use serde::Serialize;

use crate::{Emitted, Outcome};

impl Outcome {
    /// Success with no reply and nothing emitted.
    pub fn ok() -> Self {
        Outcome {
            response: None,
            emit: Vec::new(),
        }
    }

    /// Success replying `json` (for a sync rule, this is the body zimhook answers ZEGO with).
    pub fn respond(json: impl Into<String>) -> Self {
        Outcome {
            response: Some(json.into()),
            emit: Vec::new(),
        }
    }

    /// Adds an event to emit.
    pub fn emit(mut self, event: Emitted) -> Self {
        self.emit.push(event);
        self
    }
}

impl From<Answer> for Outcome {
    fn from(answer: Answer) -> Self {
        Outcome::respond(answer.to_json())
    }
}

impl Emitted {
    /// An event named `name` whose payload is `payload` serialized as a JSON object.
    pub fn new(name: impl Into<String>, payload: &impl Serialize) -> Result<Self, String> {
        let name = name.into();
        // To a string directly rather than through `serde_json::Value`, which would sort the
        // keys: the payload keeps the field order of `payload`'s type.
        let payload = serde_json::to_string(payload)
            .map_err(|e| format!("payload of emitted `{name}` does not serialize: {e}"))?;
        if !payload.starts_with('{') {
            return Err(format!("payload of emitted `{name}` is not a JSON object"));
        }
        Ok(Emitted { name, payload })
    }
}

/// The reply to `before_send_msg`: whether ZEGO delivers the message, and how.
///
/// ```ignore
/// Answer::block("links are not allowed").to_json()  // {"result":3,"reason":"links are not allowed"}
/// Answer::send().new_msg_body("****").to_json()     // {"result":1,"new_msg_body":"****"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    result: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_msg_body: Option<String>,
}

impl Answer {
    fn with_result(result: u8) -> Self {
        Answer {
            result,
            reason: None,
            new_payload: None,
            new_msg_body: None,
        }
    }

    /// `result` 0: ZEGO's default handling.
    pub fn neutral() -> Self {
        Self::with_result(0)
    }

    /// `result` 1: deliver the message.
    pub fn send() -> Self {
        Self::with_result(1)
    }

    /// `result` 2: the sender sees the message sent, nobody receives it.
    pub fn silence() -> Self {
        Self::with_result(2)
    }

    /// `result` 3: do not deliver; `reason` is shown to the sender.
    pub fn block(reason: impl Into<String>) -> Self {
        Answer {
            reason: Some(reason.into()),
            ..Self::with_result(3)
        }
    }

    /// The `result` code.
    pub fn result(&self) -> u8 {
        self.result
    }

    /// Replaces the message's payload.
    pub fn new_payload(mut self, payload: impl Into<String>) -> Self {
        self.new_payload = Some(payload.into());
        self
    }

    /// Replaces the message's body (for URL-encoded message types, encode it:
    /// [`BeforeSendMsg::encode_body`](crate::BeforeSendMsg::encode_body)).
    pub fn new_msg_body(mut self, body: impl Into<String>) -> Self {
        self.new_msg_body = Some(body.into());
        self
    }

    /// The JSON reply text.
    pub fn to_json(&self) -> String {
        // Only strings and an integer: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"result":0}"#.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_serialize_as_zego_expects() {
        assert_eq!(Answer::neutral().to_json(), r#"{"result":0}"#);
        assert_eq!(Answer::send().to_json(), r#"{"result":1}"#);
        assert_eq!(Answer::silence().to_json(), r#"{"result":2}"#);
        assert_eq!(
            Answer::block("no \"spam\"").to_json(),
            r#"{"result":3,"reason":"no \"spam\""}"#
        );
        assert_eq!(
            Answer::send().new_payload("p").new_msg_body("b").to_json(),
            r#"{"result":1,"new_payload":"p","new_msg_body":"b"}"#
        );
    }

    #[test]
    fn answer_into_outcome_responds() {
        let outcome: Outcome = Answer::send().into();
        assert_eq!(outcome.response.as_deref(), Some(r#"{"result":1}"#));
        assert!(outcome.emit.is_empty());
    }

    #[test]
    fn emitted_payload_must_be_an_object() {
        let e = Emitted::new("missed_call", &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(
            (e.name.as_str(), e.payload.as_str()),
            ("missed_call", r#"{"a":1}"#)
        );
        let err = Emitted::new("x", &[1, 2]).unwrap_err();
        assert_eq!(err, "payload of emitted `x` is not a JSON object");
    }
}
