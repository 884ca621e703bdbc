//! The real binary: exit codes, `check` diagnostics, `sign`, `send`, and the shipped config.

mod common;

use common::process::{Running, free_port, write_config};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_zimhook");

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"[verify]
secrets = ["s"]

[[rule]]
name = "log"
events = ["call_timeout"]
command = ["true"]
"#;

#[test]
fn check_accepts_a_valid_config() {
    let (code, out, err) = check(GOOD);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok: 1 rule"), "{out}");
}

#[test]
fn check_refuses_a_log_buffer_out_of_range() {
    let (code, _, err) = check(&format!("[log]\nbuffer_lines = 0\n{GOOD}"));
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("log.buffer_lines is 0: give 1 to 1000000 lines"),
        "{err}"
    );
}

#[test]
fn check_refuses_a_typo_in_a_key_with_its_position() {
    let (code, _, err) = check(&GOOD.replace("events =", "evnets ="));
    assert_eq!(code, 78);
    assert!(err.contains("config.toml:6:1:"), "{err}");
    assert!(err.contains("evnets"), "{err}");
}

#[test]
fn check_refuses_a_bad_duration_with_its_position() {
    let (code, _, err) = check(&format!("{GOOD}timeout = \"30 parsecs\"\n"));
    assert_eq!(code, 78);
    assert!(err.contains("config.toml:8:11:"), "{err}");
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn check_refuses_a_zero_idle_timeout_with_its_position() {
    let (code, _, err) = check(&format!("[server]\nidle_timeout = \"0s\"\n{GOOD}"));
    assert_eq!(code, 78);
    assert!(err.contains("config.toml:2:16:"), "{err}");
    assert!(
        err.contains("server.idle_timeout must be more than 0"),
        "{err}"
    );
    let (code, _, err) = check(&format!("[server]\nidle_timeout = \"90s\"\n{GOOD}"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_refuses_two_action_keys_and_reports_every_error() {
    let config = format!(
        "{GOOD}forward = \"http://127.0.0.1:1/\"\n\n[[rule]]\nname = \"x\"\nevents = [\"call_*\"]\nretry = {{ backoff = \"soon\" }}\ncommand = [\"true\"]\n"
    );
    let (code, _, err) = check(&config);
    assert_eq!(code, 78);
    assert!(
        err.contains("config.toml:8:11:") && err.contains("2 actions"),
        "{err}"
    );
    assert!(
        err.contains("config.toml:13:21:") && err.contains("\"soon\""),
        "{err}"
    );
    assert!(err.contains("2 errors"), "{err}");
}

#[test]
fn check_warns_about_unknown_event_names() {
    let (code, _, err) = check(&GOOD.replace("call_timeout", "call_timout"));
    assert_eq!(code, 0);
    assert!(err.contains("did you mean \"call_timeout\"?"), "{err}");
    assert!(err.contains("config.toml:6:11: warning:"), "{err}");
}

#[test]
fn check_refuses_broken_toml() {
    let (code, _, err) = check("[verify\nsecrets = [\"s\"]\n");
    assert_eq!(code, 78);
    assert!(err.contains("config.toml:1:"), "{err}");
}

#[test]
fn sign_prints_the_official_vector() {
    let out = Command::new(BIN)
        .args([
            "sign",
            "--secret",
            "secret",
            "--timestamp",
            "1470820198",
            "--nonce",
            "123412",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "5bd59fd62953a8059fb7eaba95720f66d19e4517"
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(BIN)
        .args(["sign", "--secret"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn send_reaches_a_running_daemon_and_sigterm_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[verify]\nsecrets = [\"s3cret\"]\n[store]\npath = \"data/z.redb\"\n[[rule]]\nname = \"log\"\nevents = [\"call_timeout\"]\ncommand = [\"sh\", \"-c\", \"cat > got.tmp && mv got.tmp got.json\"]\nworkdir = \".\"\n"
        ),
    )
    .unwrap();
    let mut daemon = Running::start(&config, dir.path(), &[]);
    let out = Command::new(BIN)
        .args(["send", "-c"])
        .arg(&config)
        .args(["call_timeout", r#"{"call_id":"1","user_ids":["a"]}"#])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, "200\n{\"code\":0}\n");
    let got = dir.path().join("got.json");
    let end = Instant::now() + Duration::from_secs(10);
    while !got.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&got).unwrap()).unwrap();
    assert_eq!(v["call_id"], "1");
    assert_eq!(v["event"], "call_timeout");
    // The secret never appears in the log.
    assert!(!daemon.log().contains("s3cret"));
    assert_eq!(daemon.terminate(), Some(0), "{}", daemon.log());
}

#[test]
fn a_broken_config_stops_the_daemon_with_78() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[verify]\nsecrets = []\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.toml:2:11:"));
}

#[test]
fn the_shipped_config_is_valid() {
    common::plugins_dir(); // the shipped config names the moderate example plugin
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&shipped)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn send_posts_numbered_events_in_their_family_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(
        dir.path(),
        "",
        "[store]\nkind = \"memory\"\n[[rule]]\nname = \"uploaded\"\nevents = [\"cloud_recording.files_uploaded\", \"mini_game.*\"]\ncommand = [\"sh\", \"-c\", \"cat > \\\"$ZIMHOOK_EVENT.tmp\\\" && mv \\\"$ZIMHOOK_EVENT.tmp\\\" \\\"$ZIMHOOK_EVENT.json\\\"\"]\nworkdir = \".\"\n",
    );
    let _daemon = Running::start(&config, dir.path(), &[]);
    let body = dir.path().join("body.json");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cloud_recording/recording_status_1.json"),
        &body,
    )
    .unwrap();
    let send = |event: &str, data: &str| {
        let out = Command::new(BIN)
            .args(["send", "--secret", common::SECRET, "-c"])
            .arg(&config)
            .args([event, data])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        send("cloud_recording.1", &format!("@{}", body.display())),
        "200\n{\"code\":0}\n"
    );
    assert_eq!(
        send("mini_game.game_settled", r#"{"ReportId":"r1"}"#),
        "200\n{\"Code\":200,\"Message\":\"succeed\"}\n"
    );
    let read = |name: &str| {
        let path = dir.path().join(name);
        let end = Instant::now() + Duration::from_secs(10);
        while !path.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let v = read("cloud_recording.1.json");
    assert_eq!(v["event_type"], 1);
    assert_eq!(v["app_id"], 1234567890);
    assert!(v["timestamp"].is_string(), "{v}");
    assert_eq!(v["task_id"], "YZ4joOE4IwmFAAAT");
    let v = read("mini_game.2.json");
    assert_eq!(v["ReportType"], 2);
    assert!(v["SignatureNonce"].is_string(), "{v}");
    assert_eq!(v["ReportId"], "r1");
}
