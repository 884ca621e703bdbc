//! The commands besides the daemon: `check`, `sign` and `send`. They print for people; the
//! daemon itself logs through `tracing`.

use std::io::Read;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde_json::{Map, Value};

use crate::act::plugin::Plugins;
use crate::config::{self, ConfigError, Listen};
use crate::verify;

/// Exit code for a config that cannot be used (EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;

/// `zimhook check`: prints warnings and errors (`FILE:LINE:COL: message`) to stderr, a summary
/// to stdout; returns the exit code.
pub fn check(path: &Path) -> i32 {
    let loaded = config::load(path).and_then(|mut snapshot| {
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let plugins = Plugins::new(&snapshot.plugins, metrics).map_err(|e| ConfigError {
            errors: vec![config::Diagnostic {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                message: format!("cannot start the plugin host: {e:#}"),
            }],
        })?;
        plugins.compile(&mut snapshot, None)?;
        Ok(snapshot)
    });
    match loaded {
        Ok(snapshot) => {
            for w in &snapshot.warnings {
                eprintln!("{w}");
            }
            println!(
                "{}: ok: {} rule{}, {} plugin{} compiled, config hash {}",
                path.display(),
                snapshot.rules.len(),
                if snapshot.rules.len() == 1 { "" } else { "s" },
                snapshot.compiled.len(),
                if snapshot.compiled.len() == 1 {
                    ""
                } else {
                    "s"
                },
                &snapshot.hash[..12]
            );
            0
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{}: {} error{}; config not usable",
                path.display(),
                e.errors.len(),
                if e.errors.len() == 1 { "" } else { "s" }
            );
            EXIT_CONFIG
        }
    }
}

/// The admin endpoint (and its token) named by the config, or the exit code to stop with.
pub fn admin_settings(path: &Path) -> Result<config::AdminSettings, i32> {
    match config::load(path) {
        Ok(s) => match s.admin {
            Some(a) => Ok(a),
            None => {
                eprintln!(
                    "{}: no [admin] table: set admin.listen (e.g. \"unix:data/zimhook.sock\") to manage deliveries",
                    path.display()
                );
                Err(EXIT_CONFIG)
            }
        },
        Err(e) => {
            eprintln!("{e}");
            Err(EXIT_CONFIG)
        }
    }
}

/// `zimhook sign`.
pub fn sign(secret: &str, timestamp: &str, nonce: &str) -> String {
    verify::signature(secret, timestamp, nonce)
}

/// `zimhook send`: builds a signed callback for `event` and POSTs it. Returns the exit code.
pub async fn send(
    config_path: &Path,
    url: Option<String>,
    appid: Option<String>,
    event: &str,
    data: Option<&str>,
) -> anyhow::Result<i32> {
    let snapshot = config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let fields = read_fields(data)?;
    let url = match url {
        Some(u) => u,
        None => match &snapshot.server.listen {
            Listen::Tcp(addr) => format!("http://{}{}", addr, snapshot.server.path),
            Listen::Systemd => bail!("server.listen is \"systemd\": give the address with --url"),
        },
    };
    let appid = appid
        .or_else(|| snapshot.verify.appids.first().cloned())
        .or_else(|| fields.get("appid").and_then(crate::receive::literal_text))
        .unwrap_or_else(|| "1".to_string());
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs()
        .to_string();
    let nonce = rand::random::<u64>().to_string();
    let signature = match snapshot.verify.secrets.first() {
        Some(secret) => verify::signature(secret.expose(), &timestamp, &nonce),
        None => String::new(),
    };
    let mut body = Map::new();
    body.insert("appid".into(), Value::String(appid));
    body.insert("event".into(), Value::String(event.to_string()));
    body.insert("nonce".into(), Value::String(nonce));
    body.insert("signature".into(), Value::String(signature));
    body.insert(
        "timestamp".into(),
        serde_json::from_str(&timestamp).expect("digits are JSON"),
    );
    for (k, v) in fields {
        if !matches!(
            k.as_str(),
            "appid" | "event" | "nonce" | "signature" | "timestamp"
        ) {
            body.insert(k, v);
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(snapshot.server.request_timeout + std::time::Duration::from_secs(5))
        .build()?;
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(serde_json::to_string(&body)?)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{}", status.as_u16());
    println!("{text}");
    Ok(if status.is_success() { 0 } else { 1 })
}

/// The business fields: JSON text, `@FILE`, `-` (stdin), or nothing.
fn read_fields(data: Option<&str>) -> anyhow::Result<Map<String, Value>> {
    let text = match data {
        None => return Ok(Map::new()),
        Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        Some(d) if d.starts_with('@') => {
            std::fs::read_to_string(&d[1..]).with_context(|| format!("cannot read {}", &d[1..]))?
        }
        Some(d) => d.to_string(),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => bail!("the event's fields must be a JSON object"),
        Err(e) => bail!("the event's fields are not JSON: {e}"),
    }
}
