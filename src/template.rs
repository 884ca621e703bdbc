//! The one template engine behind `when`, argv, URLs, headers, bodies and `order_by`: minijinja
//! with strict undefined names (a typo is an error, not an empty string) and a fuel limit (a
//! template cannot loop for long). Templates are compiled once per config snapshot and rendered
//! against a [`Context`] built per callback.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use minijinja::{Environment, UndefinedBehavior, Value};

/// Names a template compiled into [`Templates`]. A template without any `{{`/`{%`/`{#` is a
/// literal: it renders to itself without a context being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateId {
    name: Arc<str>,
    literal: Option<Arc<str>>,
}

impl TemplateId {
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

/// Every template of one config snapshot.
pub struct Templates {
    env: Environment<'static>,
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
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        Templates { env }
    }

    /// Compiles `source` as a template named `id`.
    pub fn add(&mut self, id: &str, source: &str) -> Result<TemplateId, minijinja::Error> {
        self.env
            .add_template_owned(id.to_string(), source.to_string())?;
        let literal = (!source.contains("{{") && !source.contains("{%") && !source.contains("{#"))
            .then(|| Arc::from(source));
        Ok(TemplateId {
            name: id.into(),
            literal,
        })
    }

    /// Compiles a `when` expression; it renders to `true` where the expression is truthy.
    pub fn add_expression(&mut self, id: &str, expr: &str) -> Result<TemplateId, minijinja::Error> {
        // Compiled on its own first so that a syntax error points into the expression as written.
        self.env.compile_expression_owned(expr.to_string())?;
        self.add(id, &format!("{{% if ({expr}) %}}true{{% endif %}}"))
    }

    pub fn render(&self, id: &TemplateId, ctx: &Context) -> Result<String, TemplateError> {
        if let Some(literal) = &id.literal {
            return Ok(literal.to_string());
        }
        let template = self
            .env
            .get_template(id.as_str())
            .map_err(|e| TemplateError::new(id, e))?;
        template
            .render(ctx.value.clone())
            .map_err(|e| TemplateError::new(id, e))
    }

    pub fn is_true(&self, id: &TemplateId, ctx: &Context) -> Result<bool, TemplateError> {
        Ok(self.render(id, ctx)? == "true")
    }

    /// Renders with a context that is built only if `id` is not a literal.
    pub fn render_lazy(&self, id: &TemplateId, ctx: &LazyContext) -> Result<String, TemplateError> {
        match &id.literal {
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

/// A template that failed to render: which one, and minijinja's reason.
#[derive(Debug, thiserror::Error)]
#[error("template {id} failed: {reason}")]
pub struct TemplateError {
    pub id: String,
    pub reason: String,
}

impl TemplateError {
    fn new(id: &TemplateId, e: minijinja::Error) -> Self {
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
        let mut map: BTreeMap<String, Value> = object
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect();
        map.insert("event".into(), Value::from(event));
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
}
