//! The commands besides the daemon: `check`, `reload`, `sign` and `send`. They print for
//! people (with syslog priorities when stderr is the journal, see [`report`]); the daemon
//! itself logs through `tracing`. None of them needs the service's credentials.

use std::io::Read;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde_json::{Map, Value};

use crate::config::{self, AdminListen, ConfigError, Listen, Secret, Secrets};
use crate::logging::{Priority, report};
use crate::receive::{Family, PASCAL};
use crate::verify;

/// Exit code for a config that cannot be used (EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;

/// `zimhook check`: prints warnings and errors (`FILE:LINE:COL: message`) to stderr, a summary
/// to stdout; returns the exit code. Outside the service a `cred:` secret cannot be read; it is
/// noted, not an error (the unit's own `ExecStartPre=` check reads it).
pub fn check(path: &Path) -> i32 {
    let loaded = config::load_with(path, Secrets::OutsideService).and_then(|mut snapshot| {
        let host = config::plugins::host(&snapshot.plugins).map_err(|e| ConfigError {
            errors: vec![config::Diagnostic {
                file: path.to_path_buf(),
                line: 1,
                col: 1,
                message: format!("cannot start the plugin host: {e:#}"),
            }],
        })?;
        snapshot.compile_plugins(&host, None)?;
        Ok(snapshot)
    });
    match loaded {
        Ok(snapshot) => {
            for w in &snapshot.warnings {
                report(Priority::Warning, &w.to_string());
            }
            for n in &snapshot.notes {
                report(Priority::Notice, &n.to_string());
            }
            println!(
                "{}: ok: {} rule{}, {} plugin{} compiled, config hash {}",
                path.display(),
                snapshot.rules.len(),
                plural(snapshot.rules.len()),
                snapshot.compiled.len(),
                plural(snapshot.compiled.len()),
                &snapshot.hash[..12]
            );
            0
        }
        Err(e) => {
            refused(path, &e, "config not usable");
            EXIT_CONFIG
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Prints every error at error priority, then one summary line.
fn refused(path: &Path, e: &ConfigError, outcome: &str) {
    report(Priority::Error, &e.to_string());
    report(
        Priority::Error,
        &format!(
            "{}: {} error{}; {outcome}",
            path.display(),
            e.errors.len(),
            plural(e.errors.len())
        ),
    );
}

/// The admin endpoint (and its token) named by the config, or the exit code to stop with. No
/// other secret is read: a shell beside the service has no `$CREDENTIALS_DIRECTORY`.
pub fn admin_settings(path: &Path) -> Result<config::AdminSettings, i32> {
    admin_settings_or(path, "config not usable")
}

/// [`admin_settings`], with `outcome` said after the errors of a config that cannot be used.
fn admin_settings_or(path: &Path, outcome: &str) -> Result<config::AdminSettings, i32> {
    let snapshot = match config::load_with(path, Secrets::AdminOnly) {
        Ok(s) => s,
        Err(e) => {
            refused(path, &e, outcome);
            return Err(EXIT_CONFIG);
        }
    };
    match snapshot.admin {
        Some(a) if matches!(a.listen, AdminListen::Tcp(_)) && a.token.is_none() => {
            for n in &snapshot.notes {
                report(Priority::Error, &n.to_string());
            }
            report(
                Priority::Error,
                &format!(
                    "{}: admin.token cannot be read here, and the TCP admin endpoint needs it: \
                     use a token this shell can read (\"file:...\" or \"env:...\"), or a unix admin socket",
                    path.display()
                ),
            );
            Err(EXIT_CONFIG)
        }
        Some(a) => Ok(a),
        None => {
            report(
                Priority::Error,
                &format!(
                    "{}: no [admin] table: set admin.listen (e.g. \"unix:data/zimhook.sock\") to reach the running daemon",
                    path.display()
                ),
            );
            Err(EXIT_CONFIG)
        }
    }
}

/// `zimhook reload`: asks the running daemon (through its admin endpoint) to reload its config
/// and waits for the outcome. The daemon does the whole check, secrets included, with what it
/// holds; this process reads no secret but the admin token. Exit 0 when the new config is live,
/// 78 when it was refused (every error printed; the old config keeps serving), 1 when the
/// daemon cannot be reached.
pub async fn reload(path: &Path) -> i32 {
    let admin = match admin_settings_or(path, "not reloaded, the running config stays") {
        Ok(a) => a,
        Err(code) => return code,
    };
    let asked = crate::admin::client::request(&admin, hyper::Method::POST, "/reload");
    let (status, value) = match tokio::time::timeout(RELOAD_WAIT, asked).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            report(Priority::Error, &format!("zimhook reload: {e:#}"));
            return 1;
        }
        Err(_) => {
            report(
                Priority::Error,
                &format!(
                    "zimhook reload: no answer from the daemon within {}s",
                    RELOAD_WAIT.as_secs()
                ),
            );
            return 1;
        }
    };
    let lines = |key: &str| -> Vec<String> {
        value[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    match status.as_u16() {
        200 => {
            for w in lines("warnings") {
                report(Priority::Warning, &w);
            }
            let hash = value["config_hash"].as_str().unwrap_or("");
            println!(
                "{}: reloaded: {} rule{}, config hash {}",
                path.display(),
                value["rules"].as_u64().unwrap_or(0),
                plural(value["rules"].as_u64().unwrap_or(0) as usize),
                hash.get(..12).unwrap_or(hash)
            );
            0
        }
        422 => {
            let errors = lines("errors");
            for e in &errors {
                report(Priority::Error, e);
            }
            report(
                Priority::Error,
                &format!(
                    "{}: {} error{}; reload refused, the running config stays",
                    path.display(),
                    errors.len(),
                    plural(errors.len())
                ),
            );
            EXIT_CONFIG
        }
        401 => {
            report(
                Priority::Error,
                "zimhook reload: the admin endpoint refused the request (401): admin.token in this config is not the running daemon's",
            );
            1
        }
        other => {
            let msg = value["error"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| value.to_string());
            report(Priority::Error, &format!("zimhook reload: {other}: {msg}"));
            1
        }
    }
}

/// How long `zimhook reload` waits for the daemon (compiling plugins can take a while); less
/// than systemd's default timeout for `ExecReload=` (90 s).
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(80);

/// `zimhook sign`.
pub fn sign(secret: &str, timestamp: &str, nonce: &str) -> String {
    verify::signature(secret, timestamp, nonce)
}

/// Where `zimhook send` takes the CallbackSecret from.
#[derive(Debug, Clone)]
pub enum SignWith {
    /// The config's first `verify.secrets` entry (unless the config is in insecure mode
    /// without one: then the callback goes unsigned).
    Config,
    /// `--secret`.
    Text(String),
    /// `--secret-file`: the file's text, without the trailing newline.
    File(std::path::PathBuf),
}

/// `zimhook send`: builds a signed callback for `event` and POSTs it. Returns the exit code.
pub async fn send(
    config_path: &Path,
    url: Option<String>,
    appid: Option<String>,
    sign_with: SignWith,
    event: &str,
    data: Option<&str>,
) -> anyhow::Result<i32> {
    let snapshot = config::load_with(config_path, Secrets::OutsideService)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secret = signing_secret(&snapshot, sign_with)?;
    let fields = read_fields(data)?;
    let event = crate::events::unalias(event);
    let appid_field = Family::of_numbered(event).map_or("appid", |(f, _)| f.spelling().appid);
    let url = match url {
        Some(u) => u,
        None => match &snapshot.server.listen {
            Listen::Tcp(addr) => format!("http://{}{}", addr, snapshot.server.path),
            Listen::Systemd => bail!("server.listen is \"systemd\": give the address with --url"),
        },
    };
    let appid = appid
        .or_else(|| snapshot.verify.appids.first().cloned())
        .or_else(|| {
            fields
                .get(appid_field)
                .and_then(crate::receive::literal_text)
        })
        .unwrap_or_else(|| "1".to_string());
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs()
        .to_string();
    let nonce = rand::random::<u64>().to_string();
    let signature = match &secret {
        Some(secret) => verify::signature(secret.expose(), &timestamp, &nonce),
        None => String::new(),
    };
    let body = envelope_for(event, appid, &timestamp, nonce, signature, fields);
    let client = crate::act::forward::client_builder()
        .0
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

/// A callback body for `event` in its family's envelope: `cloud_recording.1` (or its alias) as
/// `app_id` and `event_type` 1, `mini_game.2` as `AppId` and `ReportType` 2, any other name
/// as `appid` and `event`. Appid and timestamp have the family's documented JSON types; the
/// business fields follow, envelope fields among them left out.
fn envelope_for(
    event: &str,
    appid: String,
    timestamp: &str,
    nonce: String,
    signature: String,
    fields: Map<String, Value>,
) -> Map<String, Value> {
    let (family, event_value) = match Family::of_numbered(event) {
        Some((family, number)) => match serde_json::from_str::<Value>(number) {
            Ok(n @ Value::Number(_)) => (family, n),
            _ => (family, Value::String(number.to_string())),
        },
        None => (Family::Named, Value::String(event.to_string())),
    };
    let names = family.spelling();
    let number = |text: &str| match serde_json::from_str::<Value>(text) {
        Ok(n @ Value::Number(_)) => n,
        _ => Value::String(text.to_string()),
    };
    let mut body = Map::new();
    body.insert(
        names.appid.into(),
        if family == Family::Named {
            Value::String(appid)
        } else {
            number(&appid)
        },
    );
    body.insert(names.event.into(), event_value);
    body.insert(names.nonce.into(), Value::String(nonce));
    body.insert(names.signature.into(), Value::String(signature));
    body.insert(
        names.timestamp.into(),
        if family.timestamp_is_text() {
            Value::String(timestamp.to_string())
        } else {
            number(timestamp)
        },
    );
    let envelope_field = |k: &str| {
        Family::ALL.into_iter().any(|f| {
            let n = f.spelling();
            [n.appid, n.event, n.nonce, n.signature, n.timestamp].contains(&k)
        }) || [
            PASCAL.appid,
            PASCAL.event,
            PASCAL.nonce,
            PASCAL.signature,
            PASCAL.timestamp,
        ]
        .contains(&k)
    };
    for (k, v) in fields {
        if !envelope_field(&k) {
            body.insert(k, v);
        }
    }
    body
}

/// The secret to sign with (`None`: send unsigned, for a config in insecure mode).
fn signing_secret(
    snapshot: &config::Snapshot,
    sign_with: SignWith,
) -> anyhow::Result<Option<Secret>> {
    let given = match sign_with {
        // Taken as it is: no env:/file: lookup.
        SignWith::Text(text) if text.trim().is_empty() => bail!("cannot sign: --secret is blank"),
        SignWith::Text(text) => return Ok(Some(Secret::new(text))),
        SignWith::File(path) => format!("file:{}", path.display()),
        SignWith::Config => {
            if let Some(secret) = snapshot.verify.secrets.first() {
                return Ok(Some(secret.clone()));
            }
            if let Some(spec) = snapshot.verify.service_only.first() {
                bail!(
                    "cannot sign: verify.secrets names {spec:?}, a credential only the service can read \
                     ($CREDENTIALS_DIRECTORY is not set here); give the secret with --secret-file FILE \
                     (e.g. /etc/zimhook/callback-secret, the file the unit loads it from) or --secret TEXT"
                );
            }
            return Ok(None);
        }
    };
    config::units::resolve_secret(&given, Path::new("."))
        .map(Some)
        .map_err(|e| anyhow::anyhow!("cannot sign: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::Callback;

    fn sent(event: &str, fields: Value) -> Callback {
        let Value::Object(fields) = fields else {
            panic!()
        };
        let body = envelope_for(
            event,
            "123".into(),
            "1700000000",
            "7450395512627324902".into(),
            verify::signature("k", "1700000000", "7450395512627324902"),
            fields,
        );
        Callback::decode(serde_json::to_string(&body).unwrap().into()).unwrap()
    }

    #[test]
    fn send_uses_the_family_envelope() {
        for (event, family, name) in [
            ("call_timeout", Family::Named, "call_timeout"),
            (
                "cloud_recording.1",
                Family::CloudRecording,
                "cloud_recording.1",
            ),
            (
                "cloud_player.10001",
                Family::CloudPlayer,
                "cloud_player.10001",
            ),
            ("digital_human.3", Family::DigitalHuman, "digital_human.3"),
            ("mini_game.2", Family::MiniGame, "mini_game.2"),
            (
                "cloud_recording.completed",
                Family::CloudRecording,
                "cloud_recording.5",
            ),
        ] {
            let cb = sent(
                crate::events::unalias(event),
                serde_json::json!({"task_id": "t"}),
            );
            assert_eq!(cb.envelope.family, family, "{event}");
            assert_eq!(cb.event(), name);
            assert_eq!(cb.appid(), "123");
            assert_eq!(cb.object["task_id"], "t");
            let s = config::VerifySettings {
                secrets: vec![Secret::new("k")],
                service_only: vec![],
                max_skew: None,
                appids: vec![],
                insecure: false,
            };
            assert!(
                verify::verify(&cb.envelope, &s, SystemTime::now()).is_ok(),
                "{event}"
            );
        }
        let cb = sent(
            "cloud_recording.1",
            serde_json::json!({"app_id": 9, "event_type": 2}),
        );
        assert_eq!(cb.event(), "cloud_recording.1");
        assert_eq!(cb.object["app_id"], 123);
        assert_eq!(cb.object["timestamp"], "1700000000");
    }
}
