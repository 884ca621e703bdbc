//! `zimhook deliveries ...`: talks to a running daemon's admin endpoint and prints a table (or
//! JSON with `--json`). On a TCP endpoint it sends `admin.token` from the same config as the
//! bearer token.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{AdminListen, AdminSettings, Secret};

/// One request to the admin endpoint; the reply parsed as JSON.
pub async fn request(
    admin: &AdminSettings,
    method: Method,
    path: &str,
) -> anyhow::Result<(StatusCode, Value)> {
    match &admin.listen {
        AdminListen::Unix(p) => {
            let stream = tokio::net::UnixStream::connect(p).await.with_context(|| {
                format!(
                    "cannot connect to the admin socket {} (is zimhook running?)",
                    p.display()
                )
            })?;
            send(stream, method, path, None).await
        }
        AdminListen::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| {
                    format!("cannot connect to the admin endpoint {addr} (is zimhook running?)")
                })?;
            send(stream, method, path, admin.token.as_ref()).await
        }
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    method: Method,
    path: &str,
    token: Option<&Secret>,
) -> anyhow::Result<(StatusCode, Value)> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "zimhook");
    if let Some(token) = token {
        let mut value = hyper::header::HeaderValue::try_from(format!("Bearer {}", token.expose()))
            .context("admin.token cannot be sent in an HTTP header")?;
        value.set_sensitive(true);
        req = req.header(hyper::header::AUTHORIZATION, value);
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    let value = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()));
    Ok((status, value))
}

/// What `zimhook deliveries` was asked.
pub enum Command {
    /// `state`: pending, orphaned or dead.
    List {
        state: &'static str,
    },
    Show {
        id: String,
    },
    Retry {
        id: Option<String>,
    },
    Drop {
        id: String,
    },
    Move {
        rule: String,
        to: String,
    },
}

/// Runs a `deliveries` command; prints the result; returns the exit code.
pub async fn run(admin: &AdminSettings, command: Command, json: bool) -> anyhow::Result<i32> {
    let (method, path) = match &command {
        Command::List { state } => (Method::GET, format!("/deliveries?state={state}")),
        Command::Show { id } => (Method::GET, format!("/deliveries/{id}")),
        Command::Retry { id: Some(id) } => (Method::POST, format!("/deliveries/{id}/retry")),
        Command::Retry { id: None } => (Method::POST, "/deliveries/retry-dead".to_string()),
        Command::Drop { id } => (Method::DELETE, format!("/deliveries/{id}")),
        Command::Move { rule, to } => {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("rule", rule)
                .append_pair("to", to)
                .finish();
            (Method::POST, format!("/deliveries/move?{query}"))
        }
    };
    let (status, value) = request(admin, method, &path).await?;
    if status == StatusCode::UNAUTHORIZED {
        bail!(
            "the admin endpoint refused the request (401): admin.token in this config is not the running daemon's"
        );
    }
    if !status.is_success() {
        let msg = value
            .get("error")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| value.to_string());
        bail!("{msg}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    match command {
        Command::List { .. } => print_table(
            value["deliveries"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        ),
        Command::Show { .. } => print_delivery(&value),
        Command::Retry { .. } => {
            let ids = value["retried"].as_array().cloned().unwrap_or_default();
            println!(
                "retried {} deliver{}",
                ids.len(),
                if ids.len() == 1 { "y" } else { "ies" }
            );
            for id in ids {
                println!("{}", id.as_str().unwrap_or(""));
            }
        }
        Command::Drop { id } => println!("dropped {id}"),
        Command::Move { rule, to } => {
            let n = value["moved"].as_array().map(Vec::len).unwrap_or(0);
            println!(
                "moved {n} deliver{} from {rule} to {to}",
                if n == 1 { "y" } else { "ies" }
            );
        }
    }
    Ok(0)
}

fn print_table(rows: &[Value]) {
    if rows.is_empty() {
        println!("no deliveries");
        return;
    }
    println!(
        "{:<28}  {:<20}  {:<16}  {:>8}  {:<8}  LAST ERROR",
        "ID", "RULE", "EVENT", "ATTEMPTS", "STATE"
    );
    for r in rows {
        let error = r["last_error"].as_str().unwrap_or("");
        let error: String = error.chars().take(60).collect();
        println!(
            "{:<28}  {:<20}  {:<16}  {:>8}  {:<8}  {}",
            r["id"].as_str().unwrap_or(""),
            clip(r["rule"].as_str().unwrap_or(""), 20),
            clip(r["event"].as_str().unwrap_or(""), 16),
            r["attempts"].as_u64().unwrap_or(0),
            r["state"].as_str().unwrap_or(""),
            error
        );
    }
}

fn print_delivery(d: &Value) {
    for key in [
        "id",
        "rule",
        "event",
        "state",
        "attempts",
        "order_key",
        "last_error",
    ] {
        let v = &d[key];
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        println!("{key:<11} {text}");
    }
    println!("body        {}", d["body"].as_str().unwrap_or(""));
    if let Some(history) = d["history"].as_array() {
        println!("attempts:");
        for a in history {
            println!(
                "  {} ms  {:<7} {}",
                a["duration_ms"].as_u64().unwrap_or(0),
                a["outcome"].as_str().unwrap_or(""),
                a["error"].as_str().unwrap_or("")
            );
            if let Some(out) = a["output"].as_str() {
                for line in out.lines().take(10) {
                    println!("      | {line}");
                }
            }
        }
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}
