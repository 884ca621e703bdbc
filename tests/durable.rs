//! The redb store under the daemon: deliveries written while a target is down all arrive once it
//! is up; a restart keeps the replay table and resumes pending deliveries; `[store] kind`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use zimhook::config::{StoreKind, StoreSettings};
use zimhook::deliver::{RedbStore, Store};

/// A forward rule to `addr` that keeps retrying quickly.
fn forward_config(addr: std::net::SocketAddr) -> String {
    format!(
        r#"{}
[[rule]]
name = "fwd"
events = ["call_timeout"]
retry = {{ attempts = 1000, backoff = "50ms", max_backoff = "300ms" }}
forward = "http://{addr}/in"
"#,
        verify_section()
    )
}

/// A port nothing listens on (connections are refused) until a target is started there.
fn reserved_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn call_id(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["call_id"].as_str().unwrap().to_string()
}

/// Waits until the daemon has let go of `store`, then drops it: the file is closed and may be
/// opened again.
async fn close(store: Arc<RedbStore>) {
    assert!(
        wait_until(Duration::from_secs(10), || Arc::strong_count(&store) == 1).await,
        "the stopped daemon still holds the store"
    );
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_accepted_while_the_target_is_down_all_arrive_once_it_is_up() {
    const CALLBACKS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(&dir.path().join("zimhook.redb")).unwrap());
    let addr = reserved_port();
    let d = Daemon::start_with_store(&forward_config(addr), store.clone()).await;

    let mut posts = tokio::task::JoinSet::new();
    for i in 0..CALLBACKS {
        let url = d.url("/callback");
        posts.spawn(async move {
            let body = sign(event(
                "call_timeout",
                json!({"call_id": format!("c{i}"), "user_ids": ["a"]}),
            ));
            post(&url, to_body(&body)).await
        });
    }
    while let Some(r) = posts.join_next().await {
        let (status, reply) = r.unwrap();
        assert_eq!(status, 200, "{reply}");
    }
    // Every delivery is on disk, none has arrived.
    assert_eq!(store.pending().unwrap().len(), CALLBACKS);
    println!(
        "{CALLBACKS} callbacks accepted in {} store commits (attempts meanwhile included)",
        store.commits()
    );

    let target = Target::serve_on(tokio::net::TcpListener::bind(addr).await.unwrap(), &[200]);
    let arrived = || {
        target
            .requests()
            .iter()
            .map(|r| call_id(&r.body))
            .collect::<BTreeSet<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(30), || arrived().len() == CALLBACKS).await,
        "{} of {CALLBACKS} arrived",
        arrived().len()
    );
    let expected: BTreeSet<String> = (0..CALLBACKS).map(|i| format!("c{i}")).collect();
    assert_eq!(arrived(), expected);
    assert!(d.wait_idle(Duration::from_secs(10)).await);
    assert!(store.dead().unwrap().is_empty());
    assert!(
        wait_until(Duration::from_secs(5), || store
            .pending()
            .unwrap()
            .is_empty())
        .await,
        "delivered deliveries stay in the store"
    );
    d.stop().await;
    target.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_replay_table_and_resumes_pending_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zimhook.redb");
    let addr = reserved_port();
    let config = forward_config(addr);
    let first = sign(event(
        "call_timeout",
        json!({"call_id": "before-restart", "user_ids": ["a"]}),
    ));

    let store = Arc::new(RedbStore::open(&path).unwrap());
    let d = Daemon::start_with_store(&config, store.clone()).await;
    let (status, reply) = d.post(to_body(&first)).await;
    assert_eq!((status, reply.as_str()), (200, r#"{"code":0}"#));
    d.stop().await;
    let pending = store.pending().unwrap();
    assert_eq!(pending.len(), 1);
    let delivery_id = pending[0].id.clone();
    close(store).await;

    let store = Arc::new(RedbStore::open(&path).unwrap());
    let d = Daemon::start_with_store(&config, store.clone()).await;
    assert_eq!(
        d.app.queue.pending_len(),
        1,
        "the pending delivery is resumed"
    );

    // ZEGO retrying the same callback: the same reply, nothing queued again.
    let (status, reply) = d.post(to_body(&first)).await;
    assert_eq!((status, reply.as_str()), (200, r#"{"code":0}"#));
    // The same nonce and timestamp with another body: a replay.
    let mut replayed = first.clone();
    replayed.insert("call_id".into(), json!("forged"));
    assert_eq!(d.post(to_body(&replayed)).await.0, 401);
    assert_eq!(d.app.queue.pending_len(), 1);
    assert_eq!(store.pending().unwrap().len(), 1);

    let target = Target::serve_on(tokio::net::TcpListener::bind(addr).await.unwrap(), &[200]);
    assert!(wait_until(Duration::from_secs(15), || target.count() >= 1).await);
    assert!(d.wait_idle(Duration::from_secs(10)).await);
    for r in target.requests() {
        assert_eq!(r.header("x-zimhook-delivery"), Some(delivery_id.as_str()));
        assert_eq!(call_id(&r.body), "before-restart");
    }
    assert!(store.dead().unwrap().is_empty());
    d.stop().await;
    target.stop();
}

fn load(dir: &Path, store_table: &str) -> Result<zimhook::config::Snapshot, String> {
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("{}{store_table}", verify_section())).unwrap();
    zimhook::config::load(&path).map_err(|e| e.to_string())
}

#[test]
fn store_kind_is_redb_by_default_memory_on_request_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let default = load(dir.path(), "").unwrap();
    assert_eq!(default.store.kind, StoreKind::Redb);
    assert_eq!(default.store.path, dir.path().join("data/zimhook.redb"));
    let memory = load(dir.path(), "[store]\nkind = \"memory\"\n").unwrap();
    assert_eq!(memory.store.kind, StoreKind::Memory);

    let e = load(dir.path(), "[store]\nkind = \"sqlite\"\n").unwrap_err();
    // verify_section() is two lines; the value is on line 4, column 8.
    assert!(
        e.ends_with(":4:8: store.kind \"sqlite\": expected \"redb\" or \"memory\""),
        "{e}"
    );
}

#[test]
fn a_store_in_use_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zimhook.redb");
    let _held = RedbStore::open(&path).unwrap();
    let settings = StoreSettings {
        kind: StoreKind::Redb,
        path: path.clone(),
        max_queued: 10,
        workers: 1,
    };
    let e = zimhook::daemon::open_store(&settings)
        .err()
        .expect("the file is in use");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}
