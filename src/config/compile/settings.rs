//! The settings tables (`[server]`, `[admin]`, `[verify]`, `[store]`, `[plugins]`, `[log]`,
//! `[defaults]`), each value checked with its position.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::{RawAdmin, RawAppId, RawConfig, RawRetry};
use crate::config::units::{parse_duration, parse_size, service_only};
use crate::config::{
    AdminListen, AdminSettings, Listen, PluginSettings, RetryPolicy, Secrets, ServerSettings,
    StoreKind, StoreSettings, VerifySettings,
};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_PATH: &str = "/callback";
const DEFAULT_MAX_BODY: u64 = 1 << 20;
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(300);
const DEFAULT_STORE_PATH: &str = "data/zimhook.redb";
const DEFAULT_MAX_QUEUED: u64 = 100_000;
const DEFAULT_WORKERS: u32 = 64;
const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_millis(500);
const DEFAULT_PLUGIN_MEMORY: u64 = 64 << 20;
const DEFAULT_RULE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    attempts: 8,
    backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(600),
};

/// Every settings table but `[defaults]`, read.
pub(super) struct Settings {
    pub server: ServerSettings,
    pub admin: Option<AdminSettings>,
    pub verify: VerifySettings,
    pub store: StoreSettings,
    pub plugins: PluginSettings,
}

/// Reads every settings table but `[defaults]`, in this order.
pub(super) fn settings(c: &mut Checker, raw: &RawConfig) -> Settings {
    // A struct expression evaluates its fields in the order written.
    let settings = Settings {
        server: server_settings(c, raw),
        admin: raw
            .admin
            .as_ref()
            .and_then(|a| admin_settings(c, a.get_ref())),
        verify: verify_settings(c, raw),
        store: store_settings(c, raw),
        plugins: plugin_settings(c, raw),
    };
    check_log(c, raw);
    settings
}

/// What a rule falls back on where it says nothing: `[defaults]`, and `plugins.timeout` for a
/// plugin rule's timeout.
pub(super) struct RuleDefaults {
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub plugin_timeout: Duration,
}

/// Reads `[defaults]`.
pub(super) fn rule_defaults(
    c: &mut Checker,
    raw: &RawConfig,
    plugins: &PluginSettings,
) -> RuleDefaults {
    let timeout = c.duration(&raw.defaults.timeout, DEFAULT_RULE_TIMEOUT);
    let retry = match &raw.defaults.retry {
        Some(r) => retry_policy(c, r, DEFAULT_RETRY),
        None => DEFAULT_RETRY,
    };
    RuleDefaults {
        timeout,
        retry,
        plugin_timeout: plugins.timeout,
    }
}

fn server_settings(c: &mut Checker, raw: &RawConfig) -> ServerSettings {
    let s = &raw.server;
    let listen = match &s.listen {
        None => Listen::Tcp(DEFAULT_LISTEN.into()),
        Some(l) if l.get_ref() == "systemd" => Listen::Systemd,
        Some(l) => {
            if l.get_ref().parse::<SocketAddr>().is_err() {
                c.error(
                    l.span(),
                    format!(
                        "server.listen {:?}: expected IP:PORT (e.g. \"127.0.0.1:8080\") or \"systemd\"",
                        l.get_ref()
                    ),
                );
            }
            Listen::Tcp(l.get_ref().clone())
        }
    };
    let path = match &s.path {
        None => DEFAULT_PATH.to_string(),
        Some(p) => {
            if !p.get_ref().starts_with('/') {
                c.error(
                    p.span(),
                    format!("server.path {:?} must start with /", p.get_ref()),
                );
            }
            p.get_ref().clone()
        }
    };
    let max_body = match &s.max_body {
        None => DEFAULT_MAX_BODY,
        Some(m) => match parse_size(m.get_ref()) {
            Ok(0) => {
                c.error(m.span(), "server.max_body must be more than 0");
                DEFAULT_MAX_BODY
            }
            Ok(n) => n,
            Err(e) => {
                c.error(m.span(), e);
                DEFAULT_MAX_BODY
            }
        },
    };
    let idle_timeout = match &s.idle_timeout {
        Some(t) if parse_duration(t.get_ref()).is_ok_and(|d| d.is_zero()) => {
            c.error(t.span(), "server.idle_timeout must be more than 0");
            DEFAULT_IDLE_TIMEOUT
        }
        t => c.duration(t, DEFAULT_IDLE_TIMEOUT),
    };
    ServerSettings {
        listen,
        path,
        max_body,
        request_timeout: c.duration(&s.request_timeout, DEFAULT_REQUEST_TIMEOUT),
        header_timeout: c.duration(&s.header_timeout, DEFAULT_HEADER_TIMEOUT),
        idle_timeout,
        max_connections: s
            .max_connections
            .as_ref()
            .map(|m| *m.get_ref())
            .unwrap_or(DEFAULT_MAX_CONNECTIONS)
            .max(1) as usize,
        shutdown_grace: c.duration(&s.shutdown_grace, DEFAULT_SHUTDOWN_GRACE),
    }
}

fn admin_settings(c: &mut Checker, a: &RawAdmin) -> Option<AdminSettings> {
    let listen_text = a.listen.get_ref();
    let listen = if let Some(path) = listen_text.strip_prefix("unix:") {
        AdminListen::Unix(c.path(path))
    } else if listen_text.parse::<SocketAddr>().is_ok() {
        AdminListen::Tcp(listen_text.clone())
    } else {
        c.error(
            a.listen.span(),
            format!("admin.listen {listen_text:?}: expected \"unix:PATH\" or IP:PORT"),
        );
        return None;
    };
    let token = match (&listen, c.secrets) {
        // Not checked on a unix socket, so the admin client has no use for it.
        (AdminListen::Unix(_), Secrets::AdminOnly) => None,
        _ => a.token.as_ref().and_then(|t| c.secret("admin.token", t)),
    };
    match (&listen, &a.token) {
        // Anything that reaches a TCP port, a browser page included (DNS rebinding), could
        // otherwise drop and retry deliveries.
        (AdminListen::Tcp(addr), None) => c.error(
            a.listen.span(),
            format!(
                "admin.listen {addr:?} is a TCP address: set admin.token (e.g. \"env:ZIMHOOK_ADMIN_TOKEN\"), \
                 which every admin request must then send as `Authorization: Bearer <token>`; \
                 or listen on \"unix:PATH\", whose file mode is the access control"
            ),
        ),
        (AdminListen::Unix(_), Some(t)) => c.warn(
            t.span(),
            "admin.token is not checked on a unix socket: its file mode (0600) is the access control",
        ),
        _ => {}
    }
    Some(AdminSettings { listen, token })
}

fn store_settings(c: &mut Checker, raw: &RawConfig) -> StoreSettings {
    let kind = store_kind(c, raw);
    if kind == StoreKind::Redb
        && let Some(p) = &raw.store.path
    {
        let folder = |p: &std::path::Path| {
            std::path::absolute(p)
                .ok()
                .and_then(|a| a.parent().map(std::path::Path::to_path_buf))
        };
        let config_folder = folder(c.file);
        if config_folder.is_some() && folder(&c.path(p.get_ref())) == config_folder {
            c.warn(
                p.span(),
                format!(
                    "store.path {:?} is in the config file's folder, which zimhook watches for \
                     edits: every store write wakes the watcher (about a tenth of the CPU under \
                     load). Put the store in a folder of its own, e.g. \"data/zimhook.redb\"",
                    p.get_ref()
                ),
            );
        }
    }
    StoreSettings {
        kind,
        path: c.path(
            raw.store
                .path
                .as_ref()
                .map(|p| p.get_ref().as_str())
                .unwrap_or(DEFAULT_STORE_PATH),
        ),
        max_queued: raw
            .store
            .max_queued
            .as_ref()
            .map(|v| *v.get_ref())
            .unwrap_or(DEFAULT_MAX_QUEUED),
        workers: raw
            .store
            .workers
            .as_ref()
            .map(|v| *v.get_ref())
            .unwrap_or(DEFAULT_WORKERS)
            .max(1) as usize,
    }
}

fn plugin_settings(c: &mut Checker, raw: &RawConfig) -> PluginSettings {
    PluginSettings {
        timeout: c.duration(&raw.plugins.timeout, DEFAULT_PLUGIN_TIMEOUT),
        memory: match &raw.plugins.memory {
            None => DEFAULT_PLUGIN_MEMORY,
            Some(m) => parse_size(m.get_ref()).unwrap_or_else(|e| {
                c.error(m.span(), e);
                DEFAULT_PLUGIN_MEMORY
            }),
        },
        cache_dir: raw.plugins.cache_dir.as_ref().map(|p| c.path(p.get_ref())),
    }
}

/// `[log]`: read by `zimhook run` before the config is loaded (the log starts first), checked
/// here.
fn check_log(c: &mut Checker, raw: &RawConfig) {
    if let Some(level) = &raw.log.level
        && level
            .get_ref()
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
    {
        c.error(
            level.span(),
            format!("log.level {:?} is not a level or filter", level.get_ref()),
        );
    }
    let range = crate::logging::BUFFER_LINES;
    if let Some(lines) = &raw.log.buffer_lines
        && !usize::try_from(*lines.get_ref()).is_ok_and(|n| range.contains(&n))
    {
        c.error(
            lines.span(),
            format!(
                "log.buffer_lines is {}: give {} to {} lines",
                lines.get_ref(),
                range.start(),
                range.end()
            ),
        );
    }
}

fn store_kind(c: &mut Checker, raw: &RawConfig) -> StoreKind {
    match &raw.store.kind {
        None => StoreKind::Redb,
        Some(k) => match k.get_ref().as_str() {
            "redb" => StoreKind::Redb,
            "memory" => StoreKind::Memory,
            other => {
                c.error(
                    k.span(),
                    format!("store.kind {other:?}: expected \"redb\" or \"memory\""),
                );
                StoreKind::Redb
            }
        },
    }
}

fn verify_settings(c: &mut Checker, raw: &RawConfig) -> VerifySettings {
    let Some(v) = &raw.verify else {
        c.error(
            0..0,
            "[verify] is missing: set verify.secrets to your CallbackSecret (or insecure = true for local testing)",
        );
        return VerifySettings {
            secrets: vec![],
            service_only: vec![],
            max_skew: Some(DEFAULT_MAX_SKEW),
            appids: vec![],
            insecure: false,
        };
    };
    let span = v.span();
    let v = v.get_ref();
    let insecure = v.insecure.as_ref().map(|i| *i.get_ref()).unwrap_or(false);
    let mut secrets = Vec::new();
    let mut service_only_refs = Vec::new();
    if let Some(list) = &v.secrets
        && c.secrets != Secrets::AdminOnly
    {
        for s in list.get_ref() {
            match c.secret("verify.secrets", s) {
                Some(secret) => secrets.push(secret),
                None if service_only(s.get_ref()).is_some() => {
                    service_only_refs.push(s.get_ref().clone());
                }
                None => {}
            }
        }
    }
    let secrets_given = v.secrets.as_ref().is_some_and(|l| !l.get_ref().is_empty());
    if !secrets_given && !insecure {
        let at = v.secrets.as_ref().map(|s| s.span()).unwrap_or(span);
        c.error(
            at,
            "verify.secrets is empty: set your CallbackSecret (or insecure = true for local testing)",
        );
    }
    if let Some(i) = &v.insecure
        && *i.get_ref()
    {
        c.warn(
            i.span(),
            "verify.insecure = true: unsigned callbacks are accepted; for local testing only",
        );
    }
    let max_skew = c.duration(&v.max_skew, DEFAULT_MAX_SKEW);
    let appids = v
        .appids
        .iter()
        .flatten()
        .map(|a| match a.get_ref() {
            RawAppId::Text(t) => t.clone(),
            RawAppId::Number(n) => n.to_string(),
        })
        .collect();
    VerifySettings {
        secrets,
        service_only: service_only_refs,
        max_skew: (!max_skew.is_zero()).then_some(max_skew),
        appids,
        insecure,
    }
}

pub(super) fn retry_policy(
    c: &mut Checker,
    r: &Spanned<RawRetry>,
    base: RetryPolicy,
) -> RetryPolicy {
    let raw = r.get_ref();
    let policy = RetryPolicy {
        attempts: raw
            .attempts
            .as_ref()
            .map(|a| *a.get_ref())
            .unwrap_or(base.attempts),
        backoff: c.duration(&raw.backoff, base.backoff),
        max_backoff: c.duration(&raw.max_backoff, base.max_backoff),
    };
    if policy.attempts == 0 {
        let span = raw.attempts.as_ref().map(|a| a.span()).unwrap_or(r.span());
        c.error(span, "retry.attempts must be at least 1 (1 = no retries)");
    }
    if policy.max_backoff < policy.backoff {
        c.error(r.span(), "retry.max_backoff is shorter than retry.backoff");
    }
    policy
}
