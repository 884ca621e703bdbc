//! Raw config → [`Snapshot`]: every value checked, every error collected with its position.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use globset::{Glob, GlobSetBuilder};
use toml::Spanned;

use super::raw::{RawAdmin, RawAppId, RawConfig, RawRetry, RawRule};
use super::units::{parse_duration, parse_size, resolve_secret, service_only};
use super::*;
use crate::events;
use crate::template::Escape;

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

/// Collects diagnostics against one file's text.
struct Checker<'a> {
    file: &'a Path,
    base: PathBuf,
    text: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    notes: Vec<Diagnostic>,
    secrets: Secrets,
}

impl Checker<'_> {
    fn at(&self, span: Range<usize>, message: String) -> Diagnostic {
        let (line, col) = position(self.text, span.start);
        Diagnostic {
            file: self.file.to_path_buf(),
            line,
            col,
            message,
        }
    }
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let d = self.at(span, message.into());
        self.errors.push(d);
    }
    fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        let d = self.at(span, format!("warning: {}", message.into()));
        self.warnings.push(d);
    }
    fn note(&mut self, span: Range<usize>, message: impl Into<String>) {
        let d = self.at(span, format!("note: {}", message.into()));
        self.notes.push(d);
    }

    /// Resolves the secret at `spec` (an error under `what` if it cannot be), or `None` if this
    /// load leaves it unread: a `cred:` reference outside the service gets a note instead.
    fn secret(&mut self, what: &str, spec: &Spanned<String>) -> Option<Secret> {
        if self.secrets != Secrets::All
            && let Some(name) = service_only(spec.get_ref())
        {
            self.note(
                spec.span(),
                format!(
                    "{what}: credential {name} is available only to the service \
                     ($CREDENTIALS_DIRECTORY is not set here); not checked"
                ),
            );
            return None;
        }
        match resolve_secret(spec.get_ref(), &self.base) {
            Ok(secret) => Some(secret),
            Err(e) => {
                self.error(spec.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    /// Parses an optional spanned duration, recording an error (and using `default`) if bad.
    fn duration(&mut self, v: &Option<Spanned<String>>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.error(s.span(), e);
                    default
                }
            },
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }
}

pub(super) fn compile(
    file: &Path,
    text: &str,
    hash: String,
    secrets: Secrets,
) -> Result<Snapshot, ConfigError> {
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut c = Checker {
        file,
        base,
        text,
        errors: Vec::new(),
        warnings: Vec::new(),
        notes: Vec::new(),
        secrets,
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim_end().to_string();
            c.error(span, message);
            return Err(ConfigError { errors: c.errors });
        }
    };

    let server = server_settings(&mut c, &raw);
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| admin_settings(&mut c, a.get_ref()));
    let verify = verify_settings(&mut c, &raw);
    let store = StoreSettings {
        kind: store_kind(&mut c, &raw),
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
    };
    let plugins = PluginSettings {
        timeout: c.duration(&raw.plugins.timeout, DEFAULT_PLUGIN_TIMEOUT),
        memory: match &raw.plugins.memory {
            None => DEFAULT_PLUGIN_MEMORY,
            Some(m) => parse_size(m.get_ref()).unwrap_or_else(|e| {
                c.error(m.span(), e);
                DEFAULT_PLUGIN_MEMORY
            }),
        },
        cache_dir: raw.plugins.cache_dir.as_ref().map(|p| c.path(p.get_ref())),
    };
    let log_level = raw.log.level.as_ref().map(|l| l.get_ref().clone());
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

    let default_timeout = c.duration(&raw.defaults.timeout, DEFAULT_RULE_TIMEOUT);
    let default_retry = match &raw.defaults.retry {
        Some(r) => retry_policy(&mut c, r, DEFAULT_RETRY),
        None => DEFAULT_RETRY,
    };

    let mut templates = Templates::new();
    let mut rules: Vec<Arc<Rule>> = Vec::new();
    let mut names = BTreeSet::new();
    for (index, raw_rule) in raw.rules.iter().enumerate() {
        let rule = compile_rule(
            &mut c,
            &mut templates,
            index,
            raw_rule,
            default_timeout,
            default_retry,
            &plugins,
        );
        if let Some(rule) = rule {
            if !names.insert(rule.name.clone()) {
                let span = raw_rule
                    .get_ref()
                    .name
                    .as_ref()
                    .map(|n| n.span())
                    .unwrap_or(raw_rule.span());
                c.error(span, format!("rule name {:?} is used twice", rule.name));
            }
            rules.push(Arc::new(rule));
        }
    }
    check_sync_overlap(&mut c, &raw, &rules);

    if !c.errors.is_empty() {
        c.errors.sort_by_key(|d| (d.line, d.col));
        return Err(ConfigError { errors: c.errors });
    }
    Ok(Snapshot {
        path: file.to_path_buf(),
        hash,
        server,
        admin,
        verify,
        store,
        plugins,
        log_level,
        rules,
        templates,
        compiled: Default::default(),
        warnings: c.warnings,
        notes: c.notes,
    })
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

fn retry_policy(c: &mut Checker, r: &Spanned<RawRetry>, base: RetryPolicy) -> RetryPolicy {
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

fn compile_rule(
    c: &mut Checker,
    templates: &mut Templates,
    index: usize,
    spanned: &Spanned<RawRule>,
    default_timeout: Duration,
    default_retry: RetryPolicy,
    plugins: &PluginSettings,
) -> Option<Rule> {
    let r = spanned.get_ref();
    let rule_span = spanned.span();
    let errors_before = c.errors.len();
    let name = match &r.name {
        Some(n) if !n.get_ref().trim().is_empty() => n.get_ref().clone(),
        Some(n) => {
            c.error(n.span(), "rule name is empty");
            format!("#{}", index + 1)
        }
        None => {
            c.error(rule_span.clone(), "rule has no `name`");
            format!("#{}", index + 1)
        }
    };
    let line = position(c.text, rule_span.start).0;
    let label = format!("rule {name:?}");

    // events → one glob set
    let mut events = Vec::new();
    let mut builder = GlobSetBuilder::new();
    match &r.events {
        None => c.error(rule_span.clone(), format!("{label} has no `events`")),
        Some(list) if list.get_ref().is_empty() => {
            c.error(list.span(), format!("{label}: `events` is empty"))
        }
        Some(list) => {
            for e in list.get_ref() {
                let pattern = e.get_ref();
                match Glob::new(pattern) {
                    Ok(g) => {
                        builder.add(g);
                        events.push(pattern.clone());
                        check_event_name(c, e);
                    }
                    Err(err) => c.error(
                        e.span(),
                        format!("{label}: event pattern {pattern:?}: {err}"),
                    ),
                }
            }
        }
    }
    let matcher = builder
        .build()
        .unwrap_or_else(|_| globset::GlobSet::empty());

    // The name quoted: `"a".env.when` and `"a.env".when` stay two templates (unquoted, rule
    // "a"'s env var `when` and rule "a.env"'s `when` were one id, and the second replaced the
    // first).
    let id = |part: &str| format!("{name:?}.{part}");
    let template_as = |c: &mut Checker,
                       templates: &mut Templates,
                       part: &str,
                       src: &Spanned<String>,
                       kind: Kind|
     -> Option<TemplateId> {
        let compiled = match kind {
            Kind::Plain => templates.add(&id(part), src.get_ref()),
            Kind::Url => templates.add_url(&id(part), src.get_ref()),
            Kind::Json => templates.add_escaped(&id(part), src.get_ref(), Escape::Json),
        };
        match compiled {
            Ok(t) => Some(t),
            Err(e) => {
                c.error(
                    src.span(),
                    format!("{label}: {part}: {}", template_error(&e)),
                );
                None
            }
        }
    };
    let template =
        |c: &mut Checker, templates: &mut Templates, part: &str, src: &Spanned<String>| {
            template_as(c, templates, part, src, Kind::Plain)
        };

    let when =
        r.when.as_ref().and_then(
            |w| match templates.add_expression(&id("when"), w.get_ref()) {
                Ok(t) => Some(t),
                Err(e) => {
                    c.error(w.span(), format!("{label}: when: {}", template_error(&e)));
                    None
                }
            },
        );
    let sync = r.sync.as_ref().map(|s| *s.get_ref()).unwrap_or(false);
    let fallback = r.fallback.as_ref().and_then(|f| {
        if !sync {
            c.error(
                f.span(),
                format!("{label}: `fallback` applies to sync rules only (add sync = true)"),
            );
        }
        match serde_json::from_str::<serde_json::Value>(f.get_ref()) {
            Ok(_) => Some(Bytes::from(f.get_ref().clone())),
            Err(e) => {
                c.error(f.span(), format!("{label}: fallback is not JSON: {e}"));
                None
            }
        }
    });
    let order_by = r.order_by.as_ref().and_then(|o| {
        if sync {
            c.error(
                o.span(),
                format!("{label}: `order_by` applies to queued rules only"),
            );
        }
        template(c, templates, "order_by", o)
    });
    let concurrency = r.concurrency.as_ref().and_then(|n| {
        if *n.get_ref() == 0 {
            c.error(n.span(), format!("{label}: concurrency must be at least 1"));
            None
        } else {
            Some(Arc::new(tokio::sync::Semaphore::new(*n.get_ref() as usize)))
        }
    });
    let retry = match &r.retry {
        Some(rr) => retry_policy(c, rr, default_retry),
        None => default_retry,
    };

    // exactly one action
    let given: Vec<(&str, Range<usize>)> = [
        ("command", r.command.as_ref().map(|v| v.span())),
        ("forward", r.forward.as_ref().map(|v| v.span())),
        ("plugin", r.plugin.as_ref().map(|v| v.span())),
    ]
    .into_iter()
    .filter_map(|(k, s)| s.map(|s| (k, s)))
    .collect();
    let kind = match given.as_slice() {
        [] => {
            c.error(
                rule_span.clone(),
                format!("{label} has no action: set one of `command`, `forward` or `plugin`"),
            );
            None
        }
        [(k, _)] => Some(*k),
        [_, (_, s2), ..] => {
            let keys: Vec<_> = given.iter().map(|(k, _)| format!("`{k}`")).collect();
            c.error(s2.clone(), format!("{label} has {} actions ({}): a rule has exactly one of `command`, `forward` or `plugin`", given.len(), keys.join(", ")));
            None
        }
    };
    // keys that belong to another action kind
    let owned: [(&str, &str, Option<Range<usize>>); 6] = [
        ("env", "command", r.env.as_ref().map(|v| v.span())),
        ("workdir", "command", r.workdir.as_ref().map(|v| v.span())),
        ("method", "forward", r.method.as_ref().map(|v| v.span())),
        ("headers", "forward", r.headers.as_ref().map(|v| v.span())),
        ("body", "forward", r.body.as_ref().map(|v| v.span())),
        ("config", "plugin", r.config.as_ref().map(|v| v.span())),
    ];
    if let Some(kind) = kind {
        for (key, owner, span) in owned {
            if let Some(span) = span
                && owner != kind
            {
                c.error(
                    span,
                    format!("{label}: `{key}` applies to {owner} rules, this is a {kind} rule"),
                );
            }
        }
    }

    let action = match kind {
        Some("command") => {
            let argv_src = r.command.as_ref().expect("kind says command");
            if argv_src.get_ref().is_empty() {
                c.error(
                    argv_src.span(),
                    format!("{label}: `command` is empty: give the program and its arguments"),
                );
            }
            let argv: Vec<_> = argv_src
                .get_ref()
                .iter()
                .enumerate()
                .filter_map(|(i, a)| template(c, templates, &format!("command[{i}]"), a))
                .collect();
            check_shell_script(c, &label, argv_src.get_ref());
            let env: Vec<_> = r
                .env
                .iter()
                .flat_map(|e| e.get_ref().iter())
                .filter_map(|(k, v)| {
                    template(c, templates, &format!("env.{k}"), v).map(|t| (k.clone(), t))
                })
                .collect();
            let workdir = r.workdir.as_ref().map(|w| c.path(w.get_ref()));
            Some(Action::Command(CommandAction { argv, env, workdir }))
        }
        Some("forward") => {
            let url_src = r.forward.as_ref().expect("kind says forward");
            let url = template_as(c, templates, "forward", url_src, Kind::Url);
            check_url(c, &label, url_src);
            if !url_src.get_ref().contains("{{")
                && reqwest::Url::parse(url_src.get_ref())
                    .map(|u| !matches!(u.scheme(), "http" | "https"))
                    .unwrap_or(true)
            {
                c.error(
                    url_src.span(),
                    format!(
                        "{label}: forward {:?} is not an http(s) URL",
                        url_src.get_ref()
                    ),
                );
            }
            let method = match &r.method {
                None => reqwest::Method::POST,
                Some(m) => reqwest::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes())
                    .unwrap_or_else(|_| {
                        c.error(
                            m.span(),
                            format!("{label}: method {:?} is not an HTTP method", m.get_ref()),
                        );
                        reqwest::Method::POST
                    }),
            };
            let mut headers = Vec::new();
            for (k, v) in r.headers.iter().flat_map(|h| h.get_ref().iter()) {
                match reqwest::header::HeaderName::from_bytes(k.as_bytes()) {
                    Ok(h) => {
                        if let Some(t) = template(c, templates, &format!("headers.{k}"), v) {
                            headers.push((h, t));
                        }
                    }
                    Err(_) => c.error(
                        v.span(),
                        format!("{label}: {k:?} is not a valid header name"),
                    ),
                }
            }
            // The body's values are JSON-encoded where the body is JSON: the rule's literal
            // Content-Type says so, or there is none and forward sends application/json.
            let content_type = r
                .headers
                .iter()
                .flat_map(|h| h.get_ref().iter())
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v);
            let json_body = match content_type {
                None => true,
                Some(v) if crate::template::is_literal(v.get_ref()) => {
                    is_json_media_type(v.get_ref())
                }
                Some(v) => {
                    if r.body.is_some() {
                        c.warn(
                            v.span(),
                            format!("{label}: Content-Type is a template, so the body's escaping cannot follow it: the body's values are inserted as they are"),
                        );
                    }
                    false
                }
            };
            let body = r.body.as_ref().and_then(|b| {
                let kind = if json_body { Kind::Json } else { Kind::Plain };
                let t = template_as(c, templates, "body", b, kind);
                if t.is_some() && json_body {
                    check_json_body(c, &label, b);
                }
                t
            });
            url.map(|url| {
                Action::Forward(ForwardAction {
                    url,
                    method,
                    headers,
                    body,
                })
            })
        }
        Some("plugin") => {
            let p = r.plugin.as_ref().expect("kind says plugin");
            let path = c.path(p.get_ref());
            if !path.is_file() {
                c.error(
                    p.span(),
                    format!("{label}: plugin file {} not found", path.display()),
                );
            }
            let config = match &r.config {
                None => "{}".to_string(),
                Some(v) => serde_json::to_string(v.get_ref()).unwrap_or_else(|e| {
                    c.error(
                        v.span(),
                        format!("{label}: config cannot be turned into JSON: {e}"),
                    );
                    "{}".into()
                }),
            };
            let (line, col) = position(c.text, p.span().start);
            Some(Action::Plugin(PluginAction {
                path,
                config,
                line,
                col,
            }))
        }
        _ => None,
    };

    if c.errors.len() > errors_before {
        return None;
    }
    Some(Rule {
        name,
        line,
        events,
        matcher,
        when,
        sync,
        fallback,
        timeout: match &r.timeout {
            Some(_) => c.duration(&r.timeout, default_timeout),
            None if kind == Some("plugin") => plugins.timeout,
            None => default_timeout,
        },
        retry,
        concurrency,
        order_by,
        action: action?,
    })
}

/// How a rule's template escapes the values it prints.
#[derive(Clone, Copy)]
enum Kind {
    Plain,
    /// A forward URL: percent-encoded for the path, then for the query.
    Url,
    /// A JSON body: JSON-encoded.
    Json,
}

/// `application/json`, or any `+json` type (`application/problem+json`).
fn is_json_media_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.contains('/') && essence.ends_with("+json"))
}

/// The file span of the text at byte `offset` of the string value `src` that starts with
/// `needle`, found as the same occurrence of `needle` in the file's text of the TOML string
/// (escapes change lengths, but never a template's `{{` or `{%`); the whole value where that
/// fails.
fn span_in(c: &Checker, src: &Spanned<String>, offset: usize, needle: &str) -> Range<usize> {
    let value = src.get_ref();
    let nth = value[..offset.min(value.len())].matches(needle).count();
    let span = src.span();
    let Some(raw) = c.text.get(span.clone()) else {
        return span;
    };
    let delimiter = ["\"\"\"", "'''", "\"", "'"]
        .into_iter()
        .find(|d| raw.starts_with(d))
        .map_or(0, str::len);
    match raw[delimiter..].match_indices(needle).nth(nth) {
        Some((i, _)) => {
            let start = span.start + delimiter + i;
            start..start + needle.len()
        }
        None => span,
    }
}

/// Warns about a `{{ }}` inside a JSON string of a JSON body: the value brings its own quotes.
fn check_json_body(c: &mut Checker, label: &str, body: &Spanned<String>) {
    let source = body.get_ref();
    for tag in crate::template::exprs_inside_json_strings(source) {
        let span = span_in(c, body, tag.start, &source[tag.start..tag.start + 2]);
        let text = &source[tag];
        c.warn(
            span,
            format!(
                "{label}: body: {text} stands inside a JSON string, but values in a JSON body are JSON-encoded, quotes included: write {text} without the surrounding quotes (to build a longer string: {{{{ \"Hello \" ~ name }}}}; to insert a value as is: |safe)"
            ),
        );
    }
}

/// Warns about forward URLs whose meaning the percent-encoding of values would change.
fn check_url(c: &mut Checker, label: &str, url: &Spanned<String>) {
    use crate::template::Piece;
    let source = url.get_ref();
    let pieces = crate::template::pieces(source);
    // The scheme and host come from a value: it is percent-encoded like any other.
    let mut literal = String::new();
    for piece in &pieces {
        match piece {
            Piece::Text(r) => literal.push_str(&source[r.clone()]),
            Piece::Expr(r) => {
                let tag: String = source[r.clone()].split_whitespace().collect();
                if !literal.contains("://") && !tag.contains("|safe") {
                    c.warn(
                        span_in(c, url, r.start, "{{"),
                        format!("{label}: forward: {} stands before the URL's scheme and host are complete, but values in a URL are percent-encoded (`:` and `/` too): if it holds a base URL (say from the environment), write {{{{ ... | safe }}}}", &source[r.clone()]),
                    );
                }
                break;
            }
            _ => {}
        }
    }
    if let Some(i) = source.find("urlencode") {
        c.warn(
            span_in(c, url, i, "urlencode"),
            format!("{label}: forward: values in a URL are percent-encoded already; `urlencode` encodes them a second time"),
        );
    }
}

/// The shells whose `-c` takes a script.
const SHELLS: [&str; 9] = [
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "fish",
];

/// Warns about a template inside the script of `sh -c SCRIPT` (any shell, `-c` alone or in a
/// cluster such as `-ec`, also after `env`): the value would become shell code.
fn check_shell_script(c: &mut Checker, label: &str, argv: &[Spanned<String>]) {
    let name = |a: &Spanned<String>| {
        let a = a.get_ref();
        a.rsplit('/').next().unwrap_or(a).to_string()
    };
    let mut i = 0;
    // `env [-i] [NAME=VALUE]... sh -c ...`
    if argv.first().is_some_and(|a| name(a) == "env") {
        i = 1;
        while argv
            .get(i)
            .is_some_and(|a| a.get_ref().starts_with('-') || a.get_ref().contains('='))
        {
            i += 1;
        }
    }
    if !argv
        .get(i)
        .is_some_and(|a| SHELLS.contains(&name(a).as_str()))
    {
        return;
    }
    // POSIX: sh -c [options] SCRIPT [NAME [ARG...]]: the script is the first operand.
    let mut has_c = false;
    let mut script = None;
    let mut j = i + 1;
    while let Some(a) = argv.get(j) {
        let text = a.get_ref();
        if text == "--" {
            script = argv.get(j + 1);
            break;
        }
        let is_option = (text.starts_with('-') || text.starts_with('+')) && text.len() > 1;
        if !is_option {
            script = Some(a);
            break;
        }
        if !text.starts_with("--") {
            has_c |= text[1..].contains('c');
            // `-o OPTION` / `+o OPTION` takes the next word.
            if text[1..].ends_with('o') {
                j += 1;
            }
        }
        j += 1;
    }
    let Some(script) = script.filter(|_| has_c) else {
        return;
    };
    let text = script.get_ref();
    let found = ["{{", "{%"]
        .into_iter()
        .filter_map(|n| text.find(n).map(|at| (at, n)))
        .min();
    if let Some((at, needle)) = found {
        c.warn(
            span_in(c, script, at, needle),
            format!("{label}: command: a template inside the `{}` script: payload text would become shell code; read the event from stdin, or pass values as arguments after the script (\"$1\") or in `env`", argv[i].get_ref().to_string() + " -c"),
        );
    }
}

/// minijinja's reason, with its line inside the template where that helps.
fn template_error(e: &minijinja::Error) -> String {
    let mut msg = e.kind().to_string();
    if let Some(detail) = e.detail() {
        msg = format!("{msg}: {detail}");
    }
    msg
}

fn check_event_name(c: &mut Checker, e: &Spanned<String>) {
    let pattern = e.get_ref();
    let is_glob = pattern.contains(['*', '?', '[', '{']);
    if is_glob {
        let glob = Glob::new(pattern).map(|g| g.compile_matcher());
        if let Ok(m) = glob
            && !events::all().any(|name| m.is_match(name))
        {
            c.warn(e.span(), format!("event pattern {pattern:?} matches no known event (fine if a plugin emits such events)"));
        }
    } else if !events::is_known(pattern) {
        let msg = match events::suggest(pattern) {
            Some(s) => format!("event {pattern:?} is in no catalog: did you mean {s:?}?"),
            None => format!("event {pattern:?} is in no catalog (fine if a plugin emits it)"),
        };
        c.warn(e.span(), msg);
    }
}

/// Two sync rules that match the same event: only the first answers; say so.
fn check_sync_overlap(c: &mut Checker, raw: &RawConfig, rules: &[Arc<Rule>]) {
    let sync: Vec<(usize, &Arc<Rule>)> = rules.iter().enumerate().filter(|(_, r)| r.sync).collect();
    for (i, (_, a)) in sync.iter().enumerate() {
        for (bi, b) in sync.iter().skip(i + 1) {
            let shared = events::all()
                .map(|e| -> &str { e })
                .chain(a.events.iter().map(String::as_str))
                .chain(b.events.iter().map(String::as_str))
                .find(|e| a.matches_event(e) && b.matches_event(e));
            if let Some(event) = shared {
                let span = raw.rules.get(*bi).map(|r| r.span()).unwrap_or(0..0);
                let event = event.to_string();
                c.warn(span, format!("sync rules {:?} (line {}) and {:?} both answer {event:?}: only {:?}, the first, is used for the reply", a.name, a.line, b.name, a.name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Context;

    #[test]
    fn template_ids_of_different_rules_never_collide() {
        let text = r#"
[verify]
secrets = ["s"]
[[rule]]
name = "a"
events = ["*"]
command = ["true"]
env = { when = "{{ call_id }}" }
[[rule]]
name = "a.env"
events = ["*"]
when = "true"
command = ["true"]
"#;
        let s = load_str(Path::new("/tmp/x.toml"), text).unwrap();
        let Action::Command(a) = &s.rules[0].action else {
            panic!("rule a is a command rule")
        };
        let object = serde_json::json!({ "call_id": "c1" });
        let ctx = Context::new(object.as_object().unwrap(), "call_timeout", "", None, None);
        assert_eq!(s.templates.render(&a.env[0].1, &ctx).unwrap(), "c1");
        let when = s.rules[1].when.as_ref().unwrap();
        assert!(s.templates.is_true(when, &ctx).unwrap());
        assert_ne!(a.env[0].1, *when);
    }

    #[test]
    fn blank_secrets_are_errors_with_their_position() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("blank"), "  \n").unwrap();
        let path = dir.path().join("config.toml");
        for (spec, col) in [("\"   \"", 12), ("\"\"", 12), ("\"file:blank\"", 12)] {
            let text = format!("[verify]\nsecrets = [{spec}]\n");
            let err = load_str(&path, &text).unwrap_err();
            let d = &err.errors[0];
            assert_eq!((d.line, d.col), (2, col), "{spec}: {err}");
            assert!(d.message.starts_with("verify.secrets:"), "{err}");
        }
        // A good secret next to a blank one does not hide it.
        let text = "[verify]\nsecrets = [\"good\", \" \"]\n";
        let err = load_str(&path, text).unwrap_err();
        assert_eq!((err.errors[0].line, err.errors[0].col), (2, 20), "{err}");
    }

    fn warnings(rules: &str) -> Vec<Diagnostic> {
        let text = format!("[verify]\nsecrets = [\"s\"]\n{rules}");
        load_str(Path::new("/tmp/x.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .warnings
    }

    fn at(d: &Diagnostic) -> (usize, usize) {
        (d.line, d.col)
    }

    #[test]
    fn a_value_inside_a_json_string_of_a_json_body_is_warned_about() {
        let rule = |body: &str, extra: &str| {
            format!(
                "[[rule]]\nname = \"f\"\nevents = [\"send_msg\"]\nforward = \"https://x/\"\n{extra}body = {body}\n"
            )
        };
        // Line 7 is `body = ...` (two lines of [verify], four of the rule before it).
        let w = warnings(&rule(r#"'{"text": "{{ msg_body }}", "n": {{ n }}}'"#, ""));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(at(&w[0]), (7, 19), "{}", w[0]);
        assert!(
            w[0].message.contains("without the surrounding quotes"),
            "{}",
            w[0]
        );
        // In a basic string, escapes before it do not shift the position.
        let w = warnings(&rule(r#""{\"a\": \"x\", \"t\": \"{{ m }}\"}""#, ""));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(at(&w[0]), (7, 33), "{}", w[0]);
        // A +json type is JSON too; a JSON-looking body of another type is not escaped.
        let ct = |t: &str| format!("headers = {{ Content-Type = \"{t}\" }}\n");
        let body = r#"'{"t": "{{ m }}"}'"#;
        assert_eq!(
            warnings(&rule(body, &ct("application/problem+json"))).len(),
            1
        );
        assert!(warnings(&rule(body, &ct("text/plain"))).is_empty());
        // Unquoted, tojson or |safe: fine.
        assert!(
            warnings(&rule(
                r#"'{"t": {{ m }}, "p": {{ payload | tojson }}, "s": "{{ m | safe }}"}'"#,
                ""
            ))
            .is_empty()
        );
        // A templated Content-Type: escaping cannot follow it.
        let w = warnings(&rule("'{{ m }}'", &ct("{{ ct }}")));
        assert!(w[0].message.contains("Content-Type is a template"), "{w:?}");
    }

    #[test]
    fn only_json_bodies_escape_values() {
        let text = "[verify]\nsecrets = [\"s\"]\n[[rule]]\nname = \"j\"\nevents = [\"*\"]\nforward = \"https://x/\"\nbody = '{{ m }}'\n[[rule]]\nname = \"t\"\nevents = [\"*\"]\nforward = \"https://x/\"\nheaders = { content-type = \"text/plain\" }\nbody = '{{ m }}'\n";
        let s = load_str(Path::new("/tmp/x.toml"), text).unwrap();
        let object = serde_json::json!({ "m": "say \"hi\"" });
        let ctx = Context::new(object.as_object().unwrap(), "send_msg", "", None, None);
        let body = |i: usize| match &s.rules[i].action {
            Action::Forward(f) => s.templates.render(f.body.as_ref().unwrap(), &ctx).unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(body(0), r#""say \"hi\"""#);
        assert_eq!(body(1), r#"say "hi""#);
    }

    #[test]
    fn a_template_inside_a_shell_script_is_warned_about() {
        let rule = |argv: &str| {
            format!("[[rule]]\nname = \"c\"\nevents = [\"call_timeout\"]\ncommand = {argv}\n")
        };
        for argv in [
            r#"["sh", "-c", "echo {{ call_id }}"]"#,
            r#"["/bin/bash", "-ec", "echo {{ call_id }}"]"#,
            r#"["/usr/bin/env", "A=1", "dash", "-c", "echo {% if x %}x{% endif %}"]"#,
            r#"["bash", "-o", "pipefail", "-c", "echo {{ call_id }}"]"#,
            r#"["zsh", "-e", "-c", "--", "echo {{ call_id }}"]"#,
        ] {
            let w = warnings(&rule(argv));
            assert_eq!(w.len(), 1, "{argv}: {w:?}");
            assert!(w[0].message.contains("shell code"), "{}", w[0]);
            // It points at the template inside the script.
            let col = argv.find("{{").or_else(|| argv.find("{%")).unwrap() + 11;
            assert_eq!(at(&w[0]), (6, col), "{argv}: {}", w[0]);
        }
        for argv in [
            r#"["sh", "-c", "printf '%s' \"$1\"", "sh", "{{ call_id }}"]"#,
            r#"["sh", "script.sh", "{{ call_id }}"]"#,
            r#"["echo", "-c", "{{ call_id }}"]"#,
            r#"["sh", "-c", "cat >> events.jsonl"]"#,
        ] {
            assert!(warnings(&rule(argv)).is_empty(), "{argv}");
        }
    }

    #[test]
    fn forward_urls_whose_encoding_would_surprise_are_warned_about() {
        let rule = |url: &str| {
            format!("[[rule]]\nname = \"f\"\nevents = [\"call_timeout\"]\nforward = \"{url}\"\n")
        };
        let w = warnings(&rule("{{ env.CRM_URL }}/x"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].message.contains("| safe"), "{}", w[0]);
        assert_eq!(at(&w[0]), (6, 12));
        assert!(warnings(&rule("{{ env.CRM_URL | safe }}/x/{{ call_id }}")).is_empty());
        assert!(warnings(&rule("https://{{ host }}/x")).is_empty());
        let w = warnings(&rule("https://x/{{ call_id | urlencode }}"));
        assert!(w[0].message.contains("urlencode"), "{w:?}");
        // A `?` inside a block: an error at the URL.
        let text = format!(
            "[verify]\nsecrets = [\"s\"]\n{}",
            rule("https://x/{% if a %}?q={{ a }}{% endif %}")
        );
        let err = load_str(Path::new("/tmp/x.toml"), &text).unwrap_err();
        assert_eq!(at(&err.errors[0]), (6, 11), "{err}");
        assert!(err.errors[0].message.contains("block"), "{err}");
    }

    #[test]
    fn a_tcp_admin_needs_a_token_and_a_unix_one_ignores_it() {
        let load = |admin: &str| {
            load_str(
                Path::new("/tmp/x.toml"),
                &format!("[admin]\n{admin}\n[verify]\nsecrets = [\"s\"]\n"),
            )
        };
        let err = load("listen = \"127.0.0.1:9180\"").unwrap_err();
        assert_eq!(at(&err.errors[0]), (2, 10), "{err}");
        assert!(err.errors[0].message.contains("admin.token"), "{err}");
        let s = load("listen = \"127.0.0.1:9180\"\ntoken = \"t0k\"").unwrap();
        assert_eq!(s.admin.unwrap().token.unwrap().expose(), "t0k");
        let err = load("listen = \"127.0.0.1:9180\"\ntoken = \" \"").unwrap_err();
        assert_eq!(at(&err.errors[0]), (3, 9), "{err}");
        let s = load("listen = \"unix:a.sock\"\ntoken = \"t0k\"").unwrap();
        assert!(
            s.warnings[0].message.contains("not checked"),
            "{:?}",
            s.warnings
        );
    }
}
