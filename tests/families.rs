//! Every documented callback body of every ZEGO product family (`tests/fixtures/<family>/`),
//! signed with fresh values under the family's own field names and posted to the real binary:
//! 200 with the family's documented reply, and the rule on the family's event names forwards it
//! byte for byte. The same bodies with the signature changed by one digit get 401.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use common::process::{Running, write_config};
use common::*;

/// A family's envelope as its docs spell it (`zego-callbacks.md` §6), kept apart from the
/// code's own table so the two check each other.
struct Family {
    dir: &'static str,
    nonce: &'static str,
    timestamp: &'static str,
    signature: &'static str,
    /// The field holding the event, and for a numbered event the name's prefix.
    event: &'static str,
    prefix: Option<&'static str>,
}

const FAMILIES: &[Family] = &[
    named("zim", "nonce", "timestamp", "signature", "event"),
    named("rtc", "nonce", "timestamp", "signature", "event"),
    named("super_board", "nonce", "timestamp", "signature", "event"),
    named("ai_agent", "Nonce", "Timestamp", "Signature", "Event"),
    named("asr", "Nonce", "Timestamp", "Signature", "Event"),
    named("rtc_moderation", "Nonce", "Timestamp", "Signature", "Event"),
    named(
        "rtc_transcoding",
        "Nonce",
        "Timestamp",
        "Signature",
        "Event",
    ),
    numbered(
        "cloud_recording",
        "nonce",
        "timestamp",
        "signature",
        "event_type",
    ),
    numbered(
        "cloud_player",
        "Nonce",
        "Timestamp",
        "Signature",
        "EventType",
    ),
    numbered(
        "digital_human",
        "Nonce",
        "Timestamp",
        "Signature",
        "EventType",
    ),
    numbered(
        "mini_game",
        "SignatureNonce",
        "Timestamp",
        "Signature",
        "ReportType",
    ),
];

const fn named(
    dir: &'static str,
    nonce: &'static str,
    timestamp: &'static str,
    signature: &'static str,
    event: &'static str,
) -> Family {
    Family {
        dir,
        nonce,
        timestamp,
        signature,
        event,
        prefix: None,
    }
}

const fn numbered(
    dir: &'static str,
    nonce: &'static str,
    timestamp: &'static str,
    signature: &'static str,
    event: &'static str,
) -> Family {
    Family {
        prefix: Some(dir),
        ..named(dir, nonce, timestamp, signature, event)
    }
}

impl Family {
    fn fixtures(&self) -> Vec<(String, Map<String, Value>)> {
        let mut names: Vec<String> = std::fs::read_dir(fixtures_dir().join(self.dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        assert!(!names.is_empty(), "no fixtures in {}", self.dir);
        names
            .into_iter()
            .map(|n| {
                let body = fixture(&format!("{}/{n}", self.dir));
                (n, body)
            })
            .collect()
    }

    fn event_name(&self, body: &Map<String, Value>) -> String {
        let value = match &body[self.event] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("{}: event field {other}", self.dir),
        };
        match self.prefix {
            Some(p) => format!("{p}.{value}"),
            None => value,
        }
    }

    /// The reply a body of this family gets without a sync rule.
    fn reply(&self, event: &str) -> Value {
        if self.dir == "mini_game" {
            serde_json::json!({"Code": 200, "Message": "succeed"})
        } else if event == "before_send_msg" {
            serde_json::json!({"result": 0})
        } else {
            serde_json::json!({"code": 0})
        }
    }

    /// Fresh nonce and timestamp under the family's names, keeping each field's JSON type (and a
    /// millisecond timestamp in milliseconds), then the signature over them.
    fn sign(&self, mut body: Map<String, Value>) -> Map<String, Value> {
        let nonce = (1_000_000_000_000_000_000 + rand::random::<u64>() % 9_000_000_000_000_000_000)
            .to_string();
        let old_ts = zimhook::receive::literal_text(&body[self.timestamp]).unwrap();
        let ts = if old_ts.len() > 10 {
            (now_secs() * 1000 + 123).to_string()
        } else {
            now_secs().to_string()
        };
        let typed = |old: &Value, text: &str| match old {
            Value::String(_) => Value::String(text.to_string()),
            _ => serde_json::from_str(text).unwrap(),
        };
        let ts_value = typed(&body[self.timestamp], &ts);
        let nonce_value = typed(&body[self.nonce], &nonce);
        body.insert(self.timestamp.into(), ts_value);
        body.insert(self.nonce.into(), nonce_value);
        body.insert(
            self.signature.into(),
            Value::String(zimhook::verify::signature(SECRET, &ts, &nonce)),
        );
        body
    }

    /// A forward rule on the family's event names: a glob for the numbered families, the names
    /// of its fixtures for the others.
    fn rule(&self, target: &str) -> String {
        let events: Vec<String> = match self.prefix {
            Some(p) => vec![format!("{p}.*")],
            None => {
                let mut names: Vec<String> = self
                    .fixtures()
                    .iter()
                    .map(|(_, b)| self.event_name(b))
                    .collect();
                names.dedup();
                names
            }
        };
        format!(
            "[[rule]]\nname = \"{dir}\"\nevents = {events:?}\nforward = \"{target}/{dir}\"\n",
            dir = self.dir
        )
    }
}

fn config(dir: &Path, target: &Target) -> (std::path::PathBuf, u16) {
    let mut rules: String = FAMILIES.iter().map(|f| f.rule(&target.url(""))).collect();
    // A rule on a readable alias.
    rules.push_str(&format!(
        "[[rule]]\nname = \"alias\"\nevents = [\"cloud_recording.files_uploaded\", \"cloud_player.uploaded\"]\nforward = \"{}\"\n",
        target.url("/alias")
    ));
    write_config(dir, "", &format!("[store]\nkind = \"memory\"\n{rules}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_of_every_family_is_accepted_and_forwarded_byte_for_byte() {
    let target = Target::start(&[200]).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = config(dir.path(), &target);
    let daemon = Running::start(&config, dir.path(), &[]);
    let url = format!("http://127.0.0.1:{port}/callback");
    let http = client();

    let mut sent = Vec::new();
    for family in FAMILIES {
        for (name, body) in family.fixtures() {
            let event = family.event_name(&body);
            let text = to_body(&family.sign(body));
            let r = http.post(&url).body(text.clone()).send().await.unwrap();
            let status = r.status().as_u16();
            let reply: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(
                (status, &reply),
                (200, &family.reply(&event)),
                "{}/{name} ({event})\n{}",
                family.dir,
                daemon.log()
            );
            sent.push((family.dir, name, text));
        }
    }
    // Every family folder of the fixtures was posted: 47 bodies besides ZIM's and RTC's.
    let mut dirs: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut posted: Vec<&str> = FAMILIES.iter().map(|f| f.dir).collect();
    posted.sort();
    assert_eq!(dirs, posted);
    let others = sent
        .iter()
        .filter(|(d, _, _)| !matches!(*d, "zim" | "rtc"))
        .count();
    assert_eq!(others, 47);

    let expected = sent.len() + 2; // and the two bodies the alias rule matched
    let arrived = wait_until(Duration::from_secs(30), || target.count() >= expected).await;
    let received = target.requests();
    assert!(
        arrived,
        "{} of {expected} forwards arrived\n{}",
        received.len(),
        daemon.log()
    );
    for (dir, name, text) in &sent {
        let path = format!("/{dir}");
        let hits = received
            .iter()
            .filter(|r| r.path == path && r.body == text.as_bytes())
            .count();
        assert_eq!(hits, 1, "{dir}/{name} reached /{dir} {hits} times");
    }
    let alias: Vec<&str> = received
        .iter()
        .filter(|r| r.path == "/alias")
        .map(|r| r.header("x-zimhook-event").unwrap_or(""))
        .collect();
    assert_eq!(alias.len(), 2, "{alias:?}");
    assert!(alias.contains(&"cloud_recording.1"), "{alias:?}");
    assert!(alias.contains(&"cloud_player.10001"), "{alias:?}");
}

/// The signature's first decimal digit changed by one.
fn one_digit_off(signature: &str) -> String {
    let at = signature
        .find(|c: char| c.is_ascii_digit())
        .expect("a hex signature with a digit");
    let digit = signature.as_bytes()[at] - b'0';
    let mut out = signature.to_string();
    out.replace_range(at..=at, &((digit + 1) % 10).to_string());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_one_digit_off_is_refused_for_every_family() {
    let target = Target::start(&[200]).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = config(dir.path(), &target);
    let daemon = Running::start(&config, dir.path(), &[]);
    let url = format!("http://127.0.0.1:{port}/callback");
    let http = client();
    for family in FAMILIES {
        for (name, body) in family.fixtures() {
            let mut body = family.sign(body);
            let sig = body[family.signature].as_str().unwrap().to_string();
            body.insert(family.signature.into(), Value::String(one_digit_off(&sig)));
            let r = http.post(&url).body(to_body(&body)).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert_eq!(
                status,
                401,
                "{}/{name}: {text}\n{}",
                family.dir,
                daemon.log()
            );
            assert!(
                text.contains("signature does not match"),
                "{}/{name}: {text}",
                family.dir
            );
        }
    }
    assert_eq!(target.count(), 0);
}
