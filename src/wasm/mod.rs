//! The WebAssembly host: runs components of the `zimhook:plugin/handler` world
//! (`plugins/wit/handler.wit`) with wasmtime. (The `plugin` action that uses it is
//! `act::plugin`.)
//!
//! This module owns the wasmtime side and nothing else: one [`PluginHost`] (one `Engine`, one
//! epoch ticker thread, one linker) for the daemon; [`PluginHost::load`] compiles a file into a
//! [`Plugin`] once, off the request path; a [`Catalog`] holds one config's compiled plugins;
//! [`Plugin::handle`] runs one event in a fresh instance.
//! Which rule runs which plugin, with what config and limits, and what happens to its answer
//! and emitted events, belongs to the caller. It depends on no other zimhook module.
//!
//! Every call gets a new `Store` with
//! - a memory cap ([`CallLimits::memory`], through a `ResourceLimiter`),
//! - a deadline ([`CallLimits::timeout`], through epoch interruption: the ticker advances the
//!   epoch every millisecond, and the first tick past the deadline stops the guest),
//! - the whole WASI 0.2 surface, closed: no preopened directories, no environment, no
//!   arguments, no sockets or name lookup, empty stdin; stdout and stderr go to capped buffers
//!   that are written to the log after the call.
//!
//! Calls are async (run them inside a Tokio runtime with its timer on): the guest yields to
//! the executor at every tick, so even a plugin that loops forever holds a tokio worker for at
//! most a millisecond at a time, and for no longer than its timeout in total. A Tokio timer
//! covers what epochs cannot: a plugin waiting in a host call (a WASI sleep).
//!
//! Instances come from wasmtime's pooling allocator and are pre-linked (`HandlerPre`), so a
//! call costs microseconds: see `benches/plugin.rs`.
//!
//! # Layout
//! - `mod.rs`: the public API: host, loading, calling.
//! - `error.rs`: what can go wrong, as the caller sees it.
//! - `store.rs`: what one call owns: WASI context, memory limiter, captured output, `host.log`.
//! - `ticker.rs`: the epoch ticker thread.

mod error;
mod store;
mod ticker;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy};
use wasmtime::{PoolingAllocationConfig, Store, Trap, UpdateDeadline};

pub use self::error::{LoadError, PluginError};
use self::store::CallState;
use self::ticker::EpochTicker;

/// Bindings of `plugins/wit/handler.wit`, generated at build time.
mod bindings {
    wasmtime::component::bindgen!({
        path: "plugins/wit",
        world: "handler",
        exports: { default: async },
    });
}

use bindings::{Handler, HandlerPre};

/// The world every plugin must implement, for messages.
const WORLD: &str = "zimhook:plugin/handler@0.1.0";

/// Settings fixed for the daemon's lifetime (they shape the engine and its instance pool).
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// Linear memory per instance (per memory, for the rare component with several), in bytes:
    /// the size of a pool slot, and the most any call's [`CallLimits::memory`] can get.
    pub memory_limit: usize,
    /// Plugin instances alive at once, across all plugins; one more call fails to instantiate
    /// until one finishes.
    pub max_instances: u32,
    /// Where compiled plugins are cached, so that a restart or reload does not compile an
    /// unchanged plugin again; `None` compiles every load. Entries are keyed by a hash of the
    /// file and of everything that shapes compiled code (wasmtime's version, settings, CPU
    /// features), and old ones are removed in the background. Only the daemon should be able
    /// to write there: the cache holds native code it will run.
    pub cache_dir: Option<PathBuf>,
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            memory_limit: 64 << 20,
            max_instances: 100,
            cache_dir: None,
        }
    }
}

/// The daemon's wasmtime: one engine, one epoch ticker, one linker. Cheap to clone (all clones
/// share them); the ticker stops when the last clone, and the last [`Plugin`], is dropped.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    engine: Engine,
    linker: Linker<CallState>,
    settings: HostSettings,
    /// The engine's compilation cache (a handle on the same counters), for `cache_stats`.
    cache: Option<Cache>,
    ticker: EpochTicker,
}

impl fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHost")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Creates the engine (epoch interruption, pooling allocator sized by `settings`), its
    /// linker, and starts the epoch ticker thread.
    pub fn new(settings: HostSettings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            settings.memory_limit > 0,
            "plugin memory limit must be above 0"
        );
        anyhow::ensure!(
            settings.max_instances > 0,
            "plugin instance limit must be above 0"
        );
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(&settings)));
        let cache = match &settings.cache_dir {
            Some(dir) => Some(
                open_cache(dir)
                    .with_context(|| format!("cannot use plugin cache {}", dir.display()))?,
            ),
            None => None,
        };
        config.cache(cache.clone());
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;

        let ticker = EpochTicker::start(engine.clone())?;
        Ok(PluginHost {
            inner: Arc::new(HostInner {
                engine,
                linker,
                settings,
                cache,
                ticker,
            }),
        })
    }

    /// Loads that found their compiled code in the cache, and loads that compiled (and stored
    /// it); `None` without a cache.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.inner.cache.as_ref().map(|cache| CacheStats {
            hits: cache.cache_hits(),
            misses: cache.cache_misses(),
        })
    }

    /// Reads, compiles (or loads from the cache) and pre-instantiates the plugin at `path`,
    /// checking that it is a component of the `zimhook:plugin/handler` world.
    ///
    /// Blocking: milliseconds from the cache, up to a second or so to compile: run it off the
    /// request path (`spawn_blocking`, or the reload task).
    pub fn load(&self, path: &Path) -> Result<Plugin, LoadError> {
        let shown = path.display();
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        check_header(&bytes).map_err(|what| LoadError::NotComponent(format!("{shown} {what}")))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        // A cache hit (see `HostSettings::cache_dir`) skips the compilation inside.
        let component = Component::new(&self.inner.engine, &bytes)
            .map_err(|e| LoadError::Compile(format!("cannot compile {shown}: {e:#}")))?;

        let instance_pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            LoadError::WrongWorld(format!(
                "{shown} needs imports outside the {WORLD} world and WASI 0.2: {e:#}"
            ))
        })?;
        let pre = HandlerPre::new(instance_pre).map_err(|e| {
            LoadError::WrongWorld(format!(
                "{shown} does not export `handle` of {WORLD}: {e:#}"
            ))
        })?;

        let name = path
            .file_name()
            .map_or_else(|| shown.to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                host: self.inner.clone(),
                pre,
                path: path.to_owned(),
                name: name.into(),
                digest,
            }),
        })
    }
}

/// wasmtime's own compilation cache in `dir`: keyed, written atomically, read into memory (not
/// mapped), pruned by a background thread; and no `unsafe` here.
fn open_cache(dir: &Path) -> anyhow::Result<Cache> {
    let dir = std::path::absolute(dir)?;
    std::fs::create_dir_all(&dir)?;
    let mut config = CacheConfig::new();
    config.with_directory(dir);
    Ok(Cache::new(config)?)
}

/// See [`PluginHost::cache_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: usize,
    pub misses: usize,
}

/// The pool that every call's instance, memory, tables and async stack come from.
fn pooling(settings: &HostSettings) -> PoolingAllocationConfig {
    let n = settings.max_instances;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        // A Rust plugin is a few core instances (the program plus wit-component shims) with
        // one memory and a few tables; leave room for other toolchains' layouts.
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(8))
        .total_stacks(n)
        .max_core_instances_per_component(32)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_memory_size(settings.memory_limit)
        // Return memory to the OS in batches rather than one madvise per instance.
        .decommit_batch_size(16);
    // A fresh instance per call makes resetting memory the largest cost of a call: by
    // default every page a call touched is dropped (madvise) and faults in again next time.
    // Where Linux can tell which pages a call dirtied (PAGEMAP_SCAN, 6.7+), reset those in
    // place instead and keep them resident: this halves the cost of a small call. Without
    // it, keeping memory resident would mean clearing the whole budget on every call, which
    // costs more than it saves.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE);
    }
    pool
}

/// Bytes of linear memory and of each table kept resident per pool slot between calls (when
/// PAGEMAP_SCAN is available): enough for what a small plugin touches, little enough that a
/// hundred warm slots hold at most about 100 MiB.
const KEEP_RESIDENT_MEMORY: usize = 1 << 20;
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

/// Why a file is not a component, if the header says so (`Err` completes "FILE ...").
fn check_header(bytes: &[u8]) -> Result<(), &'static str> {
    match bytes {
        [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => {
            Err("is a core module, not a component: build it for wasm32-wasip2")
        }
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => Ok(()),
        [0, b'a', b's', b'm', ..] => Err("is a WebAssembly binary of an unknown version"),
        _ => Err("is not a WebAssembly component (no `\\0asm` header)"),
    }
}

/// A compiled, pre-linked plugin. Cheap to clone; keeps its [`PluginHost`]'s engine alive.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    host: Arc<HostInner>,
    pre: HandlerPre<CallState>,
    path: PathBuf,
    /// The file name: the `plugin` field of its log lines.
    name: Arc<str>,
    digest: String,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.inner.path)
            .field("digest", &self.inner.digest)
            .finish_non_exhaustive()
    }
}

/// The compiled plugins one config runs, by file. Cheap to clone.
#[derive(Default, Clone)]
pub struct Catalog(std::collections::HashMap<PathBuf, Plugin>);

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Catalog {
    pub fn get(&self, path: &Path) -> Option<&Plugin> {
        self.0.get(path)
    }
    pub fn contains(&self, path: &Path) -> bool {
        self.0.contains_key(path)
    }
    pub fn insert(&mut self, path: PathBuf, plugin: Plugin) {
        self.0.insert(path, plugin);
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One event for [`Plugin::handle`]: the WIT `event` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEvent {
    pub name: String,
    pub appid: String,
    /// The callback object as JSON text.
    pub payload: String,
    /// The rule's `config` as JSON text (`"{}"` if none).
    pub config: String,
}

/// Limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Wall-clock time for instantiation and the call together, measured to about a
    /// millisecond.
    pub timeout: Duration,
    /// Linear memory in bytes (per memory); capped at [`HostSettings::memory_limit`].
    pub memory: usize,
}

/// What a plugin returned with `ok`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOutcome {
    /// The reply for a sync rule (JSON text, unchecked).
    pub response: Option<String>,
    pub emit: Vec<Emitted>,
}

/// An event a plugin asks zimhook to route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub name: String,
    /// JSON object text, unchecked.
    pub payload: String,
}

impl Plugin {
    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The sha256 of the file (lowercase hex).
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// Runs `event` in a fresh instance within `limits`. Whatever the plugin does (loop, sleep,
    /// grow, trap), the instance is gone afterwards and the next call starts clean.
    ///
    /// Must run inside a Tokio runtime with its timer enabled.
    pub async fn handle(
        &self,
        event: PluginEvent,
        limits: CallLimits,
    ) -> Result<PluginOutcome, PluginError> {
        let inner = &*self.inner;
        let host = &*inner.host;
        let memory = limits.memory.min(host.settings.memory_limit);
        let mut store = Store::new(&host.engine, CallState::new(inner.name.clone(), memory));
        store.limiter(|state| &mut state.limiter);
        let deadline = Instant::now() + limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let _busy = host.ticker.busy();
        let event = bindings::zimhook::plugin::types::Event {
            name: event.name,
            appid: event.appid,
            payload: event.payload,
            config: event.config,
        };
        let call = async {
            let instance = (inner.pre.instantiate_async(&mut store).await)
                .map_err(|e| (e, Stage::Instantiate))?;
            (instance.call_handle(&mut store, &event).await).map_err(|e| (e, Stage::Call))
        };
        // Epoch interruption stops wasm code, not a host call it waits in (a WASI sleep or
        // poll): the timer catches those. Dropping the call unwinds the instance.
        let result = tokio::time::timeout_at(deadline.into(), call).await;
        store.data().log_output();
        match result {
            Ok(Ok(Ok(outcome))) => Ok(PluginOutcome {
                response: outcome.response,
                emit: outcome
                    .emit
                    .into_iter()
                    .map(|e| Emitted {
                        name: e.name,
                        payload: e.payload,
                    })
                    .collect(),
            }),
            Ok(Ok(Err(message))) => Err(PluginError::Returned(message)),
            Ok(Err((e, stage))) => Err(call_error(e, &store, limits, memory, stage)),
            Err(_elapsed) => Err(PluginError::Timeout(limits.timeout)),
        }
    }
}

enum Stage {
    Instantiate,
    Call,
}

/// Names a failed call for what it was: late, out of memory, or a trap.
fn call_error(
    error: wasmtime::Error,
    store: &Store<CallState>,
    limits: CallLimits,
    memory: usize,
    stage: Stage,
) -> PluginError {
    if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return PluginError::Timeout(limits.timeout);
    }
    if store.data().limiter.hit {
        return PluginError::MemoryLimit(memory);
    }
    // The wasm backtrace is for the plugin's author, not for the error message.
    tracing::debug!(plugin = &*store.data().plugin, "plugin failed: {error:?}");
    let mut message = error.root_cause().to_string();
    if let Some(said) = store.data().stderr_summary() {
        message = format!("{message} (stderr: {said})");
    }
    match stage {
        Stage::Instantiate => PluginError::Instantiate(message),
        Stage::Call => PluginError::Trap(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tells_core_modules_from_components() {
        let core = [0, b'a', b's', b'm', 1, 0, 0, 0];
        let component = [0, b'a', b's', b'm', 0x0d, 0, 1, 0];
        assert!(check_header(&core).unwrap_err().contains("core module"));
        assert_eq!(check_header(&component), Ok(()));
        assert!(
            check_header(b"hello")
                .unwrap_err()
                .contains("not a WebAssembly")
        );
        assert!(check_header(&[]).is_err());
    }

    #[test]
    fn host_and_plugins_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PluginHost>();
        send_sync::<Plugin>();
    }
}
