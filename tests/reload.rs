//! Live reload and systemd integration, with the real binary.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{BIN, Running, free_port};
use common::*;
use nix::sys::signal::Signal;
use serde_json::json;

/// A config whose one rule appends each callback's call_id to `<file>`.
fn config(port: u16, file: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
[verify]
secrets = ["{SECRET}"]
[store]
path = "data/store.redb"
[[rule]]
name = "route"
events = ["call_timeout"]
workdir = "."
command = ["sh", "-c", "echo \"$1\" >> {file}", "sh", "{{{{ call_id }}}}"]
{extra}"#
    )
}

/// Writes like an editor that saves to a temporary file and renames it over the original.
fn write_renaming(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn lines(path: PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

async fn send(port: u16, call_id: &str) -> u16 {
    let body = sign(event(
        "call_timeout",
        json!({"call_id": call_id, "user_ids": ["a"]}),
    ));
    match client()
        .post(format!("http://127.0.0.1:{port}/callback"))
        .body(to_body(&body))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_under_load_route_every_callback_by_old_or_new_rules() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(port, "a.txt", "")).unwrap();
    let daemon = Running::start(&path, dir.path(), &[]);

    // A steady stream of callbacks while the config is rewritten 20 times, and on until at
    // least 100 went (a loaded machine sends fewer in the same time; the count is not the
    // point, the routing is).
    let rewritten = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = rewritten.clone();
    let sender = tokio::spawn(async move {
        let mut sent = Vec::new();
        let end = Instant::now() + Duration::from_secs(60);
        let mut i = 0;
        while Instant::now() < end
            && !(done.load(std::sync::atomic::Ordering::Relaxed) && sent.len() >= 100)
        {
            let id = format!("s{i}");
            let status = send(port, &id).await;
            sent.push((id, status));
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent
    });
    for n in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = config(port, if n % 2 == 0 { "b.txt" } else { "a.txt" }, "");
        if n % 2 == 0 {
            write_renaming(&path, &text);
        } else {
            std::fs::write(&path, &text).unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    rewritten.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.await.unwrap();
    assert!(sent.len() > 100, "only {} callbacks sent", sent.len());
    for (id, status) in &sent {
        assert_eq!(*status, 200, "callback {id} got {status}");
    }
    let routed = || {
        let mut all = lines(dir.path().join("a.txt"));
        all.extend(lines(dir.path().join("b.txt")));
        all
    };
    assert!(
        wait_until(Duration::from_secs(20), || routed().len() >= sent.len()).await,
        "routed {} of {}",
        routed().len(),
        sent.len()
    );
    let all = routed();
    for (id, _) in &sent {
        assert!(
            all.contains(id),
            "{id} was routed by neither the old nor the new rules"
        );
    }
    assert!(
        !lines(dir.path().join("a.txt")).is_empty() && !lines(dir.path().join("b.txt")).is_empty()
    );
    let reloads = daemon.log().matches("config reloaded").count();
    assert!(
        reloads >= 10,
        "only {reloads} reloads logged:\n{}",
        daemon.log()
    );

    // A new rule is live within a second of the write.
    let extra = r#"
[[rule]]
name = "late"
events = ["call_timeout"]
workdir = "."
command = ["sh", "-c", "echo \"$1\" >> late.txt", "sh", "{{ call_id }}"]
"#;
    let written = Instant::now();
    write_renaming(&path, &config(port, "a.txt", extra));
    let mut first_routed = None;
    for i in 0..200 {
        let id = format!("late{i}");
        let at = Instant::now();
        assert_eq!(send(port, &id).await, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if lines(dir.path().join("late.txt"))
            .iter()
            .any(|l| l.starts_with("late"))
        {
            // The first id that reached late.txt was sent at or before `at`.
            let first = lines(dir.path().join("late.txt"))[0].clone();
            let n: u64 = first.trim_start_matches("late").parse().unwrap();
            first_routed = Some((n, at));
            break;
        }
    }
    let (n, at) = first_routed.expect("the new rule never fired");
    let _ = n;
    assert!(
        at.duration_since(written) < Duration::from_secs(1),
        "new rule live after {:?}",
        at.duration_since(written)
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_edits_keep_the_old_rules_and_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(port, "a.txt", "")).unwrap();
    let daemon = Running::start(&path, dir.path(), &[]);

    let broken = [
        // TOML syntax error
        (
            config(port, "b.txt", "[[rule]\n"),
            "config.toml:12:8: unclosed array table",
        ),
        // unknown key
        (
            config(port, "b.txt", "colour = \"red\"\n"),
            "config.toml:12:1: unknown field `colour`",
        ),
        // missing plugin file
        (
            config(
                port,
                "b.txt",
                "[[rule]]\nname = \"p\"\nevents = [\"send_msg\"]\nplugin = \"missing.wasm\"\n",
            ),
            "missing.wasm not found",
        ),
        // a setting that cannot change live
        (
            config(free_port(), "b.txt", ""),
            "server.listen cannot change while running",
        ),
    ];
    for (i, (text, message)) in broken.iter().enumerate() {
        let before = daemon.log().matches("reload failed").count();
        write_renaming(&path, text);
        assert!(
            wait_until(Duration::from_secs(5), || daemon
                .log()
                .matches("reload failed")
                .count()
                > before)
            .await,
            "edit {i} not refused:\n{}",
            daemon.log()
        );
        assert!(
            daemon.log().contains(message),
            "edit {i}: no {message:?} in\n{}",
            daemon.log()
        );
        // The old rules still serve.
        let id = format!("old{i}");
        assert_eq!(send(port, &id).await, 200);
        assert!(
            wait_until(Duration::from_secs(5), || lines(dir.path().join("a.txt"))
                .contains(&id))
            .await
        );
    }
    // The next good edit is applied.
    write_renaming(&path, &config(port, "b.txt", ""));
    assert!(
        wait_until(Duration::from_secs(5), || daemon
            .log()
            .contains("config reloaded"))
        .await
    );
    assert_eq!(send(port, "new").await, 200);
    assert!(
        wait_until(Duration::from_secs(5), || lines(dir.path().join("b.txt"))
            .contains(&"new".to_string()))
        .await
    );
    drop(daemon);
}

/// Reads notify datagrams until one contains `needle` (or the timeout passes).
fn expect_notify(sock: &UnixDatagram, needle: &str, seen: &mut Vec<String>) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(msg.clone());
            if msg.contains(needle) {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notifications_through_a_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        config(
            port,
            "a.txt",
            "[[rule]]\nname = \"env\"\nevents = [\"call_timeout\"]\nworkdir = \".\"\ncommand = [\"sh\", \"-c\", \"echo ${NOTIFY_SOCKET:-none} ${LISTEN_FDS:-none} > env.txt\"]\n",
        ),
    )
    .unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut daemon = Running::start(
        &path,
        dir.path(),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = Vec::new();
    assert!(expect_notify(&sock, "READY=1", &mut seen), "{seen:?}");
    assert!(
        seen.iter().any(|m| m.contains("STATUS=serving")),
        "{seen:?}"
    );
    assert!(expect_notify(&sock, "WATCHDOG=1", &mut seen), "{seen:?}");

    daemon.signal(Signal::SIGHUP);
    assert!(expect_notify(&sock, "RELOADING=1", &mut seen), "{seen:?}");
    let reloading = seen.iter().find(|m| m.contains("RELOADING=1")).unwrap();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert!(expect_notify(&sock, "READY=1", &mut seen), "{seen:?}");

    // Commands never see the notify socket.
    assert_eq!(send(port, "x").await, 200);
    assert!(
        wait_until(Duration::from_secs(5), || dir
            .path()
            .join("env.txt")
            .exists())
        .await
    );
    assert!(
        wait_until(Duration::from_secs(2), || std::fs::read_to_string(
            dir.path().join("env.txt")
        )
        .unwrap_or_default()
            == "none none\n")
        .await
    );

    daemon.signal(Signal::SIGTERM);
    assert!(expect_notify(&sock, "STOPPING=1", &mut seen), "{seen:?}");
    // The last status replaces "stopping", and a barrier makes sure systemd read it before
    // the process was gone.
    assert!(
        expect_notify(
            &sock,
            "STATUS=stopped; 0 pending deliveries kept in the store",
            &mut seen
        ),
        "{seen:?}"
    );
    assert!(expect_notify(&sock, "BARRIER=1", &mut seen), "{seen:?}");
    assert_eq!(daemon.child.wait().unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_on_the_passed_socket() {
    let Ok(activate) = which("systemd-socket-activate") else {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("config.toml");
    let text = config(port, "a.txt", "").replace(
        &format!("listen = \"127.0.0.1:{port}\""),
        "listen = \"systemd\"",
    );
    std::fs::write(&path, text).unwrap();
    // systemd-socket-activate listens, and starts the daemon on the first connection.
    let daemon = Running::spawn(
        std::process::Command::new(activate)
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .args([BIN, "run", "-c"])
            .arg(&path),
        dir.path(),
        &[],
        false,
    );
    let listening = wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(
        listening,
        "systemd-socket-activate did not listen:\n{}",
        daemon.log()
    );
    assert_eq!(send(port, "activated").await, 200);
    assert!(
        wait_until(Duration::from_secs(5), || lines(dir.path().join("a.txt"))
            .contains(&"activated".to_string()))
        .await
    );
    drop(daemon);
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}
