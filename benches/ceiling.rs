//! The ceiling for the load benchmark: a bare hyper server that answers every request with
//! 200 and a tiny JSON body, doing nothing else. `benches/load.sh` runs zimhook against the
//! same load and reports each figure as a ratio to this one. Also used there as the forward
//! target: it counts the requests it answered, and `GET /count` replies with that number (that
//! request itself is not counted). Usage: `ceiling ADDR`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let count = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let count = count.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let count = count.clone();
                async move {
                    if req.method() == Method::GET && req.uri().path() == "/count" {
                        let n = count.load(Ordering::Relaxed);
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                            format!("{n}\n"),
                        ))));
                    }
                    // Read the body like a real receiver would.
                    let _ = req.into_body().collect().await;
                    count.fetch_add(1, Ordering::Relaxed);
                    Ok(Response::new(Full::new(Bytes::from_static(
                        b"{\"code\":0}",
                    ))))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
