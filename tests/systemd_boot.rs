//! zimhook under a real systemd: `tests/systemd/boot-test.sh` boots Debian 12 (systemd 252 as
//! PID 1) in systemd-nspawn, installs the binary cargo built and the repo's `deploy/` files with
//! the README's commands, and checks the service end to end (start, delivery, reloads, the CLI
//! from a root shell, stop, socket activation across a restart, watchdog, exposure score). Its
//! output, one `step: NAME: ok|FAIL ...` line per check, is printed as it comes.
//!
//! Needs root, systemd-nspawn (systemd-container) and the base tree that
//! `tests/systemd/base.sh` builds (default /var/cache/zimhook-ci/bookworm, or
//! `$ZIMHOOK_SYSTEMD_BASE`). Where one is missing the test says why and passes, unless
//! `ZIMHOOK_REQUIRE_SYSTEMD_TEST=1` (CI), where that is a failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

const BIN: &str = env!("CARGO_BIN_EXE_zimhook");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DEFAULT_BASE: &str = "/var/cache/zimhook-ci/bookworm";
/// The whole run, boot to teardown (`$ZIMHOOK_SYSTEMD_TEST_TIMEOUT` seconds overrides it); the
/// script itself takes about a minute plus its 40 s watchdog wait.
const TIMEOUT: Duration = Duration::from_secs(300);
/// After SIGTERM, how long the script gets to stop the container before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(30);

/// The effective uid, from /proc (std has no geteuid).
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn base_tree() -> PathBuf {
    std::env::var_os("ZIMHOOK_SYSTEMD_BASE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE))
}

/// Why this host cannot run the boot test, if it cannot.
fn cannot_run() -> Option<String> {
    if euid() != Some(0) {
        return Some("not root (systemd-nspawn needs root)".into());
    }
    if !on_path("systemd-nspawn") {
        return Some("systemd-nspawn is not installed (apt-get install systemd-container)".into());
    }
    let base = base_tree();
    if !base.join("usr/lib/systemd/systemd").is_file() {
        return Some(format!(
            "no base tree at {} (build it with tests/systemd/base.sh)",
            base.display()
        ));
    }
    None
}

/// SIGKILL to the container's PID 1 (the pid boot-test.sh wrote), if it still runs systemd.
fn kill_container(leader_file: &Path) {
    let Some(pid) = std::fs::read_to_string(leader_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "systemd" {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[test]
fn zimhook_service_under_systemd_in_nspawn() {
    if let Some(why) = cannot_run() {
        if std::env::var("ZIMHOOK_REQUIRE_SYSTEMD_TEST").as_deref() == Ok("1") {
            panic!("ZIMHOOK_REQUIRE_SYSTEMD_TEST=1, but the systemd boot test cannot run: {why}");
        }
        eprintln!("skipped: {why}");
        return;
    }

    let root = Path::new(ROOT);
    let script = root.join("tests/systemd/boot-test.sh");
    let leader_file = std::env::temp_dir().join(format!(
        "zimhook-systemd-boot-{}.leader",
        std::process::id()
    ));
    // stderr joins stdout so that both arrive here in order; the script runs in its own process
    // group, so that a timeout can signal it together with systemd-nspawn.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(r#"exec bash "$0" 2>&1"#)
        .arg(&script)
        .env("ZIMHOOK_BIN", BIN)
        .env("ZIMHOOK_DEPLOY", root.join("deploy"))
        .env("ZIMHOOK_README", root.join("README.md"))
        .env("ZIMHOOK_SYSTEMD_BASE", base_tree())
        .env("ZIMHOOK_BOOT_TEST_LEADER_FILE", &leader_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let pgid = Pid::from_raw(child.id() as i32);

    // The timeout: SIGTERM to the group (the script stops the container in its trap, and
    // systemd-nspawn halts it on SIGTERM as well), SIGKILL if that does not end it, and then to
    // the container's PID 1 too (it outlives a killed systemd-nspawn).
    let timeout = std::env::var("ZIMHOOK_SYSTEMD_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(TIMEOUT);
    let (done, finished) = mpsc::channel::<()>();
    let leader_path = leader_file.clone();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(timeout).is_ok() {
            return false;
        }
        eprintln!("boot test: no result after {timeout:?}: stopping it");
        let _ = killpg(pgid, Signal::SIGTERM);
        if finished.recv_timeout(TERM_GRACE).is_err() {
            let _ = killpg(pgid, Signal::SIGKILL);
            kill_container(&leader_path);
        }
        true
    });

    let start = Instant::now();
    let mut failed = Vec::new();
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        println!("{line}");
        if line.starts_with("step: ") && line.contains(": FAIL") {
            failed.push(line);
        }
    }
    let status = child.wait().expect("wait for boot-test.sh");
    let _ = done.send(());
    let timed_out = watchdog.join().expect("watchdog thread");
    let _ = std::fs::remove_file(&leader_file);

    assert!(
        !timed_out,
        "boot-test.sh did not finish within {timeout:?} and was stopped"
    );
    assert!(
        status.success(),
        "boot-test.sh failed ({status}) after {:.0?}; failed steps:\n{}",
        start.elapsed(),
        failed.join("\n")
    );
}
