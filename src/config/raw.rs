//! The config file exactly as written: serde types that mirror the TOML, with spans kept so that
//! every later check can point at a line and column. Nothing here is validated beyond shape;
//! [`super::compile`] turns these into a [`super::Snapshot`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub admin: Option<Spanned<RawAdmin>>,
    pub verify: Option<Spanned<RawVerify>>,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub plugins: RawPlugins,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub max_body: Option<Spanned<RawSize>>,
    pub request_timeout: Option<Spanned<String>>,
    pub header_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u32>>,
    pub shutdown_grace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Spanned<String>,
    /// A secret source, like `verify.secrets` entries.
    pub token: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub secrets: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_skew: Option<Spanned<String>>,
    pub appids: Option<Vec<Spanned<RawAppId>>>,
    pub insecure: Option<Spanned<bool>>,
}

/// An appid may be written as a string or a number; callbacks carry both.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawAppId {
    Text(String),
    Number(u64),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `"redb"` (the default) or `"memory"`.
    pub kind: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub max_queued: Option<Spanned<u64>>,
    pub workers: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugins {
    pub timeout: Option<Spanned<String>>,
    pub memory: Option<Spanned<RawSize>>,
    pub cache_dir: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub timeout: Option<Spanned<String>>,
    pub retry: Option<Spanned<RawRetry>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Spanned<String>>,
    pub buffer_lines: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<Spanned<u32>>,
    pub backoff: Option<Spanned<String>>,
    pub max_backoff: Option<Spanned<String>>,
}

/// A size: bytes as an integer, or text such as `"1MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<Spanned<String>>,
    pub events: Option<Spanned<Vec<Spanned<String>>>>,
    pub when: Option<Spanned<String>>,
    pub sync: Option<Spanned<bool>>,
    pub fallback: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub retry: Option<Spanned<RawRetry>>,
    pub concurrency: Option<Spanned<u32>>,
    pub order_by: Option<Spanned<String>>,
    // command
    pub command: Option<Spanned<Vec<Spanned<String>>>>,
    pub env: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub workdir: Option<Spanned<String>>,
    // forward
    pub forward: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    pub headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub body: Option<Spanned<String>>,
    // plugin
    pub plugin: Option<Spanned<String>>,
    pub config: Option<Spanned<toml::Value>>,
}
