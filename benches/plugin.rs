//! What a plugin call costs: `Plugin::handle` for the `moderate` example on a realistic
//! `before_send_msg` callback: a fresh instance from the pool, the call, JSON in and out.
//!
//!     cargo bench --bench plugin
//!
//! builds the plugins first if need be. Target: a median under 20 µs per call.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use zimhook::wasm::{CallLimits, HostSettings, PluginEvent, PluginHost};

const PLUGINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins");

const CONFIG: &str = r#"{"banned":["spam","scam","casino","free money"],"action":"block",
    "reason":"this message looks like spam","replace":{"darn":"d*rn","heck":"h*ck"}}"#;

fn before_send_msg(body: &str) -> String {
    format!(
        r#"{{"appid":"1234567890","event":"before_send_msg","nonce":"7439837412937480000",
            "timestamp":1717000000,"signature":"5bd59fd62953a8059fb7eaba95720f66d19e4517",
            "request_id":"3f0c7a1e-52b4-4c1e-9a57-8d7e1f2b6c90","from_user_id":"user_10086",
            "conv_id":"group_42","conv_type":2,"msg_id":"7312589203476543210",
            "payload":"{{\"client\":\"ios\",\"ver\":\"3.2.1\"}}","msg_type":1,"sub_msg_type":0,
            "msg_body":{}}}"#,
        serde_json::to_string(body).unwrap()
    )
}

/// Builds the plugins workspace; quick when it is up to date.
fn build_plugins() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let plugins = Path::new(PLUGINS);
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", plugins.join("target"))
        .status()
        .expect("cannot run cargo to build the plugins");
    assert!(status.success(), "building the plugins failed");
}

fn moderate(c: &mut Criterion) {
    build_plugins();
    let path = Path::new(PLUGINS).join("target/wasm32-wasip2/release/moderate.wasm");
    let host = PluginHost::new(HostSettings::default()).unwrap();
    let plugin = host.load(&path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let limits = CallLimits {
        timeout: Duration::from_millis(500),
        memory: 64 << 20,
    };
    let cases = [
        (
            "clean",
            "Hey team, the release notes are up on the wiki. Darn good work everyone, see you \
             at the retro tomorrow at 10:00!",
            r#"{"result":1,"new_msg_body":"#,
        ),
        (
            "banned",
            "Win FREE MONEY now at the best online casino, click the link!",
            r#"{"result":3,"reason":"this message looks like spam"}"#,
        ),
    ];
    let mut group = c.benchmark_group("plugin/moderate");
    for (name, body, expected) in cases {
        let event = PluginEvent {
            name: "before_send_msg".into(),
            appid: "1234567890".into(),
            payload: before_send_msg(body),
            config: CONFIG.into(),
        };
        let reply = runtime
            .block_on(plugin.handle(event.clone(), limits))
            .unwrap()
            .response
            .unwrap();
        assert!(reply.starts_with(expected), "{reply}");
        group.bench_function(name, |b| {
            b.iter(|| {
                let outcome = runtime.block_on(plugin.handle(black_box(event.clone()), limits));
                black_box(outcome.unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, moderate);
criterion_main!(benches);
