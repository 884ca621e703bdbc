//! The promise under attack and faults, with the real binary: clients that hang up while their
//! callback is committed strand nothing, a signature works once whatever comes with it, and
//! concurrent copies of one callback run its sync rule once.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::{self, Running};
use common::*;
use serde_json::{Value, json};

/// Writes `config.toml` (on a free port, with the test secret and a store in `data/`) plus
/// `rest` into `dir`; returns it and the port.
fn write_config(dir: &Path, rest: &str) -> (PathBuf, u16) {
    process::write_config(
        dir,
        "",
        &format!("[store]\npath = \"data/store.redb\"\n{rest}"),
    )
}

/// The `call_id`s a target received, with how often each came.
fn received_ids(target: &Target) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in target.requests() {
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        *counts
            .entry(v["call_id"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    counts
}

/// Sends one signed POST over a fresh connection and closes it at once, without reading the
/// reply: a sender that timed out.
fn post_and_hang_up(port: u16, body: &str) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let request = format!(
        "POST /callback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(request.as_bytes());
    drop(s);
}

/// Waits until the set of what `target` received stops changing for `quiet`.
async fn settle(target: &Target, quiet: Duration, limit: Duration) {
    let end = Instant::now() + limit;
    let mut last = (target.count(), Instant::now());
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = target.count();
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() >= quiet {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_mid_commit_strand_no_delivery() {
    const THREADS: usize = 16;
    const EACH: usize = 94; // 1,504 callbacks
    let target = Target::start(&[200]).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = write_config(
        dir.path(),
        &format!(
            "[[rule]]\nname = \"all\"\nevents = [\"*\"]\nforward = \"{}\"\n",
            target.url("/in")
        ),
    );
    let mut daemon = Running::start(&config, dir.path(), &[]);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let body = to_body(&sign(event(
                        "call_timeout",
                        json!({"call_id": format!("{t}-{i}"), "user_ids": ["a"]}),
                    )));
                    post_and_hang_up(port, &body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    settle(&target, Duration::from_secs(2), Duration::from_secs(60)).await;
    let before_restart = received_ids(&target);

    // Whatever the store committed must have been delivered already: a restart finds nothing
    // left to run.
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log());
    let daemon = Running::start(&config, dir.path(), &[]);
    settle(&target, Duration::from_secs(2), Duration::from_secs(30)).await;
    let after_restart = received_ids(&target);
    let stranded: BTreeSet<&String> = after_restart
        .keys()
        .filter(|id| !before_restart.contains_key(*id))
        .collect();
    println!(
        "hang-ups: sent={} delivered before restart={} stranded (delivered only after restart)={}",
        THREADS * EACH,
        before_restart.len(),
        stranded.len()
    );
    assert!(
        before_restart.len() > 20,
        "too few callbacks committed to mean anything: {}",
        before_restart.len()
    );
    assert!(
        stranded.is_empty(),
        "{} committed callbacks ran only after a restart: {:?}",
        stranded.len(),
        stranded.iter().take(10).collect::<Vec<_>>()
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_a_callback_run_its_sync_rule_once() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let (config, port) = write_config(
        dir.path(),
        &format!(
            r#"[[rule]]
name = "slow-answer"
events = ["before_send_msg"]
sync = true
timeout = "5s"
command = ["sh", "-c", "echo run >> '{}'; sleep 1; echo '{{\"result\":1}}'"]
"#,
            runs.display()
        ),
    );
    let daemon = Running::start(&config, dir.path(), &[]);
    let body = to_body(&sign(event("before_send_msg", json!({"msg_body": "hi"}))));
    let answer = "{\"result\":1}\n".to_string();
    let url = format!("http://127.0.0.1:{port}/callback");
    let copies: Vec<_> = (0..3)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { post(&url, body).await })
        })
        .collect();
    let mut replies = Vec::new();
    for c in copies {
        replies.push(c.await.unwrap());
    }
    for r in &replies {
        assert_eq!(r, &(200, answer.clone()), "{replies:?}");
    }
    let ran = std::fs::read_to_string(&runs).unwrap_or_default();
    assert_eq!(ran.lines().count(), 1, "the sync rule ran {ran:?}");
    // The daemon's log is read by a thread of its own: wait for the third line.
    let lines = || daemon.log().matches(" callback ").count();
    assert!(wait_until(Duration::from_secs(5), || lines() >= 3).await);
    let log = daemon.log();
    assert_eq!(log.matches("outcome=\"accepted\"").count(), 1, "{log}");
    assert_eq!(log.matches("outcome=\"duplicate\"").count(), 2, "{log}");
}

#[tokio::test]
async fn a_signature_is_single_use_whatever_comes_with_it() {
    let d = Daemon::start(&format!(
        r#"[verify]
secrets = ["{SECRET}"]
appids = ["1", "2"]
[[rule]]
name = "log"
events = ["*"]
command = ["sh", "-c", "cat >> {{dir}}/ran; echo >> {{dir}}/ran"]
"#
    ))
    .await;
    let first = sign(event("call_timeout", json!({"call_id": "c1"})));
    assert_eq!(d.post(to_body(&first)).await.0, 200);
    // ZEGO retrying the exact callback: a duplicate with the first reply.
    assert_eq!(
        d.post(to_body(&first)).await,
        (200, r#"{"code":0}"#.to_string())
    );

    // The captured nonce, timestamp and signature with another allowed appid, event and body.
    let mut other = first.clone();
    other.insert("appid".into(), json!("2"));
    other.insert("event".into(), json!("call_cancel"));
    other.insert("call_id".into(), json!("forged"));
    let (status, reply) = d.post(to_body(&other)).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("signature was already used"), "{reply}");

    // Digits moved from the nonce to the timestamp (now read as milliseconds): the same signed
    // text, so the same signature, refused too.
    let ts = now_secs().to_string();
    // Sorted as strings, the parts stay in the order timestamp, nonce, secret.
    let tail = format!("9{:06}", rand::random_range(0..1_000_000u32));
    let (nonce_a, ts_b) = (format!("535{tail}"), format!("{ts}535"));
    let sig = zimhook::verify::signature(SECRET, &ts, &nonce_a);
    assert_eq!(sig, zimhook::verify::signature(SECRET, &ts_b, &tail));
    let mut a = event("call_timeout", json!({"call_id": "moved"}));
    a.insert("nonce".into(), json!(nonce_a));
    a.insert("timestamp".into(), serde_json::from_str(&ts).unwrap());
    a.insert("signature".into(), json!(sig));
    let mut b = a.clone();
    b.insert("nonce".into(), json!(tail));
    b.insert("timestamp".into(), serde_json::from_str(&ts_b).unwrap());
    assert_eq!(d.post(to_body(&a)).await.0, 200);
    let (status, reply) = d.post(to_body(&b)).await;
    assert_eq!(status, 401, "{reply}");

    let ran = d.path("ran");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&ran)
            .unwrap_or_default()
            .lines()
            .count()
            == 2)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(!text.contains("forged"), "{text}");
    d.stop().await;
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one at `dir`, or says why it cannot (not root, no `mount`).
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system holding `path` until a write fails.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // The last partial page too.
    while f.write_all(&chunk[..512]).is_ok() {}
    let _ = f.sync_all();
}

async fn get(port: u16, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_recovered_from_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let disk = match Tmpfs::mount(&dir.path().join("disk"), "3m") {
        Ok(d) => d,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let target = Target::start(&[200]).await;
    let (config, port) = process::write_config(
        dir.path(),
        "",
        &format!(
            r#"[admin]
listen = "unix:admin.sock"
[store]
path = "disk/store.redb"
[[rule]]
name = "fwd"
events = ["call_timeout"]
retry = {{ attempts = 1000, backoff = "50ms", max_backoff = "200ms" }}
forward = "{}"
"#,
            target.url("/in")
        ),
    );
    let daemon = Running::start(&config, dir.path(), &[]);
    let url = format!("http://127.0.0.1:{port}/callback");
    let mut acked = BTreeSet::new();
    let mut n = 0;
    let mut send = async |acked: &mut BTreeSet<String>| {
        n += 1;
        let id = format!("c{n}");
        let body = sign(event(
            "call_timeout",
            json!({"call_id": id, "user_ids": ["a"]}),
        ));
        let (status, reply) = post(&url, to_body(&body)).await;
        if status == 200 {
            acked.insert(id);
        }
        (status, reply)
    };
    for _ in 0..5 {
        assert_eq!(send(&mut acked).await.0, 200);
    }

    fill(&disk.0.join("filler"));
    // Writes fail from here on: the next callbacks get 503 (some may still fit).
    let mut refused = None;
    for _ in 0..200 {
        let (status, reply) = send(&mut acked).await;
        if status == 503 {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("a callback is refused while the disk is full");
    assert!(refused.contains("store"), "{refused}");
    let (status, ready) = get(port, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("store failing"), "{ready}");
    let socket = dir.path().join("admin.sock");
    let metrics = admin_get(&socket, "/metrics");
    assert!(metrics.contains("zimhook_store_up 0"), "{metrics}");
    let status_json = admin_get(&socket, "/status");
    assert!(status_json.contains("\"store_error\":\""), "{status_json}");
    assert_eq!(get(port, "/healthz").await.0, 200);

    // Space again: the store reopens by itself.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    let freed = Instant::now();
    let mut ready = false;
    while freed.elapsed() < Duration::from_secs(10) {
        if get(port, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "store did not recover:\n{}", daemon.log());
    println!(
        "disk full: ready again {:.2}s after space was freed",
        freed.elapsed().as_secs_f64()
    );
    for _ in 0..5 {
        assert_eq!(send(&mut acked).await.0, 200);
    }
    assert!(admin_get(&socket, "/metrics").contains("zimhook_store_up 1"));

    // Nothing acknowledged is lost.
    let all_arrived = wait_until(Duration::from_secs(15), || {
        let got = received_ids(&target);
        acked.iter().all(|id| got.contains_key(id))
    })
    .await;
    let got = received_ids(&target);
    let lost: Vec<_> = acked.iter().filter(|id| !got.contains_key(*id)).collect();
    assert!(
        all_arrived,
        "acked but not delivered: {lost:?}\n{}",
        daemon.log()
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_delivery_does_not_run_again_after_sigkill_on_a_quiet_daemon() {
    let target = Target::start(&[200]).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = write_config(
        dir.path(),
        &format!(
            "[[rule]]\nname = \"fwd\"\nevents = [\"call_timeout\"]\nforward = \"{}\"\n",
            target.url("/in")
        ),
    );
    let mut daemon = Running::start(&config, dir.path(), &[]);
    let body = sign(event("call_timeout", json!({"call_id": "once"})));
    let url = format!("http://127.0.0.1:{port}/callback");
    assert_eq!(post(&url, to_body(&body)).await.0, 200);
    assert!(wait_until(Duration::from_secs(10), || target.count() == 1).await);
    // No other callback arrives to carry the completion to disk; it must get there by itself.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let daemon = Running::start(&config, dir.path(), &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(target.count(), 1, "the completed delivery ran again");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_blocked_order_by_deliveries_do_not_starve_another_rule() {
    const BLOCKED: usize = 10_000;
    let failing = Target::start(&[500]).await;
    let other = Target::start(&[200]).await;
    let d = Daemon::start(&format!(
        r#"{}
[[rule]]
name = "ordered"
events = ["call_timeout"]
order_by = "{{{{ call_id }}}}"
retry = {{ attempts = 1000, backoff = "30s", max_backoff = "30s" }}
forward = "{}"

[[rule]]
name = "other"
events = ["call_cancel"]
forward = "{}"
"#,
        verify_section(),
        failing.url("/fail"),
        other.url("/other")
    ))
    .await;
    // One key, 10,000 deliveries behind a first one that keeps failing.
    let snapshot = d.app.snapshot();
    let cb = zimhook::receive::Callback::decode(bytes::Bytes::from(to_body(&event(
        "call_timeout",
        json!({"call_id": "stuck"}),
    ))))
    .unwrap();
    let rule = snapshot.rule("ordered").unwrap().clone();
    let mut all = Vec::with_capacity(BLOCKED);
    for _ in 0..BLOCKED {
        all.extend(zimhook::handle::deliveries_for(
            &snapshot,
            &cb,
            std::slice::from_ref(&rule),
            0,
        ));
    }
    d.app
        .queue
        .accept(&snapshot, None, all, None)
        .await
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || failing.count() >= 1).await);

    let sent = Instant::now();
    let body = sign(event("call_cancel", json!({"call_id": "free"})));
    assert_eq!(d.post(to_body(&body)).await.0, 200);
    let arrived = wait_until(Duration::from_secs(5), || other.count() == 1).await;
    let waited = sent.elapsed();
    println!(
        "order_by starvation: the unrelated rule ran {:.1} ms after its callback, {BLOCKED} deliveries blocked",
        waited.as_secs_f64() * 1000.0
    );
    assert!(arrived, "the unrelated rule never ran");
    assert!(waited < Duration::from_secs(1), "waited {waited:?}");
    assert_eq!(failing.count(), 1, "only the first of the chain ran");
    d.stop().await;
}
