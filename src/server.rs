//! The listener: HTTP/1.1 and HTTP/2 connections (hyper), a cap on concurrent connections, a
//! header-read timeout and a whole-request deadline against slow clients, an idle timeout for
//! connections of either protocol, the body size cap, and a bounded graceful drain on shutdown.
//! What a callback means is [`crate::handle`]'s.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::handle::{self, Reply};
use crate::shared::Shared;

/// How an HTTP/2 prior-knowledge connection opens.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 keep-alive: a ping after this long without a frame from the peer...
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
/// ...and the connection is closed if the ping is not answered within this.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// After a graceful close is asked for (idle or shutdown), how long a connection may take to
/// finish the protocol's goodbye (an HTTP/2 GOAWAY waits for the peer to answer a ping) once
/// no request is in flight. Past it the connection is dropped: a silent peer never answers.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves until `shutdown` resolves, then stops accepting and gives connections in flight the
/// configured grace period to finish.
pub async fn serve(
    listener: TcpListener,
    app: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let settings = app.snapshot().server.clone();
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let stop = CancellationToken::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        // At the connection cap, stop accepting: the kernel's backlog holds the rest.
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let header_timeout = settings.header_timeout;
        // Read per connection, so that a reload applies to the connections that follow.
        let idle_timeout = app.snapshot().server.idle_timeout;
        let app = app.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // The connection's slot: released when this task ends, whichever way it ends.
            let _slot = permit;
            // The protocol sniffing that picks HTTP/1.1 or HTTP/2 waits for the first bytes
            // with no timeout of its own: a client that sends nothing is dropped here.
            let mut head = [0u8; H2_PREFACE.len()];
            let seen = match tokio::time::timeout(header_timeout, stream.peek(&mut head)).await {
                Ok(Ok(n @ 1..)) => n,
                _ => return,
            };
            // HTTP/2 with prior knowledge opens with its preface. Anything else (or too little
            // to tell) may be an HTTP/1 request already on its way.
            let http2 = seen > 1 && H2_PREFACE.starts_with(&head[..seen]);
            let activity = Arc::new(Activity::new());
            let service = {
                let activity = activity.clone();
                service_fn(move |req| {
                    let app = app.clone();
                    let busy = activity.begin();
                    async move {
                        let response = respond(&app, req).await;
                        drop(busy);
                        Ok::<_, Infallible>(response)
                    }
                })
            };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                ended = conn.as_mut() => return log_end(ended),
                _ = activity.quiet_for(idle_timeout, Instant::now()) => {
                    tracing::debug!(idle = ?idle_timeout, "closing an idle connection");
                }
                _ = stop.cancelled() => {
                    // An HTTP/1 client sent bytes (the peek saw them) before the stop, but its
                    // first request may not have been read yet: closing now would reset it, and
                    // under socket activation that callback would be lost across a restart. Let
                    // the request begin (bounded by header_timeout); it is answered, then the
                    // connection closes. (HTTP/2's GOAWAY already lets sent streams finish.)
                    if !http2 && !activity.has_begun() {
                        tokio::select! {
                            ended = conn.as_mut() => return log_end(ended),
                            _ = activity.first_request() => {}
                            _ = tokio::time::sleep(header_timeout) => {}
                        }
                    }
                }
            }
            // HTTP/1: closes now if idle, after the response otherwise. HTTP/2: GOAWAY, then
            // streams in flight finish. Either way bounded once nothing is in flight.
            conn.as_mut().graceful_shutdown();
            let asked = Instant::now();
            tokio::select! {
                ended = conn.as_mut() => log_end(ended),
                _ = activity.quiet_for(CLOSE_GRACE, asked) => {
                    tracing::debug!("connection did not close after a graceful close; dropping it");
                }
            }
        });
    }
    drop(listener);
    stop.cancel();
    // Every connection holds a slot until it ends: all slots back means all connections closed.
    let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = connections.acquire_many(all) => {}
        _ = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "connections still open after the grace period; closing them");
        }
    }
    Ok(())
}

fn log_end<E: std::fmt::Display>(ended: Result<(), E>) {
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// What one connection is doing, as seen by its service: requests in flight and when that
/// number last changed. Bytes that carry no request (HTTP/2 pings, settings, window updates)
/// are not activity, so a peer that only answers keep-alive pings is still idle.
struct Activity {
    state: Mutex<(usize, Instant)>,
    /// Whether a request has begun on the connection at all.
    begun: std::sync::atomic::AtomicBool,
    first: tokio::sync::Notify,
}

/// One request in flight on a connection, until dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new((0, Instant::now())),
            begun: std::sync::atomic::AtomicBool::new(false),
            first: tokio::sync::Notify::new(),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *s = (s.0 + 1, Instant::now());
        drop(s);
        if !self.begun.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.first.notify_waiters();
        }
        Busy(self.clone())
    }

    fn has_begun(&self) -> bool {
        self.begun.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once the connection's first request has begun.
    async fn first_request(&self) {
        let first = self.first.notified();
        tokio::pin!(first);
        first.as_mut().enable();
        if self.has_begun() {
            return;
        }
        first.await;
    }

    /// Resolves once no request has been in flight for `quiet`, counting from `since` at the
    /// earliest.
    async fn quiet_for(&self, quiet: Duration, since: Instant) {
        loop {
            let (in_flight, last) = *self.state.lock().unwrap_or_else(|e| e.into_inner());
            if in_flight > 0 {
                // Look again later: the request's end restarts the count.
                tokio::time::sleep(quiet).await;
                continue;
            }
            let at = last.max(since) + quiet;
            if at <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        *s = (s.0.saturating_sub(1), Instant::now());
    }
}

async fn respond(app: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let snapshot = app.snapshot();
    let path = req.uri().path();
    if path == snapshot.server.path {
        if req.method() != Method::POST {
            app.metrics.callback(&snapshot, None, "method");
            let mut r = reply(Reply::error(405, "method", "only POST is accepted here"));
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let deadline = Instant::now() + snapshot.server.request_timeout;
        let body = match read_body(req, snapshot.server.max_body, deadline).await {
            Ok(b) => b,
            Err(r) => {
                tracing::warn!(outcome = r.outcome, status = r.status, "callback refused");
                app.metrics.callback(&snapshot, None, r.outcome);
                return reply(r);
            }
        };
        return reply(handle::callback(app, &snapshot, body, deadline).await);
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/readyz") => match (app.is_ready(), app.queue.store().health()) {
            (true, Ok(())) => text(StatusCode::OK, "ready\n".into()),
            (false, _) => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
            (true, Err(e)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: store failing: {e}\n"),
            ),
        },
        _ => reply(Reply::error(404, "not_found", "no such path")),
    }
}

/// Reads the body within the size cap and the deadline.
async fn read_body(req: Request<Incoming>, max: u64, deadline: Instant) -> Result<Bytes, Reply> {
    let too_large = || {
        Reply::error(
            413,
            "too_large",
            &format!("body is larger than server.max_body ({max} bytes)"),
        )
    };
    // Refuse before reading when the client says how much is coming.
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max
    {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), max as usize);
    match tokio::time::timeout_at(deadline.into(), limited.collect()).await {
        Err(_) => Err(Reply::error(
            408,
            "timeout",
            "body not received within server.request_timeout",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(Reply::error(
            400,
            "malformed",
            &format!("reading the body failed: {e}"),
        )),
    }
}

fn reply(r: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(r.body));
    *response.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secs) = r.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
