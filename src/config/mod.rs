//! Configuration: the TOML file → a validated, immutable [`Snapshot`] the daemon runs on.
//!
//! Two stages: [`raw`] mirrors the file (serde, unknown keys refused), [`compile`] checks every
//! value, resolves secrets, compiles templates and globs, and collects every error (each with
//! file, line and column) before failing. Watching the file is not this module's business.

mod compile;
pub mod plugins;
pub mod raw;
pub mod units;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use globset::GlobSet;
use sha2::{Digest, Sha256};

use crate::template::{TemplateId, Templates};
pub use units::Secret;

/// Where the config is read from when nothing else is said.
pub const DEFAULT_PATH: &str = "config.toml";

/// A problem found in the config, at a position in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// A config that cannot be used: every error found, in file order.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Everything one request needs, immutable. The live one sits behind an `ArcSwap`; a request
/// loads it once and uses only that.
#[derive(Debug)]
pub struct Snapshot {
    pub path: PathBuf,
    /// sha256 of the file's bytes, hex: shows which config is live.
    pub hash: String,
    pub server: ServerSettings,
    pub admin: Option<AdminSettings>,
    pub verify: VerifySettings,
    pub store: StoreSettings,
    pub plugins: PluginSettings,
    pub rules: Vec<Arc<Rule>>,
    pub templates: Templates,
    /// The plugins the rules name, compiled (filled by [`Snapshot::compile_plugins`]).
    pub compiled: crate::wasm::Catalog,
    pub warnings: Vec<Diagnostic>,
    /// What a load outside the service left unchecked (see [`Secrets::OutsideService`]).
    pub notes: Vec<Diagnostic>,
}

impl Snapshot {
    pub fn rule(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|r| r.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(String),
    /// The socket systemd passes (`LISTEN_FDS`).
    Systemd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Unix(PathBuf),
    Tcp(String),
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Listen,
    pub path: String,
    pub max_body: u64,
    pub request_timeout: Duration,
    pub header_timeout: Duration,
    /// A connection (HTTP/1 or HTTP/2) with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: AdminListen,
    /// `admin.token`: required on a TCP listener (every request there must carry
    /// `Authorization: Bearer <token>`); not checked on a unix socket, whose file mode is the
    /// access control.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct VerifySettings {
    pub secrets: Vec<Secret>,
    /// `cred:` references left unread by a load outside the service, in file order.
    pub service_only: Vec<String>,
    /// `None`: the freshness check is off (`max_skew = "0s"`).
    pub max_skew: Option<Duration>,
    pub appids: Vec<String>,
    pub insecure: bool,
}

impl VerifySettings {
    /// How long a (appid, nonce, timestamp) triple stays single-use: twice the skew window, so a
    /// triple cannot come back while its timestamp is still fresh.
    pub fn replay_window(&self) -> Duration {
        self.max_skew
            .map(|s| s * 2)
            .unwrap_or(Duration::from_secs(600))
    }
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub kind: StoreKind,
    pub path: PathBuf,
    pub max_queued: u64,
    pub workers: usize,
}

/// Where the queue and the replay table live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The redb file at `store.path`: survives restarts and crashes.
    Redb,
    /// Memory only: lost on restart. For tests and throwaway setups.
    Memory,
}

#[derive(Debug, Clone)]
pub struct PluginSettings {
    pub timeout: Duration,
    pub memory: u64,
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The backoff ceiling before attempt `attempt + 1` (attempt counts from 1): `backoff`
    /// doubling per attempt, capped at `max_backoff`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    /// Line of the rule's table in the file, for messages.
    pub line: usize,
    pub events: Vec<String>,
    pub matcher: GlobSet,
    pub when: Option<TemplateId>,
    pub sync: bool,
    pub fallback: Option<Bytes>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// At most this many runs of the rule at once (sync and queued together, counted by the
    /// rule's name across reloads: `deliver::Limits`).
    pub concurrency: Option<usize>,
    pub order_by: Option<TemplateId>,
    pub action: Action,
}

impl Rule {
    /// Whether the rule's `events` name `event`, or the readable alias of a numbered event
    /// (`cloud_recording.files_uploaded` for `cloud_recording.1`).
    pub fn matches_event(&self, event: &str) -> bool {
        self.matcher.is_match(event)
            || crate::events::alias(event).is_some_and(|a| self.matcher.is_match(a))
    }
}

#[derive(Debug)]
pub enum Action {
    Command(CommandAction),
    Forward(ForwardAction),
    Plugin(PluginAction),
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Command(_) => "command",
            Action::Forward(_) => "forward",
            Action::Plugin(_) => "plugin",
        }
    }
}

#[derive(Debug)]
pub struct CommandAction {
    pub argv: Vec<TemplateId>,
    pub env: Vec<(String, TemplateId)>,
    pub workdir: Option<PathBuf>,
}

#[derive(Debug)]
pub struct ForwardAction {
    pub url: TemplateId,
    /// The URL parsed once at load, when it is a literal (no template in it).
    pub parsed_url: Option<reqwest::Url>,
    pub method: reqwest::Method,
    pub headers: Vec<(reqwest::header::HeaderName, TemplateId)>,
    pub body: Option<TemplateId>,
}

#[derive(Debug)]
pub struct PluginAction {
    pub path: PathBuf,
    /// The rule's `config` table as JSON text (`"{}"` if none).
    pub config: String,
    /// Where the `plugin` key's value is, for errors found when compiling the file.
    pub line: usize,
    pub col: usize,
}

/// Which secret references a load reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Every one: the daemon, and `zimhook check` run by the service's unit.
    All,
    /// Every one but `cred:` references while `$CREDENTIALS_DIRECTORY` is not set (a shell
    /// beside the service): those are left unread, with a note in [`Snapshot::notes`] and
    /// their references in [`VerifySettings::service_only`].
    OutsideService,
    /// Only `admin.token` (outside the service, as above): the admin client needs nothing else.
    AdminOnly,
}

/// Reads and validates the config at `path`, resolving every secret.
pub fn load(path: &Path) -> Result<Snapshot, ConfigError> {
    load_with(path, Secrets::All)
}

/// Reads and validates the config at `path`, resolving the secrets `secrets` says.
pub fn load_with(path: &Path, secrets: Secrets) -> Result<Snapshot, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        errors: vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read config: {e}"),
        }],
    })?;
    load_str_with(path, &text, secrets)
}

/// Validates config text as if read from `path` (relative paths resolve against its folder).
pub fn load_str(path: &Path, text: &str) -> Result<Snapshot, ConfigError> {
    load_str_with(path, text, Secrets::All)
}

fn load_str_with(path: &Path, text: &str, secrets: Secrets) -> Result<Snapshot, ConfigError> {
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    compile::compile(path, text, hash, secrets)
}

/// The config path from the command line, else `$ZIMHOOK_CONFIG`, else `./config.toml`.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("ZIMHOOK_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(position(t, 0), (1, 1));
        assert_eq!(position(t, 6), (2, 1));
        assert_eq!(position(t, 9), (2, 3));
    }

    #[test]
    fn backoff_ceiling_doubles_to_the_cap() {
        let p = RetryPolicy {
            attempts: 8,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        };
        assert_eq!(p.ceiling(1), Duration::from_secs(1));
        assert_eq!(p.ceiling(2), Duration::from_secs(2));
        assert_eq!(p.ceiling(3), Duration::from_secs(4));
        assert_eq!(p.ceiling(4), Duration::from_secs(5));
        assert_eq!(p.ceiling(40), Duration::from_secs(5));
    }
}
