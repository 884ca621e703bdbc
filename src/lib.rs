//! zimhook receives ZEGOCLOUD server callbacks, verifies them and routes each one, by rules in a
//! TOML file that is reloaded while it runs, to shell commands, HTTP forwards and WebAssembly
//! plugins.
//!
//! # Layout
//!
//! The path of one callback is the module map:
//!
//! ```text
//! server ─► receive ─► verify ─► route ─┬─► sync: act now ─────────────► reply
//!  (HTTP)   (decode)   (signature,       └─► queued: deliver (store) ──► reply 200
//!                       skew, replay)                 │
//!                                        deliver workers ─► act: command | forward | plugin
//! ```
//!
//! - [`server`]: listener, HTTP/1.1 and HTTP/2 connections, limits, graceful drain.
//! - [`handle`]: the steps of one callback, in order, and the reply it gets.
//! - [`receive`]: body decoding (JSON or form) into a [`receive::Callback`].
//! - [`verify`]: signature, freshness, appid allow-list.
//! - [`route`]: which rules a callback matches (its template context is `template::callback_context`).
//! - [`deliver`]: the delivery queue, its store, workers, retries and dead letters.
//! - [`act`]: running one action once (command, forward, plugin).
//! - [`wasm`]: the WebAssembly host (wasmtime) that plugin actions run on, and the catalog of
//!   one config's compiled plugins.
//! - [`config`]: TOML → validated [`config::Snapshot`], with positions on every error.
//! - [`reload`]: watching the config and plugins, SIGHUP, atomic swaps.
//! - [`systemd`]: readiness, reload and stop notifications, the watchdog.
//! - [`admin`]: status, metrics and the delivery admin API on their own listener.
//! - [`metrics`]: the Prometheus metrics.
//! - [`template`]: the template engine shared by `when`, argv, URLs, headers and bodies.
//! - [`events`]: the catalog of ZEGO event names.
//! - [`cli`]: the `check`, `reload`, `sign` and `send` commands; [`daemon`]: starting and
//!   running a daemon (`run`).
//! - [`shared`]: the state the parts of a running daemon share.
//! - [`app`]: the composition root that builds and wires the parts.
//!
//! Dependencies point one way, from the bottom (`template`, `receive`, `wasm`) through
//! `config`, `verify`/`route`, `act`, `deliver`, `handle` and the listeners up to `app` and
//! `daemon`; `tests/structure.rs` keeps it so.
#![forbid(unsafe_code)]

pub mod act;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod events;
pub mod handle;
pub mod logging;
pub mod metrics;
pub mod receive;
pub mod reload;
pub mod route;
pub mod server;
pub mod shared;
pub mod systemd;
pub mod template;
pub mod verify;
pub mod wasm;
