//! The real binary as a child process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_zimhook");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `dir/config.toml` for a daemon on a free port: `[server]` with `listen` and the
/// `server` lines given, the test `[verify]` section, then `rest` (store, admin, rules).
/// Returns the file and the port.
pub fn write_config(dir: &Path, server: &str, rest: &str) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let path = dir.join("config.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n{server}\n{}\n{rest}",
        super::verify_section()
    );
    std::fs::write(&path, text).unwrap();
    (path, port)
}

/// The daemon as a child process, stopped (SIGTERM) on drop.
pub struct Running {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    /// Starts `zimhook run -c config` in `cwd` with extra environment variables and waits until
    /// it listens.
    pub fn start(config: &Path, cwd: &Path, env: &[(&str, &str)]) -> Running {
        Self::start_command(Command::new(BIN).args(["run", "-c"]).arg(config), cwd, env)
    }

    /// Starts any command that ends up running the daemon (e.g. under systemd-socket-activate).
    pub fn start_command(cmd: &mut Command, cwd: &Path, env: &[(&str, &str)]) -> Running {
        Self::spawn(cmd, cwd, env, true)
    }

    /// Spawns without waiting for the daemon to listen.
    pub fn spawn(cmd: &mut Command, cwd: &Path, env: &[(&str, &str)], wait: bool) -> Running {
        let mut child = cmd
            .envs(env.iter().copied())
            .current_dir(cwd)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let r = Running { child, stderr };
        if !wait {
            return r;
        }
        assert!(
            r.wait_log("zimhook listening", Duration::from_secs(20)),
            "daemon did not start:\n{}",
            r.log()
        );
        r
    }
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    pub fn terminate(&mut self) -> Option<i32> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap().code()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
