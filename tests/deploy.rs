//! The systemd files in `deploy/`: `systemd-analyze verify` accepts both units,
//! `systemd-analyze security --offline=yes` rates the service 2.0 or lower ("OK"), the example
//! config passes `zimhook check`, and the unit keeps what the daemon needs (no
//! MemoryDenyWriteExecute for wasmtime's JIT, reload through the daemon, a long enough stop
//! timeout, setpriority allowed for the plugin cache's worker).
//!
//! The `systemd-analyze` tests pass with "skipped: systemd-analyze is not installed" where it
//! is missing; they need no running systemd (containers, CI) and no root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_zimhook");
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
/// Where the units expect the binary.
const INSTALLED_BIN: &str = "/usr/local/bin/zimhook";
const UNITS: [&str; 2] = ["zimhook.service", "zimhook.socket"];
/// "OK" or better in `systemd-analyze security`.
const MAX_EXPOSURE: f64 = 1.5;

/// A directory removed on drop (std only: no tempfile here).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "zimhook-deploy-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `path` written as the executable of an `Exec*=` line: `%` is a specifier character, and
/// a path with blanks must be quoted.
fn exec_path(path: &str) -> String {
    let path = path.replace('%', "%%");
    if path.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
        format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        path
    }
}

/// Both units copied into a fresh folder, the installed binary path replaced by the binary
/// cargo built (`verify` refuses an `Exec*=` whose program does not exist).
fn staged_units(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    for unit in UNITS {
        let text = read(Path::new(DEPLOY).join(unit)).replace(INSTALLED_BIN, &exec_path(BIN));
        std::fs::write(dir.0.join(unit), text).unwrap();
    }
    dir
}

/// Runs `systemd-analyze ARGS` with the logging pinned down: warnings about unit files go to
/// stderr (not to the journal, whatever the caller's environment says) without colours, and
/// only `units` is searched for units (`SYSTEMD_UNIT_PATH`), so neither units nor drop-ins
/// installed on this machine change the result. `None` if systemd-analyze is not installed.
fn systemd_analyze(args: &[&str], units: Option<&Path>) -> Option<Output> {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(args)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .env("SYSTEMD_LOG_TARGET", "console")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .env_remove("SYSTEMD_UNIT_PATH")
        .env_remove("JOURNAL_STREAM");
    if let Some(dir) = units {
        cmd.env("SYSTEMD_UNIT_PATH", dir);
    }
    match cmd.output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }
}

/// `systemd-analyze --help`, or `None` (after printing why) if it is not installed.
fn analyze_help() -> Option<String> {
    match systemd_analyze(&["--help"], None) {
        Some(out) => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        None => {
            println!("skipped: systemd-analyze is not installed");
            None
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(help) = analyze_help() else { return };
    let dir = staged_units("verify");
    let service = dir.0.join("zimhook.service");
    let socket = dir.0.join("zimhook.socket");

    let mut args = vec!["verify", "--man=no"];
    // systemd >= 250: judge only these two units and search nothing but their folder, so a
    // broken unit elsewhere on this machine can neither fail nor hide anything. (With only
    // their folder searched, the default dependencies, sysinit.target and friends, are
    // missing; that is what --recursive-errors=no disregards.)
    let hermetic = help.contains("--recursive-errors");
    if hermetic {
        args.push("--recursive-errors=no");
    }
    args.push(service.to_str().unwrap());
    args.push(socket.to_str().unwrap());
    let out = systemd_analyze(&args, hermetic.then_some(dir.0.as_path())).unwrap();
    let output = text(&out);

    // An unknown key, an unparsable value or a bad credential name is only logged
    // ("..., ignoring") and the line dropped; whether verify then exits non-zero depends on
    // the version and on --recursive-errors (plain `verify` exits 0). So any line about these
    // units fails the test too. (Lines about other units, possible when not hermetic, are
    // shown, not judged.)
    let complaints: Vec<&str> = output
        .lines()
        .filter(|line| line.contains("zimhook"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze {} failed ({}):\n{output}",
        args.join(" "),
        out.status
    );
    println!("systemd-analyze verify: zimhook.service and zimhook.socket are fine");
    if !output.trim().is_empty() {
        println!("(output about other units:)\n{output}");
    }
}

#[test]
fn service_exposure_is_ok_or_better() {
    let Some(help) = analyze_help() else { return };
    if !help.contains("--offline") {
        println!("skipped: this systemd-analyze has no --offline (systemd 250 or newer needed)");
        return;
    }
    let dir = staged_units("security");
    let service = dir.0.join("zimhook.service");
    let args = [
        "security",
        "--offline=yes",
        "--no-pager",
        service.to_str().unwrap(),
    ];
    let out = systemd_analyze(&args, Some(&dir.0)).unwrap();
    let output = text(&out);
    assert!(
        out.status.success(),
        "systemd-analyze security failed ({}):\n{output}",
        out.status
    );

    // "→ Overall exposure level for zimhook.service: 1.1 OK 🙂"
    const LABEL: &str = "Overall exposure level for zimhook.service:";
    let exposure: f64 = output
        .lines()
        .find_map(|line| line.split_once(LABEL))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|figure| figure.parse().ok())
        .unwrap_or_else(|| panic!("no \"{LABEL} X.Y\" line in:\n{output}"));
    println!("systemd-analyze security: exposure level of zimhook.service: {exposure:.1}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "zimhook.service exposure {exposure} is above {MAX_EXPOSURE}:\n{output}"
    );
}

/// The `[Service]` settings of a unit file: key → values in file order (comments, blank
/// lines and other sections left out). Enough for the unit shipped here, which uses no line
/// continuations.
fn service_settings(unit: &str) -> HashMap<String, Vec<String>> {
    let mut settings: HashMap<String, Vec<String>> = HashMap::new();
    let mut in_service = false;
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if let (true, Some((key, value))) = (in_service, line.split_once('=')) {
            settings
                .entry(key.trim().to_string())
                .or_default()
                .push(value.trim().to_string());
        }
    }
    settings
}

fn seconds(value: &str) -> u64 {
    let digits = value.trim_end_matches(|c: char| !c.is_ascii_digit());
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("duration {value:?}"));
    match &value[digits.len()..] {
        "" | "s" => n,
        "min" => n * 60,
        unit => panic!("duration {value:?}: unit {unit:?} not handled here"),
    }
}

#[test]
fn service_keeps_what_the_daemon_needs() {
    let unit = read(Path::new(DEPLOY).join("zimhook.service"));
    let s = service_settings(&unit);
    let one = |key: &str| -> &str {
        match s.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("{key}= should be set once, is {other:?}"),
        }
    };
    let config = "-c /etc/zimhook/config.toml";
    assert_eq!(one("Type"), "notify");
    assert_eq!(
        one("ExecStartPre"),
        format!("{INSTALLED_BIN} check {config}")
    );
    assert_eq!(one("ExecStart"), format!("{INSTALLED_BIN} run {config}"));
    // The daemon checks and applies the file with its own credentials (an ExecReload= process
    // on systemd 252 cannot read them) and `zimhook reload` reports the outcome as its exit.
    assert_eq!(
        one("ExecReload"),
        format!("{INSTALLED_BIN} reload {config}")
    );
    // The plugin cache's worker thread lowers its own priority at start; without setpriority
    // it logs a warning at every start.
    let filters = s.get("SystemCallFilter").cloned().unwrap_or_default();
    let allowed_at = filters
        .iter()
        .rposition(|f| f.split_whitespace().any(|c| c == "setpriority"));
    let denied_at = filters.iter().rposition(|f| {
        f.strip_prefix('~').is_some_and(|d| {
            d.split_whitespace()
                .any(|c| c == "@resources" || c == "setpriority")
        })
    });
    assert!(
        matches!((allowed_at, denied_at), (Some(a), d) if d.is_none_or(|d| a > d)),
        "setpriority must be allowed after any deny list that contains it: {filters:?}"
    );
    // wasmtime's JIT writes code, then makes it executable.
    assert!(
        !s.contains_key("MemoryDenyWriteExecute"),
        "MemoryDenyWriteExecute= breaks the Wasm plugins (wasmtime JIT)"
    );
    // Commands are forked and exec'd in their own process groups, fed through pipes, signalled.
    let needed = [
        "@system-service",
        "@process",
        "@signal",
        "@ipc",
        "@basic-io",
        "@file-system",
    ];
    for filter in s.get("SystemCallFilter").into_iter().flatten() {
        if let Some(denied) = filter.strip_prefix('~') {
            for group in denied.split_whitespace() {
                assert!(
                    !needed.contains(&group),
                    "SystemCallFilter={filter} denies {group}"
                );
            }
        }
    }
    assert_eq!(one("KillMode"), "mixed");
    // On SIGTERM: requests and running deliveries share shutdown_grace (10 s), then the store
    // closes.
    assert!(
        seconds(one("TimeoutStopSec")) > 10 + 10,
        "TimeoutStopSec must leave a margin over the 10 s shutdown grace"
    );
    assert_eq!(one("WatchdogSec"), "30s");
    assert_eq!(one("DynamicUser"), "yes");

    // The example config uses what the unit provides.
    let example = read(Path::new(DEPLOY).join("config.toml"));
    assert_eq!(one("StateDirectory"), "zimhook");
    assert!(example.contains(r#"path = "/var/lib/zimhook/zimhook.redb""#));
    let credential = one("LoadCredential").split(':').next().unwrap();
    assert!(example.contains(&format!(r#"secrets = ["cred:{credential}"]"#)));
}

#[test]
fn example_config_passes_check() {
    let dir = TempDir::new("config");
    // The credential the unit would load, and the unit's directories moved under the temp
    // folder so that checking touches nothing on this machine.
    let creds = dir.0.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("zego-callback-secret"), "test-secret\n").unwrap();
    let mut config = read(Path::new(DEPLOY).join("config.toml"));
    for (from, to) in [
        ("/var/lib/zimhook", "state"),
        ("/var/cache/zimhook", "cache"),
        ("/run/zimhook", "runtime"),
    ] {
        config = config.replace(from, dir.0.join(to).to_str().unwrap());
    }
    let path = dir.0.join("config.toml");
    std::fs::write(&path, config).unwrap();

    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "zimhook check deploy/config.toml: {}\n{}",
        out.status,
        text(&out)
    );
}
