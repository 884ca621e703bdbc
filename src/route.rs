//! Which rules a callback matches: rules in file order, `events` globs, then `when`. Running
//! anything is not this module's business; it returns a [`Plan`].

use std::sync::Arc;

use crate::config::{Rule, Snapshot};
use crate::receive::Callback;
use crate::template::{Context, callback_context};

/// The rules one callback fires.
#[derive(Debug, Default)]
pub struct Plan {
    /// The first matching sync rule: its answer is the reply.
    pub sync: Option<Arc<Rule>>,
    /// Further sync rules that matched: shadowed by the first (`zimhook check` warns).
    pub shadowed: Vec<Arc<Rule>>,
    /// Rules whose deliveries are queued.
    pub queued: Vec<Arc<Rule>>,
}

impl Plan {
    pub fn rule_names(&self) -> Vec<&str> {
        self.sync
            .iter()
            .chain(self.queued.iter())
            .map(|r| r.name.as_str())
            .collect()
    }
}

/// Matches `callback` against the snapshot's rules. With `allow_sync` false (events emitted by
/// plugins, which have no reply to give), sync rules are queued like the others.
pub fn plan(snapshot: &Snapshot, callback: &Callback, allow_sync: bool) -> Plan {
    let event = callback.event();
    let mut plan = Plan::default();
    let mut ctx: Option<Context> = None;
    for rule in &snapshot.rules {
        if !rule.matches_event(event) {
            continue;
        }
        if let Some(when) = &rule.when {
            let ctx = ctx.get_or_insert_with(|| callback_context(callback, None));
            match snapshot.templates.is_true(when, ctx) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(rule = %rule.name, event, error = %e, "`when` failed; rule skipped");
                    continue;
                }
            }
        }
        if rule.sync && allow_sync {
            if plan.sync.is_none() {
                plan.sync = Some(rule.clone());
            } else {
                plan.shadowed.push(rule.clone());
            }
        } else {
            plan.queued.push(rule.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::path::Path;

    fn snapshot(rules: &str) -> Snapshot {
        let text = format!("[verify]\nsecrets = [\"s\"]\n{rules}");
        crate::config::load_str(Path::new("/tmp/x.toml"), &text).unwrap()
    }

    fn cb(json: &str) -> Callback {
        Callback::decode(Bytes::from(json.to_string())).unwrap()
    }

    #[test]
    fn globs_when_and_file_order() {
        let s = snapshot(
            r#"
[[rule]]
name = "all-calls"
events = ["call_*"]
command = ["true"]
[[rule]]
name = "many"
events = ["call_timeout"]
when = "user_ids | length > 1"
command = ["true"]
[[rule]]
name = "rooms"
events = ["room_*"]
command = ["true"]
"#,
        );
        let p = plan(
            &s,
            &cb(r#"{"event":"call_timeout","user_ids":["a","b"]}"#),
            true,
        );
        assert_eq!(p.rule_names(), ["all-calls", "many"]);
        let p = plan(
            &s,
            &cb(r#"{"event":"call_timeout","user_ids":["a"]}"#),
            true,
        );
        assert_eq!(p.rule_names(), ["all-calls"]);
        let p = plan(&s, &cb(r#"{"event":"user_action"}"#), true);
        assert!(p.rule_names().is_empty());
    }

    #[test]
    fn first_sync_rule_answers() {
        let s = snapshot(
            r#"
[[rule]]
name = "a"
events = ["before_send_msg"]
sync = true
command = ["true"]
[[rule]]
name = "b"
events = ["*"]
sync = true
command = ["true"]
"#,
        );
        let p = plan(&s, &cb(r#"{"event":"before_send_msg"}"#), true);
        assert_eq!(p.sync.as_ref().unwrap().name, "a");
        assert_eq!(p.shadowed.len(), 1);
        let p = plan(&s, &cb(r#"{"event":"before_send_msg"}"#), false);
        assert_eq!(p.queued.len(), 2);
    }
}
