//! The warnings that point inside a value: a template where its escaping would surprise, an
//! event name in no catalog, sync rules that answer the same event.

use std::ops::Range;
use std::sync::Arc;

use globset::Glob;
use toml::Spanned;

use super::Checker;
use crate::config::Rule;
use crate::config::raw::RawConfig;
use crate::events;

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
pub(super) fn check_json_body(c: &mut Checker, label: &str, body: &Spanned<String>) {
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
pub(super) fn check_url(c: &mut Checker, label: &str, url: &Spanned<String>) {
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
pub(super) fn check_shell_script(c: &mut Checker, label: &str, argv: &[Spanned<String>]) {
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

pub(super) fn check_event_name(c: &mut Checker, e: &Spanned<String>) {
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
pub(super) fn check_sync_overlap(c: &mut Checker, raw: &RawConfig, rules: &[Arc<Rule>]) {
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
