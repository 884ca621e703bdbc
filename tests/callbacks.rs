//! The callback path end to end, over real sockets: receive → verify → route → deliver → act.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Map, Value, json};

/// A rule that writes each event's stdin to `{dir}/out/<event>.<delivery_id>.json`.
fn capture_rule(events: &str) -> String {
    format!(
        r#"
[[rule]]
name = "capture"
events = {events}
workdir = "{{dir}}"
command = ["sh", "-c", "mkdir -p out && cat > \"out/$1.$2.json\"", "sh", "{{{{ event }}}}", "{{{{ delivery_id }}}}"]
"#
    )
}

fn captured(d: &Daemon) -> Vec<(String, Value)> {
    let Ok(dir) = std::fs::read_dir(d.path("out")) else {
        return vec![];
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(e.path()).ok()?;
        let v = serde_json::from_str(&text).ok()?;
        Some((name.split('.').next().unwrap().to_string(), v))
    })
    .collect()
}

#[tokio::test]
async fn every_fixture_is_accepted_and_routed() {
    let d = Daemon::start(&format!("{}{}", verify_section(), capture_rule(r#"["*"]"#))).await;
    let mut sent = Vec::new();
    for product in ["zim", "rtc"] {
        for entry in std::fs::read_dir(fixtures_dir().join(product)).unwrap() {
            let path = entry.unwrap().path();
            let name = format!("{product}/{}", path.file_name().unwrap().to_string_lossy());
            let body = sign(fixture(&name));
            let (status, reply) = d.post(to_body(&body)).await;
            assert_eq!(status, 200, "{name}: {reply}");
            let expected = if body["event"] == "before_send_msg" {
                json!({"result": 0})
            } else {
                json!({"code": 0})
            };
            assert_eq!(
                serde_json::from_str::<Value>(&reply).unwrap(),
                expected,
                "{name}"
            );
            sent.push(body);
        }
    }
    assert!(sent.len() >= 19, "fixtures found: {}", sent.len());
    assert!(
        wait_until(Duration::from_secs(20), || captured(&d).len() == sent.len()).await,
        "captured {} of {}",
        captured(&d).len(),
        sent.len()
    );
    let got = captured(&d);
    for body in &sent {
        let event = body["event"].as_str().unwrap();
        let found = got
            .iter()
            .any(|(e, v)| e == event && v["nonce"] == body["nonce"]);
        assert!(found, "{event} not delivered with its own body");
    }
    // The RTC room_create's 19-digit id reached the command with its exact digits.
    let rtc = got
        .iter()
        .find(|(_, v)| v.get("room_session_id").is_some())
        .expect("rtc room_create delivered");
    assert_eq!(rtc.1["room_session_id"].to_string(), "858012925204410400");
    d.stop().await;
}

#[tokio::test]
async fn command_gets_stdin_templated_argv_and_a_clean_environment() {
    let config = format!(
        r#"{}
[[rule]]
name = "missed"
events = ["call_timeout"]
when = "user_ids | length > 1"
workdir = "{{dir}}"
env = {{ CALL = "{{{{ call_id }}}}" }}
command = ["sh", "-c", "cat > stdin.json; printf '%s|%s|%s|%s|%s' \"$1\" \"$CALL\" \"$ZIMHOOK_EVENT\" \"$ZIMHOOK_RULE\" \"${{CARGO_PKG_NAME:-none}}\" > argv.txt", "sh", "{{{{ call_id }}}}:{{{{ user_ids | join(',') }}}}"]
"#,
        verify_section()
    );
    // The daemon's own environment has a variable the command must not see.
    assert!(std::env::var("CARGO_PKG_NAME").is_ok());
    let d = Daemon::start(&config).await;
    let body = sign(event(
        "call_timeout",
        json!({"call_id": "c-77", "user_ids": ["abc", "def"]}),
    ));
    let (status, _) = d.post(to_body(&body)).await;
    assert_eq!(status, 200);
    assert!(wait_until(Duration::from_secs(10), || d.path("argv.txt").exists()).await);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(
            d.path("argv.txt")
        )
        .unwrap_or_default()
        .contains("none"))
        .await
    );
    assert_eq!(
        std::fs::read_to_string(d.path("argv.txt")).unwrap(),
        "c-77:abc,def|c-77|call_timeout|missed|none"
    );
    let stdin: Value =
        serde_json::from_str(&std::fs::read_to_string(d.path("stdin.json")).unwrap()).unwrap();
    assert_eq!(Value::Object(body.clone()), stdin);

    // `when` false: one callee, the rule does not fire.
    std::fs::remove_file(d.path("argv.txt")).unwrap();
    let body = sign(event(
        "call_timeout",
        json!({"call_id": "c-78", "user_ids": ["abc"]}),
    ));
    assert_eq!(d.post(to_body(&body)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!d.path("argv.txt").exists());
    d.stop().await;
}

#[tokio::test]
async fn shell_syntax_in_a_payload_stays_one_inert_argument() {
    let config = format!(
        r#"{}
[[rule]]
name = "echo"
events = ["send_msg"]
workdir = "{{dir}}"
command = ["sh", "-c", "printf '%s' \"$1\" > got.txt", "sh", "{{{{ msg_body }}}}"]
"#,
        verify_section()
    );
    let d = Daemon::start(&config).await;
    let evil = "$(touch pwned); echo hi > pwned2 `touch pwned3`";
    let body = sign(event("send_msg", json!({"msg_body": evil})));
    assert_eq!(d.post(to_body(&body)).await.0, 200);
    assert!(wait_until(Duration::from_secs(10), || d.path("got.txt").exists()).await);
    assert!(
        wait_until(Duration::from_secs(2), || std::fs::read_to_string(
            d.path("got.txt")
        )
        .unwrap_or_default()
            == evil)
        .await
    );
    for f in ["pwned", "pwned2", "pwned3"] {
        assert!(!d.path(f).exists(), "{f} was created");
    }
    d.stop().await;
}

#[tokio::test]
async fn forward_target_gets_the_raw_body_and_headers() {
    let target = Target::start(&[200]).await;
    let config = format!(
        r#"{}
[[rule]]
name = "crm"
events = ["call_*"]
forward = "{}"
headers = {{ Authorization = "Bearer {{{{ appid }}}}-token", X-Call = "{{{{ call_id }}}}" }}
"#,
        verify_section(),
        target.url("/zego")
    );
    let d = Daemon::start(&config).await;
    // The raw body, byte for byte: odd spacing and a 19-digit number survive.
    let body = sign(event(
        "call_accept",
        json!({"call_id": "3501761173612493269", "user_id": "abc"}),
    ));
    let raw = to_body(&body).replace(",", " ,  ").replace(
        "3501761173612493269\"",
        "3501761173612493269\" , \"big\": 12345678901234567890123",
    );
    assert_eq!(d.post(raw.clone()).await.0, 200);
    assert!(wait_until(Duration::from_secs(10), || target.count() == 1).await);
    let r = &target.requests()[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/zego");
    assert_eq!(r.body, raw.as_bytes());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-zimhook-event"), Some("call_accept"));
    assert_eq!(r.header("authorization"), Some("Bearer 1-token"));
    assert_eq!(r.header("x-call"), Some("3501761173612493269"));
    assert!(
        r.header("x-zimhook-delivery")
            .is_some_and(|v| v.len() >= 20)
    );
    d.stop().await;
    target.stop();
}

#[tokio::test]
async fn refusals_have_the_right_status() {
    let config = format!(
        "[verify]\nsecrets = [\"{SECRET}\"]\nappids = [\"1\"]\n{}",
        capture_rule(r#"["*"]"#)
    );
    let d = Daemon::start(&config).await;
    let good = || {
        sign(event(
            "call_timeout",
            json!({"call_id": "1", "user_ids": ["a"]}),
        ))
    };

    // wrong signature
    let mut b = good();
    b.insert(
        "signature".into(),
        json!("0000000000000000000000000000000000000000"),
    );
    let (s, reply) = d.post(to_body(&b)).await;
    assert_eq!(s, 401, "{reply}");
    assert!(reply.contains("signature"), "{reply}");
    // signed with another secret
    let b = sign_with(event("call_timeout", json!({})), "other");
    assert_eq!(d.post(to_body(&b)).await.0, 401);
    // stale timestamp (signed correctly, 10 minutes old)
    let mut b = event("call_timeout", json!({}));
    let ts = (now_secs() - 600).to_string();
    b.insert("nonce".into(), json!("42"));
    b.insert("timestamp".into(), json!(ts.parse::<u64>().unwrap()));
    b.insert(
        "signature".into(),
        json!(zimhook::verify::signature(SECRET, &ts, "42")),
    );
    let (s, reply) = d.post(to_body(&b)).await;
    assert_eq!(s, 401);
    assert!(reply.contains("max_skew"), "{reply}");
    // appid not allowed
    let mut b = event("call_timeout", json!({}));
    b.insert("appid".into(), json!("2"));
    let (s, reply) = d.post(to_body(&sign(b))).await;
    assert_eq!(s, 401);
    assert!(reply.contains("appid"), "{reply}");
    // missing signature
    let mut b = good();
    b.remove("signature");
    assert_eq!(d.post(to_body(&b)).await.0, 401);
    // broken JSON names line and column
    let (s, reply) = d
        .post("{\n  \"appid\": \"1\",\n  \"event\": \"x\"\n  \"nonce\": \"1\"\n}")
        .await;
    assert_eq!(s, 400);
    assert!(reply.contains("line 4 column 3"), "{reply}");
    // oversize
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20));
    assert_eq!(d.post(big).await.0, 413);
    // method and path
    let r = client().get(d.url("/callback")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = client()
        .post(d.url("/other"))
        .body(to_body(&good()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client().get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client().get(d.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // None of the refused callbacks ran anything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(captured(&d).is_empty());
    d.stop().await;
}

#[tokio::test]
async fn duplicates_run_once_and_replays_are_refused() {
    let d = Daemon::start(&format!(
        "{}{}",
        verify_section(),
        capture_rule(r#"["call_timeout"]"#)
    ))
    .await;
    let body = sign(event(
        "call_timeout",
        json!({"call_id": "dup", "user_ids": ["a"]}),
    ));
    assert_eq!(
        d.post(to_body(&body)).await,
        (200, r#"{"code":0}"#.to_string())
    );
    // ZEGO retries the same callback: 200, nothing runs again.
    assert_eq!(
        d.post(to_body(&body)).await,
        (200, r#"{"code":0}"#.to_string())
    );
    // Someone reuses the signed envelope with another body: 401.
    let mut forged = body.clone();
    forged.insert("user_ids".into(), json!(["mallory"]));
    let (s, reply) = d.post(to_body(&forged)).await;
    assert_eq!(s, 401, "{reply}");
    assert!(wait_until(Duration::from_secs(10), || captured(&d).len() == 1).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = captured(&d);
    assert_eq!(got.len(), 1, "ran {} times", got.len());
    assert_eq!(got[0].1["user_ids"], json!(["a"]));
    d.stop().await;
}

#[tokio::test]
async fn form_urlencoded_bodies_are_accepted() {
    let d = Daemon::start(&format!(
        "{}{}",
        verify_section(),
        capture_rule(r#"["call_timeout"]"#)
    ))
    .await;
    let nonce = "9223372036854775809";
    let ts = now_secs().to_string();
    let sig = zimhook::verify::signature(SECRET, &ts, nonce);
    let form = format!(
        "appid=1&event=call_timeout&nonce={nonce}&timestamp={ts}&signature={sig}&call_id=c%201&user_ids=%5B%22abc%22%2C%22def%22%5D"
    );
    let (s, reply) = d.post(form).await;
    assert_eq!(s, 200, "{reply}");
    assert!(wait_until(Duration::from_secs(10), || captured(&d).len() == 1).await);
    let got = &captured(&d)[0].1;
    assert_eq!(got["call_id"], "c 1");
    assert_eq!(got["user_ids"], json!(["abc", "def"]));
    assert_eq!(got["nonce"], nonce);
    d.stop().await;
}

#[tokio::test]
async fn pascal_case_envelope_with_millisecond_timestamp() {
    let d = Daemon::start(&format!(
        "{}{}",
        verify_section(),
        capture_rule(r#"["asr_result"]"#)
    ))
    .await;
    let ts = (now_secs() * 1000).to_string();
    let body = json!({
        "AppId": 1, "Event": "asr_result", "Nonce": "77", "Timestamp": ts.parse::<u64>().unwrap(),
        "Signature": zimhook::verify::signature(SECRET, &ts, "77"), "text": "hi"
    });
    let (s, reply) = d.post(body.to_string()).await;
    assert_eq!(s, 200, "{reply}");
    assert!(wait_until(Duration::from_secs(10), || captured(&d).len() == 1).await);
    d.stop().await;
}

#[tokio::test]
async fn slow_clients_get_408_and_silent_ones_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = format!(
        "[server]\nrequest_timeout = \"300ms\"\nheader_timeout = \"300ms\"\n{}{}",
        verify_section(),
        capture_rule(r#"["*"]"#)
    );
    let d = Daemon::start(&config).await;
    // Headers arrive, the body never completes.
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"POST /callback HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "no answer to a stalled body");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // Nothing at all is sent: the connection is closed after the header timeout.
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "silent connection kept open");
    d.stop().await;
}

#[tokio::test]
async fn concurrency_limits_runs_of_a_rule() {
    let config = format!(
        r#"{}
[[rule]]
name = "one-at-a-time"
events = ["call_timeout"]
concurrency = 1
workdir = "{{dir}}"
command = ["sh", "-c", "echo start >> log.txt; sleep 0.1; echo end >> log.txt"]
"#,
        verify_section()
    );
    let d = Daemon::start(&config).await;
    for i in 0..4 {
        let body = sign(event("call_timeout", json!({"call_id": format!("c{i}")})));
        assert_eq!(d.post(to_body(&body)).await.0, 200);
    }
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            d.path("log.txt")
        )
        .unwrap_or_default()
        .lines()
        .count()
            == 8)
        .await
    );
    let log = std::fs::read_to_string(d.path("log.txt")).unwrap();
    let lines: Vec<_> = log.lines().collect();
    for pair in lines.chunks(2) {
        assert_eq!(pair, ["start", "end"], "runs overlapped:\n{log}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_holds_across_a_reload() {
    let rule = |comment: &str| {
        format!(
            r#"{}
[[rule]]
# {comment}
name = "one-at-a-time"
events = ["call_timeout"]
concurrency = 1
workdir = "{{dir}}"
command = ["sh", "-c", "echo start >> log.txt; sleep 1; echo end >> log.txt"]
"#,
            verify_section()
        )
    };
    let d = Daemon::start(&rule("first")).await;
    let log = || std::fs::read_to_string(d.path("log.txt")).unwrap_or_default();
    let body = sign(event("call_timeout", json!({"call_id": "c0"})));
    assert_eq!(d.post(to_body(&body)).await.0, 200);
    assert!(wait_until(Duration::from_secs(5), || log() == "start\n").await);

    // A reload while the first run goes on: the new config's rule is the same rule.
    let text = rule("second").replace("{dir}", d.dir.path().to_str().unwrap());
    std::fs::write(d.path("config.toml"), text).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || d
            .app
            .reloads_ok
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
        .await,
        "the config was not reloaded"
    );
    let body = sign(event("call_timeout", json!({"call_id": "c1"})));
    assert_eq!(d.post(to_body(&body)).await.0, 200);
    assert!(wait_until(Duration::from_secs(10), || log().lines().count() == 4).await);
    assert_eq!(
        log(),
        "start\nend\nstart\nend\n",
        "the run accepted after the reload started while the first still ran"
    );
    d.stop().await;
}

/// A Mini Game report signed under its own names (`SignatureNonce`, `Timestamp`, `Signature`).
fn signed_report(name: &str) -> Map<String, Value> {
    let mut body = fixture(&format!("mini_game/{name}"));
    let nonce = rand::random::<u64>().to_string();
    let ts = now_secs().to_string();
    body.insert("SignatureNonce".into(), Value::String(nonce.clone()));
    body.insert("Timestamp".into(), serde_json::from_str(&ts).unwrap());
    body.insert(
        "Signature".into(),
        Value::String(zimhook::verify::signature(SECRET, &ts, &nonce)),
    );
    body
}

#[tokio::test]
async fn mini_game_gets_its_documented_reply_unless_a_sync_rule_answers() {
    let config = format!(
        r#"{}
[[rule]]
name = "settle"
events = ["mini_game.game_settled"]
sync = true
command = ["printf", '{{"Code":500,"Message":"try again"}}']
"#,
        verify_section()
    );
    let d = Daemon::start(&config).await;
    let (status, reply) = d
        .post(to_body(&signed_report("report_game_info_1.json")))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, r#"{"Code":200,"Message":"succeed"}"#);
    let (status, reply) = d
        .post(to_body(&signed_report("report_game_info_2.json")))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, r#"{"Code":500,"Message":"try again"}"#);
    // Another family without a rule keeps `{"code":0}`.
    let mut player = fixture("cloud_player/player_1.json");
    let nonce = rand::random::<u64>().to_string();
    let ts = now_secs().to_string();
    player.insert("Nonce".into(), Value::String(nonce.clone()));
    player.insert("Timestamp".into(), Value::String(ts.clone()));
    player.insert(
        "Signature".into(),
        Value::String(zimhook::verify::signature(SECRET, &ts, &nonce)),
    );
    let (status, reply) = d.post(to_body(&player)).await;
    assert_eq!((status, reply.as_str()), (200, r#"{"code":0}"#));
    d.stop().await;
}
