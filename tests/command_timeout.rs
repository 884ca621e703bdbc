//! A command's timeout is a bound, with the real binary: a descendant that leaves the process
//! group (`setsid`) and keeps stdout/stderr open holds neither a timed-out attempt nor one whose
//! program exited, and the output read until then is kept.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{BIN, Running, write_config};
use common::*;
use serde_json::{Value, json};

/// The command's timeout in the config below, and the time between SIGTERM and SIGKILL.
const TIMEOUT: Duration = Duration::from_secs(1);
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Kills, when dropped, the `sleep` left behind by a test (it left the process group, so the
/// daemon does not): matched by its exact, unusual command line.
struct Leftover(&'static str);

impl Drop for Leftover {
    fn drop(&mut self) {
        let pattern = format!("^{}$", self.0.replace('.', "\\."));
        let _ = Command::new("pkill").args(["-f", &pattern]).status();
    }
}

fn start(dir: &Path, rules: &str) -> (Running, std::path::PathBuf, u16) {
    let rest = format!(
        "[admin]\nlisten = \"unix:data/admin.sock\"\n[store]\npath = \"data/store.redb\"\n{rules}"
    );
    let (config, port) = write_config(dir, "", &rest);
    (Running::start(&config, dir, &[]), config, port)
}

fn dead_letters(config: &Path) -> Value {
    let out = Command::new(BIN)
        .args(["deliveries", "-c"])
        .arg(config)
        .args(["list", "--dead", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_command_is_not_held_by_a_descendant_outside_its_group() {
    let _leftover = Leftover("sleep 41.5");
    let dir = tempfile::tempdir().unwrap();
    let (daemon, config, port) = start(
        dir.path(),
        r#"[[rule]]
name = "stuck"
events = ["call_timeout"]
timeout = "1s"
retry = { attempts = 1 }
command = ["sh", "-c", "setsid sleep 41.5 & echo started; sleep 30"]
"#,
    );
    let body = to_body(&sign(event("call_timeout", json!({"call_id": "c1"}))));
    let posted = Instant::now();
    let (status, _) = post(&format!("http://127.0.0.1:{port}/callback"), body).await;
    assert_eq!(status, 200);

    let bound = TIMEOUT + KILL_GRACE + Duration::from_secs(1);
    let mut listed = Value::Null;
    let dead = wait_until(bound, || {
        listed = dead_letters(&config);
        listed["deliveries"][0]["id"].is_string()
    })
    .await;
    let took = posted.elapsed();
    assert!(
        dead,
        "no dead letter {bound:?} after the callback: {listed}\n{}",
        daemon.log()
    );
    println!("dead letter {took:?} after the callback");
    assert!(took >= TIMEOUT, "dead before the timeout: {took:?}");

    // What the command wrote before it was killed is kept.
    let id = listed["deliveries"][0]["id"].as_str().unwrap();
    let out = Command::new(BIN)
        .args(["deliveries", "-c"])
        .arg(&config)
        .args(["show", id])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("timed out after 1s"), "{shown}");
    assert!(shown.contains("started"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_exits_answers_at_once_though_a_descendant_keeps_its_pipes() {
    let _leftover = Leftover("sleep 42.5");
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, _config, port) = start(
        dir.path(),
        r#"[[rule]]
name = "answer"
events = ["before_send_msg"]
sync = true
command = ["sh", "-c", "setsid sleep 42.5 & echo '{\"result\": 3, \"reason\": \"done\"}'"]
"#,
    );
    let body = to_body(&sign(event(
        "before_send_msg",
        json!({"from_user_id": "u1", "conv_id": "c", "msg_body": "x"}),
    )));
    let posted = Instant::now();
    let reply = client()
        .post(format!("http://127.0.0.1:{port}/callback"))
        .body(body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("no reply within 5 s");
    let status = reply.status().as_u16();
    let text = reply.text().await.unwrap();
    let took = posted.elapsed();
    println!("sync reply {took:?} after the callback");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap_or_default(),
        json!({"result": 3, "reason": "done"}),
        "{text}"
    );
    assert!(took < Duration::from_secs(2), "reply took {took:?}");
}
