//! Idle connections are closed after `server.idle_timeout`, with the real binary: HTTP/2
//! prior-knowledge sockets that send the preface and then nothing cannot hold every connection
//! slot, and an HTTP/1 keep-alive connection idle between requests is closed too.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{Running, write_config};
use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: Duration = Duration::from_secs(1);

/// The HTTP/2 client preface followed by an empty SETTINGS frame (length 0, type 4, flags 0,
/// stream 0).
const H2_OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// The daemon on a free port, with at most 8 connections idle for at most 1 s; and its port.
fn start(dir: &Path) -> (Running, u16) {
    let (config, port) = write_config(
        dir,
        "max_connections = 8\nidle_timeout = \"1s\"",
        r#"[store]
kind = "memory"
[[rule]]
name = "noop"
events = ["call_timeout"]
command = ["true"]
"#,
    );
    (Running::start(&config, dir, &[]), port)
}

/// Reads until the server closes the connection (EOF or reset); `None` if it is still open
/// at `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_http2_connections_are_closed_and_free_their_slots() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = start(dir.path());
    let addr = format!("127.0.0.1:{port}");

    // Every slot taken by a socket that opens HTTP/2 and then never says anything again (and
    // never answers a ping).
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(H2_OPENING).await.unwrap();
        idle.push(s);
    }

    // While they hold the slots, a callback waits in the kernel's backlog.
    let body = to_body(&sign(event("call_timeout", json!({"call_id": "c1"}))));
    let url = format!("http://{addr}/callback");
    let blocked = client()
        .post(&url)
        .body(body.clone())
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        blocked.is_err(),
        "served while every slot is taken: {blocked:?}"
    );

    // Once they are reaped, the next callback is served.
    let body = to_body(&sign(event("call_timeout", json!({"call_id": "c2"}))));
    let bound = IDLE + Duration::from_millis(1500);
    let reply = client()
        .post(&url)
        .body(body)
        .timeout(bound.saturating_sub(opened.elapsed()))
        .send()
        .await;
    let served = opened.elapsed();
    let reply = reply.unwrap_or_else(|e| {
        panic!(
            "callback not served within {bound:?} of opening 8 idle HTTP/2 sockets: {e}\n{}",
            daemon.log()
        )
    });
    assert_eq!(reply.status().as_u16(), 200);
    println!("callback served {served:?} after opening 8 idle HTTP/2 sockets");
    assert!(served >= IDLE, "served before the idle timeout: {served:?}");

    // Each of them was closed by the server.
    let deadline = Instant::now() + Duration::from_secs(1);
    for (i, s) in idle.iter_mut().enumerate() {
        let at = closed_by(s, deadline).await;
        assert!(at.is_some(), "idle HTTP/2 socket {i} still open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, port) = start(dir.path());

    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: zimhook\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("no reply to GET /healthz")
            .unwrap();
        assert!(n > 0, "closed before the reply");
        got.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );

    // Kept alive, then nothing: the server closes it after the idle timeout.
    let bound = IDLE + Duration::from_millis(1500);
    let closed = closed_by(&mut s, answered + bound).await;
    let Some(closed) = closed else {
        panic!("idle HTTP/1 keep-alive connection still open {bound:?} after its last reply");
    };
    let after = closed - answered;
    println!("idle HTTP/1 keep-alive connection closed {after:?} after its last reply");
    assert!(
        after >= IDLE - Duration::from_millis(100),
        "closed before the idle timeout: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_http2_connection_does_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, port) = start(dir.path());
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(H2_OPENING).await.unwrap();
    // Let the server take it past the protocol sniffing.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let asked = Instant::now();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let end = asked + Duration::from_secs(8);
    let code = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < end,
            "still running 8 s after SIGTERM\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = asked.elapsed();
    println!("exited {took:?} after SIGTERM with a silent HTTP/2 connection open");
    assert_eq!(code, Some(0), "{}", daemon.log());
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert!(
        closed_by(&mut s, Instant::now() + Duration::from_secs(1))
            .await
            .is_some()
    );
}

/// Connections accepted before a stop whose request comes in after it (a socket-activated
/// restart: the client connected, then the stop began) are answered, not reset: closing a
/// connection with an unread request would lose that callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_connection_accepted_before_the_stop_is_answered() {
    const CONNECTIONS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, port) = start(dir.path());
    let mut sockets = Vec::new();
    for _ in 0..CONNECTIONS {
        sockets.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // Accepted, waiting for their first bytes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut answers = Vec::new();
    for (i, mut s) in sockets.into_iter().enumerate() {
        let body = to_body(&sign(event(
            "call_timeout",
            json!({"call_id": format!("c{i}")}),
        )));
        let request = format!(
            "POST /callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        answers.push(tokio::spawn(async move {
            s.write_all(request.as_bytes()).await?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).into_owned())
        }));
    }
    for (i, answer) in answers.into_iter().enumerate() {
        let reply = answer.await.unwrap();
        match reply {
            Ok(text) => assert!(
                text.starts_with("HTTP/1.1 200"),
                "connection {i} got {text:?}\n{}",
                daemon.log()
            ),
            Err(e) => panic!("connection {i}: {e}\n{}", daemon.log()),
        }
    }
    assert_eq!(daemon.child.wait().unwrap().code(), Some(0));
}
