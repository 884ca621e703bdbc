//! What the daemon writes to stderr: syslog level prefixes under journald, JSON lines with
//! `--log-format json`, and never a secret or a signature.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{BIN, free_port, write_config};
use common::*;
use serde_json::{Value, json};

/// Runs the daemon with stderr on a pipe whose dev:ino `JOURNAL_STREAM` may name, sends a good
/// and a badly signed callback, stops it, returns the lines it wrote.
async fn run_and_collect(args: &[&str], journal: bool) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[verify]\nsecrets = [\"{SECRET}\"]\n[store]\npath = \"data/s.redb\"\n[[rule]]\nname = \"log\"\nevents = [\"call_timeout\"]\ncommand = [\"true\"]\n"
        ),
    )
    .unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let meta = std::fs::File::from(std::os::fd::OwnedFd::from(reader.try_clone().unwrap()))
        .metadata()
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "-c"])
        .arg(&config)
        .args(args)
        .current_dir(dir.path())
        .stderr(Stdio::from(writer))
        .stdout(Stdio::null());
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reading = std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    assert!(
        wait_until(Duration::from_secs(20), || lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("zimhook listening")))
        .await
    );
    let good = sign(event(
        "call_timeout",
        json!({"call_id": "1", "user_ids": ["a"]}),
    ));
    let mut bad = sign(event("call_timeout", json!({})));
    bad.insert(
        "signature".into(),
        json!("0123456789abcdef0123456789abcdef01234567"),
    );
    let url = format!("http://127.0.0.1:{port}/callback");
    assert_eq!(post(&url, to_body(&good)).await.0, 200);
    assert_eq!(post(&url, to_body(&bad)).await.0, 401);
    assert!(
        wait_until(Duration::from_secs(10), || lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("delivered")))
        .await
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    reading.join().unwrap();
    let lines = lines.lock().unwrap().clone();
    let signatures = vec![
        good["signature"].as_str().unwrap().to_string(),
        bad["signature"].as_str().unwrap().to_string(),
        SECRET.to_string(),
    ];
    (lines, signatures)
}

fn assert_no_secrets(lines: &[String], secrets: &[String]) {
    for line in lines {
        for s in secrets {
            assert!(!line.contains(s.as_str()), "{s:?} leaked: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journald_lines_carry_syslog_level_prefixes() {
    let (lines, secrets) = run_and_collect(&[], true).await;
    assert!(!lines.is_empty());
    for line in &lines {
        let prefix_ok = line.len() > 3
            && line.starts_with('<')
            && line.as_bytes()[2] == b'>'
            && (b'0'..=b'7').contains(&line.as_bytes()[1]);
        assert!(prefix_ok, "no syslog prefix: {line}");
    }
    let accepted = lines
        .iter()
        .find(|l| l.contains("outcome=\"accepted\""))
        .expect("callback line");
    assert!(accepted.starts_with("<6>"), "{accepted}");
    let refused = lines
        .iter()
        .find(|l| l.contains("bad_signature"))
        .expect("refusal line");
    assert!(refused.starts_with("<4>"), "{refused}");
    // The journal adds its own timestamps.
    assert!(!accepted.contains("Z  INFO"), "{accepted}");
    assert_no_secrets(&lines, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_parse() {
    let (lines, secrets) = run_and_collect(&["--log-format", "json"], false).await;
    assert!(lines.len() >= 4, "{lines:?}");
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let callback = parsed
        .iter()
        .find(|v| v["fields"]["message"] == "callback")
        .expect("a callback line");
    assert_eq!(callback["level"], "INFO");
    assert_eq!(callback["fields"]["event"], "call_timeout");
    assert_eq!(callback["fields"]["outcome"], "accepted");
    let refused = parsed
        .iter()
        .find(|v| v["fields"]["outcome"] == "bad_signature")
        .expect("a refusal line");
    assert_eq!(refused["level"], "WARN");
    assert_no_secrets(&lines, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_without_journald() {
    let (lines, secrets) = run_and_collect(&[], false).await;
    assert!(lines.iter().all(|l| !l.starts_with('<')), "{lines:?}");
    assert_no_secrets(&lines, &secrets);
}

/// The log writer never holds a callback up: with stderr a pipe nobody reads (a stalled
/// journal), every callback is still answered, and the lines that did not fit are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_reader_does_not_hold_callbacks_up() {
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = write_config(
        dir.path(),
        "",
        "[store]\nkind = \"memory\"\n[admin]\nlisten = \"unix:admin.sock\"\n[log]\nbuffer_lines = 64\n",
    );
    // stderr is a pipe that is never read: once its 64 KiB are full, a blocking writer would
    // stop every thread that logs.
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .current_dir(dir.path())
        .env("ZIMHOOK_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stalled = child.stderr.take().unwrap();
    let url = format!("http://127.0.0.1:{port}/callback");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "daemon did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let sent = 1000;
    for i in 0..sent {
        let body = to_body(&sign(event(
            "call_timeout",
            json!({"call_id": format!("c{i}"), "user_ids": ["a"]}),
        )));
        let r = http.post(&url).body(body).send().await;
        let status = r.as_ref().map(|r| r.status().as_u16());
        assert!(
            matches!(status, Ok(200)),
            "callback {i} of {sent} was not answered while stderr is stalled: {status:?}"
        );
    }
    let metrics = admin_get(&dir.path().join("admin.sock"), "/metrics");
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("zimhook_log_lines_dropped_total "))
        .unwrap_or_else(|| panic!("no dropped-lines counter:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        dropped > 0,
        "no line was dropped, the test did not fill the buffer"
    );

    // It still stops promptly, its buffered lines abandoned to the stalled pipe.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stop = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stalled);
}
