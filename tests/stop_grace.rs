//! A stop gets `server.shutdown_grace` once, with the real binary: a request in flight and a
//! running delivery share it, so the daemon exits about one grace after SIGTERM (not one for
//! the connections and then another for the deliveries), and the unfinished delivery stays
//! queued for the next start.

mod common;

use std::time::{Duration, Instant};

use common::process::{Running, write_config};
use common::*;
use serde_json::json;

const GRACE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_deliveries_share_one_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = write_config(
        dir.path(),
        &format!(
            "request_timeout = \"30s\"\nshutdown_grace = \"{}s\"",
            GRACE.as_secs()
        ),
        r#"[store]
path = "store.redb"

[[rule]]
name = "slow-sync"
events = ["before_send_msg"]
sync = true
timeout = "30s"
workdir = "."
command = ["sh", "-c", "echo > sync.started; sleep 30"]

[[rule]]
name = "slow-queued"
events = ["call_timeout"]
timeout = "30s"
workdir = "."
command = ["sh", "-c", "echo >> queued.started; sleep 30"]
"#,
    );
    let mut daemon = Running::start(&config, dir.path(), &[]);
    let url = format!("http://127.0.0.1:{port}/callback");

    let queued = to_body(&sign(event("call_timeout", json!({"call_id": "c1"}))));
    assert_eq!(post(&url, queued).await.0, 200);
    let sync = to_body(&sign(event("before_send_msg", json!({"msg_id": "m1"}))));
    // Cut off by the stop: its error is expected and ignored.
    let in_flight = tokio::spawn(async move { client().post(&url).body(sync).send().await });
    let started = |name: &str| dir.path().join(name).exists();
    assert!(
        wait_until(Duration::from_secs(10), || started("sync.started")
            && started("queued.started"))
        .await,
        "both commands should be running:\n{}",
        daemon.log()
    );

    let signalled = Instant::now();
    let code = tokio::task::spawn_blocking(move || {
        let code = daemon.terminate();
        (code, daemon)
    })
    .await
    .unwrap();
    let took = signalled.elapsed();
    let (code, daemon) = code;
    println!("exited {took:?} after SIGTERM (grace {GRACE:?})");
    assert_eq!(code, Some(0), "{}", daemon.log());
    assert!(
        took >= GRACE - Duration::from_millis(100),
        "exited after {took:?}, before the grace of {GRACE:?} was over"
    );
    assert!(
        took < GRACE * 7 / 4,
        "exited {took:?} after SIGTERM: the grace of {GRACE:?} was applied more than once\n{}",
        daemon.log()
    );
    let _ = in_flight.await;
    drop(daemon);

    // The delivery that did not finish runs again after a restart.
    let daemon = Running::start(&config, dir.path(), &[]);
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            dir.path().join("queued.started")
        )
        .unwrap_or_default()
        .lines()
        .count()
            == 2)
        .await,
        "the unfinished delivery should run again:\n{}",
        daemon.log()
    );
}
