//! The `forward` action: an HTTP request over one shared, pooled client (HTTP/1.1 and HTTP/2,
//! rustls), connect and total timeouts, redirects not followed. The body is the callback's raw
//! bytes unless the rule renders its own. `X-Zimhook-Delivery` is stable across retries, so the
//! target can use it as an idempotency key.
//!
//! 2xx is success (its body is a sync rule's answer); 408, 429, 5xx, timeouts and connection
//! errors are retried (honouring `Retry-After`); any other status is permanent.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};

use super::{Inputs, OUTPUT_CAP, Outcome, Report};
use crate::config::ForwardAction;
use crate::template::LazyContext;

pub const EVENT_HEADER: &str = "x-zimhook-event";
pub const DELIVERY_HEADER: &str = "x-zimhook-delivery";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which certificate authorities HTTPS requests trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRoots {
    /// The system's trust store (Debian: the `ca-certificates` package; or `SSL_CERT_FILE` /
    /// `SSL_CERT_DIR`); how many certificates it has.
    System(usize),
    /// None found on the system: the Mozilla set built into the binary (`webpki-root-certs`),
    /// as of this build; how many.
    Bundled(usize),
}

impl std::fmt::Display for TlsRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsRoots::System(n) => write!(f, "the system's trust store ({n} certificates)"),
            TlsRoots::Bundled(n) => write!(
                f,
                "the Mozilla roots built into zimhook ({n} certificates): the system has no trust store \
                 (install ca-certificates, or set SSL_CERT_FILE, to use the system's)"
            ),
        }
    }
}

/// An HTTP client builder whose TLS trusts the system's roots when there are any, else the
/// bundled ones: a minimal server without `ca-certificates` still starts and forwards over
/// HTTPS. The system's store is read once, here (not again by a platform verifier).
pub fn client_builder() -> (reqwest::ClientBuilder, TlsRoots) {
    // Idempotent: fails only if another provider was installed first, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let system = rustls_native_certs::load_native_certs().certs;
    let ders: Vec<&[u8]> = if system.is_empty() {
        let bundled = webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter();
        bundled.map(|c| c.as_ref()).collect()
    } else {
        system.iter().map(|c| c.as_ref()).collect()
    };
    let certs: Vec<reqwest::Certificate> = ders
        .into_iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect();
    let n = certs.len();
    let roots = if system.is_empty() {
        TlsRoots::Bundled(n)
    } else {
        TlsRoots::System(n)
    };
    (reqwest::Client::builder().tls_certs_only(certs), roots)
}

/// The one client every forward shares.
pub fn client() -> anyhow::Result<reqwest::Client> {
    let (builder, roots) = client_builder();
    tracing::info!("HTTPS forwards trust {roots}");
    Ok(builder
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("zimhook/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

pub async fn run(
    http: &reqwest::Client,
    action: &ForwardAction,
    run: &Inputs<'_>,
    timeout: Duration,
) -> Report {
    let make = || run.context();
    let ctx = LazyContext::new(&make);
    let templates = &run.snapshot.templates;
    let url = match &action.parsed_url {
        Some(url) => url.clone(),
        None => match templates.render_lazy(&action.url, &ctx) {
            Ok(u) => match reqwest::Url::parse(&u) {
                Ok(url) => url,
                Err(e) => return Outcome::fail(format!("cannot build request to {u}: {e}")).into(),
            },
            Err(e) => return Outcome::fail(e.to_string()).into(),
        },
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if action.body.is_some() {
            "application/json"
        } else {
            run.callback.content_type()
        }),
    );
    for (name, t) in &action.headers {
        let value = match templates.render_lazy(t, &ctx) {
            Ok(v) => v,
            Err(e) => return Outcome::fail(e.to_string()).into(),
        };
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                headers.insert(name.clone(), v);
            }
            Err(_) => {
                return Outcome::fail(format!("header {name} renders to an invalid value")).into();
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(run.callback.event()) {
        headers.insert(EVENT_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(run.delivery_id) {
        headers.insert(DELIVERY_HEADER, v);
    }
    let body = match &action.body {
        Some(t) => match templates.render_lazy(t, &ctx) {
            Ok(b) => Bytes::from(b),
            Err(e) => return Outcome::fail(e.to_string()).into(),
        },
        None => run.callback.raw.clone(),
    };
    let request = http
        .request(action.method.clone(), url.clone())
        .headers(headers)
        .body(body)
        .timeout(timeout);
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_builder() => {
            return Outcome::fail(format!(
                "cannot build request to {url}: {}",
                error_chain(&e)
            ))
            .into();
        }
        Err(e) if e.is_timeout() => {
            return Outcome::retry(format!(
                "{url}: timed out after {}",
                humantime::format_duration(timeout)
            ))
            .into();
        }
        Err(e) => return Outcome::retry(format!("{url}: {}", error_chain(&e))).into(),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = match read_capped(response).await {
        Ok(b) => b,
        Err(e) if status.is_success() => {
            return Outcome::retry(format!(
                "{url}: reading the response failed: {}",
                error_chain(&e)
            ))
            .into();
        }
        Err(_) => Bytes::new(),
    };
    let output =
        (!body.is_empty()).then(|| format!("{status}: {}", String::from_utf8_lossy(&body)));
    let outcome = classify(status, retry_after, url.as_str(), body);
    Report { outcome, output }
}

fn classify(status: StatusCode, retry_after: Option<Duration>, url: &str, body: Bytes) -> Outcome {
    if status.is_success() {
        return Outcome::ok(Some(body));
    }
    let reason = format!("{url} answered {status}");
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Outcome::Retry {
            reason,
            after: retry_after,
        }
    } else if status.is_redirection() {
        Outcome::fail(format!("{reason} (redirects are not followed)"))
    } else {
        Outcome::fail(reason)
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v.trim()).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

async fn read_capped(mut response: reqwest::Response) -> Result<Bytes, reqwest::Error> {
    let mut kept = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = OUTPUT_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room == 0 {
            break;
        }
    }
    Ok(Bytes::from(kept))
}

/// reqwest's error with its sources ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let c =
            |s: u16| classify(StatusCode::from_u16(s).unwrap(), None, "u", Bytes::new()).label();
        assert_eq!(c(200), "ok");
        assert_eq!(c(204), "ok");
        assert_eq!(c(500), "retry");
        assert_eq!(c(503), "retry");
        assert_eq!(c(408), "retry");
        assert_eq!(c(429), "retry");
        assert_eq!(c(404), "failed");
        assert_eq!(c(400), "failed");
        assert_eq!(c(301), "failed");
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
