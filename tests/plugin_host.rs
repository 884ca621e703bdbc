//! The plugin host (`zimhook::wasm`) against real components: the example plugins and the
//! test fixtures in `plugins/examples/` (built once per test run by `common::plugins_dir`), and
//! small hand-written modules and components (WAT) for what must be refused.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use zimhook::wasm::{
    CallLimits, Emitted, HostSettings, LoadError, Plugin, PluginError, PluginEvent, PluginHost,
};

const LIMITS: CallLimits = CallLimits {
    timeout: Duration::from_secs(5),
    memory: 64 << 20,
};

/// One host for the tests that need no particular settings, as in the daemon.
static HOST: LazyLock<PluginHost> = LazyLock::new(|| {
    PluginHost::new(HostSettings {
        memory_limit: 64 << 20,
        max_instances: 32,
        cache_dir: None,
    })
    .unwrap()
});

/// The path of plugin `name`, built if need be.
fn wasm(name: &str) -> PathBuf {
    let path = common::plugin(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// The plugin `name` loaded by `HOST`, compiled once for all tests.
fn load(name: &str) -> Plugin {
    static LOADED: LazyLock<Mutex<HashMap<String, Plugin>>> = LazyLock::new(Default::default);
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    loaded
        .entry(name.to_owned())
        .or_insert_with(|| HOST.load(&wasm(name)).unwrap())
        .clone()
}

fn event(name: &str, payload: &str, config: &str) -> PluginEvent {
    PluginEvent {
        name: name.into(),
        appid: "1234567890".into(),
        payload: payload.into(),
        config: config.into(),
    }
}

fn before_send_msg(body: &str) -> String {
    format!(
        r#"{{"appid":"1234567890","event":"before_send_msg","nonce":"7439837412937480000",
            "timestamp":1717000000,"signature":"5bd59fd62953a8059fb7eaba95720f66d19e4517",
            "request_id":"req-1","from_user_id":"alice","conv_id":"bob","conv_type":0,
            "msg_id":"8731872193","payload":"","msg_type":1,"sub_msg_type":0,
            "msg_body":{}}}"#,
        serde_json::to_string(body).unwrap()
    )
}

const MODERATE_CONFIG: &str =
    r#"{"banned":["spam","scam"],"reason":"no spam, please","replace":{"darn":"d*rn"}}"#;

async fn moderate(body: &str, config: &str) -> Option<String> {
    let e = event("before_send_msg", &before_send_msg(body), config);
    load("moderate").handle(e, LIMITS).await.unwrap().response
}

#[tokio::test]
async fn moderate_blocks_a_banned_word() {
    let reply = moderate("Cheap SPAM here", MODERATE_CONFIG).await;
    assert_eq!(
        reply.as_deref(),
        Some(r#"{"result":3,"reason":"no spam, please"}"#)
    );
}

#[tokio::test]
async fn moderate_silences_when_configured() {
    let reply = moderate("a scam", r#"{"banned":["scam"],"action":"silence"}"#).await;
    assert_eq!(reply.as_deref(), Some(r#"{"result":2}"#));
}

#[tokio::test]
async fn moderate_sends_clean_messages_and_rewrites_words() {
    let reply = moderate("hello there", MODERATE_CONFIG).await;
    assert_eq!(reply.as_deref(), Some(r#"{"result":1}"#));
    let reply = moderate("darn it", MODERATE_CONFIG).await;
    assert_eq!(
        reply.as_deref(),
        Some(r#"{"result":1,"new_msg_body":"d*rn it"}"#)
    );
}

#[tokio::test]
async fn moderate_ignores_other_events() {
    let e = event(
        "call_timeout",
        r#"{"call_id":"c1","user_ids":["u1"]}"#,
        "{}",
    );
    let outcome = load("moderate").handle(e, LIMITS).await.unwrap();
    assert_eq!(outcome.response, None);
    assert!(outcome.emit.is_empty());
}

#[tokio::test]
async fn moderate_rejects_a_config_typo() {
    let e = event(
        "before_send_msg",
        &before_send_msg("hi"),
        r#"{"baned":["x"]}"#,
    );
    let err = load("moderate").handle(e, LIMITS).await.unwrap_err();
    assert!(
        matches!(&err, PluginError::Returned(m) if m.contains("unknown field `baned`")),
        "{err:?}"
    );
}

#[tokio::test]
async fn missed_call_emits_one_event_per_callee() {
    let payload = r#"{"appid":"1234567890","event":"call_timeout","call_id":"call-9",
                      "user_ids":["u1","u2","u3"]}"#;
    let outcome = load("missed_call")
        .handle(event("call_timeout", payload, "{}"), LIMITS)
        .await
        .unwrap();
    assert_eq!(outcome.response, None);
    let expected: Vec<Emitted> = ["u1", "u2", "u3"]
        .iter()
        .map(|user| Emitted {
            name: "missed_call".into(),
            payload: format!(r#"{{"call_id":"call-9","user_id":"{user}","appid":"1234567890"}}"#),
        })
        .collect();
    assert_eq!(outcome.emit, expected);
}

#[tokio::test]
async fn spin_is_stopped_at_its_timeout_without_blocking_the_runtime() {
    let timeout = Duration::from_millis(300);
    // A task on the same (current-thread) runtime keeps running while the plugin spins.
    let ticks = Arc::new(Mutex::new(0u32));
    let counter = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            loop {
                interval.tick().await;
                *ticks.lock().unwrap() += 1;
            }
        }
    });
    let spin = load("test_spin");
    let start = Instant::now();
    let limits = CallLimits { timeout, ..LIMITS };
    let err = spin
        .handle(event("x", "{}", "{}"), limits)
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    counter.abort();
    assert!(
        matches!(err, PluginError::Timeout(t) if t == timeout),
        "{err:?}"
    );
    assert!(elapsed >= timeout, "stopped early: {elapsed:?}");
    assert!(
        elapsed < timeout + Duration::from_millis(250),
        "stopped late: {elapsed:?}"
    );
    assert!(*ticks.lock().unwrap() >= 10, "the runtime was blocked");
    // The host is unharmed.
    assert_eq!(
        moderate("hi", "{}").await.as_deref(),
        Some(r#"{"result":1}"#)
    );
}

#[tokio::test]
async fn sleep_in_a_host_call_is_stopped_at_its_timeout() {
    let sleep = load("test_sleep");
    let timeout = Duration::from_millis(200);
    let start = Instant::now();
    let limits = CallLimits { timeout, ..LIMITS };
    let err = sleep
        .handle(event("x", "{}", "{}"), limits)
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err, PluginError::Timeout(t) if t == timeout),
        "{err:?}"
    );
    assert!(
        elapsed < timeout + Duration::from_millis(250),
        "stopped late: {elapsed:?}"
    );
}

#[tokio::test]
async fn hog_is_stopped_at_its_memory_limit() {
    let limits = CallLimits {
        memory: 16 << 20,
        ..LIMITS
    };
    let err = load("test_hog")
        .handle(event("x", "{}", "{}"), limits)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PluginError::MemoryLimit(m) if m == 16 << 20),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "plugin went over its memory limit of 16MiB"
    );
    assert_eq!(
        moderate("hi", "{}").await.as_deref(),
        Some(r#"{"result":1}"#)
    );
}

#[tokio::test]
async fn call_memory_is_capped_by_the_host_setting() {
    let limits = CallLimits {
        memory: usize::MAX,
        ..LIMITS
    };
    let err = load("test_hog")
        .handle(event("x", "{}", "{}"), limits)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PluginError::MemoryLimit(m) if m == 64 << 20),
        "{err:?}"
    );
}

#[tokio::test]
async fn fail_is_returned_as_an_error_and_every_call_starts_fresh() {
    // The fixture counts its calls in a global: a fresh instance per call always says 1.
    for _ in 0..20 {
        let err = load("test_fail")
            .handle(event("room_create", "{}", "{}"), LIMITS)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PluginError::Returned(m)
                if m == "test-fail refuses `room_create` (call 1 of this instance)"),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn a_panic_is_a_trap_that_quotes_the_panic_message() {
    let err = load("test_panic")
        .handle(event("group_create", "{}", "{}"), LIMITS)
        .await
        .unwrap_err();
    let PluginError::Trap(message) = &err else {
        panic!("{err:?}");
    };
    assert!(message.contains("unreachable"), "{message}");
    assert!(
        message.contains("panicked at examples/test-panic/src/lib.rs"),
        "{message}"
    );
    assert!(
        message.contains("test-panic was handed `group_create`"),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
    assert_eq!(
        moderate("hi", "{}").await.as_deref(),
        Some(r#"{"result":1}"#)
    );
}

#[tokio::test]
async fn logs_and_output_go_to_tracing_and_output_is_capped() {
    let logs = capture_logs();
    let span = tracing::info_span!("rule", rule = "chatty-rule");
    let _entered = span.enter();

    let outcome = load("test_chatty")
        .handle(event("send_msg", "{}", "{}"), LIMITS)
        .await
        .unwrap();
    assert_eq!(outcome.response.as_deref(), Some(r#"{"chatty":true}"#));

    let text = logs.text();
    for level in ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"] {
        let message = format!("chatty {}", level.to_lowercase());
        let line = text
            .lines()
            .find(|l| l.contains(&message))
            .unwrap_or_else(|| panic!("no `{message}` in:\n{text}"));
        assert!(line.contains(level), "{line}");
        assert!(line.contains(r#"plugin="test_chatty.wasm""#), "{line}");
        assert!(line.contains("chatty-rule"), "{line}");
    }
    assert!(text.contains("chatty info for send_msg"), "{text}");
    // 100 KiB plus one line on stdout; 64 KiB kept.
    let dropped = 100 * 1024 + "still printing after the cap\n".len() - 64 * 1024;
    assert!(text.contains(&format!("dropped_bytes={dropped}")), "{text}");
    assert!(text.contains("chatty stderr line"), "{text}");
}

#[tokio::test]
async fn a_full_instance_pool_fails_the_call_not_the_host() {
    let host = PluginHost::new(HostSettings {
        memory_limit: 64 << 20,
        max_instances: 1,
        cache_dir: None,
    })
    .unwrap();
    let spin = host.load(&wasm("test_spin")).unwrap();
    let moderate = host.load(&wasm("moderate")).unwrap();
    let limits = CallLimits {
        timeout: Duration::from_secs(2),
        ..LIMITS
    };
    let spinning = tokio::spawn(async move { spin.handle(event("x", "{}", "{}"), limits).await });
    // Once the spinning call holds the only instance slot, another call cannot get one.
    let e = event("before_send_msg", &before_send_msg("hi"), "{}");
    let deadline = Instant::now() + Duration::from_secs(1);
    let err = loop {
        tokio::task::yield_now().await;
        match moderate.handle(e.clone(), LIMITS).await {
            Err(err) => break err,
            Ok(_) => assert!(Instant::now() < deadline, "the spinning call never started"),
        }
    };
    assert!(matches!(err, PluginError::Instantiate(_)), "{err:?}");
    assert!(err.to_string().contains("concurrent limit of 1"), "{err}");
    let spun = spinning.await.unwrap().unwrap_err();
    assert!(matches!(spun, PluginError::Timeout(_)), "{spun:?}");
    let outcome = moderate.handle(e, LIMITS).await.unwrap();
    assert_eq!(outcome.response.as_deref(), Some(r#"{"result":1}"#));
}

#[test]
fn path_and_digest() {
    use sha2::Digest;
    let path = wasm("moderate");
    let plugin = load("moderate");
    assert_eq!(plugin.path(), path);
    let expected = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
    assert_eq!(plugin.digest(), expected);
}

#[test]
fn a_core_module_is_refused() {
    let file = TempWasm::new("core.wasm", &wat::parse_str("(module)").unwrap());
    let err = HOST.load(&file.path).unwrap_err();
    assert!(matches!(err, LoadError::NotComponent(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{} is a core module, not a component: build it for wasm32-wasip2",
            file.path.display()
        )
    );
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let file = TempWasm::new("text.wasm", b"(component)");
    let err = HOST.load(&file.path).unwrap_err();
    assert!(matches!(err, LoadError::NotComponent(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("text.wasm is not a WebAssembly component"),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_a_read_error() {
    let err = HOST.load(Path::new("/nonexistent/x.wasm")).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot read /nonexistent/x.wasm: "),
        "{err}"
    );
}

#[test]
fn a_component_of_another_world_is_refused() {
    // Exports nothing.
    let file = TempWasm::new("empty.wasm", &wat::parse_str("(component)").unwrap());
    let err = HOST.load(&file.path).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err:?}");
    let expected = "empty.wasm does not export `handle` of zimhook:plugin/handler@0.1.0";
    assert!(err.to_string().contains(expected), "{err}");

    // Exports `handle` with another type.
    let wat = r#"(component
        (core module $m (func (export "f") (result i32) i32.const 0))
        (core instance $i (instantiate $m))
        (func (export "handle") (result u32) (canon lift (core func $i "f"))))"#;
    let file = TempWasm::new("other-type.wasm", &wat::parse_str(wat).unwrap());
    let err = HOST.load(&file.path).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err:?}");
    assert!(
        err.to_string().contains("does not export `handle`"),
        "{err}"
    );

    // Imports something zimhook does not provide.
    let wat = r#"(component
        (import "acme:db/query" (instance (export "run" (func (param "q" string) (result string))))))"#;
    let file = TempWasm::new("other-import.wasm", &wat::parse_str(wat).unwrap());
    let err = HOST.load(&file.path).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err:?}");
    assert!(err.to_string().contains("acme:db/query"), "{err}");
}

#[tokio::test]
async fn compiled_plugins_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let settings = HostSettings {
        memory_limit: 64 << 20,
        max_instances: 4,
        cache_dir: Some(dir.path().join("cache")),
    };
    let e = event("before_send_msg", &before_send_msg("spam"), MODERATE_CONFIG);
    let expected = Some(r#"{"result":3,"reason":"no spam, please"}"#.to_owned());

    let host = PluginHost::new(settings.clone()).unwrap();
    host.load(&wasm("moderate")).unwrap();
    let stats = host.cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses), (0, 1));

    // A new host (a restart) finds it, and it runs.
    let host = PluginHost::new(settings.clone()).unwrap();
    let plugin = host.load(&wasm("moderate")).unwrap();
    let stats = host.cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses), (1, 0));
    assert_eq!(
        plugin.handle(e.clone(), LIMITS).await.unwrap().response,
        expected
    );

    // Damaged entries are compiled again.
    for file in files_under(dir.path()) {
        std::fs::write(file, b"garbage").unwrap();
    }
    let host = PluginHost::new(settings).unwrap();
    let plugin = host.load(&wasm("moderate")).unwrap();
    assert_eq!(host.cache_stats().unwrap().misses, 1);
    assert_eq!(plugin.handle(e, LIMITS).await.unwrap().response, expected);
}

#[test]
fn no_cache_no_stats() {
    assert_eq!(HOST.cache_stats(), None);
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A file in a temporary directory, removed on drop.
struct TempWasm {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TempWasm {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(bytes))
            .unwrap();
        TempWasm { path, _dir: dir }
    }
}

/// Captures this thread's log lines (from `zimhook` and this test) until the returned handle
/// drops.
///
/// One global subscriber for the whole test binary, writing each line to the buffer of the
/// thread that logged it: per-test `set_default` subscribers are flaky when tests run in
/// parallel (`tracing` caches a callsite's interest from whichever thread reaches it first).
/// Plugin calls log on the thread that polls them, so a current-thread test sees its own.
fn capture_logs() -> CapturedLogs {
    use tracing_subscriber::layer::SubscriberExt;
    static INIT: LazyLock<()> = LazyLock::new(|| {
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(|| ThreadWriter),
            )
            .with(
                tracing_subscriber::filter::Targets::new()
                    .with_target("zimhook", tracing::Level::TRACE)
                    .with_target("plugin_host", tracing::Level::TRACE),
            );
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    LazyLock::force(&INIT);
    let logs = CapturedLogs(Arc::default());
    CAPTURE.with(|c| *c.borrow_mut() = Some(logs.0.clone()));
    logs
}

thread_local! {
    static CAPTURE: RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { RefCell::new(None) };
}

struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Drop for CapturedLogs {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(capture) = &*c.borrow() {
                capture.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
