//! The one template engine behind `when`, argv, URLs, headers, bodies and `order_by`: minijinja
//! with strict undefined names (a typo is an error, not an empty string) and a fuel limit (a
//! template cannot loop for long). Templates are compiled once per config snapshot and rendered
//! against a [`Context`] built per callback.
//!
//! Values are escaped for where they stand, so that payload text cannot change what a request
//! means (see [`Escape`]): a forward URL's values are percent-encoded (as a path segment before
//! the template's first literal `?`, as a query component after it), a JSON body's values are
//! JSON-encoded; every other template prints values as they are. A value marked safe (`|safe`,
//! or the output of `tojson`) is inserted as is.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::{Arc, OnceLock, RwLock};

use minijinja::{
    AutoEscape, Environment, Error, ErrorKind, Output, State, UndefinedBehavior, Value,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// How a template escapes the values it prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As they are: `when`, argv (never through a shell), `env`, headers, `order_by`, bodies
    /// that are not JSON.
    None,
    /// JSON-encoded: a string gets its quotes and escapes, a list or map becomes JSON
    /// (`{"text": {{ msg_body }}}`).
    Json,
    /// Percent-encoded as one segment of a URL path: `/`, `?`, `#`, `%`, `\`, `:`, `@`, `;`,
    /// spaces and the rest become `%XX`; a value that is `.` or `..` is an error (no encoding
    /// keeps a URL parser from climbing the path with it).
    UrlPath,
    /// Percent-encoded as a query component: all but `A-Z a-z 0-9 - . _ ~`.
    UrlQuery,
}

impl Escape {
    const URL_PATH: &str = "url-path";
    const URL_QUERY: &str = "url-query";

    fn auto_escape(self) -> AutoEscape {
        match self {
            Escape::None => AutoEscape::None,
            Escape::Json => AutoEscape::Json,
            Escape::UrlPath => AutoEscape::Custom(Self::URL_PATH.into()),
            Escape::UrlQuery => AutoEscape::Custom(Self::URL_QUERY.into()),
        }
    }
}

/// What stays as is in a value that stands in a URL path: the unreserved characters and the
/// sub-delimiters that end neither a segment nor the authority (RFC 3986). `;` (path
/// parameters to some servers), `:` and `@` (userinfo and port, where a value stands in the
/// authority) are encoded too.
const PATH_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b'=');

/// What stays as is in a value that stands in a URL query: the unreserved characters only
/// (`&`, `=`, `+`, `#`, `%` and spaces are encoded).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Prints a value in a template whose auto-escape mode is one of ours; the built-in modes
/// (none, JSON) go to minijinja's own formatter.
fn format_value(out: &mut Output, state: &mut State, value: &Value) -> Result<(), Error> {
    let (set, in_path) = match state.auto_escape() {
        AutoEscape::Custom(name) if name == Escape::URL_PATH => (PATH_VALUE, true),
        AutoEscape::Custom(name) if name == Escape::URL_QUERY => (QUERY_VALUE, false),
        _ => return minijinja::escape_formatter(out, state, value),
    };
    if value.is_safe() {
        return out
            .write_str(value.as_str().unwrap_or_default())
            .map_err(Error::from);
    }
    let text = value.to_string();
    if in_path && (text == "." || text == "..") {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("a URL path value of {text:?} would change the path; refused"),
        ));
    }
    write!(out, "{}", utf8_percent_encode(&text, set)).map_err(Error::from)
}

/// Names a template compiled into [`Templates`]. A template without any `{{`/`{%`/`{#` is a
/// literal: it renders to itself without a context being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateId {
    name: Arc<str>,
    literal: Option<Arc<str>>,
    /// A second template, rendered after this one and appended: a URL's query part, compiled
    /// apart from its path part so that each escapes values its own way.
    then: Option<Arc<str>>,
}

impl TemplateId {
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The text, for a template that is a literal (it then renders to exactly this).
    pub fn literal(&self) -> Option<&str> {
        self.literal.as_deref()
    }
}

/// Every template of one config snapshot.
pub struct Templates {
    env: Environment<'static>,
    /// Each template's escaping, by name (read by minijinja when it compiles one).
    escapes: Arc<RwLock<HashMap<String, Escape>>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Enough for any sensible template; stops one that loops over a huge range.
        env.set_fuel(Some(200_000));
        let escapes: Arc<RwLock<HashMap<String, Escape>>> = Default::default();
        let lookup = escapes.clone();
        env.set_auto_escape_callback(move |name| {
            lookup
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .copied()
                .unwrap_or(Escape::None)
                .auto_escape()
        });
        env.set_formatter(format_value);
        Templates { env, escapes }
    }

    /// Compiles `source` as a template named `id` that prints values as they are.
    pub fn add(&mut self, id: &str, source: &str) -> Result<TemplateId, Error> {
        self.add_escaped(id, source, Escape::None)
    }

    /// Compiles `source` as a template named `id` that escapes the values it prints.
    pub fn add_escaped(
        &mut self,
        id: &str,
        source: &str,
        escape: Escape,
    ) -> Result<TemplateId, Error> {
        self.compile(id, source, escape)?;
        Ok(TemplateId {
            name: id.into(),
            literal: is_literal(source).then(|| Arc::from(source)),
            then: None,
        })
    }

    /// Compiles a forward URL: its path part (up to the first literal `?`, outside any tag)
    /// escapes values as path segments, its query part as query components. The literal text
    /// is never changed.
    pub fn add_url(&mut self, id: &str, source: &str) -> Result<TemplateId, Error> {
        if is_literal(source) {
            return self.add(id, source);
        }
        // Whole first, so that a syntax error points into the URL as written.
        self.env.template_from_str(source)?;
        let Some(q) = query_start(source) else {
            return self.add_escaped(id, source, Escape::UrlPath);
        };
        let (path, query) = source.split_at(q);
        let query_id = format!("{id}.query");
        let split = self
            .compile(id, path, Escape::UrlPath)
            .and_then(|()| self.compile(&query_id, query, Escape::UrlQuery));
        if split.is_err() {
            return Err(Error::new(
                ErrorKind::SyntaxError,
                "the `?` that starts the query is inside a `{% %}` block: put it outside the \
                 block, so that the path and the query can each be escaped their own way",
            ));
        }
        Ok(TemplateId {
            name: id.into(),
            literal: None,
            then: Some(query_id.into()),
        })
    }

    fn compile(&mut self, id: &str, source: &str, escape: Escape) -> Result<(), Error> {
        self.escapes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), escape);
        self.env
            .add_template_owned(id.to_string(), source.to_string())
    }

    /// Compiles a `when` expression; it renders to `true` where the expression is truthy.
    pub fn add_expression(&mut self, id: &str, expr: &str) -> Result<TemplateId, Error> {
        // Compiled on its own first so that a syntax error points into the expression as written.
        self.env.compile_expression_owned(expr.to_string())?;
        self.add(id, &format!("{{% if ({expr}) %}}true{{% endif %}}"))
    }

    pub fn render(&self, id: &TemplateId, ctx: &Context) -> Result<String, TemplateError> {
        if let Some(literal) = &id.literal {
            return Ok(literal.to_string());
        }
        let mut text = self.render_one(id, &id.name, ctx)?;
        if let Some(then) = &id.then {
            text.push_str(&self.render_one(id, then, ctx)?);
        }
        Ok(text)
    }

    fn render_one(
        &self,
        id: &TemplateId,
        name: &str,
        ctx: &Context,
    ) -> Result<String, TemplateError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx.value.clone()))
            .map_err(|e| TemplateError::new(id, e))
    }

    pub fn is_true(&self, id: &TemplateId, ctx: &Context) -> Result<bool, TemplateError> {
        Ok(self.render(id, ctx)? == "true")
    }

    /// Renders with a context that is built only if `id` is not a literal.
    pub fn render_lazy(&self, id: &TemplateId, ctx: &LazyContext) -> Result<String, TemplateError> {
        match id.literal() {
            Some(literal) => Ok(literal.to_string()),
            None => self.render(id, ctx.get()),
        }
    }
}

/// A [`Context`] built on first use: most forwards have literal URLs and headers, and then
/// none is needed.
pub struct LazyContext<'a> {
    cell: OnceLock<Context>,
    make: &'a (dyn Fn() -> Context + Sync),
}

impl<'a> LazyContext<'a> {
    pub fn new(make: &'a (dyn Fn() -> Context + Sync)) -> Self {
        LazyContext {
            cell: OnceLock::new(),
            make,
        }
    }
    pub fn get(&self) -> &Context {
        self.cell.get_or_init(self.make)
    }
}

/// Whether `source` has no tag at all (it renders to itself).
pub fn is_literal(source: &str) -> bool {
    !source.contains("{{") && !source.contains("{%") && !source.contains("{#")
}

/// A piece of template source: literal text, or a tag with its delimiters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(Range<usize>),
    /// `{{ ... }}`: prints a value.
    Expr(Range<usize>),
    /// `{% ... %}`
    Stmt(Range<usize>),
    /// `{# ... #}`
    Comment(Range<usize>),
}

/// Splits template source into literal text and tags, the way minijinja's lexer does for the
/// purposes here: quoted strings inside a tag do not end it, and the body of a
/// `{% raw %}...{% endraw %}` block is text. An unclosed tag runs to the end.
pub fn pieces(source: &str) -> Vec<Piece> {
    let b = source.as_bytes();
    let mut out = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    let mut raw = false;
    while i + 1 < b.len() {
        let close = match (b[i], b[i + 1]) {
            (b'{', b'{') => b'}',
            (b'{', b'%') => b'%',
            (b'{', b'#') => b'#',
            _ => {
                i += 1;
                continue;
            }
        };
        let end = tag_end(b, i + 2, close);
        let tag = &source[i..end];
        let inner = tag[2..].trim_start_matches(['-', '+', '~']).trim_start();
        if raw && !(close == b'%' && inner.starts_with("endraw")) {
            i += 2;
            continue;
        }
        if text_start < i {
            out.push(Piece::Text(text_start..i));
        }
        out.push(match close {
            b'}' => Piece::Expr(i..end),
            b'%' => Piece::Stmt(i..end),
            _ => Piece::Comment(i..end),
        });
        if close == b'%' {
            let word = inner.split(|c: char| !c.is_ascii_alphanumeric()).next();
            raw = word == Some("raw");
        }
        i = end;
        text_start = end;
    }
    if text_start < b.len() {
        out.push(Piece::Text(text_start..b.len()));
    }
    out
}

/// The end (exclusive) of a tag whose body starts at `from` and that closes with `close` `}`.
fn tag_end(b: &[u8], from: usize, close: u8) -> usize {
    let mut i = from;
    let mut quote = None;
    while i < b.len() {
        match quote {
            Some(q) => {
                if b[i] == b'\\' {
                    i += 1;
                } else if b[i] == q {
                    quote = None;
                }
            }
            None if close != b'#' && (b[i] == b'"' || b[i] == b'\'') => quote = Some(b[i]),
            None if b[i] == close && b.get(i + 1) == Some(&b'}') => return i + 2,
            None => {}
        }
        i += 1;
    }
    b.len()
}

/// Where a URL template's query starts: its first `?` in literal text, if any.
pub fn query_start(source: &str) -> Option<usize> {
    pieces(source).into_iter().find_map(|p| match p {
        Piece::Text(r) => source[r.clone()].find('?').map(|i| r.start + i),
        _ => None,
    })
}

/// The `{{ }}` tags of a JSON template that stand inside a JSON string of its literal text
/// (`"{{ name }}"`), where a JSON-encoded value would bring its own quotes. Tags that mark
/// their value safe (`|safe`) are left out: they print as written.
pub fn exprs_inside_json_strings(source: &str) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut in_string = false;
    for piece in pieces(source) {
        match piece {
            Piece::Text(r) => {
                let mut escaped = false;
                for c in source[r].chars() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' if in_string => escaped = true,
                        '"' => in_string = !in_string,
                        _ => {}
                    }
                }
            }
            Piece::Expr(r) if in_string => {
                let tag: String = source[r.clone()].split_whitespace().collect();
                if !tag.contains("|safe") {
                    found.push(r);
                }
            }
            _ => {}
        }
    }
    found
}

/// A template that failed to render: which one, and minijinja's reason.
#[derive(Debug, thiserror::Error)]
#[error("template {id} failed: {reason}")]
pub struct TemplateError {
    pub id: String,
    pub reason: String,
}

impl TemplateError {
    fn new(id: &TemplateId, e: Error) -> Self {
        let mut reason = e.kind().to_string();
        if let Some(detail) = e.detail() {
            reason = format!("{reason}: {detail}");
        }
        TemplateError {
            id: id.as_str().to_string(),
            reason,
        }
    }
}

/// The names a template sees: every top-level field of the callback by its own name, then
/// `event`, `payload` (the whole object), `body` (raw text), `rule`, `delivery_id` and `env`.
/// The reserved names win over a callback field of the same name (ZIM's own `payload` field is
/// `payload.payload`).
#[derive(Debug, Clone)]
pub struct Context {
    value: Value,
}

impl Context {
    pub fn new(
        object: &serde_json::Map<String, serde_json::Value>,
        event: &str,
        body: &str,
        rule: Option<&str>,
        delivery_id: Option<&str>,
    ) -> Self {
        Self::build(object, event, None, body, rule, delivery_id)
    }

    /// [`Context::new`], and `appid` as the envelope's appid where the body spells it otherwise
    /// (`AppId`, `app_id`, `AppID`, `Appid`): one template serves every product family.
    fn build(
        object: &serde_json::Map<String, serde_json::Value>,
        event: &str,
        appid: Option<&str>,
        body: &str,
        rule: Option<&str>,
        delivery_id: Option<&str>,
    ) -> Self {
        let mut map: BTreeMap<String, Value> = object
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect();
        map.insert("event".into(), Value::from(event));
        if let Some(appid) = appid.filter(|a| !a.is_empty()) {
            map.entry("appid".into())
                .or_insert_with(|| Value::from(appid));
        }
        map.insert(
            "payload".into(),
            json_to_value(&serde_json::Value::Object(object.clone())),
        );
        map.insert("body".into(), Value::from(body));
        if let Some(rule) = rule {
            map.insert("rule".into(), Value::from(rule));
        }
        if let Some(id) = delivery_id {
            map.insert("delivery_id".into(), Value::from(id));
        }
        map.insert("env".into(), process_env());
        Context {
            value: Value::from_pairs(map),
        }
    }
}

/// The daemon's environment, read once: it does not change while the daemon runs.
fn process_env() -> Value {
    static ENV: OnceLock<Value> = OnceLock::new();
    ENV.get_or_init(|| Value::from_pairs(std::env::vars()))
        .clone()
}

/// Converts parsed JSON into a template value, keeping integers of any length exact (a 19-digit
/// nonce stays a 19-digit integer; beyond 128 bits it stays its digits as text).
pub fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let text = n.to_string();
                if let Ok(i) = text.parse::<i128>() {
                    Value::from(i)
                } else if let Ok(u) = text.parse::<u128>() {
                    Value::from(u)
                } else if !text.contains(['.', 'e', 'E']) {
                    Value::from(text)
                } else {
                    Value::from(n.as_f64().unwrap_or(f64::NAN))
                }
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => items.iter().map(json_to_value).collect(),
        serde_json::Value::Object(map) => Value::from_pairs(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect::<Vec<_>>(),
        ),
    }
}

/// The template context of a callback, for a rule and delivery when known.
pub fn callback_context(
    callback: &crate::receive::Callback,
    rule_and_delivery: Option<(&str, &str)>,
) -> Context {
    Context::build(
        &callback.object,
        callback.event(),
        Some(callback.appid()),
        &String::from_utf8_lossy(&callback.raw),
        rule_and_delivery.map(|(r, _)| r),
        rule_and_delivery.map(|(_, d)| d),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(json: &str) -> Context {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let serde_json::Value::Object(map) = v else {
            panic!()
        };
        Context::new(&map, "call_timeout", json, Some("r"), Some("d1"))
    }

    #[test]
    fn renders_fields_and_reserved_names() {
        let mut t = Templates::new();
        let id = t
            .add(
                "a",
                "{{ event }} {{ call_id }} {{ rule }} {{ delivery_id }} {{ payload.payload }}",
            )
            .unwrap();
        let c = ctx(r#"{"call_id":"c1","payload":"p"}"#);
        assert_eq!(t.render(&id, &c).unwrap(), "call_timeout c1 r d1 p");
    }

    #[test]
    fn event_and_appid_are_normalised_across_families() {
        let mut t = Templates::new();
        let id = t.add("a", "{{ event }} {{ appid }} {{ app_id }}").unwrap();
        let cb = crate::receive::Callback::decode(bytes::Bytes::from_static(
            br#"{"app_id":1234567890,"event_type":1,"task_id":"t"}"#,
        ))
        .unwrap();
        assert_eq!(
            t.render(&id, &callback_context(&cb, None)).unwrap(),
            "cloud_recording.1 1234567890 1234567890"
        );
        // A body's own `appid` stays as it is.
        let cb = crate::receive::Callback::decode(bytes::Bytes::from_static(
            br#"{"appid":7,"event":"call_timeout"}"#,
        ))
        .unwrap();
        let id = t.add("b", "{{ appid + 1 }}").unwrap();
        assert_eq!(t.render(&id, &callback_context(&cb, None)).unwrap(), "8");
    }

    #[test]
    fn big_integers_keep_their_digits() {
        let mut t = Templates::new();
        let id = t.add("a", "{{ n }} {{ payload | tojson }}").unwrap();
        let c = ctx(r#"{"n":858012925204410400123}"#);
        assert_eq!(
            t.render(&id, &c).unwrap(),
            "858012925204410400123 {\"n\": 858012925204410400123}"
        );
    }

    #[test]
    fn when_expressions() {
        let mut t = Templates::new();
        let id = t.add_expression("w", "user_ids | length > 1").unwrap();
        assert!(t.is_true(&id, &ctx(r#"{"user_ids":["a","b"]}"#)).unwrap());
        assert!(!t.is_true(&id, &ctx(r#"{"user_ids":["a"]}"#)).unwrap());
        assert!(t.is_true(&id, &ctx(r#"{}"#)).is_err());
    }

    #[test]
    fn undefined_names_fail_clearly() {
        let mut t = Templates::new();
        let id = t.add("argv", "{{ call_idd }}").unwrap();
        let err = t.render(&id, &ctx(r#"{"call_id":"1"}"#)).unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let mut t = Templates::new();
        assert!(t.add_expression("w", "user_ids |").is_err());
        assert!(t.add("x", "{{ a").is_err());
    }

    #[test]
    fn url_values_are_encoded_for_the_path_and_for_the_query() {
        let mut t = Templates::new();
        let id = t
            .add_url(
                "u",
                "https://x.example/missed/{{ v }}/{{ v | safe }}?v={{ v }}&w={{ w }}#{{ v }}",
            )
            .unwrap();
        let c = ctx(r#"{"v":"../../admin?x=1&y#z","w":"a b+c%d=é;:@/\\"}"#);
        assert_eq!(
            t.render(&id, &c).unwrap(),
            "https://x.example/missed/..%2F..%2Fadmin%3Fx=1&y%23z/../../admin?x=1&y#z\
             ?v=..%2F..%2Fadmin%3Fx%3D1%26y%23z&w=a%20b%2Bc%25d%3D%C3%A9%3B%3A%40%2F%5C\
             #..%2F..%2Fadmin%3Fx%3D1%26y%23z"
        );
        // In the path: `;`, `:`, `@`, `\`, `%` and spaces too; sub-delimiters stay.
        let id = t.add_url("p", "https://x.example/{{ w }}").unwrap();
        assert_eq!(
            t.render(&id, &c).unwrap(),
            "https://x.example/a%20b+c%25d=%C3%A9%3B%3A%40%2F%5C"
        );
        // Numbers and lists print as text, then are encoded.
        let id = t
            .add_url("n", "https://x.example/{{ n }}?l={{ l }}")
            .unwrap();
        assert_eq!(
            t.render(&id, &ctx(r#"{"n":12,"l":["a","b"]}"#)).unwrap(),
            "https://x.example/12?l=%5B%27a%27%2C%20%27b%27%5D"
        );
    }

    #[test]
    fn the_query_starts_at_the_first_literal_question_mark() {
        assert_eq!(query_start("https://x/{{ a ~ '?' }}/b?c"), Some(25));
        assert_eq!(query_start("https://x/{# ? #}b"), None);
        assert_eq!(query_start("https://x/{% if a %}?{% endif %}"), Some(20));
        assert_eq!(query_start("https://x/{% raw %}{{?{% endraw %}"), Some(21));
        assert_eq!(query_start("https://x/{{ \"}}?\" }}?q"), Some(21));
        // A `?` inside a block cannot be a split point: said at compile time.
        let mut t = Templates::new();
        let err = t
            .add_url("u", "https://x/{% if a %}?q={{ a }}{% endif %}")
            .unwrap_err();
        assert!(err.to_string().contains("inside a `{% %}` block"), "{err}");
        // A literal URL is left alone, `?` or not.
        let id = t.add_url("l", "https://x/a b?c=d e").unwrap();
        assert_eq!(t.render(&id, &ctx("{}")).unwrap(), "https://x/a b?c=d e");
    }

    #[test]
    fn a_dot_segment_value_in_a_url_path_is_an_error() {
        let mut t = Templates::new();
        let id = t.add_url("u", "https://x/a/{{ v }}/b?q={{ v }}").unwrap();
        for v in [".", ".."] {
            let err = t
                .render(&id, &ctx(&format!(r#"{{"v":"{v}"}}"#)))
                .unwrap_err();
            assert!(err.to_string().contains("would change the path"), "{err}");
        }
        assert_eq!(
            t.render(&id, &ctx(r#"{"v":"..."}"#)).unwrap(),
            "https://x/a/.../b?q=..."
        );
    }

    #[test]
    fn json_templates_encode_values_and_keep_tojson_and_safe() {
        let mut t = Templates::new();
        let id = t
            .add_escaped(
                "b",
                r#"{"text": {{ m }}, "n": {{ n }}, "all": {{ payload | tojson }}, "raw": {{ r | safe }}, "hi": {{ "Hello " ~ m }}}"#,
                Escape::Json,
            )
            .unwrap();
        let c = ctx(r#"{"m":"a \"q\" \\ \n","n":858012925204410400123,"r":"[1]"}"#);
        let out = t.render(&id, &c).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["text"], "a \"q\" \\ \n");
        assert_eq!(v["hi"], "Hello a \"q\" \\ \n");
        assert_eq!(v["r"], serde_json::Value::Null);
        assert_eq!(v["raw"], serde_json::json!([1]));
        assert!(out.contains("\"n\": 858012925204410400123"), "{out}");
        assert_eq!(v["all"]["m"], "a \"q\" \\ \n");
    }

    #[test]
    fn other_templates_print_values_as_they_are() {
        let mut t = Templates::new();
        let id = t.add("a", "{{ v }}").unwrap();
        let c = ctx(r#"{"v":"../\"x\" & <y> %20"}"#);
        assert_eq!(t.render(&id, &c).unwrap(), "../\"x\" & <y> %20");
    }

    #[test]
    fn tags_inside_json_strings_are_found() {
        let src = r#"{"a": "{{ x }}", "b": {{ y }}, "c": "pre {{ z }} \" {{ w }}", "d": "{{ s | safe }}", "e": {% if q %}"{{ q }}"{% endif %}}"#;
        let found: Vec<&str> = exprs_inside_json_strings(src)
            .into_iter()
            .map(|r| &src[r])
            .collect();
        assert_eq!(found, ["{{ x }}", "{{ z }}", "{{ w }}", "{{ q }}"]);
        assert!(exprs_inside_json_strings(r#"{"a": {{ "}}\"" }}, "b": 1}"#).is_empty());
    }
}
