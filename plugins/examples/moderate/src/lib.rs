//! Moderates `before_send_msg`: blocks (or silences) messages that contain a banned word and
//! rewrites words in the others.
//!
//! Rule config (every key optional):
//!
//! ```toml
//! [[rule]]
//! name = "moderate"
//! events = ["before_send_msg"]
//! plugin = "plugins/moderate.wasm"
//! sync = true
//! fallback = '{"result": 1}'
//! config = { banned = ["spam", "scam"], action = "block", reason = "no spam, please", replace = { darn = "d*rn" } }
//! ```
//!
//! - `banned`: words matched case-insensitively anywhere in the message text (so `spam` also
//!   matches `SPAMMER`). A match answers `{"result":3,"reason":REASON}`, or `{"result":2}`
//!   (delivered silently: the sender sees it sent, nobody receives it) with `action = "silence"`.
//! - `action`: `"block"` (default) or `"silence"`.
//! - `reason`: shown to the sender of a blocked message; default
//!   `"message contains a banned word"`.
//! - `replace`: `{from: to}` pairs applied case-insensitively to messages that pass; if any
//!   applies, the answer carries the rewritten body as `new_msg_body`.
//!
//! A message that passes gets `{"result":1}`. For message types whose body ZEGO URL-encodes,
//! the decoded text is checked and the replacement is encoded back. Unknown config keys are an
//! error, so a typo fails the rule (and its `fallback` answers) rather than passing everything.
//! Events other than `before_send_msg` succeed with no reply.

use std::collections::BTreeMap;

use serde::Deserialize;
use zimhook_plugin::{Answer, BeforeSendMsg, Event, Handler, Outcome};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    banned: Vec<String>,
    action: Action,
    reason: Option<String>,
    replace: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    #[default]
    Block,
    Silence,
}

struct Moderate;

impl Handler for Moderate {
    fn handle(event: Event) -> Result<Outcome, String> {
        let Some(msg) = event.typed::<BeforeSendMsg>()? else {
            return Ok(Outcome::ok());
        };
        let config: Config = event.config_as()?;
        Ok(moderate(&config, &msg).into())
    }
}

zimhook_plugin::export!(Moderate);

fn moderate(config: &Config, msg: &BeforeSendMsg) -> Answer {
    let text = msg.body_text();
    let folded = Folded::new(&text);
    if config
        .banned
        .iter()
        .any(|word| !word.is_empty() && folded.lower.contains(&word.to_lowercase()))
    {
        return match config.action {
            Action::Block => Answer::block(
                config
                    .reason
                    .as_deref()
                    .unwrap_or("message contains a banned word"),
            ),
            Action::Silence => Answer::silence(),
        };
    }
    let mut rewritten = text.clone();
    for (from, to) in &config.replace {
        rewritten = replace_ignore_case(&rewritten, from, to);
    }
    if rewritten == text {
        Answer::send()
    } else {
        Answer::send().new_msg_body(msg.encode_body(&rewritten))
    }
}

/// A text lowercased once, so that case-insensitive search is a plain substring search, with
/// the way back from positions in the lowercase text to positions in the original.
struct Folded<'a> {
    text: &'a str,
    lower: String,
    /// For each byte of `lower`, the start of the char of `text` it comes from; `None` when
    /// both have the same layout (ASCII text).
    origin: Option<Vec<usize>>,
}

impl<'a> Folded<'a> {
    fn new(text: &'a str) -> Self {
        if text.is_ascii() {
            return Folded {
                text,
                lower: text.to_ascii_lowercase(),
                origin: None,
            };
        }
        let mut lower = String::with_capacity(text.len());
        let mut origin = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let before = lower.len();
            lower.extend(c.to_lowercase());
            origin.resize(origin.len() + lower.len() - before, start);
        }
        Folded {
            text,
            lower,
            origin: Some(origin),
        }
    }

    fn original(&self, lower_pos: usize) -> usize {
        match &self.origin {
            None => lower_pos,
            Some(origin) => origin.get(lower_pos).copied().unwrap_or(self.text.len()),
        }
    }

    /// The byte ranges of `text` that match `needle` ignoring case, in order, not overlapping.
    fn find_all(&self, needle: &str) -> Vec<(usize, usize)> {
        let needle = needle.to_lowercase();
        if needle.is_empty() {
            return Vec::new();
        }
        self.lower
            .match_indices(&needle)
            .map(|(start, m)| (self.original(start), self.original(start + m.len())))
            // A match inside one char's lowercase expansion maps to nothing in `text`.
            .filter(|(start, end)| start < end)
            .collect()
    }
}

fn replace_ignore_case(hay: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(hay.len());
    let mut pos = 0;
    for (start, end) in Folded::new(hay).find_all(from) {
        if start < pos {
            continue;
        }
        out.push_str(&hay[pos..start]);
        out.push_str(to);
        pos = end;
    }
    out.push_str(&hay[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        serde_json::from_str(json).unwrap()
    }

    fn text(body: &str) -> BeforeSendMsg {
        BeforeSendMsg {
            msg_type: 1,
            msg_body: body.into(),
            ..Default::default()
        }
    }

    #[test]
    fn banned_word_blocks_with_reason() {
        let c = config(r#"{"banned":["spam"],"reason":"no spam"}"#);
        let answer = moderate(&c, &text("Buy SPAM now"));
        assert_eq!(answer.to_json(), r#"{"result":3,"reason":"no spam"}"#);
    }

    #[test]
    fn banned_words_match_ignoring_case_anywhere() {
        let c = config(r#"{"banned":["Ärger", ""]}"#);
        assert_eq!(moderate(&c, &text("kein ÄRGER")).result(), 3);
        assert_eq!(moderate(&c, &text("alles gut")).result(), 1);
    }

    #[test]
    fn banned_word_silences_when_configured() {
        let c = config(r#"{"banned":["spam"],"action":"silence"}"#);
        assert_eq!(moderate(&c, &text("spam")).to_json(), r#"{"result":2}"#);
    }

    #[test]
    fn clean_message_is_sent_and_replacements_apply() {
        let c = config(r#"{"banned":["spam"],"replace":{"darn":"d*rn"}}"#);
        assert_eq!(moderate(&c, &text("hello")).to_json(), r#"{"result":1}"#);
        assert_eq!(
            moderate(&c, &text("Darn, darn!")).to_json(),
            r#"{"result":1,"new_msg_body":"d*rn, d*rn!"}"#
        );
    }

    #[test]
    fn matching_is_unicode_aware() {
        assert_eq!(Folded::new("xÄRGERy").find_all("ärger"), [(1, 7)]);
        assert_eq!(replace_ignore_case("ÉTÉ été", "été", "x"), "x x");
        assert_eq!(replace_ignore_case("AaA", "a", "b"), "bbb");
        assert!(Folded::new("abc").find_all("").is_empty());
        assert!(Folded::new("ab").find_all("abc").is_empty());
        // "İ" lowercases to two chars; a match on half of it replaces nothing.
        assert_eq!(replace_ignore_case("İx", "i", "y"), "İx");
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        assert!(serde_json::from_str::<Config>(r#"{"baned":["x"]}"#).is_err());
    }
}
