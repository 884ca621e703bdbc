//! The real binary killed with SIGKILL again and again while callbacks stream in (from clients
//! that wait for the reply, and from clients that hang up right after sending): every callback
//! that was answered 2xx still reaches its target, at least once.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Crash rounds (the brief asks for at least ten).
const ROUNDS: usize = 12;
/// Clients posting at once and waiting for the reply.
const SENDERS: usize = 4;
/// Clients posting at once and hanging up without reading the reply.
const HANG_UPS: usize = 2;

/// The daemon process; killed when dropped, so a failing test leaves nothing running.
struct Zimhook {
    config: PathBuf,
    dir: PathBuf,
    port: u16,
    runs: usize,
    child: Option<Child>,
}

impl Zimhook {
    fn log(&self, run: usize) -> PathBuf {
        self.dir.join(format!("zimhook-{run}.log"))
    }

    /// Starts the daemon and waits until it answers `/readyz`.
    async fn start(&mut self) {
        self.runs += 1;
        let log = File::create(self.log(self.runs)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_zimhook"))
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .env("ZIMHOOK_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("zimhook exited ({status}):\n{}", self.tail());
            }
            assert!(Instant::now() < end, "zimhook not ready:\n{}", self.tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(self.log(self.runs)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Zimhook {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn write_config(dir: &Path, port: u16, target: &str) -> PathBuf {
    let config = dir.join("config.toml");
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"

{}
[store]
path = "data/zimhook.redb"

[[rule]]
name = "fwd"
events = ["call_timeout"]
retry = {{ attempts = 1000, backoff = "50ms", max_backoff = "300ms" }}
forward = "{target}"
"#,
        verify_section()
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// Posts callbacks with fresh call_ids until `stop`; records the ones answered 2xx.
async fn send_until(
    sender: usize,
    url: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> usize {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        let call_id = format!("s{sender}-{sent}");
        sent += 1;
        let body = sign(event(
            "call_timeout",
            json!({"call_id": call_id, "user_ids": ["a"]}),
        ));
        match client.post(&url).body(to_body(&body)).send().await {
            Ok(r) if r.status().is_success() => acked.lock().unwrap().push(call_id),
            // Refused while the daemon is down, or cut by the kill: not acked.
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    sent
}

/// Posts signed callbacks over fresh connections, closing each right after writing it, until
/// `stop`; returns how many were sent.
fn hang_up_until(sender: usize, port: u16, stop: Arc<AtomicBool>) -> usize {
    use std::io::Write;
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        let body = to_body(&sign(event(
            "call_timeout",
            json!({"call_id": format!("h{sender}-{sent}"), "user_ids": ["a"]}),
        )));
        sent += 1;
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = write!(
            s,
            "POST /callback HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        drop(s);
        std::thread::sleep(Duration::from_millis(2));
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_callbacks_survive_repeated_sigkill() {
    let started = Instant::now();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start(&[200]).await;
    let port = free_port();
    let mut daemon = Zimhook {
        config: write_config(dir.path(), port, &target.url("/in")),
        dir: dir.path().to_path_buf(),
        port,
        runs: 0,
        child: None,
    };
    daemon.start().await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let url = format!("http://127.0.0.1:{port}/callback");
            tokio::spawn(send_until(s, url, stop.clone(), acked.clone()))
        })
        .collect();
    let hang_ups: Vec<_> = (0..HANG_UPS)
        .map(|s| {
            let stop = stop.clone();
            std::thread::spawn(move || hang_up_until(s, port, stop))
        })
        .collect();

    for _ in 0..ROUNDS {
        let wait = rand::random_range(150..=600);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        daemon.kill();
        daemon.start().await;
    }
    // A last stretch of traffic on the final run, then the queue drains.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for s in senders {
        sent += s.await.unwrap();
    }
    let hung_up: usize = hang_ups.into_iter().map(|h| h.join().unwrap()).sum();

    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let received = || {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for r in target.requests() {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            if v["call_id"].as_str().unwrap().starts_with('h') {
                continue; // nobody was told these were accepted
            }
            *counts
                .entry(v["call_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        counts
    };
    let drain = Duration::from_secs(60)
        .saturating_sub(started.elapsed())
        .min(Duration::from_secs(30));
    wait_until(drain, || {
        let got = received();
        acked.iter().all(|id| got.contains_key(id))
    })
    .await;
    let got = received();
    let lost: Vec<&String> = acked.iter().filter(|id| !got.contains_key(*id)).collect();
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    println!(
        "crash test: acked={} delivered={} duplicates={duplicates} lost={} (sent={sent}, hung up={hung_up}, runs={}, {:.1}s)",
        acked.len(),
        got.len(),
        lost.len(),
        daemon.runs,
        started.elapsed().as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "acked but never delivered: {lost:?}\n{}",
        daemon.tail()
    );
    assert!(acked.len() > 100, "too little traffic to mean anything");
    daemon.kill();
    target.stop();
}
