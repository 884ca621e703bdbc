//! The on-disk cache of compiled plugins, so a restart or reload does not compile an unchanged
//! plugin again (compiling takes tens to hundreds of milliseconds; loading a cached one, about
//! one).
//!
//! An entry is `<sha256 of the .wasm>-<engine hash>.cwasm`: the engine hash covers wasmtime's
//! version and every setting that changes compiled code, so an upgrade or a new setting misses
//! instead of loading incompatible code. The cache is best effort: any failure to read or write
//! it is logged and the plugin is compiled as if there were none.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Entries kept; beyond this the least recently used ones are removed.
const MAX_ENTRIES: usize = 128;

pub(super) struct ComponentCache {
    dir: PathBuf,
    engine_hash: String,
}

impl ComponentCache {
    pub(super) fn new(engine: &Engine, dir: PathBuf) -> Self {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = hex::encode(&hasher.0.finalize()[..8]);
        ComponentCache { dir, engine_hash }
    }

    fn entry(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.cwasm", self.engine_hash))
    }

    /// The cached compilation of the file whose sha256 is `digest`, if there is a usable one.
    pub(super) fn get(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let entry = self.entry(digest);
        // Read it whole rather than `deserialize_file`, which maps the file: code mapped from a
        // file that someone later truncates or rewrites in place dies with SIGBUS.
        let bytes = fs::read(&entry).ok()?;
        // SAFETY: `deserialize` runs the native code in these bytes, so they must come from
        // `Component::serialize`. Entries are written only by `put` below, into a directory
        // created owner-only, and renamed into place whole; wasmtime checks the header and the
        // engine compatibility itself. Whoever can write this directory can run code in the
        // daemon, just as whoever can replace its binary.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => {
                // Mark it recently used, for pruning.
                if let Ok(file) = fs::File::options().append(true).open(&entry) {
                    let _ = file.set_modified(SystemTime::now());
                }
                Some(component)
            }
            Err(e) => {
                tracing::warn!(entry = %entry.display(), error = %e, "ignoring unusable plugin cache entry");
                let _ = fs::remove_file(&entry);
                None
            }
        }
    }

    /// Stores `component`, compiled from the file whose sha256 is `digest`.
    pub(super) fn put(&self, digest: &str, component: &Component) {
        if let Err(e) = self.try_put(digest, component) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write plugin cache entry");
        }
        self.prune();
    }

    fn try_put(&self, digest: &str, component: &Component) -> anyhow::Result<()> {
        let bytes = component.serialize()?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let entry = self.entry(digest);
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        let mut file = fs::File::create(&tmp)?;
        let written = file.write_all(&bytes).and_then(|()| file.sync_all());
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &entry)) {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        Ok(())
    }

    /// Removes the least recently used entries beyond `MAX_ENTRIES`.
    fn prune(&self) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, PathBuf)> = dir
            .filter_map(|e| {
                let e = e.ok()?;
                let path = e.path();
                let is_entry = path.extension().is_some_and(|x| x == "cwasm");
                is_entry.then_some((e.metadata().ok()?.modified().ok()?, path))
            })
            .collect();
        if entries.len() <= MAX_ENTRIES {
            return;
        }
        entries.sort();
        for (_, path) in &entries[..entries.len() - MAX_ENTRIES] {
            let _ = fs::remove_file(path);
        }
    }
}

/// The sha256 hex digest of `bytes`.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Feeds `Hash` output into sha256, for a stable digest of wasmtime's compatibility hash
/// (`DefaultHasher` may change between Rust releases).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        // Never called by `Hash` impls; the digest is read from the inner `Sha256`.
        0
    }
}
