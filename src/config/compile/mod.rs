//! Raw config → [`Snapshot`]: every value checked, every error collected with its position.
//!
//! `settings` reads the settings tables, `rule` each `[[rule]]`, and `checks` holds the warnings
//! that point inside a value.

mod checks;
mod rule;
mod settings;

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawConfig;
use super::units::{parse_duration, resolve_secret, service_only};
use super::*;
use checks::check_sync_overlap;
use rule::compile_rule;
use settings::{RuleDefaults, Settings};

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

impl<'a> Checker<'a> {
    /// A checker for `text`, read from `file` (relative paths resolve against its folder).
    fn new(file: &'a Path, text: &'a str, secrets: Secrets) -> Self {
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Checker {
            file,
            base,
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
            secrets,
        }
    }

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
    let mut c = Checker::new(file, text, secrets);
    let raw = parse(&mut c)?;
    let settings = settings::settings(&mut c, &raw);
    let defaults = settings::rule_defaults(&mut c, &raw, &settings.plugins);
    let mut templates = Templates::new();
    let rules = compile_rules(&mut c, &mut templates, &defaults, &raw);
    check_sync_overlap(&mut c, &raw, &rules);
    finish(c, hash, settings, rules, templates)
}

/// The file's TOML, or the error that stops everything else.
fn parse(c: &mut Checker) -> Result<RawConfig, ConfigError> {
    toml::from_str(c.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim_end().to_string();
        c.error(span, message);
        ConfigError {
            errors: std::mem::take(&mut c.errors),
        }
    })
}

/// Every rule that compiles, in file order; a name used twice is an error.
fn compile_rules(
    c: &mut Checker,
    templates: &mut Templates,
    defaults: &RuleDefaults,
    raw: &RawConfig,
) -> Vec<Arc<Rule>> {
    let mut rules: Vec<Arc<Rule>> = Vec::new();
    let mut names = BTreeSet::new();
    for (index, raw_rule) in raw.rules.iter().enumerate() {
        let Some(rule) = compile_rule(c, templates, defaults, index, raw_rule) else {
            continue;
        };
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
    rules
}

/// The snapshot, or every error in file order.
fn finish(
    mut c: Checker,
    hash: String,
    settings: Settings,
    rules: Vec<Arc<Rule>>,
    templates: Templates,
) -> Result<Snapshot, ConfigError> {
    if !c.errors.is_empty() {
        c.errors.sort_by_key(|d| (d.line, d.col));
        return Err(ConfigError { errors: c.errors });
    }
    let Settings {
        server,
        admin,
        verify,
        store,
        plugins,
    } = settings;
    Ok(Snapshot {
        path: c.file.to_path_buf(),
        hash,
        server,
        admin,
        verify,
        store,
        plugins,
        rules,
        templates,
        compiled: Default::default(),
        warnings: c.warnings,
        notes: c.notes,
    })
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
    fn a_store_in_the_watched_config_folder_is_warned_about() {
        for (path, warned) in [
            ("zimhook.redb", true),
            ("./zimhook.redb", true),
            ("/tmp/zimhook.redb", true),
            ("data/zimhook.redb", false),
            ("/var/lib/zimhook/zimhook.redb", false),
        ] {
            let w = warnings(&format!("[store]\npath = \"{path}\"\n"));
            let found = w.iter().any(|d| d.message.contains("config file's folder"));
            assert_eq!(found, warned, "{path}: {w:?}");
            if warned {
                assert_eq!(at(&w[0]), (4, 8), "{path}");
            }
        }
        // The memory store writes no file.
        let w = warnings("[store]\nkind = \"memory\"\npath = \"zimhook.redb\"\n");
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn literal_forward_urls_are_parsed_once_at_load() {
        let text = r#"
[verify]
secrets = ["s"]
[[rule]]
name = "literal"
events = ["*"]
forward = "https://crm.example.com/zego?x=1"
[[rule]]
name = "templated"
events = ["*"]
forward = "https://crm.example.com/{{ call_id }}"
"#;
        let s = load_str(Path::new("/tmp/x.toml"), text).unwrap();
        let parsed = |i: usize| match &s.rules[i].action {
            Action::Forward(f) => f.parsed_url.as_ref().map(|u| u.as_str().to_string()),
            _ => panic!("a forward rule"),
        };
        assert_eq!(
            parsed(0).as_deref(),
            Some("https://crm.example.com/zego?x=1")
        );
        assert_eq!(parsed(1), None);
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
