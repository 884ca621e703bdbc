//! Queued and sync delivery: retries with backoff, permanent failures, timeouts that kill a
//! whole process group, sync answers and fallbacks.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn forward_500_is_retried_with_backoff_and_404_is_not() {
    let retrying = Target::start(&[500, 500, 200]).await;
    let permanent = Target::start(&[404]).await;
    let config = format!(
        r#"{}
[defaults]
retry = {{ attempts = 5, backoff = "100ms", max_backoff = "1s" }}

[[rule]]
name = "flaky"
events = ["call_timeout"]
forward = "{}"

[[rule]]
name = "gone"
events = ["call_timeout"]
forward = "{}"
"#,
        verify_section(),
        retrying.url("/"),
        permanent.url("/")
    );
    let d = Daemon::start(&config).await;
    let body = sign(event(
        "call_timeout",
        json!({"call_id": "r1", "user_ids": ["a"]}),
    ));
    assert_eq!(d.post(to_body(&body)).await.0, 200);
    assert!(
        wait_until(Duration::from_secs(15), || retrying.count() == 3).await,
        "got {}",
        retrying.count()
    );
    let reqs = retrying.requests();
    // Same delivery id every time: an idempotency key.
    let ids: Vec<_> = reqs
        .iter()
        .map(|r| r.header("x-zimhook-delivery").unwrap().to_string())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]));
    assert!(reqs.iter().all(|r| r.body == to_body(&body).as_bytes()));
    // It succeeded on the third attempt: nothing pending, nothing dead.
    assert!(d.wait_idle(Duration::from_secs(5)).await);

    // The 404 target got exactly one request and the delivery is a dead letter at once.
    assert!(wait_until(Duration::from_secs(5), || permanent.count() == 1).await);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(permanent.count(), 1);
    let dead = d.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].rule, "gone");
    assert!(
        dead[0].last_error.as_deref().unwrap().contains("404"),
        "{:?}",
        dead[0].last_error
    );
    assert_eq!(dead[0].attempts, 1);
    d.stop().await;
    retrying.stop();
    permanent.stop();
}

#[tokio::test]
async fn forward_to_a_target_that_is_down_retries_until_it_is_up() {
    // Reserve a port, close it: connections are refused until the target starts there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = format!(
        r#"{}
[[rule]]
name = "down"
events = ["call_timeout"]
retry = {{ attempts = 50, backoff = "50ms", max_backoff = "200ms" }}
forward = "http://{addr}/in"
"#,
        verify_section()
    );
    let d = Daemon::start(&config).await;
    for i in 0..5 {
        let body = sign(event(
            "call_timeout",
            json!({"call_id": format!("c{i}"), "user_ids": ["a"]}),
        ));
        assert_eq!(d.post(to_body(&body)).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(d.app.queue.pending_len(), 5);
    let target = Target::serve_on(tokio::net::TcpListener::bind(addr).await.unwrap(), &[200]);
    assert!(
        wait_until(Duration::from_secs(15), || target.count() >= 5).await,
        "got {}",
        target.count()
    );
    assert!(d.wait_idle(Duration::from_secs(5)).await);
    assert!(d.dead_letters().is_empty());
    d.stop().await;
    target.stop();
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped by its new parent) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_hanging_command_is_killed_with_its_process_group() {
    let config = format!(
        r#"{}
[[rule]]
name = "hang"
events = ["call_timeout"]
timeout = "500ms"
retry = {{ attempts = 1 }}
workdir = "{{dir}}"
command = ["sh", "-c", "sleep 300 & echo $! > bg.pid; echo $$ > fg.pid; wait"]
"#,
        verify_section()
    );
    let d = Daemon::start(&config).await;
    let body = sign(event(
        "call_timeout",
        json!({"call_id": "h", "user_ids": ["a"]}),
    ));
    assert_eq!(d.post(to_body(&body)).await.0, 200);
    // The shell creates each file before it writes the pid: wait until both parse.
    let read = |f: &str| {
        std::fs::read_to_string(d.path(f))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
    };
    assert!(
        wait_until(Duration::from_secs(5), || read("bg.pid").is_some()
            && read("fg.pid").is_some())
        .await
    );
    let (bg, fg) = (read("bg.pid").unwrap(), read("fg.pid").unwrap());
    assert!(alive(bg) && alive(fg));
    d.wait_dead_letters(1, Duration::from_secs(10)).await;
    let dead = d.dead_letters();
    assert!(
        dead[0].last_error.as_deref().unwrap().contains("timed out"),
        "{:?}",
        dead[0].last_error
    );
    assert!(
        wait_until(Duration::from_secs(5), || !alive(bg) && !alive(fg)).await,
        "bg {bg} or fg {fg} still alive"
    );
    d.stop().await;
}

#[tokio::test]
async fn failing_command_is_retried_then_dead_lettered_with_its_output() {
    let config = format!(
        r#"{}
[[rule]]
name = "fails"
events = ["call_timeout"]
retry = {{ attempts = 3, backoff = "20ms", max_backoff = "50ms" }}
workdir = "{{dir}}"
command = ["sh", "-c", "echo run >> runs.txt; echo 'db is down' >&2; exit 3"]
"#,
        verify_section()
    );
    let d = Daemon::start(&config).await;
    let body = sign(event(
        "call_timeout",
        json!({"call_id": "f", "user_ids": ["a"]}),
    ));
    assert_eq!(d.post(to_body(&body)).await.0, 200);
    d.wait_dead_letters(1, Duration::from_secs(10)).await;
    let runs = std::fs::read_to_string(d.path("runs.txt")).unwrap();
    assert_eq!(runs.lines().count(), 3);
    let dead = &d.dead_letters()[0];
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.history.len(), 3);
    let err = dead.last_error.as_deref().unwrap();
    assert!(
        err.contains("status 3") && err.contains("db is down"),
        "{err}"
    );
    d.stop().await;
}

#[tokio::test]
async fn sync_rules_answer_and_fall_back() {
    let config = format!(
        r#"{}
[[rule]]
name = "moderate"
events = ["before_send_msg"]
when = "conv_id == 'ok'"
sync = true
command = ["sh", "-c", "printf '{{\"result\": 3, \"reason\": \"%s\"}}' \"$1\"", "sh", "{{{{ from_user_id }}}}"]

[[rule]]
name = "slow"
events = ["before_send_msg"]
when = "conv_id == 'slow'"
sync = true
timeout = "200ms"
fallback = '{{"result": 1}}'
command = ["sleep", "5"]

[[rule]]
name = "broken"
events = ["before_send_msg"]
when = "conv_id == 'broken'"
sync = true
command = ["sh", "-c", "exit 1"]

[[rule]]
name = "not-json"
events = ["before_send_msg"]
when = "conv_id == 'text'"
sync = true
fallback = '{{"result": 2}}'
command = ["echo", "hello"]
"#,
        verify_section()
    );
    let d = Daemon::start(&config).await;
    let msg = |conv: &str| {
        sign(event(
            "before_send_msg",
            json!({"from_user_id": "u1", "conv_id": conv, "msg_body": "x"}),
        ))
    };
    let (s, reply) = d.post(to_body(&msg("ok"))).await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap(),
        json!({"result": 3, "reason": "u1"})
    );

    let started = std::time::Instant::now();
    let (s, reply) = d.post(to_body(&msg("slow"))).await;
    assert_eq!((s, reply.as_str()), (200, r#"{"result": 1}"#));
    assert!(started.elapsed() < Duration::from_secs(4));

    let (s, reply) = d.post(to_body(&msg("broken"))).await;
    assert_eq!(s, 503, "{reply}");
    let (s, reply) = d.post(to_body(&msg("text"))).await;
    assert_eq!((s, reply.as_str()), (200, r#"{"result": 2}"#));
    // No sync rule matches: ZEGO's neutral answer.
    let (s, reply) = d.post(to_body(&msg("none"))).await;
    assert_eq!((s, reply.as_str()), (200, r#"{"result":0}"#));

    // A duplicate of an answered callback gets the same answer without running again.
    let first = msg("ok");
    let a = d.post(to_body(&first)).await;
    let b = d.post(to_body(&first)).await;
    assert_eq!(a, b);
    d.stop().await;
}

#[tokio::test]
async fn order_by_runs_one_key_at_a_time_in_arrival_order() {
    let config = format!(
        r#"{}
[[rule]]
name = "ordered"
events = ["call_*"]
order_by = "{{{{ call_id }}}}"
workdir = "{{dir}}"
command = ["sh", "-c", "echo start $1 >> log.txt; sleep 0.1; echo end $1 >> log.txt", "sh", "{{{{ event }}}}"]
"#,
        verify_section()
    );
    let d = Daemon::start(&config).await;
    for e in ["call_create", "call_accept", "call_cancel"] {
        let body = sign(event(e, json!({"call_id": "same"})));
        assert_eq!(d.post(to_body(&body)).await.0, 200);
    }
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            d.path("log.txt")
        )
        .unwrap_or_default()
        .lines()
        .count()
            == 6)
        .await
    );
    let log = std::fs::read_to_string(d.path("log.txt")).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "start call_create",
            "end call_create",
            "start call_accept",
            "end call_accept",
            "start call_cancel",
            "end call_cancel"
        ]
    );
    d.stop().await;
}
