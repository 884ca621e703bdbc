//! Test helpers: an in-process daemon on 127.0.0.1:0, a recording HTTP target, signing.
#![allow(dead_code)]

pub mod process;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value};

use zimhook::deliver::{MemoryStore, Store};
use zimhook::shared::Shared;

pub const SECRET: &str = "test-secret";

/// The `[verify]` table most tests use.
pub fn verify_section() -> String {
    format!("[verify]\nsecrets = [\"{SECRET}\"]\n")
}

/// The documented callback bodies, one per event and product family, kept in the repo (a copy of
/// the project's shared fixtures) so that a clone tests on its own.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture(name: &str) -> Map<String, Value> {
    let text = std::fs::read_to_string(fixtures_dir().join(name)).unwrap();
    match serde_json::from_str(&text).unwrap() {
        Value::Object(m) => m,
        _ => panic!("fixture {name} is not an object"),
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sets a fresh nonce and timestamp on `body` and signs it with `secret`.
pub fn sign_with(mut body: Map<String, Value>, secret: &str) -> Map<String, Value> {
    let nonce = rand::random::<u64>().to_string();
    let ts = now_secs().to_string();
    // Keep the fixture's type quirk: a string timestamp stays a string.
    let ts_value = match body.get("timestamp") {
        Some(Value::String(_)) => Value::String(ts.clone()),
        _ => serde_json::from_str(&ts).unwrap(),
    };
    body.insert("nonce".into(), Value::String(nonce.clone()));
    body.insert("timestamp".into(), ts_value);
    body.insert(
        "signature".into(),
        Value::String(zimhook::verify::signature(secret, &ts, &nonce)),
    );
    body
}

pub fn sign(body: Map<String, Value>) -> Map<String, Value> {
    sign_with(body, SECRET)
}

pub fn event(name: &str, fields: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("appid".into(), Value::String("1".into()));
    m.insert("event".into(), Value::String(name.into()));
    if let Value::Object(f) = fields {
        m.extend(f);
    }
    m
}

pub fn to_body(m: &Map<String, Value>) -> String {
    serde_json::to_string(m).unwrap()
}

/// A daemon running in this process on 127.0.0.1:0, with its own temporary folder (the config
/// lives there, so relative paths in it resolve there).
/// It starts through `zimhook::daemon::start`, as `zimhook run` does, with a memory store (or
/// the one given) and a listener on a free port.
pub struct Daemon {
    pub addr: SocketAddr,
    pub app: Arc<Shared>,
    pub dir: tempfile::TempDir,
    running: Option<zimhook::daemon::Daemon>,
}

impl Daemon {
    /// `config` may use `{dir}` for the daemon's folder.
    pub async fn start(config: &str) -> Daemon {
        Self::start_with_store(config, Arc::new(MemoryStore::new())).await
    }

    pub async fn start_with_store(config: &str, store: Arc<dyn Store>) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let text = config.replace("{dir}", dir.path().to_str().unwrap());
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &text).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let parts = zimhook::daemon::Parts {
            store: Some(store),
            listener: Some(listener),
        };
        let running = zimhook::daemon::start(&path, parts)
            .await
            .unwrap_or_else(|e| panic!("daemon: {e}"));
        Daemon {
            addr: running.addr,
            app: running.app.clone(),
            dir,
            running: Some(running),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs `body` to /callback; returns status and reply text.
    pub async fn post(&self, body: impl Into<String>) -> (u16, String) {
        post(&self.url("/callback"), body.into()).await
    }

    /// The dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<zimhook::deliver::Delivery> {
        let mut dead = self.app.queue.store().dead().unwrap_or_default();
        dead.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        dead
    }

    /// Waits (up to `timeout`) until there are `n` dead letters and returns them; panics with
    /// what there is otherwise.
    pub async fn wait_dead_letters(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Vec<zimhook::deliver::Delivery> {
        if !wait_until(timeout, || self.dead_letters().len() == n).await {
            panic!(
                "expected {n} dead letters within {timeout:?}, have {:?}",
                self.dead_letters()
            );
        }
        self.dead_letters()
    }

    /// Waits (up to `timeout`) until nothing is pending; false if something still is.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.app.queue.pending_len() == 0).await
    }

    /// Stops as SIGTERM does (within the config's `shutdown_grace`).
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
            running
                .stopped()
                .await
                .unwrap_or_else(|e| panic!("daemon: {e}"));
        }
    }
}

pub async fn post(url: &str, body: String) -> (u16, String) {
    let r = client().post(url).body(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// One request a [`Target`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// The request target's query, as sent (still percent-encoded).
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A forward target: records every request and answers with the scripted statuses in order
/// (the last one repeats).
pub struct Target {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    statuses: Arc<Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Target {
    pub async fn start(statuses: &[u16]) -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_on(listener, statuses)
    }

    pub fn serve_on(listener: tokio::net::TcpListener, statuses: &[u16]) -> Target {
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let statuses = Arc::new(Mutex::new(statuses.to_vec()));
        let (rec, st) = (received.clone(), statuses.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (rec, st) = (rec.clone(), st.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (rec, st) = (rec.clone(), st.clone());
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let query = req.uri().query().map(str::to_string);
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                                .collect();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            rec.lock().unwrap().push(Received {
                                at: Instant::now(),
                                method,
                                path,
                                query,
                                headers,
                                body,
                            });
                            let status = {
                                let mut s = st.lock().unwrap();
                                if s.len() > 1 { s.remove(0) } else { s[0] }
                            };
                            let mut resp =
                                Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Target {
            addr,
            received,
            statuses,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// The example plugins, built for wasm32-wasip2 once per test process (a no-op when they are up
/// to date). Fails with a clear message when the target is not installed.
pub fn plugins_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = std::process::Command::new(cargo)
                .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
                .arg(root.join("plugins/Cargo.toml"))
                .arg("--target-dir")
                .arg(root.join("plugins/target"))
                .env_remove("CARGO_TARGET_DIR")
                .output()
                .map_err(|e| format!("cannot run cargo to build the example plugins: {e}"))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let hint = if err.contains("wasm32-wasip2") && err.contains("target") {
                    "\nthe wasm32-wasip2 target is missing: run `rustup target add wasm32-wasip2` (scripts/test does)"
                } else {
                    ""
                };
                return Err(format!("building the example plugins failed:\n{err}{hint}"));
            }
            Ok(root.join("plugins/target/wasm32-wasip2/release"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The path of one built example plugin, e.g. `plugin("moderate")`.
pub fn plugin(name: &str) -> PathBuf {
    plugins_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

/// `GET path` over an admin unix socket; the whole response (status line, headers, body) as
/// text.
pub fn admin_get(socket: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
