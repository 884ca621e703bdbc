//! Plugin rules end to end: the example plugins built for wasm32-wasip2, run by the daemon for
//! signed callbacks over real sockets.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{BIN, Running, free_port};
use common::*;
use serde_json::{Value, json};

fn moderate_rule(extra: &str) -> String {
    format!(
        r#"
[[rule]]
name = "moderate"
events = ["before_send_msg"]
plugin = "{}"
sync = true
fallback = '{{"result": 1}}'
config = {{ banned = ["spam"], reason = "no spam, please" }}
{extra}
"#,
        plugin("moderate").display()
    )
}

fn message(body: &str) -> String {
    to_body(&sign(event(
        "before_send_msg",
        json!({"request_id": "r1", "from_user_id": "u1", "conv_id": "g1", "conv_type": 2,
               "msg_id": "7254119327986670315", "payload": "", "msg_type": 1, "sub_msg_type": 0,
               "msg_body": body}),
    )))
}

#[tokio::test]
async fn moderate_blocks_banned_words_and_passes_clean_messages() {
    let d = Daemon::start(&format!("{}{}", verify_section(), moderate_rule(""))).await;
    let (s, reply) = d.post(message("buy SPAM now")).await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap(),
        json!({"result": 3, "reason": "no spam, please"})
    );
    let (s, reply) = d.post(message("hello everyone")).await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap(),
        json!({"result": 1})
    );
    d.stop().await;
}

#[tokio::test]
async fn missed_call_fans_out_one_event_per_callee() {
    let config = format!(
        r#"{}
[[rule]]
name = "fanout"
events = ["call_timeout"]
plugin = "{}"

[[rule]]
name = "notify"
events = ["missed_call"]
workdir = "{{dir}}"
command = ["sh", "-c", "echo \"$1 $2\" >> missed.txt", "sh", "{{{{ call_id }}}}", "{{{{ user_id }}}}"]
"#,
        verify_section(),
        plugin("missed-call").display()
    );
    let d = Daemon::start(&config).await;
    let body = sign(event(
        "call_timeout",
        json!({"call_id": "c9", "user_ids": ["abc", "def", "ghi"]}),
    ));
    assert_eq!(d.post(to_body(&body)).await.0, 200);
    let lines = || {
        let mut l: Vec<String> = std::fs::read_to_string(d.path("missed.txt"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        l.sort();
        l
    };
    assert!(
        wait_until(Duration::from_secs(15), || lines().len() == 3).await,
        "{:?}",
        lines()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(), ["c9 abc", "c9 def", "c9 ghi"]);
    d.stop().await;
}

#[tokio::test]
async fn a_looping_plugin_is_stopped_and_the_fallback_answers() {
    let config = format!(
        r#"{}
[[rule]]
name = "spin"
events = ["before_send_msg"]
when = "conv_id == 'spin'"
plugin = "{}"
sync = true
timeout = "200ms"
fallback = '{{"result": 1}}'

[[rule]]
name = "hog"
events = ["before_send_msg"]
when = "conv_id == 'hog'"
plugin = "{}"
sync = true
fallback = '{{"result": 2}}'
{}"#,
        verify_section(),
        plugin("test-spin").display(),
        plugin("test-hog").display(),
        moderate_rule("")
    );
    let d = Daemon::start(&config).await;
    let msg = |conv: &str, text: &str| {
        to_body(&sign(event(
            "before_send_msg",
            json!({"from_user_id": "u", "conv_id": conv, "msg_body": text, "msg_type": 1}),
        )))
    };
    let started = Instant::now();
    let (s, reply) = d.post(msg("spin", "x")).await;
    assert_eq!((s, reply.as_str()), (200, r#"{"result": 1}"#));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let (s, reply) = d.post(msg("hog", "x")).await;
    assert_eq!((s, reply.as_str()), (200, r#"{"result": 2}"#));
    // The daemon and the other plugins are unharmed.
    let (s, reply) = d.post(msg("g1", "spam")).await;
    assert_eq!(s, 200);
    assert_eq!(serde_json::from_str::<Value>(&reply).unwrap()["result"], 3);
    d.stop().await;
}

#[tokio::test]
async fn a_failing_queued_plugin_is_a_dead_letter_with_its_error() {
    let config = format!(
        r#"{}
[[rule]]
name = "fails"
events = ["call_timeout"]
plugin = "{}"
"#,
        verify_section(),
        plugin("test-fail").display()
    );
    let d = Daemon::start(&config).await;
    let body = sign(event(
        "call_timeout",
        json!({"call_id": "c", "user_ids": ["a"]}),
    ));
    assert_eq!(d.post(to_body(&body)).await.0, 200);
    d.wait_dead_letters(1, Duration::from_secs(10)).await;
    let dead = &d.dead_letters()[0];
    assert_eq!(dead.attempts, 1, "a plugin error is not retried");
    assert!(
        dead.last_error
            .as_deref()
            .unwrap()
            .contains("test_fail.wasm"),
        "{:?}",
        dead.last_error
    );
    d.stop().await;
}

#[test]
fn check_compiles_plugins_and_refuses_a_wrong_component() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, format!("{}{}", verify_section(), moderate_rule(""))).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 plugin compiled"));

    // A core module (not a component), and a component of another world.
    std::fs::write(
        dir.path().join("core.wasm"),
        wat::parse_str("(module)").unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("other.wasm"),
        wat::parse_str("(component)").unwrap(),
    )
    .unwrap();
    for (file, message) in [
        ("core.wasm", "not a component"),
        ("other.wasm", "zimhook:plugin/handler"),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(
            &config,
            format!(
                "{}\n[[rule]]\nname = \"bad\"\nevents = [\"send_msg\"]\nplugin = \"{file}\"\n",
                verify_section()
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["check", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(err.contains("bad.toml:7:10: rule \"bad\""), "{err}");
        assert!(err.contains(message), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_plugin_file_swaps_it_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::copy(plugin("moderate"), dir.path().join("p.wasm")).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{}[store]\npath = \"data/s.redb\"\n{}",
            verify_section(),
            moderate_rule("").replace(&plugin("moderate").display().to_string(), "p.wasm")
        ),
    )
    .unwrap();
    let daemon = Running::start(&config, dir.path(), &[]);
    let url = format!("http://127.0.0.1:{port}/callback");
    let result = || async {
        serde_json::from_str::<Value>(&post(&url, message("spam")).await.1).unwrap()["result"]
            .clone()
    };
    assert_eq!(result().await, 3);

    // Swap in a plugin that fails: the fallback answers from now on.
    let tmp = dir.path().join("p.wasm.tmp");
    std::fs::copy(plugin("test-fail"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.path().join("p.wasm")).unwrap();
    let mut swapped = false;
    for _ in 0..100 {
        if result().await == 1 {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swapped, "plugin not swapped:\n{}", daemon.log());
    assert!(daemon.log().contains("plugin compiled"));

    // And back, written in place this time.
    std::fs::write(
        dir.path().join("p.wasm"),
        std::fs::read(plugin("moderate")).unwrap(),
    )
    .unwrap();
    let mut back = false;
    for _ in 0..100 {
        if result().await == 3 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "plugin not swapped back:\n{}", daemon.log());
    drop(daemon);
}
