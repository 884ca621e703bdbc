//! The CLI beside a service that holds its secret as a systemd credential: `zimhook reload`
//! (its outcome as the exit code), `check`, `deliveries` and `send` from a shell without
//! `$CREDENTIALS_DIRECTORY`, syslog priorities on the journal, a socket-activated config
//! started without a socket, and a start without a system trust store. The real binary
//! throughout; the daemon gets the credential the way systemd hands it over
//! (`$CREDENTIALS_DIRECTORY/NAME`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::process::{BIN, Running, free_port};
use sha2::{Digest, Sha256};

const SECRET: &str = "service-only-secret";

/// A service-like folder: config, credentials directory, secret file for the CLI.
struct Service {
    dir: tempfile::TempDir,
    port: u16,
}

impl Service {
    fn new() -> Service {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("zego-callback-secret"), format!("{SECRET}\n")).unwrap();
        std::fs::write(dir.path().join("callback-secret"), format!("{SECRET}\n")).unwrap();
        let service = Service {
            dir,
            port: free_port(),
        };
        service.write_config("");
        service
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("config.toml")
    }

    /// The config: a recording rule, the secret as a credential, `extra` appended.
    fn write_config(&self, extra: &str) {
        let text = format!(
            r#"[server]
listen = "127.0.0.1:{port}"

[admin]
listen = "unix:admin.sock"

[verify]
secrets = ["cred:zego-callback-secret"]

[store]
path = "store.redb"

[[rule]]
name = "record"
events = ["*"]
workdir = "."
command = ["sh", "-c", "cat >> delivered.jsonl; echo >> delivered.jsonl"]
{extra}"#,
            port = self.port
        );
        std::fs::write(self.config(), text).unwrap();
    }

    /// The daemon, as the service would run it: with the credentials directory.
    fn start(&self) -> Running {
        let creds = self.path("credentials");
        Running::start(
            &self.config(),
            self.dir.path(),
            &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())],
        )
    }

    /// A CLI command from "a shell beside the service": no `$CREDENTIALS_DIRECTORY`.
    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("-c")
            .arg(self.config())
            .current_dir(self.dir.path())
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        cmd.output().unwrap()
    }

    fn delivered(&self) -> String {
        std::fs::read_to_string(self.path("delivered.jsonl")).unwrap_or_default()
    }

    fn wait_delivered(&self, needle: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.delivered().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `zimhook send --secret-file` for call_timeout with this call_id.
    fn send(&self, call_id: &str) -> Output {
        let file = self.path("callback-secret");
        let data = format!(r#"{{"call_id":"{call_id}"}}"#);
        self.cli(&[
            "send",
            "--secret-file",
            file.to_str().unwrap(),
            "call_timeout",
            &data,
        ])
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn hash12(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))[..12].to_string()
}

#[test]
fn reload_exits_with_the_daemons_verdict() {
    let service = Service::new();

    // No daemon yet: unreachable is 1, not "refused".
    let out = service.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot connect to the admin socket"),
        "{}",
        stderr(&out)
    );

    let daemon = service.start();

    // A good change: applied, exit 0, the new hash printed and live.
    service.write_config(
        "\n[[rule]]\nname = \"second\"\nevents = [\"room_*\"]\nworkdir = \".\"\ncommand = [\"true\"]\n",
    );
    let out = service.cli(&["reload"]);
    let hash = hash12(&service.config());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("reloaded: 2 rules, config hash {hash}")),
        "{}",
        stdout(&out)
    );
    let status = common::admin_get(&service.path("admin.sock"), "/status");
    assert!(status.contains(&hash), "{status}");

    // Refused by the daemon (a credential it does not have): 78, the error with its position,
    // and the running rules keep serving.
    let good = std::fs::read_to_string(service.config()).unwrap();
    std::fs::write(
        service.config(),
        good.replace("cred:zego-callback-secret", "cred:missing-credential"),
    )
    .unwrap();
    let out = service.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("config.toml:8:12: verify.secrets: cannot read credential")
            && err.contains("missing-credential")
            && err.contains("reload refused, the running config stays"),
        "{err}"
    );
    let status = common::admin_get(&service.path("admin.sock"), "/status");
    assert!(
        status.contains(&hash),
        "the old config must stay live: {status}"
    );
    let out = service.send("after-refused-reload");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(service.wait_delivered("after-refused-reload"));

    // Refused before the daemon is asked (the file does not parse): 78 as well.
    std::fs::write(service.config(), format!("{good}\n[[rule]\n")).unwrap();
    let out = service.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains("config.toml:"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not reloaded, the running config stays"),
        "{}",
        stderr(&out)
    );
    drop(daemon);

    // No [admin] table: nothing to ask; says what is missing.
    std::fs::write(
        service.config(),
        good.replace("[admin]\nlisten = \"unix:admin.sock\"\n", ""),
    )
    .unwrap();
    let out = service.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no [admin] table"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_outside_the_service_notes_the_credential_and_checks_the_rest() {
    let service = Service::new();

    let out = service.cli(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "config.toml:8:12: note: verify.secrets: credential zego-callback-secret is available only to the service"
        ),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains(": ok: 1 rule"), "{}", stdout(&out));

    // Everything else is still checked.
    service.write_config("\n[defaults]\ntimeout = \"5 parsecs\"\n");
    let out = service.cli(&["check"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid duration"),
        "{}",
        stderr(&out)
    );

    // Inside the service (the credentials directory is set), the credential must be there.
    service.write_config("");
    let empty = service.path("no-credentials");
    std::fs::create_dir(&empty).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(service.config())
        .env("CREDENTIALS_DIRECTORY", &empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot read credential"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(service.config())
        .env("CREDENTIALS_DIRECTORY", service.path("credentials"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("note:"), "{}", stderr(&out));
}

#[test]
fn deliveries_and_send_need_no_service_credential() {
    let service = Service::new();
    let _daemon = service.start();

    let out = service.cli(&["deliveries", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("no deliveries"), "{}", stdout(&out));

    // send without a secret it can read: says so, sends nothing.
    let out = service.cli(&["send", "call_timeout", r#"{"call_id":"unsigned"}"#]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot sign")
            && stderr(&out).contains("--secret-file")
            && stderr(&out).contains("cred:zego-callback-secret"),
        "{}",
        stderr(&out)
    );

    // --secret-file: signed with the file's secret (trailing newline removed), delivered.
    let out = service.send("from-secret-file");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("200\n"), "{}", stdout(&out));
    assert!(service.wait_delivered("from-secret-file"));

    // --secret with the wrong value: the daemon refuses it.
    let out = service.cli(&[
        "send",
        "--secret",
        "not-the-secret",
        "call_timeout",
        r#"{"call_id":"wrong"}"#,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("401\n"), "{}", stdout(&out));

    // A secret file that is not there.
    let out = service.cli(&["send", "--secret-file", "nope", "call_timeout"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot read secret file"),
        "{}",
        stderr(&out)
    );
    assert!(!service.delivered().contains("wrong"));
}

#[test]
fn a_tcp_admin_token_only_the_service_can_read_is_named() {
    let service = Service::new();
    let text = std::fs::read_to_string(service.config()).unwrap().replace(
        "listen = \"unix:admin.sock\"",
        "listen = \"127.0.0.1:9\"\ntoken = \"cred:admin-token\"",
    );
    std::fs::write(service.config(), text).unwrap();
    let out = service.cli(&["deliveries", "list"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("admin.token cannot be read here"),
        "{}",
        stderr(&out)
    );
}

/// stderr into a file named by `JOURNAL_STREAM`, as systemd does for a unit's commands.
fn under_journal(args: &[&str], config: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let status = Command::new(BIN)
        .args(args)
        .arg("-c")
        .arg(config)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("CREDENTIALS_DIRECTORY")
        .stderr(file)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.code().is_some());
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn cli_lines_on_the_journal_carry_their_priority() {
    let service = Service::new();
    service.write_config("\n[defaults]\ntimeout = \"5 parsecs\"\n");
    let text = under_journal(&["check"], &service.config());
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(line.starts_with("<3>"), "an error line without <3>: {text}");
    }
    assert!(
        text.contains("<3>") && text.contains("config not usable"),
        "{text}"
    );

    // A usable config with a warning and a note: <4> and <5>.
    service.write_config("");
    let text = std::fs::read_to_string(service.config())
        .unwrap()
        .replace("[verify]\n", "[verify]\ninsecure = true\n");
    std::fs::write(service.config(), text).unwrap();
    let text = under_journal(&["check"], &service.config());
    assert!(
        text.lines()
            .any(|l| l.starts_with("<4>") && l.contains("warning: verify.insecure")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<5>") && l.contains("note: verify.secrets")),
        "{text}"
    );

    // Not on the journal (a terminal, a pipe): no prefixes.
    let out = service.cli(&["check"]);
    assert!(!stderr(&out).contains("<4>"), "{}", stderr(&out));
}

#[test]
fn systemd_listen_without_a_passed_socket_exits_78_saying_what_to_run() {
    let service = Service::new();
    let text = std::fs::read_to_string(service.config()).unwrap().replace(
        &format!("listen = \"127.0.0.1:{}\"", service.port),
        "listen = \"systemd\"",
    );
    std::fs::write(service.config(), text).unwrap();
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(service.config())
        .current_dir(service.dir.path())
        .env("CREDENTIALS_DIRECTORY", service.path("credentials"))
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no socket was passed")
            && stderr(&out).contains("systemctl enable --now zimhook.socket"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn starts_without_a_system_trust_store() {
    let service = Service::new();
    let empty = service.path("no-certs");
    std::fs::create_dir(&empty).unwrap();
    // rustls-native-certs reads only these when they are set: no roots at all.
    let daemon = Running::start(
        &service.config(),
        service.dir.path(),
        &[
            (
                "CREDENTIALS_DIRECTORY",
                service.path("credentials").to_str().unwrap(),
            ),
            ("SSL_CERT_FILE", "/dev/null"),
            ("SSL_CERT_DIR", empty.to_str().unwrap()),
        ],
    );
    assert!(
        daemon
            .log()
            .contains("HTTPS forwards trust the Mozilla roots built into zimhook"),
        "{}",
        daemon.log()
    );
    let out = service.send("no-trust-store");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(service.wait_delivered("no-trust-store"));

    // With the system's store, it says so.
    drop(daemon);
    let daemon = service.start();
    if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        assert!(
            daemon
                .log()
                .contains("HTTPS forwards trust the system's trust store"),
            "{}",
            daemon.log()
        );
    }
}
