//! The steps of one callback, in order (SPEC "Receiving a callback" 2–7): decode, verify, check
//! replay, route, run the sync rule, queue the rest durably, reply. HTTP framing (methods, paths,
//! body limits) is `server`'s.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::act::Emitted;
use crate::act::{Inputs, Outcome};
use crate::config::{Rule, Snapshot};
use crate::deliver::{self, AcceptError, Accepted, Delivery, ReplayEntry};
use crate::events::BEFORE_SEND_MSG;
use crate::receive::Callback;
use crate::route;
use crate::shared::Shared;
use crate::template::callback_context;
use crate::verify;

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    /// Seconds, for 503.
    pub retry_after: Option<u64>,
    /// A label for logs and metrics: accepted, duplicate, bad_signature, stale, malformed, ...
    pub outcome: &'static str,
}

impl Reply {
    fn ok(body: Bytes, outcome: &'static str) -> Self {
        Reply {
            status: 200,
            body,
            retry_after: None,
            outcome,
        }
    }
    pub fn error(status: u16, outcome: &'static str, message: &str) -> Self {
        let body = serde_json::json!({ "code": status, "message": message }).to_string();
        Reply {
            status,
            body: Bytes::from(body),
            retry_after: (status == 503).then_some(1),
            outcome,
        }
    }
}

/// The reply when no sync rule answers: `before_send_msg`'s neutral result, else the callback's
/// family's (Mini Game needs `{"Code":200,...}`, the others `{"code":0}`).
pub fn default_reply(callback: &Callback) -> Bytes {
    if callback.event() == BEFORE_SEND_MSG {
        Bytes::from_static(br#"{"result":0}"#)
    } else {
        Bytes::from_static(callback.envelope.family.default_reply())
    }
}

/// Handles one callback body; `deadline` bounds the sync rule.
pub async fn callback(
    app: &Shared,
    snapshot: &Arc<Snapshot>,
    raw: Bytes,
    deadline: Instant,
) -> Reply {
    let started = Instant::now();
    let body_hash: [u8; 32] = Sha256::digest(&raw).into();
    let callback = match Callback::decode(raw) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(outcome = "malformed", error = %e, "callback refused");
            app.metrics.callback(snapshot, None, "malformed");
            return Reply::error(400, "malformed", &e.to_string());
        }
    };
    let event = callback.event().to_string();
    let appid = callback.appid().to_string();
    let log = |reply: &Reply, rules: &[&str], error: Option<&str>| {
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        app.metrics.callback(snapshot, Some(&event), reply.outcome);
        if reply.status < 300 {
            tracing::info!(%event, %appid, outcome = reply.outcome, status = reply.status, rules = ?rules, latency_ms, "callback");
        } else {
            tracing::warn!(%event, %appid, outcome = reply.outcome, status = reply.status, rules = ?rules, latency_ms, error = error.unwrap_or(""), "callback refused");
        }
    };

    let key = match verify::verify(&callback.envelope, &snapshot.verify, SystemTime::now()) {
        Ok(k) => k,
        Err(e) => {
            let reply = Reply::error(401, e.label(), &e.to_string());
            log(&reply, &[], Some(&e.to_string()));
            return reply;
        }
    };

    // Claim the callback before anything runs: a copy arriving meanwhile (ZEGO retrying while
    // the first is still handled) waits here for the first one's reply.
    let replay_key = key.as_ref().map(|k| k.encode());
    let claim = match &replay_key {
        Some(k) => match claim(app, k, deadline).await {
            Ok(c) => Some(c),
            Err(reply) => {
                log(&reply, &[], None);
                return reply;
            }
        },
        None => None,
    };
    if let Some(k) = &replay_key {
        match app.queue.check_replay(k) {
            Ok(Some(seen)) => {
                let reply = seen_reply(&seen, &body_hash);
                log(&reply, &[], None);
                return reply;
            }
            Ok(None) => {}
            Err(e) => {
                let reply = Reply::error(503, "store_failing", &e.to_string());
                log(&reply, &[], Some(&e.to_string()));
                return reply;
            }
        }
    }

    let plan = route::plan(snapshot, &callback, true);
    let rule_names = plan.rule_names();
    let mut answer = default_reply(&callback);
    let mut deliveries = deliveries_for(snapshot, &callback, &plan.queued, 0);
    if let Some(rule) = &plan.sync {
        match run_sync(app, snapshot, rule, &callback, deadline).await {
            Ok((Some(a), emitted)) => {
                answer = a;
                deliveries.extend(emitted);
            }
            Ok((None, emitted)) => deliveries.extend(emitted),
            Err(reason) => match &rule.fallback {
                Some(fallback) => {
                    tracing::warn!(rule = %rule.name, %event, error = %reason, "sync rule failed; replying with its fallback");
                    answer = fallback.clone();
                }
                None => {
                    let reply =
                        Reply::error(503, "sync_failed", &format!("rule {}: {reason}", rule.name));
                    log(&reply, &rule_names, Some(&reason));
                    return reply;
                }
            },
        }
    }

    let replay = replay_key.map(|key| ReplayEntry {
        key,
        body_hash,
        reply: answer.clone(),
        expires_ms: deliver::now_ms() + snapshot.verify.replay_window().as_millis() as u64,
    });
    let reply = match app.queue.accept(snapshot, replay, deliveries, claim).await {
        Ok(Accepted::New) => Reply::ok(answer, "accepted"),
        Ok(Accepted::Existing(seen)) => seen_reply(&seen, &body_hash),
        Err(e @ AcceptError::Full(_)) => Reply::error(503, "overloaded", &e.to_string()),
        Err(e @ AcceptError::Store(_)) => {
            tracing::error!(error = %e, "store failed; callback refused with 503");
            Reply::error(503, "store_failing", &e.to_string())
        }
    };
    log(&reply, &rule_names, None);
    reply
}

/// Claims the callback's replay key, waiting (within the request's deadline) while another copy
/// of it is being handled.
async fn claim(app: &Shared, key: &[u8], deadline: Instant) -> Result<deliver::Claim, Reply> {
    loop {
        match app.queue.claims().try_claim(key.to_vec()) {
            Ok(claim) => return Ok(claim),
            Err(mut released) => {
                if tokio::time::timeout_at(deadline.into(), released.changed())
                    .await
                    .is_err()
                {
                    return Err(Reply::error(
                        503,
                        "in_flight",
                        "a copy of this callback is still being handled; retry later",
                    ));
                }
            }
        }
    }
}

/// A callback whose signature was seen before: the same body is a duplicate (answered as the
/// first time, nothing runs again); another body is a replay.
fn seen_reply(seen: &deliver::Seen, body_hash: &[u8; 32]) -> Reply {
    if &seen.body_hash == body_hash {
        Reply::ok(seen.reply.clone(), "duplicate")
    } else {
        Reply::error(
            401,
            "replayed",
            "this signature was already used with another body",
        )
    }
}

/// Runs the sync rule within its timeout and the request's deadline. Its answer must be JSON
/// (an empty answer means the default reply).
async fn run_sync(
    app: &Shared,
    snapshot: &Arc<Snapshot>,
    rule: &Arc<Rule>,
    callback: &Callback,
    deadline: Instant,
) -> Result<(Option<Bytes>, Vec<deliver::Delivery>), String> {
    let delivery_id = deliver::new_id();
    let work = async {
        let _permit = app.queue.limits().acquire(rule).await;
        let run = Inputs {
            snapshot,
            rule,
            callback,
            delivery_id: &delivery_id,
        };
        app.runner.run(run).await
    };
    let started = Instant::now();
    let finished = tokio::time::timeout_at(deadline.into(), work).await;
    if rule.concurrency.is_some() {
        // The permit is back: queued deliveries of the rule may start now.
        app.queue.wake();
    }
    let report = match finished {
        Ok(r) => r,
        Err(_) => {
            app.metrics
                .rule_run(&rule.name, "failed", started.elapsed());
            return Err("request_timeout reached".into());
        }
    };
    let result = match report.outcome {
        Outcome::Ok { .. } => "ok",
        _ => "failed",
    };
    app.metrics.rule_run(&rule.name, result, started.elapsed());
    match report.outcome {
        Outcome::Ok { answer, emit } => {
            let emitted = deliveries_for_emitted(snapshot, &emit, 1);
            let answer = answer.filter(|a| !a.iter().all(u8::is_ascii_whitespace));
            if let Some(a) = &answer
                && let Err(e) = serde_json::from_slice::<serde_json::Value>(a)
            {
                return Err(format!("answer is not JSON: {e}"));
            }
            Ok((answer, emitted))
        }
        Outcome::Retry { reason, .. } | Outcome::Fail { reason } => Err(reason),
    }
}

/// Events emitted by plugins are routed again up to this depth; deeper ones are dropped.
pub const MAX_EMIT_DEPTH: u8 = 4;

/// Builds the deliveries of `rules` (a route plan's queued rules) for one callback.
pub fn deliveries_for(
    snapshot: &Snapshot,
    callback: &Callback,
    rules: &[Arc<Rule>],
    depth: u8,
) -> Vec<Delivery> {
    let body = String::from_utf8_lossy(&callback.raw).into_owned();
    rules
        .iter()
        .map(|rule| {
            let id = deliver::new_id();
            let order_key = rule.order_by.as_ref().and_then(|t| {
                let ctx = callback_context(callback, Some((&rule.name, &id)));
                match snapshot.templates.render(t, &ctx) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        tracing::warn!(rule = %rule.name, error = %e, "order_by failed; delivery is not ordered");
                        None
                    }
                }
            });
            Delivery::new(
                id,
                &rule.name,
                callback.event(),
                body.clone(),
                order_key,
                depth,
            )
        })
        .collect()
}

/// Routes events a plugin emitted: each through the rules like a callback (no signature, sync
/// rules queued), `depth` counting how far from the original callback it is.
pub fn deliveries_for_emitted(
    snapshot: &Snapshot,
    emitted: &[Emitted],
    depth: u8,
) -> Vec<Delivery> {
    if emitted.is_empty() {
        return Vec::new();
    }
    if depth > MAX_EMIT_DEPTH {
        tracing::warn!(
            depth,
            count = emitted.len(),
            "emitted events dropped: depth limit {MAX_EMIT_DEPTH} reached"
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for e in emitted {
        match Callback::emitted(&e.name, &e.payload) {
            Ok(cb) => {
                let plan = route::plan(snapshot, &cb, false);
                out.extend(deliveries_for(snapshot, &cb, &plan.queued, depth));
            }
            Err(err) => {
                tracing::warn!(event = %e.name, error = %err, "emitted event dropped: payload is not a JSON object")
            }
        }
    }
    out
}
