//! Access control of the admin endpoint, with the real binary: a TCP admin listener needs
//! `admin.token` and answers 401 to any request without `Authorization: Bearer <token>`
//! (whatever its `Host`); `zimhook deliveries` sends the token from the same config; the unix
//! socket's file mode stays its access control, and a path that is not a socket is never
//! replaced.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{BIN, Running, free_port};
use common::*;

const TOKEN: &str = "admin-token-0123456789";
const TOKEN_ENV: &str = "ZIMHOOK_TEST_ADMIN_TOKEN";

fn write_config(dir: &Path, admin: &str) -> std::path::PathBuf {
    let port = free_port();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
[admin]
{admin}
[verify]
secrets = ["{SECRET}"]
[store]
kind = "memory"
[[rule]]
name = "log"
events = ["call_timeout"]
command = ["true"]
"#
        ),
    )
    .unwrap();
    config
}

fn run_cli(args: &[&str], config: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("-c")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One raw HTTP/1.1 request; the status code and the whole reply.
fn raw_request(port: u16, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"));
    (status, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_admin_answers_only_requests_with_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let config = write_config(
        dir.path(),
        &format!("listen = \"127.0.0.1:{admin_port}\"\ntoken = \"{TOKEN}\""),
    );
    let _daemon = Running::start(&config, dir.path(), &[]);
    let url = |p: &str| format!("http://127.0.0.1:{admin_port}{p}");
    let http = client();

    // No header, a wrong token, a different scheme: 401 with a JSON error and the challenge.
    for auth in [
        None,
        Some("Bearer wrong-token".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some("Bearer".to_string()),
    ] {
        for (method, path) in [
            (reqwest::Method::GET, "/status"),
            (reqwest::Method::GET, "/metrics"),
            (reqwest::Method::GET, "/deliveries"),
            (reqwest::Method::DELETE, "/deliveries/x"),
            (reqwest::Method::POST, "/deliveries/x/retry"),
            (reqwest::Method::POST, "/deliveries/retry-dead"),
            (reqwest::Method::POST, "/deliveries/move?rule=log&to=log"),
        ] {
            let mut req = http.request(method.clone(), url(path));
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status().as_u16(), 401, "{method} {path} with {auth:?}");
            let challenge = res
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{challenge:?}");
            let body: serde_json::Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
            assert!(body["error"].as_str().is_some(), "{body}");
        }
    }

    // A page that reached the port by DNS rebinding: foreign Host, no token.
    let (status, reply) = raw_request(
        admin_port,
        "DELETE /deliveries/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 401, "{reply}");
    let (status, reply) = raw_request(
        admin_port,
        "GET /status HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 401, "{reply}");
    assert!(!reply.contains("config_hash"), "{reply}");

    // The right token: served.
    let bearer = format!("Bearer {TOKEN}");
    let res = http
        .get(url("/status"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let status: serde_json::Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(status["rules"][0], "log");
    let res = http
        .get(url("/metrics"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    // The scheme is case-insensitive (RFC 7235).
    let res = http
        .delete(url("/deliveries/x"))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404, "no delivery x, but not refused");

    // /healthz stays open: it tells nothing but "serving" and changes nothing.
    let res = http.get(url("/healthz")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

#[test]
fn check_refuses_a_tcp_admin_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "listen = \"127.0.0.1:9180\"");
    let (code, _, err) = run_cli(&["check"], &config, &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("config.toml:4:10:"), "{err}");
    assert!(err.contains("admin.token"), "{err}");

    // A blank token is no token.
    for token in ["\"\"", "\"   \"", &format!("\"env:{TOKEN_ENV}\"")] {
        let config = write_config(
            dir.path(),
            &format!("listen = \"127.0.0.1:9180\"\ntoken = {token}"),
        );
        let (code, _, err) = run_cli(&["check"], &config, &[(TOKEN_ENV, "  ")]);
        assert_eq!(code, 78, "token {token}: {err}");
        assert!(err.contains("config.toml:5:9:"), "{err}");
        assert!(err.contains("admin.token"), "{err}");
    }
    let config = write_config(
        dir.path(),
        &format!("listen = \"127.0.0.1:9180\"\ntoken = \"env:{TOKEN_ENV}\""),
    );
    let (code, _, err) = run_cli(&["check"], &config, &[(TOKEN_ENV, TOKEN)]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn deliveries_sends_the_token_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let config = write_config(
        dir.path(),
        &format!("listen = \"127.0.0.1:{admin_port}\"\ntoken = \"env:{TOKEN_ENV}\""),
    );
    let _daemon = Running::start(&config, dir.path(), &[(TOKEN_ENV, TOKEN)]);
    let (code, out, err) = run_cli(&["deliveries", "list"], &config, &[(TOKEN_ENV, TOKEN)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no deliveries"), "{out}");
    let (code, out, err) = run_cli(
        &["deliveries", "list", "--dead", "--json"],
        &config,
        &[(TOKEN_ENV, TOKEN)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"deliveries\""), "{out}");

    // Another token (a config out of date): refused, and the message says why.
    let (code, _, err) = run_cli(
        &["deliveries", "list"],
        &config,
        &[(TOKEN_ENV, "not-the-token")],
    );
    assert_eq!(code, 1);
    assert!(err.contains("admin.token"), "{err}");
}

/// Starts the daemon and waits for it to exit by itself (its exit code and log); fails if it
/// starts serving instead.
fn exits_without_serving(config: &Path, cwd: &Path) -> (Option<i32>, String) {
    let mut daemon = Running::spawn(
        Command::new(BIN).args(["run", "-c"]).arg(config),
        cwd,
        &[],
        false,
    );
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > end || daemon.log().contains("zimhook listening") {
            let _ = daemon.terminate();
            panic!("the daemon started:\n{}", daemon.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The rest of its stderr, still in the pipe.
    std::thread::sleep(Duration::from_millis(300));
    (status.code(), daemon.log())
}

#[test]
fn an_admin_path_that_is_not_a_socket_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let precious = data.join("notes.txt");
    std::fs::write(&precious, "do not delete me\n").unwrap();
    let config = write_config(dir.path(), "listen = \"unix:data/notes.txt\"");

    let (code, log) = exits_without_serving(&config, dir.path());
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains(&*precious.to_string_lossy()), "{log}");
    assert!(log.contains("not a socket"), "{log}");
    assert!(!log.contains("zimhook listening"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "do not delete me\n"
    );
}

#[test]
fn a_socket_left_by_an_earlier_run_is_replaced_and_one_in_use_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let sock = data.join("admin.sock");
    let config = write_config(dir.path(), "listen = \"unix:data/admin.sock\"");

    // A live socket (another daemon still serving on it): left alone, this one does not start.
    let live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let (code, err) = exits_without_serving(&config, dir.path());
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("in use"), "{err}");
    drop(live);

    // The same socket, now stale (nobody listens): replaced.
    assert!(sock.exists());
    let _daemon = Running::start(&config, dir.path(), &[]);
    let (code, out, err) = run_cli(&["deliveries", "list"], &config, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no deliveries"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
