//! The `zimhook` binary: command line, logging, exit codes. Everything else is in the library.
#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use zimhook::{admin, cli, config, daemon, logging};

// glibc's malloc showed as a quarter of the daemon's CPU under load (arena contention between
// the tokio workers and the store's writer thread); mimalloc is made for this pattern.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receives ZEGOCLOUD server callbacks, verifies them and routes them to commands, HTTP
/// forwards and WebAssembly plugins.
#[derive(Parser)]
#[command(name = "zimhook", version, propagate_version = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (default: $ZIMHOOK_CONFIG, else ./config.toml)
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default)
    Run,
    /// Validate the config; exit 0 if usable, 78 if not
    Check,
    /// Have the running daemon reload its config; exit 0 if applied, 78 if refused
    ///
    /// Asks through the admin endpoint and waits for the outcome. A refused config changes
    /// nothing: the running one keeps serving. Exit 1 when the daemon cannot be reached.
    Reload,
    /// Print the signature ZEGO would send for these values
    Sign {
        #[arg(long)]
        secret: String,
        #[arg(long)]
        timestamp: String,
        #[arg(long)]
        nonce: String,
    },
    /// List, show, retry or drop deliveries of a running daemon (through its admin endpoint)
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
        /// Print JSON instead of a table
        #[arg(long, global = true)]
        json: bool,
    },
    /// Send a signed callback for EVENT (to the config's own listener unless --url)
    Send {
        /// Where to POST (default: the config's listener and path)
        #[arg(long)]
        url: Option<String>,
        /// Sign with this CallbackSecret (default: the config's first verify.secrets entry)
        #[arg(long, conflicts_with = "secret_file")]
        secret: Option<String>,
        /// Sign with the CallbackSecret in FILE (trailing newline removed), e.g.
        /// /etc/zimhook/callback-secret when the config's secret is a service credential
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
        /// appid to send (default: the config's first allowed appid, else "1")
        #[arg(long)]
        appid: Option<String>,
        /// Event name, e.g. call_timeout
        event: String,
        /// Business fields: JSON text, @FILE, or - for stdin
        data: Option<String>,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// Pending deliveries (or dead letters with --dead, orphaned ones with --orphaned), oldest first
    List {
        #[arg(long, conflicts_with = "orphaned")]
        dead: bool,
        /// Only pending deliveries whose rule is in no live config
        #[arg(long)]
        orphaned: bool,
    },
    /// One delivery with its body and attempt history
    Show { id: String },
    /// Make a dead letter pending again (or every dead letter with --all-dead)
    Retry {
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<String>,
        #[arg(long)]
        all_dead: bool,
    },
    /// Drop a pending delivery or a dead letter
    Drop { id: String },
    /// Re-target the pending deliveries of rule OLD (e.g. orphaned by a rename) to rule NEW
    Move {
        #[arg(long, value_name = "OLD")]
        rule: String,
        #[arg(long, value_name = "NEW")]
        to: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let path = config::resolve_path(args.config.clone());
    let code = match args.command.unwrap_or(Command::Run) {
        Command::Check => cli::check(&path),
        Command::Reload => runtime().block_on(cli::reload(&path)),
        Command::Sign {
            secret,
            timestamp,
            nonce,
        } => {
            println!("{}", cli::sign(&secret, &timestamp, &nonce));
            0
        }
        Command::Send {
            url,
            secret,
            secret_file,
            appid,
            event,
            data,
        } => runtime().block_on(async {
            let sign_with = match (secret, secret_file) {
                (Some(text), _) => cli::SignWith::Text(text),
                (None, Some(file)) => cli::SignWith::File(file),
                (None, None) => cli::SignWith::Config,
            };
            match cli::send(&path, url, appid, sign_with, &event, data.as_deref()).await {
                Ok(code) => code,
                Err(e) => {
                    logging::report(logging::Priority::Error, &format!("zimhook send: {e:#}"));
                    1
                }
            }
        }),
        Command::Deliveries { command, json } => runtime().block_on(async {
            let command = match command {
                DeliveriesCommand::List { dead, orphaned } => admin::client::Command::List {
                    state: match (dead, orphaned) {
                        (true, _) => "dead",
                        (_, true) => "orphaned",
                        _ => "pending",
                    },
                },
                DeliveriesCommand::Show { id } => admin::client::Command::Show { id },
                DeliveriesCommand::Retry { id, .. } => admin::client::Command::Retry { id },
                DeliveriesCommand::Drop { id } => admin::client::Command::Drop { id },
                DeliveriesCommand::Move { rule, to } => admin::client::Command::Move { rule, to },
            };
            match cli::admin_settings(&path) {
                Ok(settings) => match admin::client::run(&settings, command, json).await {
                    Ok(code) => code,
                    Err(e) => {
                        logging::report(
                            logging::Priority::Error,
                            &format!("zimhook deliveries: {e:#}"),
                        );
                        1
                    }
                },
                Err(code) => code,
            }
        }),
        Command::Run => {
            let _log = init_logging(args.log_format, &path);
            runtime().block_on(async {
                match daemon::run(&path).await {
                    Ok(()) => 0,
                    Err(daemon::DaemonError::Config(e)) => {
                        for d in &e.errors {
                            tracing::error!("{d}");
                        }
                        cli::EXIT_CONFIG
                    }
                    Err(e @ daemon::DaemonError::Setup(_)) => {
                        tracing::error!("{e}");
                        cli::EXIT_CONFIG
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        1
                    }
                }
            })
        }
    };
    ExitCode::from(code as u8)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Level from `$ZIMHOOK_LOG`, else the config's `log.level`, else info; the buffer from
/// `log.buffer_lines`. Read before the config is loaded (and checked), so the log starts first.
fn init_logging(format: LogFormat, config: &std::path::Path) -> logging::LogGuard {
    let log = std::fs::read_to_string(config)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| t.get("log")?.as_table().cloned())
        .unwrap_or_default();
    let level = std::env::var("ZIMHOOK_LOG")
        .ok()
        .or_else(|| log.get("level")?.as_str().map(String::from));
    let buffer = log
        .get("buffer_lines")
        .and_then(toml::Value::as_integer)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| logging::BUFFER_LINES.contains(n))
        .unwrap_or(logging::BUFFERED_LINES);
    let format = match format {
        LogFormat::Text => logging::LogFormat::Text,
        LogFormat::Json => logging::LogFormat::Json,
    };
    logging::init(format, level.as_deref().unwrap_or("info"), buffer)
}
