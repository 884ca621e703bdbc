//! Deliveries whose rule is renamed or removed, with the real binary: those this process
//! accepted run with the rule they were accepted under, the newest rule of their name wins,
//! those found at start are held as orphaned (listed, counted, never dead-lettered) until a rule
//! of their name returns or `zimhook deliveries move` re-targets them.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::{BIN, Running, free_port};
use common::*;
use serde_json::{Value, json};

/// A port nothing listens on (connections are refused) until a target is started there.
fn reserved() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A config with `rules`, an admin socket and a durable store in `dir`.
fn write(dir: &Path, port: u16, rules: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"unix:admin.sock\"\n{}[store]\npath = \"data/store.redb\"\n{rules}",
        verify_section()
    );
    // Written beside and renamed, as an editor saves: the watcher sees one complete file.
    let tmp = dir.join(".config.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn forward_rule(name: &str, url: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nevents = [\"call_timeout\"]\nretry = {{ attempts = 1000, backoff = \"100ms\", max_backoff = \"200ms\" }}\nforward = \"{url}\"\n"
    )
}

fn deliveries(config: &Path, args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(["deliveries", "--json", "-c"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn count(v: &Value) -> usize {
    v["deliveries"].as_array().map(Vec::len).unwrap_or(0)
}

async fn post_calls(port: u16, ids: &[&str]) {
    let url = format!("http://127.0.0.1:{port}/callback");
    for id in ids {
        let body = sign(event("call_timeout", json!({"call_id": id})));
        assert_eq!(post(&url, to_body(&body)).await.0, 200);
    }
}

fn ids(target: &Target) -> Vec<String> {
    let mut v: Vec<String> = target
        .requests()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["call_id"].to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_while_running_keeps_pending_deliveries_on_the_rule_they_were_accepted_under() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let down = reserved();
    let url = format!("http://{down}/in");
    let config = write(dir.path(), port, &forward_rule("crm", &url));
    let daemon = Running::start(&config, dir.path(), &[]);
    post_calls(port, &["a1", "a2", "a3"]).await;

    // The rule is renamed (and points elsewhere) while its deliveries are still failing.
    write(
        dir.path(),
        port,
        &forward_rule("crm-renamed", "http://127.0.0.1:9/x"),
    );
    assert!(
        daemon.wait_log("config reloaded", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    assert!(
        daemon.wait_log(
            "rule removed with pending deliveries",
            Duration::from_secs(5)
        ),
        "{}",
        daemon.log()
    );
    assert!(daemon.log().contains("pending=3"), "{}", daemon.log());
    // The old rule's target comes up: they arrive there, none was dead-lettered.
    let target = Target::serve_on(tokio::net::TcpListener::bind(down).await.unwrap(), &[200]);
    assert!(
        wait_until(Duration::from_secs(10), || ids(&target).len() == 3).await,
        "{:?}\n{}",
        ids(&target),
        daemon.log()
    );
    assert_eq!(count(&deliveries(&config, &["list", "--dead"])), 0);
    assert!(
        wait_until(Duration::from_secs(5), || count(&deliveries(
            &config,
            &["list"]
        )) == 0)
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixing_a_rule_fixes_its_pending_retries() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let down = reserved();
    let config = write(
        dir.path(),
        port,
        &forward_rule("crm", &format!("http://{down}/in")),
    );
    let daemon = Running::start(&config, dir.path(), &[]);
    post_calls(port, &["f1", "f2"]).await;
    let target = Target::start(&[200]).await;
    write(
        dir.path(),
        port,
        &forward_rule("crm", &target.url("/fixed")),
    );
    assert!(daemon.wait_log("config reloaded", Duration::from_secs(10)));
    assert!(
        wait_until(Duration::from_secs(10), || ids(&target).len() == 2).await,
        "{}",
        daemon.log()
    );
    assert!(target.requests().iter().all(|r| r.path == "/fixed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_found_at_start_without_their_rule_are_orphaned_until_it_returns_or_they_move() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let down = reserved();
    let config = write(
        dir.path(),
        port,
        &forward_rule("crm", &format!("http://{down}/in")),
    );
    let mut daemon = Running::start(&config, dir.path(), &[]);
    post_calls(port, &["o1", "o2", "o3"]).await;
    assert_eq!(daemon.terminate(), Some(0));

    // Restarted with the rule renamed: the three are orphaned, not dead.
    let target = Target::start(&[200]).await;
    let other = Target::start(&[200]).await;
    let v2 = format!(
        "{}{}",
        forward_rule("crm2", &target.url("/moved")),
        forward_rule("audit", &other.url("/audit"))
    );
    write(dir.path(), port, &v2);
    let daemon = Running::start(&config, dir.path(), &[]);
    let mut orphaned = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            orphaned = deliveries(&config, &["list", "--orphaned"]);
            count(&orphaned) == 3
        })
        .await,
        "{orphaned}\n{}",
        daemon.log()
    );
    assert_eq!(orphaned["deliveries"][0]["state"], "orphaned");
    assert_eq!(count(&deliveries(&config, &["list", "--dead"])), 0);
    let metrics = admin_get(&dir.path().join("admin.sock"), "/metrics");
    assert!(
        metrics.contains("zimhook_orphaned_deliveries 3"),
        "{metrics}"
    );
    // A reload that does not bring the rule back leaves them held.
    write(dir.path(), port, &format!("{v2}# touched\n"));
    assert!(daemon.wait_log("config reloaded", Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&deliveries(&config, &["list", "--orphaned"])), 3);
    assert_eq!(count(&deliveries(&config, &["list", "--dead"])), 0);

    // Move one group; the moved deliveries run with the new rule.
    let moved = deliveries(&config, &["move", "--rule", "crm", "--to", "crm2"]);
    assert_eq!(moved["moved"].as_array().unwrap().len(), 3, "{moved}");
    assert!(
        wait_until(Duration::from_secs(10), || ids(&target).len() == 3).await,
        "{}",
        daemon.log()
    );
    assert!(target.requests().iter().all(|r| r.path == "/moved"));
    assert_eq!(count(&deliveries(&config, &["list"])), 0);
    // A move to a rule that does not exist is refused.
    let out = Command::new(BIN)
        .args(["deliveries", "-c"])
        .arg(&config)
        .args(["move", "--rule", "crm", "--to", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no rule \"nope\""));
    assert_eq!(other.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_deliveries_run_when_a_rule_of_their_name_returns() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let down = reserved();
    let config = write(
        dir.path(),
        port,
        &forward_rule("crm", &format!("http://{down}/in")),
    );
    let mut daemon = Running::start(&config, dir.path(), &[]);
    post_calls(port, &["r1", "r2"]).await;
    assert_eq!(daemon.terminate(), Some(0));

    let target = Target::start(&[200]).await;
    write(
        dir.path(),
        port,
        &forward_rule("audit", &target.url("/audit")),
    );
    let daemon = Running::start(&config, dir.path(), &[]);
    assert!(
        wait_until(Duration::from_secs(10), || count(&deliveries(
            &config,
            &["list", "--orphaned"]
        )) == 2)
        .await
    );
    // The rule comes back (pointing at a live target): they run.
    write(dir.path(), port, &forward_rule("crm", &target.url("/back")));
    assert!(
        wait_until(Duration::from_secs(10), || ids(&target).len() == 2).await,
        "{}",
        daemon.log()
    );
    assert!(target.requests().iter().all(|r| r.path == "/back"));
    assert_eq!(count(&deliveries(&config, &["list", "--dead"])), 0);
}
