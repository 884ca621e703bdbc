//! Reading an [`Event`]: its rule config, its callback payload as a typed ZEGO callback, or as
//! untyped [`Fields`].
//!
//! ZEGO documents most fields loosely (a number here, a string there, and every value is a
//! string when it sends form-encoded bodies), so the typed callbacks accept either spelling:
//! a number where a string is expected becomes its decimal text, a numeric string where a number
//! is expected is parsed, a missing field is empty.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde_json::{Map, Value};

use crate::Event;

impl Event {
    /// Parses the rule's `config` (JSON text, `"{}"` when the rule has none) into `T`.
    pub fn config_as<T: DeserializeOwned>(&self) -> Result<T, String> {
        let text = if self.config.trim().is_empty() {
            "{}"
        } else {
            &self.config
        };
        serde_json::from_str(text).map_err(|e| format!("rule config is not valid: {e}"))
    }

    /// Parses the callback payload into `T`, whatever the event's name.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.payload)
            .map_err(|e| format!("payload of `{}` is not valid: {e}", self.name))
    }

    /// The payload as `T` if this event is one of `T`'s callbacks, `None` for any other event.
    ///
    /// ```ignore
    /// let Some(call) = event.typed::<CallTimeout>()? else { return Ok(Outcome::ok()) };
    /// ```
    pub fn typed<T: TypedEvent>(&self) -> Result<Option<T>, String> {
        if !T::is_named(&self.name) {
            return Ok(None);
        }
        let parsed: T = self.payload_as()?;
        Ok(parsed.is_own().then_some(parsed))
    }

    /// The payload's top-level fields, for events without a typed struct here.
    pub fn fields(&self) -> Result<Fields, String> {
        self.payload_as()
    }
}

/// A ZEGO callback type, for [`Event::typed`].
pub trait TypedEvent: DeserializeOwned {
    /// Whether an event of this name (as zimhook names it: `call_timeout`,
    /// `cloud_recording.1`, `ASRResult`) is one of these callbacks.
    fn is_named(name: &str) -> bool;

    /// For a name two products share (AI Agent's and ASR's `ASRResult`): whether the parsed
    /// body is this product's. Every body is, unless the type says otherwise.
    fn is_own(&self) -> bool {
        true
    }
}

/// `before_send_msg`: ZEGO asks whether to deliver a message, and waits for the answer
/// (see [`Answer`](crate::Answer)).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct BeforeSendMsg {
    #[serde(deserialize_with = "lenient::string")]
    pub appid: String,
    #[serde(deserialize_with = "lenient::string")]
    pub request_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub from_user_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub conv_id: String,
    /// 0 peer, 1 room, 2 group.
    #[serde(deserialize_with = "lenient::int")]
    pub conv_type: i64,
    #[serde(deserialize_with = "lenient::string")]
    pub msg_id: String,
    /// The message's own payload (not the callback's).
    #[serde(deserialize_with = "lenient::string")]
    pub payload: String,
    #[serde(deserialize_with = "lenient::int")]
    pub msg_type: i64,
    #[serde(deserialize_with = "lenient::int")]
    pub sub_msg_type: i64,
    /// As ZEGO sent it: URL-encoded JSON text for some message types, see
    /// [`body_text`](Self::body_text).
    #[serde(deserialize_with = "lenient::string")]
    pub msg_body: String,
}

impl TypedEvent for BeforeSendMsg {
    fn is_named(name: &str) -> bool {
        name == "before_send_msg"
    }
}

impl BeforeSendMsg {
    /// Whether ZEGO URL-encodes `msg_body` for this message type (10, 11–14 and 100).
    pub fn body_is_url_encoded(&self) -> bool {
        matches!(self.msg_type, 10..=14 | 100)
    }

    /// The message body as text: `msg_body` URL-decoded when the message type calls for it,
    /// else as sent.
    pub fn body_text(&self) -> String {
        if self.body_is_url_encoded() {
            percent::decode(&self.msg_body)
        } else {
            self.msg_body.clone()
        }
    }

    /// The inverse of [`body_text`](Self::body_text): what to put in `new_msg_body` so that the
    /// message reads `text`.
    pub fn encode_body(&self, text: &str) -> String {
        if self.body_is_url_encoded() {
            percent::encode(text)
        } else {
            text.to_owned()
        }
    }
}

/// `call_timeout`: the callees in `user_ids` did not answer call `call_id`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct CallTimeout {
    #[serde(deserialize_with = "lenient::string")]
    pub appid: String,
    #[serde(deserialize_with = "lenient::string")]
    pub call_id: String,
    #[serde(deserialize_with = "lenient::strings")]
    pub user_ids: Vec<String>,
}

impl TypedEvent for CallTimeout {
    fn is_named(name: &str) -> bool {
        name == "call_timeout"
    }
}

/// A callback's top-level fields, for any event.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Fields(pub Map<String, Value>);

impl Fields {
    /// The field's JSON value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The field as text: a string as is, a number or bool as its JSON text.
    pub fn str(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Value::String(s) => Some(s.clone()),
            v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
            _ => None,
        }
    }

    /// The field as an integer: a JSON integer, or a string holding one.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The field as a list of strings: a JSON array (numbers become their text), or a string
    /// holding a JSON array. Empty if absent or of another shape.
    pub fn strings(&self, name: &str) -> Vec<String> {
        self.get(name).map(lenient::to_strings).unwrap_or_default()
    }
}

pub(crate) mod lenient {
    use super::*;

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(s),
            Value::Null => Ok(String::new()),
            v @ (Value::Number(_) | Value::Bool(_)) => Ok(v.to_string()),
            v => Err(D::Error::custom(format!("expected a string, found {v}"))),
        }
    }

    pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| D::Error::custom(format!("expected an integer, found {n}"))),
            Value::String(s) if s.trim().is_empty() => Ok(0),
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| D::Error::custom(format!("expected an integer, found {s:?}"))),
            Value::Null => Ok(0),
            v => Err(D::Error::custom(format!("expected an integer, found {v}"))),
        }
    }

    pub fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| D::Error::custom(format!("expected a number, found {n}"))),
            Value::String(s) if s.trim().is_empty() => Ok(0.0),
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| D::Error::custom(format!("expected a number, found {s:?}"))),
            Value::Null => Ok(0.0),
            v => Err(D::Error::custom(format!("expected a number, found {v}"))),
        }
    }

    /// A nested object, `null` or absent as its default; an object sent as JSON text (as a
    /// form-encoded body carries it) is parsed.
    pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned + Default,
    {
        match Value::deserialize(d)? {
            Value::Null => Ok(T::default()),
            Value::String(s) if s.trim().is_empty() => Ok(T::default()),
            Value::String(s) => serde_json::from_str(&s).map_err(D::Error::custom),
            v => serde_json::from_value(v).map_err(D::Error::custom),
        }
    }

    /// A list of objects; `null`, absent or empty text as an empty list, JSON text parsed.
    pub fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: DeserializeOwned,
    {
        match Value::deserialize(d)? {
            Value::Null => Ok(Vec::new()),
            Value::String(s) if s.trim().is_empty() => Ok(Vec::new()),
            Value::String(s) => serde_json::from_str(&s).map_err(D::Error::custom),
            v => serde_json::from_value(v).map_err(D::Error::custom),
        }
    }

    pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let v = Value::deserialize(d)?;
        match &v {
            Value::Array(_) | Value::String(_) | Value::Null => Ok(to_strings(&v)),
            _ => Err(D::Error::custom(format!("expected a list, found {v}"))),
        }
    }

    pub fn to_strings(v: &Value) -> Vec<String> {
        match v {
            Value::Array(items) => items
                .iter()
                .filter_map(|item| match item {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
            Value::String(s) => serde_json::from_str::<Value>(s)
                .ok()
                .filter(Value::is_array)
                .map(|v| to_strings(&v))
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// URL (percent) encoding of message bodies, as ZEGO applies it to custom message types.
mod percent {
    pub fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let escaped = match bytes.get(i + 1..i + 3) {
                Some([hi, lo]) if bytes[i] == b'%' => hex(*hi).zip(hex(*lo)),
                _ => None,
            };
            if let Some((hi, lo)) = escaped {
                out.push(hi << 4 | lo);
                i += 3;
            } else {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn encode(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for &b in s.as_bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(b as char);
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
            }
        }
        out
    }

    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
}

/// An event named `name` with `payload`, for the SDK's tests.
#[cfg(test)]
pub(crate) fn test_event(name: &str, payload: &str) -> Event {
    Event {
        name: name.into(),
        appid: "1".into(),
        payload: payload.into(),
        config: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_event as event;

    #[test]
    fn before_send_msg_accepts_numbers_and_strings() {
        let e = event(
            "before_send_msg",
            r#"{"appid":1234,"msg_id":"7","conv_type":"2","msg_type":1,"msg_body":"hi"}"#,
        );
        let msg = e.typed::<BeforeSendMsg>().unwrap().unwrap();
        assert_eq!(msg.appid, "1234");
        assert_eq!(msg.conv_type, 2);
        assert_eq!(msg.msg_body, "hi");
        assert_eq!(msg.from_user_id, "");
    }

    #[test]
    fn typed_is_none_for_other_events() {
        let e = event("call_timeout", "{}");
        assert_eq!(e.typed::<BeforeSendMsg>().unwrap(), None);
    }

    #[test]
    fn call_timeout_user_ids_as_array_or_json_text() {
        let a = event("call_timeout", r#"{"call_id":"c","user_ids":["a","b"]}"#);
        let b = event(
            "call_timeout",
            r#"{"call_id":"c","user_ids":"[\"a\",\"b\"]"}"#,
        );
        for e in [a, b] {
            let call = e.typed::<CallTimeout>().unwrap().unwrap();
            assert_eq!(call.user_ids, ["a", "b"]);
        }
    }

    #[test]
    fn invalid_payload_names_the_event() {
        let err = event("call_timeout", "{")
            .typed::<CallTimeout>()
            .unwrap_err();
        assert!(
            err.starts_with("payload of `call_timeout` is not valid"),
            "{err}"
        );
    }

    #[test]
    fn fields_accessors() {
        let f = event("x", r#"{"a":"s","n":5,"ns":"6","l":[1,"b"]}"#)
            .fields()
            .unwrap();
        assert_eq!(f.str("a").as_deref(), Some("s"));
        assert_eq!(f.str("n").as_deref(), Some("5"));
        assert_eq!(f.int("ns"), Some(6));
        assert_eq!(f.strings("l"), ["1", "b"]);
        assert!(f.strings("missing").is_empty());
    }

    #[test]
    fn empty_config_is_an_empty_object() {
        let c: Map<String, Value> = event("x", "{}").config_as().unwrap();
        assert!(c.is_empty());
    }

    #[test]
    fn url_encoded_bodies_round_trip() {
        let msg = BeforeSendMsg {
            msg_type: 11,
            msg_body: "%7B%22t%22%3A%22h%C3%A9+x%22%7D".into(),
            ..Default::default()
        };
        assert_eq!(msg.body_text(), r#"{"t":"hé x"}"#);
        assert_eq!(
            percent::decode(&msg.encode_body(&msg.body_text())),
            msg.body_text()
        );
        assert_eq!(percent::decode("100%"), "100%");
    }
}
