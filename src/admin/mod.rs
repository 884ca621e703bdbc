//! The admin endpoint, on its own listener: status, metrics, and the delivery admin API that
//! `zimhook deliveries` uses. The callback path is not this module's business.
//!
//! Access control: on a unix socket, its file mode (0600: the daemon's user only); `admin.token`
//! is not checked there. On a TCP address, which any local process and any browser page (by DNS
//! rebinding: the `Host` header proves nothing) can reach, `admin.token` is required and every
//! request must carry `Authorization: Bearer <token>`, compared in constant time; anything else
//! gets 401 with `WWW-Authenticate: Bearer`. `GET /healthz` alone stays open there: it answers
//! "ok" and nothing else, changes nothing, and lets a probe check the listener without holding
//! the token. The token is read from the live config, so a reload rotates it.
//!
//! | method and path | does |
//! |---|---|
//! | `GET /healthz` | 200 while serving |
//! | `GET /status` | live config hash, rules, queue and reload counts (JSON) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /deliveries?state=pending\|orphaned\|dead` | deliveries, oldest first (JSON); pending includes orphaned ones |
//! | `GET /deliveries/{id}` | one delivery with its attempt history |
//! | `POST /deliveries/{id}/retry` | a dead letter becomes pending again |
//! | `POST /deliveries/retry-dead` | every dead letter becomes pending again |
//! | `DELETE /deliveries/{id}` | drop a pending (not running) delivery or a dead letter |
//! | `POST /deliveries/move?rule=OLD&to=NEW` | re-target the pending deliveries of rule OLD to live rule NEW |
//! | `POST /reload` | reload the config now and wait: 200 with the new hash, or 422 with every error (old config kept) |

pub mod client;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::AdminListen;
use crate::deliver::{Delivery, MoveError};
use crate::reload::{Request as ReloadRequest, Requests, Trigger};
use crate::shared::Shared;

/// Binds the admin listener. A unix socket left by an earlier run is replaced (nothing else at
/// that path is); the new one is readable and writable by the daemon's user only.
pub async fn bind(listen: &AdminListen) -> anyhow::Result<Listener> {
    match listen {
        AdminListen::Tcp(addr) => Ok(Listener::Tcp(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on admin address {addr}: {e}"))?,
        )),
        AdminListen::Unix(path) => {
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)?;
            }
            remove_stale_socket(path)?;
            let listener = tokio::net::UnixListener::bind(path).map_err(|e| {
                anyhow::anyhow!("cannot listen on admin socket {}: {e}", path.display())
            })?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(Listener::Unix(listener))
        }
    }
}

/// Removes the socket an earlier run left at `path`. Anything else there is refused, never
/// deleted: a regular file (a typo in `admin.listen`), a folder, a symlink, or a socket some
/// process still serves on (another zimhook with the same config).
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("cannot inspect admin socket path {}: {e}", path.display()),
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!(
            "admin.listen {}: exists and is not a socket; refusing to replace it (fix admin.listen, or remove the file yourself)",
            path.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "admin.listen {}: the socket is in use by a running process (another zimhook?); refusing to replace it",
            path.display()
        );
    }
    std::fs::remove_file(path)
        .map_err(|e| anyhow::anyhow!("cannot replace admin socket {}: {e}", path.display()))
}

pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Serves the admin API until the task is dropped.
pub async fn serve(listener: Listener, app: Arc<Shared>, reloads: Requests) {
    loop {
        match &listener {
            Listener::Tcp(l) => match l.accept().await {
                Ok((s, _)) => spawn_conn(s, app.clone(), reloads.clone(), Access::Token),
                Err(e) => accept_failed(e).await,
            },
            Listener::Unix(l) => match l.accept().await {
                Ok((s, _)) => spawn_conn(s, app.clone(), reloads.clone(), Access::FileMode),
                Err(e) => accept_failed(e).await,
            },
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "admin accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// How a connection's requests are admitted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// A unix socket: whoever could connect passed its file mode.
    FileMode,
    /// TCP: each request must carry the bearer token.
    Token,
}

fn spawn_conn<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    app: Arc<Shared>,
    reloads: Requests,
    access: Access,
) {
    tokio::spawn(async move {
        let service = service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            let reloads = reloads.clone();
            async move {
                let open = req.method() == Method::GET && req.uri().path() == "/healthz";
                if access == Access::Token && !open && !authorized(&app, &req) {
                    return Ok::<_, Infallible>(unauthorized());
                }
                if req.method() == Method::POST && req.uri().path() == "/reload" {
                    return Ok(reload(&reloads).await);
                }
                Ok(respond(&app, req).await)
            }
        });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

async fn respond(app: &Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        (&Method::GET, ["status"]) => status(app),
        (&Method::GET, ["metrics"]) => {
            let openmetrics = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            let content_type = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            text(
                StatusCode::OK,
                app.metrics.render(&app.gauges(), openmetrics),
                content_type,
            )
        }
        (&Method::GET, ["deliveries"]) => {
            let state = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_else(|| "pending".into());
            let list: Vec<serde_json::Value> = match state.as_str() {
                "dead" => match app.queue.store().dead() {
                    Ok(mut d) => {
                        d.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
                        d.iter().map(|d| summary(d, false)).collect()
                    }
                    Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
                },
                "pending" | "orphaned" => app
                    .queue
                    .pending()
                    .iter()
                    .filter(|(_, orphaned)| *orphaned || state == "pending")
                    .map(|(d, orphaned)| summary(d, *orphaned))
                    .collect(),
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("state {other:?} is none of pending, orphaned, dead"),
                    );
                }
            };
            ok_json(&json!({ "deliveries": list }))
        }
        (&Method::POST, ["deliveries", "move"]) => {
            let arg = |name: &str| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
            };
            let (Some(from), Some(to)) = (arg("rule"), arg("to")) else {
                return error(StatusCode::BAD_REQUEST, "move needs ?rule=OLD&to=NEW");
            };
            match app.queue.move_rule(&from, &to).await {
                Ok(moved) => ok_json(&json!({ "moved": moved })),
                Err(e @ MoveError::NoSuchRule(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            }
        }
        (&Method::GET, ["deliveries", id]) => match app.queue.store().get(id) {
            Ok(Some(d)) => ok_json(&serde_json::to_value(&d).unwrap_or_default()),
            Ok(None) => error(StatusCode::NOT_FOUND, &format!("no delivery {id}")),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        },
        (&Method::POST, ["deliveries", "retry-dead"]) => {
            let dead = match app.queue.store().dead() {
                Ok(d) => d,
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            };
            let mut retried = Vec::new();
            for d in dead {
                match app.queue.retry(&d.id).await {
                    Ok(Some(_)) => retried.push(d.id),
                    Ok(None) => {}
                    Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
                }
            }
            tracing::info!(
                count = retried.len(),
                "dead letters retried through the admin API"
            );
            ok_json(&json!({ "retried": retried }))
        }
        (&Method::POST, ["deliveries", id, "retry"]) => match app.queue.retry(id).await {
            Ok(Some(d)) => {
                tracing::info!(delivery_id = %d.id, rule = %d.rule, "dead letter retried through the admin API");
                ok_json(&json!({ "retried": [d.id] }))
            }
            Ok(None) => error(StatusCode::NOT_FOUND, &format!("no dead letter {id}")),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        },
        (&Method::DELETE, ["deliveries", id]) => match app.queue.drop_delivery(id).await {
            Ok(true) => {
                tracing::info!(delivery_id = %id, "delivery dropped through the admin API");
                ok_json(&json!({ "dropped": [id] }))
            }
            Ok(false) => error(
                StatusCode::NOT_FOUND,
                &format!("no delivery {id} that can be dropped (a running one cannot)"),
            ),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        },
        _ => error(StatusCode::NOT_FOUND, "no such admin path"),
    }
}

/// `POST /reload`: reloads the config now, as SIGHUP would, and answers with the outcome: 200
/// `{"config_hash", "rules", "warnings"}` when the new config is live, 422 `{"error",
/// "errors"}` (one `FILE:LINE:COL: message` per problem) when the old one stays.
async fn reload(reloads: &Requests) -> Response<Full<Bytes>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let request = ReloadRequest {
        trigger: Trigger::Admin,
        reply: Some(tx),
    };
    if reloads.send(request).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "zimhook is stopping");
    }
    match rx.await {
        Ok(Ok(snapshot)) => ok_json(&json!({
            "config_hash": snapshot.hash,
            "rules": snapshot.rules.len(),
            "warnings": snapshot.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })),
        Ok(Err(e)) => {
            let errors = e.lines();
            let body =
                json!({ "error": errors.first().cloned().unwrap_or_default(), "errors": errors });
            let mut res = ok_json(&body);
            *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            res
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "zimhook is stopping"),
    }
}

/// Whether `req` carries `Authorization: Bearer <admin.token>` of the live config. The scheme is
/// case-insensitive (RFC 7235); the token is compared in constant time, as SHA-256 digests so
/// that not even its length shows in the timing.
fn authorized(app: &Shared, req: &Request<Incoming>) -> bool {
    let snapshot = app.snapshot();
    let Some(token) = snapshot.admin.as_ref().and_then(|a| a.token.as_ref()) else {
        // Config validation refuses a TCP admin without a token; refuse all the same.
        return false;
    };
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
    else {
        return false;
    };
    let expected = Sha256::digest(token.expose().as_bytes());
    let given = Sha256::digest(given.as_bytes());
    bool::from(expected.as_slice().ct_eq(given.as_slice()))
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "admin.token required: send Authorization: Bearer <token>",
    );
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"zimhook admin\""),
    );
    r
}

fn status(app: &Arc<Shared>) -> Response<Full<Bytes>> {
    let s = app.snapshot();
    let dead = app.queue.store().dead().map(|d| d.len()).unwrap_or(0);
    ok_json(&json!({
        "config": s.path.display().to_string(),
        "config_hash": s.hash,
        "rules": s.rules.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        "pending": app.queue.pending_len(),
        "orphaned": app.queue.orphaned_len(),
        "store_error": app.queue.store().health().err(),
        "dead": dead,
        "reloads_ok": app.reloads_ok.load(Ordering::Relaxed),
        "reloads_failed": app.reloads_failed.load(Ordering::Relaxed),
        "last_reload_error": app.last_reload_error(),
    }))
}

/// A delivery without its body and history, for lists. A pending delivery whose rule is not
/// known is listed as `orphaned`.
fn summary(d: &Delivery, orphaned: bool) -> serde_json::Value {
    let state = if orphaned {
        json!("orphaned")
    } else {
        json!(d.state)
    };
    json!({
        "id": d.id,
        "rule": d.rule,
        "event": d.event,
        "state": state,
        "attempts": d.attempts,
        "created_ms": d.created_ms,
        "due_ms": d.due_ms,
        "last_error": d.last_error,
    })
}

fn ok_json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    text(StatusCode::OK, v.to_string(), "application/json")
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    text(
        status,
        json!({ "error": message }).to_string(),
        "application/json",
    )
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
