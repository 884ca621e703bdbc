//! The admin endpoint and `zimhook deliveries`, with the real binary: dead letters are listed,
//! shown with the response that killed them, retried once the target is fixed, dropped; and
//! `/metrics` counts exactly what happened.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::{BIN, Running, free_port};
use common::*;
use serde_json::{Value, json};

fn deliveries(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["deliveries", "-c"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn post(port: u16, body: String) -> u16 {
    client()
        .post(format!("http://127.0.0.1:{port}/callback"))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_retried_and_dropped() {
    // 404 until "fixed": the next request gets 200.
    let target = Target::start(&[404, 200]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
[admin]
listen = "unix:data/admin.sock"
[verify]
secrets = ["{SECRET}"]
[store]
path = "data/store.redb"
[[rule]]
name = "crm"
events = ["call_timeout", "call_cancel"]
forward = "{}"
"#,
            target.url("/in")
        ),
    )
    .unwrap();
    let daemon = Running::start(&config, dir.path(), &[]);
    let body = sign(event(
        "call_timeout",
        json!({"call_id": "c1", "user_ids": ["a"]}),
    ));
    assert_eq!(post(port, to_body(&body)).await, 200);
    assert!(wait_until(Duration::from_secs(10), || target.count() == 1).await);

    // Dead at once (404 is permanent), with the response recorded.
    let mut listed = String::new();
    let found = wait_until(Duration::from_secs(10), || {
        listed = deliveries(&config, &["list", "--dead"]).1;
        listed.contains("crm")
    })
    .await;
    assert!(found, "{listed}");
    assert!(listed.contains("404"), "{listed}");
    let (code, json_out, err) = deliveries(&config, &["list", "--dead", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&json_out).unwrap();
    let id = v["deliveries"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(v["deliveries"][0]["attempts"], 1);
    let (code, shown, _) = deliveries(&config, &["show", &id]);
    assert_eq!(code, 0);
    assert!(shown.contains("404 Not Found"), "{shown}");
    assert!(
        shown.contains("{\"ok\":true}"),
        "response body recorded: {shown}"
    );
    assert!(shown.contains("\"call_id\":\"c1\""), "{shown}");
    assert_eq!(target.count(), 1, "a 404 is not retried");

    // The target is fixed: retry sends it again, and it succeeds.
    let (code, out, err) = deliveries(&config, &["retry", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("retried 1 delivery"), "{out}");
    assert!(wait_until(Duration::from_secs(10), || target.count() == 2).await);
    assert_eq!(target.requests()[1].body, to_body(&body).as_bytes());
    assert_eq!(
        target.requests()[0].header("x-zimhook-delivery"),
        target.requests()[1].header("x-zimhook-delivery")
    );
    assert!(
        wait_until(Duration::from_secs(5), || deliveries(
            &config,
            &["list", "--dead"]
        )
        .1
        .contains("no deliveries"))
        .await
    );

    // Drop: a dead letter disappears for good.
    let target404 = Target::start(&[404]).await;
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(&target.url("/in"), &target404.url("/in")),
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || daemon
            .log()
            .contains("config reloaded"))
        .await
    );
    let body = sign(event("call_cancel", json!({"call_id": "c2"})));
    assert_eq!(post(port, to_body(&body)).await, 200);
    let mut id2 = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let out = deliveries(&config, &["list", "--dead", "--json"]).1;
            let v: Value = serde_json::from_str(&out).unwrap_or_default();
            id2 = v["deliveries"][0]["id"].as_str().unwrap_or("").to_string();
            !id2.is_empty()
        })
        .await
    );
    let (code, out, _) = deliveries(&config, &["drop", &id2]);
    assert_eq!((code, out.trim()), (0, format!("dropped {id2}").as_str()));
    assert!(
        deliveries(&config, &["list", "--dead"])
            .1
            .contains("no deliveries")
    );
    let (code, _, err) = deliveries(&config, &["show", &id2]);
    assert_eq!(code, 1);
    assert!(err.contains("no delivery"), "{err}");
    drop(daemon);
    target.stop();
    target404.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_without_an_admin_table_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[verify]\nsecrets = [\"{SECRET}\"]\n")).unwrap();
    let (code, _, err) = deliveries(&config, &["list"]);
    assert_eq!(code, 78);
    assert!(err.contains("no [admin] table"), "{err}");
}

/// The value of one sample line (`name{labels} value`) in Prometheus text, 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin_port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
max_body = 1000
[admin]
listen = "127.0.0.1:{admin_port}"
token = "metrics-token"
[verify]
secrets = ["{SECRET}"]
[store]
path = "data/store.redb"
[[rule]]
name = "ok"
events = ["call_timeout"]
command = ["true"]
[[rule]]
name = "fails"
events = ["call_timeout"]
retry = {{ attempts = 1 }}
command = ["false"]
"#
        ),
    )
    .unwrap();
    let _daemon = Running::start(&config, dir.path(), &[]);
    let metrics = || async {
        client()
            .get(format!("http://127.0.0.1:{admin_port}/metrics"))
            .bearer_auth("metrics-token")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = metrics().await;
    let good = sign(event(
        "call_timeout",
        json!({"call_id": "m", "user_ids": ["a"]}),
    ));
    assert_eq!(post(port, to_body(&good)).await, 200);
    assert_eq!(post(port, to_body(&good)).await, 200); // duplicate
    let mut bad = sign(event("call_timeout", json!({})));
    bad.insert("signature".into(), json!("00"));
    assert_eq!(post(port, to_body(&bad)).await, 401);
    assert_eq!(post(port, to_body(&bad)).await, 401);
    assert_eq!(post(port, "{oops".into()).await, 400);
    assert_eq!(post(port, "x".repeat(2000)).await, 413);
    let unknown = sign(event("made_up_event", json!({})));
    assert_eq!(post(port, to_body(&unknown)).await, 200);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let text = futures_lite(metrics());
            sample(
                &text,
                "zimhook_rule_runs_total{rule=\"fails\",result=\"failed\"}",
            ) == 1.0
        })
        .await
    );
    let after = metrics().await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        delta("zimhook_callbacks_total{event=\"call_timeout\",outcome=\"accepted\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        delta("zimhook_callbacks_total{event=\"call_timeout\",outcome=\"duplicate\"}"),
        1.0
    );
    assert_eq!(
        delta("zimhook_callbacks_total{event=\"call_timeout\",outcome=\"bad_signature\"}"),
        2.0
    );
    assert_eq!(
        delta("zimhook_callbacks_total{event=\"none\",outcome=\"malformed\"}"),
        1.0
    );
    assert_eq!(
        delta("zimhook_callbacks_total{event=\"none\",outcome=\"too_large\"}"),
        1.0
    );
    // An event name no rule or catalog knows is not a label of its own.
    assert_eq!(
        delta("zimhook_callbacks_total{event=\"other\",outcome=\"accepted\"}"),
        1.0
    );
    assert!(!after.contains("made_up_event"));
    assert_eq!(
        delta("zimhook_rule_runs_total{rule=\"ok\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        delta("zimhook_rule_runs_total{rule=\"fails\",result=\"failed\"}"),
        1.0
    );
    assert_eq!(sample(&after, "zimhook_dead_letters"), 1.0);
    assert_eq!(sample(&after, "zimhook_queue_depth"), 0.0);
    assert!(after.contains("zimhook_config_info{hash=\""), "{after}");
    assert!(
        after.contains("zimhook_rule_duration_seconds_bucket{"),
        "{after}"
    );
    assert!(!after.contains(SECRET));

    // Prometheus's own linter accepts the output, where it is installed.
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(after.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success(),
                "promtool check metrics:\n{text}\n{after}"
            );
            println!("promtool check metrics: ok {text}");
        }
        Err(_) => eprintln!("skipped promtool: not installed (apt-get install prometheus)"),
    }
}

/// Runs a future to completion from a sync closure inside the test's multi-thread runtime.
fn futures_lite<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
