//! One `[[rule]]` → a [`Rule`]: its name, events and `when`, its one action, and how it runs
//! (sync or queued, retries, timeout, concurrency, order).

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use globset::{Glob, GlobSet, GlobSetBuilder};
use toml::Spanned;

use super::Checker;
use super::checks::{check_event_name, check_json_body, check_shell_script, check_url};
use super::settings::{RuleDefaults, retry_policy};
use crate::config::raw::RawRule;
use crate::config::{
    Action, CommandAction, ForwardAction, PluginAction, RetryPolicy, Rule, position,
};
use crate::template::{Escape, TemplateId, Templates};

/// Compiles the rule at `index` (from 0), or `None` if it has errors (each one recorded in
/// `c`). Its templates go into `templates`.
pub(super) fn compile_rule(
    c: &mut Checker,
    templates: &mut Templates,
    defaults: &RuleDefaults,
    index: usize,
    spanned: &Spanned<RawRule>,
) -> Option<Rule> {
    let errors_before = c.errors.len();
    let name = rule_name(c, index, spanned);
    let line = position(c.text, spanned.span().start).0;
    let mut rule = RuleCompiler {
        c,
        templates,
        raw: spanned.get_ref(),
        span: spanned.span(),
        label: format!("rule {name:?}"),
        name,
    };
    let (events, matcher) = rule.events();
    let when = rule.when();
    let sync = rule.raw.sync.as_ref().is_some_and(|s| *s.get_ref());
    let fallback = rule.fallback(sync);
    let order_by = rule.order_by(sync);
    let concurrency = rule.concurrency();
    let retry = rule.retry(defaults.retry);
    let kind = rule.action_kind();
    if let Some(kind) = kind {
        rule.check_foreign_keys(kind);
    }
    let action = kind.and_then(|kind| rule.action(kind));
    if rule.c.errors.len() > errors_before {
        return None;
    }
    let timeout = rule.timeout(kind, defaults);
    Some(Rule {
        name: rule.name,
        line,
        events,
        matcher,
        when,
        sync,
        fallback,
        timeout,
        retry,
        concurrency,
        order_by,
        action: action?,
    })
}

/// The rule's `name`; where it has none (or a blank one), an error and `#N` in its place.
fn rule_name(c: &mut Checker, index: usize, spanned: &Spanned<RawRule>) -> String {
    match &spanned.get_ref().name {
        Some(n) if !n.get_ref().trim().is_empty() => n.get_ref().clone(),
        Some(n) => {
            c.error(n.span(), "rule name is empty");
            format!("#{}", index + 1)
        }
        None => {
            c.error(spanned.span(), "rule has no `name`");
            format!("#{}", index + 1)
        }
    }
}

/// The action a rule sets: its key, with the key's value.
#[derive(Clone, Copy)]
enum ActionKind<'r> {
    Command(&'r Spanned<Vec<Spanned<String>>>),
    Forward(&'r Spanned<String>),
    Plugin(&'r Spanned<String>),
}

impl<'r> ActionKind<'r> {
    /// Every action key the rule sets, in the order `command`, `forward`, `plugin`.
    fn given(r: &'r RawRule) -> Vec<Self> {
        [
            r.command.as_ref().map(Self::Command),
            r.forward.as_ref().map(Self::Forward),
            r.plugin.as_ref().map(Self::Plugin),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn key(self) -> &'static str {
        match self {
            Self::Command(_) => "command",
            Self::Forward(_) => "forward",
            Self::Plugin(_) => "plugin",
        }
    }

    fn span(self) -> Range<usize> {
        match self {
            Self::Command(argv) => argv.span(),
            Self::Forward(value) | Self::Plugin(value) => value.span(),
        }
    }
}

/// How a rule's template escapes the values it prints.
#[derive(Clone, Copy)]
enum TemplateKind {
    Plain,
    /// A forward URL: percent-encoded for the path, then for the query.
    Url,
    /// A JSON body: JSON-encoded.
    Json,
}

/// One rule being compiled: where its diagnostics and templates go, and what it says.
struct RuleCompiler<'x, 'a> {
    c: &'x mut Checker<'a>,
    templates: &'x mut Templates,
    raw: &'x RawRule,
    /// The whole `[[rule]]` table.
    span: Range<usize>,
    name: String,
    /// `rule "NAME"`, which starts the rule's messages.
    label: String,
}

impl<'x> RuleCompiler<'x, '_> {
    /// The id of the rule's template `part`. The name is quoted: `"a".env.when` and
    /// `"a.env".when` stay two templates (unquoted, rule "a"'s env var `when` and rule
    /// "a.env"'s `when` were one id, and the second replaced the first).
    fn id(&self, part: &str) -> String {
        format!("{:?}.{part}", self.name)
    }

    /// Compiles `src` as the rule's template `part`, or records why it cannot be.
    fn template_as(
        &mut self,
        part: &str,
        src: &Spanned<String>,
        kind: TemplateKind,
    ) -> Option<TemplateId> {
        let id = self.id(part);
        let compiled = match kind {
            TemplateKind::Plain => self.templates.add(&id, src.get_ref()),
            TemplateKind::Url => self.templates.add_url(&id, src.get_ref()),
            TemplateKind::Json => self.templates.add_escaped(&id, src.get_ref(), Escape::Json),
        };
        match compiled {
            Ok(t) => Some(t),
            Err(e) => {
                self.c.error(
                    src.span(),
                    format!("{}: {part}: {}", self.label, template_error(&e)),
                );
                None
            }
        }
    }

    fn template(&mut self, part: &str, src: &Spanned<String>) -> Option<TemplateId> {
        self.template_as(part, src, TemplateKind::Plain)
    }

    /// `events`: the patterns that compile, and one glob set of them.
    fn events(&mut self) -> (Vec<String>, GlobSet) {
        let label = &self.label;
        let mut events = Vec::new();
        let mut builder = GlobSetBuilder::new();
        match &self.raw.events {
            None => self
                .c
                .error(self.span.clone(), format!("{label} has no `events`")),
            Some(list) if list.get_ref().is_empty() => self
                .c
                .error(list.span(), format!("{label}: `events` is empty")),
            Some(list) => {
                for e in list.get_ref() {
                    let pattern = e.get_ref();
                    match Glob::new(pattern) {
                        Ok(g) => {
                            builder.add(g);
                            events.push(pattern.clone());
                            check_event_name(self.c, e);
                        }
                        Err(err) => self.c.error(
                            e.span(),
                            format!("{label}: event pattern {pattern:?}: {err}"),
                        ),
                    }
                }
            }
        }
        let matcher = builder.build().unwrap_or_else(|_| GlobSet::empty());
        (events, matcher)
    }

    /// `when`: an expression.
    fn when(&mut self) -> Option<TemplateId> {
        let w = self.raw.when.as_ref()?;
        match self.templates.add_expression(&self.id("when"), w.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                self.c.error(
                    w.span(),
                    format!("{}: when: {}", self.label, template_error(&e)),
                );
                None
            }
        }
    }

    /// `fallback`: JSON, on a sync rule only.
    fn fallback(&mut self, sync: bool) -> Option<Bytes> {
        let f = self.raw.fallback.as_ref()?;
        let label = &self.label;
        if !sync {
            self.c.error(
                f.span(),
                format!("{label}: `fallback` applies to sync rules only (add sync = true)"),
            );
        }
        match serde_json::from_str::<serde_json::Value>(f.get_ref()) {
            Ok(_) => Some(Bytes::from(f.get_ref().clone())),
            Err(e) => {
                self.c
                    .error(f.span(), format!("{label}: fallback is not JSON: {e}"));
                None
            }
        }
    }

    /// `order_by`: a template, on a queued rule only.
    fn order_by(&mut self, sync: bool) -> Option<TemplateId> {
        let o = self.raw.order_by.as_ref()?;
        if sync {
            self.c.error(
                o.span(),
                format!("{}: `order_by` applies to queued rules only", self.label),
            );
        }
        self.template("order_by", o)
    }

    /// `concurrency`: at least 1.
    fn concurrency(&mut self) -> Option<usize> {
        let n = self.raw.concurrency.as_ref()?;
        if *n.get_ref() == 0 {
            self.c.error(
                n.span(),
                format!("{}: concurrency must be at least 1", self.label),
            );
            None
        } else {
            Some(*n.get_ref() as usize)
        }
    }

    /// `retry`, over `[defaults]`.
    fn retry(&mut self, default: RetryPolicy) -> RetryPolicy {
        match &self.raw.retry {
            Some(r) => retry_policy(self.c, r, default),
            None => default,
        }
    }

    /// `timeout`; else a plugin rule's is `plugins.timeout`, any other's `[defaults]`.
    fn timeout(&mut self, kind: Option<ActionKind>, defaults: &RuleDefaults) -> Duration {
        match &self.raw.timeout {
            Some(_) => self.c.duration(&self.raw.timeout, defaults.timeout),
            None if matches!(kind, Some(ActionKind::Plugin(_))) => defaults.plugin_timeout,
            None => defaults.timeout,
        }
    }

    /// The one action the rule sets; none (and an error) if it sets none or several.
    fn action_kind(&mut self) -> Option<ActionKind<'x>> {
        let label = &self.label;
        let given = ActionKind::given(self.raw);
        match given.as_slice() {
            [] => {
                self.c.error(
                    self.span.clone(),
                    format!("{label} has no action: set one of `command`, `forward` or `plugin`"),
                );
                None
            }
            [kind] => Some(*kind),
            [_, second, ..] => {
                let keys: Vec<_> = given.iter().map(|k| format!("`{}`", k.key())).collect();
                self.c.error(second.span(), format!("{label} has {} actions ({}): a rule has exactly one of `command`, `forward` or `plugin`", given.len(), keys.join(", ")));
                None
            }
        }
    }

    /// An error for each key that belongs to another action kind than the rule's.
    fn check_foreign_keys(&mut self, kind: ActionKind) {
        let r = self.raw;
        let owned: [(&str, &str, Option<Range<usize>>); 6] = [
            ("env", "command", r.env.as_ref().map(|v| v.span())),
            ("workdir", "command", r.workdir.as_ref().map(|v| v.span())),
            ("method", "forward", r.method.as_ref().map(|v| v.span())),
            ("headers", "forward", r.headers.as_ref().map(|v| v.span())),
            ("body", "forward", r.body.as_ref().map(|v| v.span())),
            ("config", "plugin", r.config.as_ref().map(|v| v.span())),
        ];
        let kind = kind.key();
        for (key, owner, span) in owned {
            if let Some(span) = span
                && owner != kind
            {
                self.c.error(
                    span,
                    format!(
                        "{}: `{key}` applies to {owner} rules, this is a {kind} rule",
                        self.label
                    ),
                );
            }
        }
    }

    fn action(&mut self, kind: ActionKind) -> Option<Action> {
        match kind {
            ActionKind::Command(argv) => Some(self.command(argv)),
            ActionKind::Forward(url) => self.forward(url),
            ActionKind::Plugin(path) => Some(self.plugin(path)),
        }
    }

    /// `command`, with `env` and `workdir`.
    fn command(&mut self, argv_src: &Spanned<Vec<Spanned<String>>>) -> Action {
        let r = self.raw;
        if argv_src.get_ref().is_empty() {
            self.c.error(
                argv_src.span(),
                format!(
                    "{}: `command` is empty: give the program and its arguments",
                    self.label
                ),
            );
        }
        let argv: Vec<_> = argv_src
            .get_ref()
            .iter()
            .enumerate()
            .filter_map(|(i, a)| self.template(&format!("command[{i}]"), a))
            .collect();
        check_shell_script(self.c, &self.label, argv_src.get_ref());
        let env: Vec<_> = r
            .env
            .iter()
            .flat_map(|e| e.get_ref().iter())
            .filter_map(|(k, v)| {
                self.template(&format!("env.{k}"), v)
                    .map(|t| (k.clone(), t))
            })
            .collect();
        let workdir = r.workdir.as_ref().map(|w| self.c.path(w.get_ref()));
        Action::Command(CommandAction { argv, env, workdir })
    }

    /// `forward`, with `method`, `headers` and `body`; `None` if the URL does not compile.
    fn forward(&mut self, url_src: &Spanned<String>) -> Option<Action> {
        let url = self.template_as("forward", url_src, TemplateKind::Url);
        check_url(self.c, &self.label, url_src);
        if !url_src.get_ref().contains("{{")
            && reqwest::Url::parse(url_src.get_ref())
                .map(|u| !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
        {
            self.c.error(
                url_src.span(),
                format!(
                    "{}: forward {:?} is not an http(s) URL",
                    self.label,
                    url_src.get_ref()
                ),
            );
        }
        let method = self.method();
        let headers = self.headers();
        let body = self.body();
        url.map(|url| {
            let parsed_url = url
                .literal()
                .and_then(|text| reqwest::Url::parse(text).ok());
            Action::Forward(ForwardAction {
                url,
                parsed_url,
                method,
                headers,
                body,
            })
        })
    }

    /// `method`: POST where it says none.
    fn method(&mut self) -> reqwest::Method {
        let Some(m) = &self.raw.method else {
            return reqwest::Method::POST;
        };
        reqwest::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).unwrap_or_else(
            |_| {
                self.c.error(
                    m.span(),
                    format!(
                        "{}: method {:?} is not an HTTP method",
                        self.label,
                        m.get_ref()
                    ),
                );
                reqwest::Method::POST
            },
        )
    }

    /// `headers`: each name checked, each value a template.
    fn headers(&mut self) -> Vec<(reqwest::header::HeaderName, TemplateId)> {
        let mut headers = Vec::new();
        for (k, v) in self.raw.headers.iter().flat_map(|h| h.get_ref().iter()) {
            match reqwest::header::HeaderName::from_bytes(k.as_bytes()) {
                Ok(h) => {
                    if let Some(t) = self.template(&format!("headers.{k}"), v) {
                        headers.push((h, t));
                    }
                }
                Err(_) => self.c.error(
                    v.span(),
                    format!("{}: {k:?} is not a valid header name", self.label),
                ),
            }
        }
        headers
    }

    /// `body`: its values JSON-encoded where the body is JSON.
    fn body(&mut self) -> Option<TemplateId> {
        let r = self.raw;
        // The body is JSON where the rule's literal Content-Type says so, or there is none and
        // forward sends application/json.
        let content_type = r
            .headers
            .iter()
            .flat_map(|h| h.get_ref().iter())
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v);
        let json_body = match content_type {
            None => true,
            Some(v) if crate::template::is_literal(v.get_ref()) => is_json_media_type(v.get_ref()),
            Some(v) => {
                if r.body.is_some() {
                    self.c.warn(
                        v.span(),
                        format!("{}: Content-Type is a template, so the body's escaping cannot follow it: the body's values are inserted as they are", self.label),
                    );
                }
                false
            }
        };
        let b = r.body.as_ref()?;
        let kind = if json_body {
            TemplateKind::Json
        } else {
            TemplateKind::Plain
        };
        let t = self.template_as("body", b, kind);
        if t.is_some() && json_body {
            check_json_body(self.c, &self.label, b);
        }
        t
    }

    /// `plugin`, with `config`.
    fn plugin(&mut self, p: &Spanned<String>) -> Action {
        let path = self.c.path(p.get_ref());
        if !path.is_file() {
            self.c.error(
                p.span(),
                format!("{}: plugin file {} not found", self.label, path.display()),
            );
        }
        let config = match &self.raw.config {
            None => "{}".to_string(),
            Some(v) => serde_json::to_string(v.get_ref()).unwrap_or_else(|e| {
                self.c.error(
                    v.span(),
                    format!("{}: config cannot be turned into JSON: {e}", self.label),
                );
                "{}".into()
            }),
        };
        let (line, col) = position(self.c.text, p.span().start);
        Action::Plugin(PluginAction {
            path,
            config,
            line,
            col,
        })
    }
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

/// minijinja's reason, with its line inside the template where that helps.
fn template_error(e: &minijinja::Error) -> String {
    let mut msg = e.kind().to_string();
    if let Some(detail) = e.detail() {
        msg = format!("{msg}: {detail}");
    }
    msg
}
