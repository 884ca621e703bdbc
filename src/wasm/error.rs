//! What can go wrong loading or calling a plugin, in messages fit for an operator.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why a plugin could not be loaded. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a component: a core module, or not WebAssembly at all.
    #[error("{0}")]
    NotComponent(String),
    /// A component, but not of the `zimhook:plugin/handler` world.
    #[error("{0}")]
    WrongWorld(String),
    #[error("{0}")]
    Compile(String),
}

/// Why a call did not return `ok`.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin did not finish within {}", DisplayDuration(*.0))]
    Timeout(Duration),
    #[error("plugin went over its memory limit of {}", DisplayBytes(*.0))]
    MemoryLimit(usize),
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin returned `err(message)`.
    #[error("plugin returned an error: {0}")]
    Returned(String),
    /// No instance could be made: the instance pool is full, or the plugin's start-up failed.
    #[error("cannot instantiate plugin: {0}")]
    Instantiate(String),
}

struct DisplayDuration(Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms > 0 && ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else if ms > 0 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

struct DisplayBytes(usize);

impl fmt::Display for DisplayBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: usize = 1 << 20;
        const KIB: usize = 1 << 10;
        match self.0 {
            n if n >= MIB && n.is_multiple_of(MIB) => write!(f, "{}MiB", n / MIB),
            n if n >= KIB && n.is_multiple_of(KIB) => write!(f, "{}KiB", n / KIB),
            n => write!(f, "{n} bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        let e = PluginError::Timeout(Duration::from_millis(500));
        assert_eq!(e.to_string(), "plugin did not finish within 500ms");
        let e = PluginError::Timeout(Duration::from_secs(2));
        assert_eq!(e.to_string(), "plugin did not finish within 2s");
        let e = PluginError::MemoryLimit(64 << 20);
        assert_eq!(e.to_string(), "plugin went over its memory limit of 64MiB");
        assert_eq!(DisplayBytes(1000).to_string(), "1000 bytes");
    }
}
