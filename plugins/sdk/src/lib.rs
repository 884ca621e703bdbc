//! Write zimhook plugins in Rust.
//!
//! A plugin is a WebAssembly component of the `zimhook:plugin/handler` world
//! (`plugins/wit/handler.wit`). zimhook instantiates it afresh for every event a rule routes to
//! it and calls its one export, `handle`. With this crate a plugin is a type that implements
//! [`Handler`] plus one macro line:
//!
//! ```ignore
//! use zimhook_plugin::{Answer, BeforeSendMsg, Event, Handler, Outcome};
//!
//! struct Moderate;
//!
//! impl Handler for Moderate {
//!     fn handle(event: Event) -> Result<Outcome, String> {
//!         let Some(msg) = event.typed::<BeforeSendMsg>()? else {
//!             return Ok(Outcome::ok());
//!         };
//!         if msg.msg_body.contains("spam") {
//!             return Ok(Answer::block("no spam here").into());
//!         }
//!         Ok(Answer::send().into())
//!     }
//! }
//!
//! zimhook_plugin::export!(Moderate);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2`, which writes a component directly:
//! `cargo build --release --target wasm32-wasip2`.
//!
//! # Layout
//!
//! - [`Handler`] and [`export!`]: the entry point.
//! - [`Event`] accessors and the typed ZIM callbacks ([`BeforeSendMsg`], [`CallTimeout`],
//!   the untyped [`Fields`]) live in `event`; other products' callbacks
//!   ([`CloudRecordingStatus`], [`AgentEvent`]) in `products`.
//! - [`Outcome`], [`Answer`] (the `before_send_msg` reply) and [`Emitted`] live in `outcome`.
//! - [`log`]: messages for the daemon's log, through the host.
//!
//! The plugin runs with no filesystem, no network, no environment and a time and memory limit.
//! Anything it prints to stdout or stderr ends up in the daemon's log (capped); prefer [`log`].

// The generated bindings name this crate by its absolute path (`runtime_path` below) so that
// the code `export!` expands in a plugin's crate finds the `wit_bindgen` runtime here; this makes that
// path resolve inside this crate too.
extern crate self as zimhook_plugin;

mod event;
pub mod log;
mod outcome;
mod products;

pub use event::{BeforeSendMsg, CallTimeout, Fields, TypedEvent};
pub use outcome::Answer;
pub use products::{
    AgentData, AgentEvent, AgentLatency, CloudRecordingStatus, RecordingDetail, RecordingEvent,
    RecordingFile,
};

/// The generated bindings of `plugins/wit/handler.wit`. Use the re-exports at the crate root;
/// this module is public only so that [`export!`] can reach it from the plugin's crate.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code: a record of four strings is eight words
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "handler",
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
        runtime_path: "::zimhook_plugin::__wit_bindgen_rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen::rt as __wit_bindgen_rt;

/// Log levels of [`log::log`].
pub use bindings::zimhook::plugin::host::Level;
/// One event the plugin hands back to zimhook, routed through the rules like a callback.
pub use bindings::zimhook::plugin::types::Emitted;
/// One callback (or emitted event) routed to the plugin: `name`, `appid`, `payload` (the
/// callback object as JSON text) and `config` (the rule's `config` as JSON text, `"{}"` if none).
pub use bindings::zimhook::plugin::types::Event;
/// What `handle` returns: the reply for a sync rule (if any) and events to emit.
pub use bindings::zimhook::plugin::types::Outcome;

/// What a plugin implements: called once per event, in a fresh instance each time.
///
/// Return `Ok` for success (the rule's delivery succeeded, and for a sync rule
/// `Outcome::response` is the reply) or `Err(message)` for failure. A failure is permanent: a
/// plugin is a pure function of its input, so running it again would fail again. A queued
/// rule's delivery becomes a dead letter at once (no retries; `zimhook deliveries retry` runs it
/// again after a fix), and a sync rule answers its `fallback`. A panic, a timeout or running out
/// of memory count as failure too, with a worse message.
pub trait Handler {
    fn handle(event: Event) -> Result<Outcome, String>;
}

/// Exports a [`Handler`] as the plugin's `handle` function: `zimhook_plugin::export!(MyPlugin);`
/// once, at the top level of the plugin's crate.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            struct ZimhookPluginExport;

            impl $crate::bindings::Guest for ZimhookPluginExport {
                fn handle(
                    event: $crate::Event,
                ) -> ::core::result::Result<$crate::Outcome, ::std::string::String> {
                    <$plugin as $crate::Handler>::handle(event)
                }
            }

            $crate::bindings::__export_handler_world!(ZimhookPluginExport with_types_in $crate::bindings);
        };
    };
}
