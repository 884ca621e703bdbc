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
    fn sign(&self, body: Map<String, Value>) -> Map<String, Value> {
        let nonce = fresh_nonce();
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
        self.sign_with(body, nonce_value, ts_value)
    }

    /// Puts `nonce` and `timestamp` under the family's names, as given (a number stays a
    /// number), and the signature over their literal text.
    fn sign_with(
        &self,
        mut body: Map<String, Value>,
        nonce: Value,
        timestamp: Value,
    ) -> Map<String, Value> {
        let text = |v: &Value| zimhook::receive::literal_text(v).unwrap();
        let signature = zimhook::verify::signature(SECRET, &text(&timestamp), &text(&nonce));
        body.insert(self.timestamp.into(), timestamp);
        body.insert(self.nonce.into(), nonce);
        body.insert(self.signature.into(), Value::String(signature));
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

    // Every body at its family's rule, and the two the alias rule matched. (Names that two
    // families share, such as ZIM's and RTC's `room_create`, reach both rules: the total is
    // not the number sent.)
    let all_arrived = || {
        let received = target.requests();
        let aliased = received.iter().filter(|r| r.path == "/alias").count();
        aliased >= 2
            && sent.iter().all(|(dir, _, text)| {
                received
                    .iter()
                    .any(|r| r.path == format!("/{dir}") && r.body == text.as_bytes())
            })
    };
    let arrived = wait_until(Duration::from_secs(30), all_arrived).await;
    // Anything forwarded twice would show now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = target.requests();
    assert!(
        arrived,
        "{} forwards arrived, not every body at its rule\n{}",
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

fn family(dir: &str) -> &'static Family {
    FAMILIES.iter().find(|f| f.dir == dir).unwrap()
}

/// A random 19-digit nonce.
fn fresh_nonce() -> String {
    (1_000_000_000_000_000_000 + rand::random::<u64>() % 9_000_000_000_000_000_000).to_string()
}

/// The documented quirks, end to end: each body is accepted, and the rule on its event gets
/// it unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_envelope_quirks_are_accepted_and_routed() {
    let target = Target::start(&[200]).await;
    let dir = tempfile::tempdir().unwrap();
    let rules: String = [
        ("recording", "cloud_recording.files_uploaded"),
        ("status", "AgentInstanceStatus"),
        ("speak", "AgentSpeakAction"),
        ("llm", "LLMResult"),
        ("transcode", "transcode_start"),
    ]
    .iter()
    .map(|(name, event)| {
        format!(
            "[[rule]]\nname = \"{name}\"\nevents = [\"{event}\"]\nforward = \"{}\"\n",
            target.url(&format!("/{name}"))
        )
    })
    .collect();
    let (config, port) = write_config(
        dir.path(),
        "",
        &format!("[store]\nkind = \"memory\"\n{rules}"),
    );
    let daemon = Running::start(&config, dir.path(), &[]);
    let url = format!("http://127.0.0.1:{port}/callback");
    let http = client();
    let now = now_secs();
    let ms = now * 1000 + 77;

    let recording = fixture("cloud_recording/recording_status_1.json");
    let agent_status = fixture("ai_agent/AgentInstanceStatus.json");
    let mut status_as_speak = agent_status.clone();
    status_as_speak.insert("Event".into(), Value::from("AgentSpeakAction"));
    let mut appid_as_text = fixture("ai_agent/LLMResult.json");
    appid_as_text.insert("AppId".into(), Value::from("1234567"));
    let transcode = fixture("rtc_transcoding/transcode_start.json");
    let (cloud, agent, transcoding) = (
        family("cloud_recording"),
        family("ai_agent"),
        family("rtc_transcoding"),
    );
    let fresh = |f: &Family, body: Map<String, Value>| to_body(&f.sign(body));
    let cases: Vec<(&str, String, &str)> = vec![
        // Cloud Recording's timestamp is a string; a number is taken too.
        (
            "string timestamp",
            fresh(cloud, recording.clone()),
            "/recording",
        ),
        (
            "number timestamp",
            to_body(&cloud.sign_with(recording, fresh_nonce().into(), now.into())),
            "/recording",
        ),
        // AppId a number (as documented) or a string; ms timestamps; 19-digit nonces, as a
        // string and as a number beyond i64.
        (
            "numeric AppId, 19-digit nonce",
            fresh(agent, agent_status.clone()),
            "/status",
        ),
        (
            "nonce as a number beyond i64",
            to_body(&agent.sign_with(
                agent_status,
                serde_json::from_str("9223372036854775809").unwrap(),
                (ms + 1).into(),
            )),
            "/status",
        ),
        ("AppId as text", fresh(agent, appid_as_text), "/llm"),
        // The status event spelled as the docs' sample spells it reaches the status rule; the
        // deprecated speak action reaches its own.
        (
            "status spelled AgentSpeakAction",
            fresh(agent, status_as_speak),
            "/status",
        ),
        (
            "AgentSpeakAction",
            fresh(agent, fixture("ai_agent/AgentSpeakAction.json")),
            "/speak",
        ),
        ("Appid", fresh(transcoding, transcode.clone()), "/transcode"),
    ];
    for (what, body, _) in &cases {
        let r = http.post(&url).body(body.clone()).send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(
            (status, text.as_str()),
            (200, r#"{"code":0}"#),
            "{what}\n{}",
            daemon.log()
        );
    }
    assert!(
        wait_until(Duration::from_secs(15), || target.count() >= cases.len()).await,
        "{:?}\n{}",
        target
            .requests()
            .iter()
            .map(|r| &r.path)
            .collect::<Vec<_>>(),
        daemon.log()
    );
    let received = target.requests();
    for (what, body, path) in &cases {
        let hits: Vec<&str> = received
            .iter()
            .filter(|r| r.body == body.as_bytes())
            .map(|r| r.path.as_str())
            .collect();
        assert_eq!(hits, [*path], "{what}");
    }
    assert!(
        received
            .iter()
            .any(|r| r.body.windows(19).any(|w| w == b"9223372036854775809")),
        "the big nonce's digits were forwarded as sent"
    );

    // `Appid` only in this exact case: `APPID` is no appid, and the body is refused.
    let mut wrong_case = transcode;
    let appid = wrong_case.remove("Appid").unwrap();
    wrong_case.insert("APPID".into(), appid);
    let body = fresh(transcoding, wrong_case);
    let r = http.post(&url).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains("missing envelope field") && text.contains("appid"),
        "{text}"
    );
}

/// A plugin on a Cloud Recording event, through the SDK's typed struct: the example
/// `recording-files` plugin emits one event per uploaded file, and a rule forwards each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_fans_a_recording_callback_out_per_file() {
    let target = Target::start(&[200]).await;
    let dir = tempfile::tempdir().unwrap();
    let rules = format!(
        r#"[store]
kind = "memory"

[[rule]]
name = "fanout"
events = ["cloud_recording.files_uploaded"]
plugin = "{plugin}"
config = {{ min_bytes = 1000 }}

[[rule]]
name = "index"
events = ["recording_file"]
forward = "{url}"
"#,
        plugin = plugin("recording-files").display(),
        url = target.url("/files/{{ task_id }}")
    );
    let (config, port) = write_config(dir.path(), "", &rules);
    let daemon = Running::start(&config, dir.path(), &[]);
    let url = format!("http://127.0.0.1:{port}/callback");

    let mut body = fixture("cloud_recording/recording_status_1.json");
    let files = body["detail"]["file_info"].as_array().unwrap().clone();
    let mut small = files[0].clone();
    small["file_id"] = Value::from("tiny.mp4");
    small["file_size"] = Value::from(10);
    let mut second = files[0].clone();
    second["file_id"] = Value::from("second.mp4");
    second["file_size"] = Value::from("2048"); // a number sent as text
    body["detail"]["file_info"] = Value::Array(vec![files[0].clone(), small, second]);
    let cloud = FAMILIES
        .iter()
        .find(|f| f.dir == "cloud_recording")
        .unwrap();
    let text = to_body(&cloud.sign(body));
    let (status, reply) = post(&url, text).await;
    assert_eq!(
        (status, reply.as_str()),
        (200, r#"{"code":0}"#),
        "{}",
        daemon.log()
    );

    assert!(
        wait_until(Duration::from_secs(15), || target.count() >= 2).await,
        "{}",
        daemon.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got: Vec<(String, Value)> = target
        .requests()
        .iter()
        .map(|r| (r.path.clone(), serde_json::from_slice(&r.body).unwrap()))
        .collect();
    got.sort_by_key(|(_, v)| v["file_id"].as_str().unwrap_or("").to_string());
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, "/files/YZ4joOE4IwmFAAAT");
    assert_eq!(
        got[0].1["file_id"],
        "YZ4joOE4IwmFAAAT_6677_800221_800221_VA_20211124113602084.mp4"
    );
    assert_eq!(got[0].1["file_size"], 25349026);
    assert_eq!(got[0].1["duration_ms"], 170039);
    assert_eq!(got[0].1["complete"], true);
    assert_eq!(got[1].1["file_id"], "second.mp4");
    assert_eq!(got[1].1["file_size"], 2048);
    assert_eq!(got[1].1["room_id"], "6677");
}
