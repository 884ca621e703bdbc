//! Values with units and indirections: durations (`"250ms"`), sizes (`"1MiB"`) and secrets
//! (`"env:NAME"`, `"file:PATH"`, `"cred:NAME"` or a literal).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use super::raw::RawSize;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?}: {e} (write e.g. \"250ms\", \"30s\", \"5m\")")
    })
}

pub fn parse_size(size: &RawSize) -> Result<u64, String> {
    match size {
        RawSize::Bytes(n) => Ok(*n),
        RawSize::Text(text) => text
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|e| format!("invalid size {text:?}: {e} (write e.g. 1048576 or \"1MiB\")")),
    }
}

/// A secret's value. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The credential's name when `spec` is a `cred:` reference that cannot be read here: no
/// `$CREDENTIALS_DIRECTORY`, so this process is not the service systemd loaded it for.
pub fn service_only(spec: &str) -> Option<&str> {
    let name = spec.strip_prefix("cred:")?;
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .is_none()
        .then_some(name)
}

/// Resolves a secret reference. `base` is the config file's folder (for relative `file:` paths).
pub fn resolve_secret(spec: &str, base: &Path) -> Result<Secret, String> {
    let value = if let Some(name) = spec.strip_prefix("env:") {
        std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?
    } else if let Some(path) = spec.strip_prefix("file:") {
        let path = base.join(path);
        std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string()
    } else if let Some(name) = spec.strip_prefix("cred:") {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
            format!("credential {name}: $CREDENTIALS_DIRECTORY is not set (is LoadCredential= in the unit?)")
        })?;
        let path = Path::new(&dir).join(name);
        std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read credential {}: {e}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string()
    } else {
        spec.to_string()
    };
    // A blank secret is a mistake (an empty file, a variable set to ""), never a key: an HMAC
    // key or a bearer token of spaces is one anybody can guess.
    if value.trim().is_empty() {
        let what = if value.is_empty() { "empty" } else { "blank" };
        return Err(match spec.split_once(':') {
            Some((kind @ ("env" | "file" | "cred"), _)) => {
                format!("secret {spec:?} is {what} (the {kind} source resolves to no text)")
            }
            _ => format!("secret is {what}"),
        });
    }
    Ok(Secret(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&RawSize::Text("1MiB".into())).unwrap(), 1 << 20);
        assert_eq!(
            parse_size(&RawSize::Text("64 KiB".into())).unwrap(),
            64 << 10
        );
        assert_eq!(parse_size(&RawSize::Bytes(10)).unwrap(), 10);
        assert!(parse_size(&RawSize::Text("lots".into())).is_err());
    }

    #[test]
    fn secrets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "from-file\n").unwrap();
        assert_eq!(
            resolve_secret("file:s", dir.path()).unwrap().expose(),
            "from-file"
        );
        assert_eq!(resolve_secret("lit", dir.path()).unwrap().expose(), "lit");
        assert!(resolve_secret("env:ZIMHOOK_TEST_SURELY_UNSET", dir.path()).is_err());
        // Blank is never a secret, whatever its source.
        std::fs::write(dir.path().join("blank"), " \t\n").unwrap();
        for spec in ["", "   ", "file:blank"] {
            let err = resolve_secret(spec, dir.path()).unwrap_err();
            assert!(
                err.contains("empty") || err.contains("blank"),
                "{spec:?}: {err}"
            );
        }
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(***)");
    }
}
