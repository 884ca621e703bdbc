//! The checks behind the fuzz targets, shared with `tests/fuzz_corpus.rs`: the fuzzers
//! (`fuzz/fuzz_targets/*.rs`) include this file by path, and the test feeds every file of the
//! committed corpora through the same functions on stable, so an input that once found a bug
//! stays a test.
//!
//! Each check panics on a broken invariant; an `Err` from zimhook is a fine answer as long as
//! it is a well-formed one.

use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value};
use zimhook::config::{Action, Diagnostic, Rule, Secret, Snapshot, VerifySettings};
use zimhook::receive::{self, BodyFormat, Callback, Family};
use zimhook::route;
use zimhook::template::{Context, TemplateId, Templates};
use zimhook::verify::{self, VerifyError};

/// The secret `fuzz/seeds.sh` signs the seed callbacks with.
pub const SECRET: &str = "fuzz-secret";
/// "Now" for every verification: the seeds carry this timestamp.
pub const NOW_SECS: u64 = 1_700_000_000;
const MAX_SKEW: Duration = Duration::from_secs(300);
/// The appids the allow-list variant accepts.
const APPIDS: [&str; 2] = ["1", "1234567890"];
/// Where `config` inputs pretend to come from (relative paths resolve against `/tmp/fuzz`).
pub const CONFIG_PATH: &str = "/tmp/fuzz/config.toml";

/// The config the callback target routes against: globs, `when`, each action kind but plugins
/// (a plugin rule needs its file), sync rules with and without a fallback.
const ROUTE_CONFIG: &str = r#"
[verify]
secrets = ["fuzz-secret"]
max_skew = "5m"
appids = ["1", 1234567890]

[store]
kind = "memory"

[[rule]]
name = "event-log"
events = ["*"]
command = ["sh", "-c", "cat >> events.jsonl"]

[[rule]]
name = "missed-call"
events = ["call_timeout", "call_cancel"]
when = "user_ids | length > 1"
command = ["echo", "missed call {{ call_id }} for {{ user_ids | join(', ') }}"]
env = { EVENT = "{{ event }}", NONCE = "{{ nonce }}" }

[[rule]]
name = "crm"
events = ["call_*", "room_{create,destroy}", "group_?oin"]
when = "appid == '1' or appid == 1"
forward = "https://crm.example.com/zego/{{ event }}"
method = "put"
headers = { X-Appid = "{{ appid }}", X-Delivery = "{{ delivery_id }}" }
body = "{{ payload | tojson }}"

[[rule]]
name = "ordered"
events = ["send_msg", "bot_msg"]
order_by = "{{ from_user_id }}"
command = ["cat"]

[[rule]]
name = "moderate"
events = ["before_send_msg"]
when = "msg_body is defined and 'spam' in msg_body"
sync = true
fallback = '{"result": 1}'
command = ["true"]

[[rule]]
name = "answer-before"
events = ["before_*"]
sync = true
command = ["true"]
"#;

struct Fixed {
    snapshot: Snapshot,
    plain: VerifySettings,
    allow_list: VerifySettings,
    insecure: VerifySettings,
    templates: Templates,
    body: TemplateId,
    event: TemplateId,
    payload: TemplateId,
}

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let snapshot = zimhook::config::load_str(Path::new(CONFIG_PATH), ROUTE_CONFIG)
        .unwrap_or_else(|e| panic!("the route config does not load:\n{e}"));
    let plain = VerifySettings {
        secrets: vec![Secret::new(SECRET)],
        service_only: vec![],
        max_skew: Some(MAX_SKEW),
        appids: vec![],
        insecure: false,
    };
    let allow_list = VerifySettings {
        appids: APPIDS.iter().map(|a| a.to_string()).collect(),
        ..plain.clone()
    };
    let insecure = VerifySettings {
        secrets: vec![],
        insecure: true,
        ..plain.clone()
    };
    let mut templates = Templates::new();
    let body = templates.add("body", "{{ body }}").unwrap();
    let event = templates.add("event", "{{ event }}").unwrap();
    let payload = templates.add("payload", "{{ payload | tojson }}").unwrap();
    Fixed {
        snapshot,
        plain,
        allow_list,
        insecure,
        templates,
        body,
        event,
        payload,
    }
});

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

/// Body decoding, envelope extraction, signature verification, routing and rendering.
pub fn check_callback(data: &[u8]) {
    let Ok(cb) = Callback::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    check_decoded(data, &cb);
    check_verify(&cb);
    check_route(&cb);
}

fn check_decoded(data: &[u8], cb: &Callback) {
    assert_eq!(&cb.raw[..], data, "raw must be the body byte for byte");
    let text = std::str::from_utf8(data).expect("a decoded body is UTF-8");
    let json = cb.json();
    match cb.format {
        BodyFormat::Json => {
            assert_eq!(json, text, "a JSON body's json() is its raw text");
            assert_eq!(cb.content_type(), "application/json");
            // A plugin emitting this text must get the same object.
            let emitted = Callback::emitted("fuzz_event", text).expect("emitted as JSON");
            assert_eq!(emitted.object, cb.object);
            assert_eq!(emitted.event(), "fuzz_event");
        }
        BodyFormat::Form => assert_eq!(cb.content_type(), "application/x-www-form-urlencoded"),
    }
    let reparsed: Value = serde_json::from_str(&json).expect("json() is JSON");
    let Value::Object(reparsed) = reparsed else {
        panic!("json() is not a JSON object: {json}");
    };
    assert_eq!(reparsed, cb.object, "json() must parse back to the object");
    // What route and templates see must survive serializing once more (forwards, plugins).
    let again = serde_json::to_string(&cb.object).expect("a map serializes");
    let again: Map<String, Value> = serde_json::from_str(&again).expect("reserialized object");
    assert_eq!(again, cb.object);

    // The envelope is the literal text of its family's field; for the named family, the
    // lower-case field, else the PascalCase one; a numbered family's event is `prefix.number`.
    let e = &cb.envelope;
    let has_event = cb.object.contains_key("event") || cb.object.contains_key("Event");
    if has_event {
        assert!(
            matches!(e.family, Family::Named | Family::RtcTranscoding),
            "a body with an event field is read by it, not as {:?}",
            e.family
        );
    }
    let own = e.family.spelling();
    let other = if e.family == Family::Named {
        receive::PASCAL
    } else {
        own
    };
    for (got, name) in [
        (&e.appid, (own.appid, other.appid)),
        (&e.event, (own.event, other.event)),
        (&e.nonce, (own.nonce, other.nonce)),
        (&e.timestamp, (own.timestamp, other.timestamp)),
        (&e.signature, (own.signature, other.signature)),
    ] {
        let expected = cb
            .object
            .get(name.0)
            .or_else(|| cb.object.get(name.1))
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        let expected = match (e.family.prefix(), name.0 == own.event) {
            (Some(prefix), true) => expected.map(|n| format!("{prefix}.{n}")),
            _ => expected,
        };
        assert_eq!(got, &expected, "envelope field {}", name.0);
    }
    assert_eq!(cb.event(), e.event.as_deref().unwrap_or(""));
    assert_eq!(cb.appid(), e.appid.as_deref().unwrap_or(""));
}

fn assert_signature_shape(sig: &str) {
    assert_eq!(sig.len(), 40, "signature {sig:?}");
    assert!(
        sig.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "signature {sig:?} is not lowercase hex"
    );
}

/// What verification must say about a correctly signed envelope at `now`.
fn expected_for_signed(timestamp: &str, now: SystemTime) -> Result<(), &'static str> {
    let Some(at) = verify::timestamp_to_time(timestamp) else {
        return Err("bad_timestamp");
    };
    let skew = match now.duration_since(at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_SKEW {
        Err("stale")
    } else {
        Ok(())
    }
}

fn outcome(r: &Result<Option<verify::ReplayKey>, VerifyError>) -> Result<(), &'static str> {
    match r {
        Ok(_) => Ok(()),
        Err(VerifyError::BadTimestamp(_)) => Err("bad_timestamp"),
        Err(VerifyError::Stale { .. }) => Err("stale"),
        Err(VerifyError::BadSignature) => Err("bad_signature"),
        Err(VerifyError::AppidNotAllowed(_)) => Err("appid_not_allowed"),
        Err(VerifyError::Missing(_)) => Err("missing"),
    }
}

fn check_verify(cb: &Callback) {
    let f = &*FIXED;
    let e = &cb.envelope;

    // The envelope as received: anything but a panic, and an Ok only for a real signature.
    let plain = verify::verify(e, &f.plain, now());
    if let Ok(key) = &plain {
        let key = key.as_ref().expect("a verified callback has a replay key");
        let (nonce, timestamp) = (e.nonce.as_deref().unwrap(), e.timestamp.as_deref().unwrap());
        assert_eq!(
            e.signature.as_deref().unwrap().to_ascii_lowercase(),
            verify::signature(SECRET, timestamp, nonce)
        );
        assert_eq!(
            key,
            &verify::ReplayKey::Signature(verify::signature(SECRET, timestamp, nonce))
        );
        assert_eq!(expected_for_signed(timestamp, now()), Ok(()));
    }
    let allowed = verify::verify(e, &f.allow_list, now());
    if allowed.is_ok() {
        assert!(
            plain.is_ok(),
            "the allow-list accepted what the plain settings refused"
        );
        assert!(APPIDS.contains(&cb.appid()));
    }
    let insecure = verify::verify(e, &f.insecure, now());
    assert_eq!(
        insecure.is_ok(),
        e.event.is_some(),
        "insecure: {insecure:?}"
    );
    if let Ok(key) = insecure {
        assert_eq!(key.is_some(), e.nonce.is_some() && e.timestamp.is_some());
    }
    let missing = [&e.event, &e.appid, &e.nonce, &e.timestamp, &e.signature]
        .iter()
        .any(|f| f.is_none());
    assert_eq!(
        matches!(plain, Err(VerifyError::Missing(_))),
        missing,
        "{plain:?}"
    );

    // The same envelope, signed the way ZEGO signs it.
    let (Some(_), Some(appid), Some(nonce), Some(timestamp)) =
        (&e.event, &e.appid, &e.nonce, &e.timestamp)
    else {
        return;
    };
    let sig = verify::signature(SECRET, timestamp, nonce);
    assert_signature_shape(&sig);
    assert_signature_shape(&verify::signature(timestamp, nonce, appid));
    let mut signed = e.clone();
    for given in [sig.clone(), sig.to_ascii_uppercase()] {
        signed.signature = Some(given);
        let r = verify::verify(&signed, &f.plain, now());
        assert_eq!(outcome(&r), expected_for_signed(timestamp, now()), "{r:?}");
        if let Some(at) = verify::timestamp_to_time(timestamp) {
            let r = verify::verify(&signed, &f.plain, at);
            assert!(r.is_ok(), "signed and fresh at its own timestamp: {r:?}");
            let r = verify::verify(&signed, &f.allow_list, at);
            if APPIDS.contains(&appid.as_str()) {
                assert!(r.is_ok(), "{r:?}");
            } else {
                assert_eq!(r, Err(VerifyError::AppidNotAllowed(appid.clone())));
            }
        }
    }
    // Signed with another secret: refused, whatever the timestamp.
    signed.signature = Some(verify::signature("another-secret", timestamp, nonce));
    if APPIDS.contains(&appid.as_str()) {
        assert_eq!(
            verify::verify(&signed, &f.allow_list, now()),
            Err(VerifyError::BadSignature)
        );
    }
    assert_eq!(
        verify::verify(&signed, &f.plain, now()),
        Err(VerifyError::BadSignature)
    );
}

fn check_route(cb: &Callback) {
    let f = &*FIXED;
    let snapshot = &f.snapshot;
    let plan = route::plan(snapshot, cb, true);
    let event = cb.event();

    // Names come out in file order (sync first, then queued, each in file order).
    let index = |r: &Rule| {
        snapshot
            .rules
            .iter()
            .position(|s| s.name == r.name)
            .unwrap()
    };
    let queued: Vec<usize> = plan.queued.iter().map(|r| index(r)).collect();
    assert!(queued.windows(2).all(|w| w[0] < w[1]), "{queued:?}");
    assert!(plan.queued.iter().all(|r| !r.sync));
    // `*` with no `when` sees every event.
    assert!(
        plan.queued.iter().any(|r| r.name == "event-log"),
        "event-log skipped event {event:?}"
    );
    // Every before_* event gets a sync answer (`answer-before` has no `when`).
    if event.starts_with("before_") {
        assert!(plan.sync.is_some(), "no sync rule for {event:?}");
    }
    if let Some(s) = &plan.sync {
        assert!(s.sync && s.matches_event(event));
        for shadowed in &plan.shadowed {
            assert!(index(s) < index(shadowed));
        }
    }
    // Without sync (emitted events) every matching rule is queued.
    let unsynced = route::plan(snapshot, cb, false);
    assert!(unsynced.sync.is_none() && unsynced.shadowed.is_empty());
    assert_eq!(
        unsynced.queued.len(),
        plan.queued.len() + plan.shadowed.len() + usize::from(plan.sync.is_some())
    );

    // Every template of every rule that fired renders or fails cleanly.
    let fired = plan.sync.iter().chain(&plan.shadowed).chain(&plan.queued);
    for rule in fired {
        let ctx = zimhook::template::callback_context(cb, Some((&rule.name, "fuzz-delivery-1")));
        for id in rule_templates(rule) {
            let _ = snapshot.templates.render(id, &ctx);
        }
    }

    // The names templates see.
    let ctx: Context = zimhook::template::callback_context(cb, None);
    let render = |id| {
        f.templates
            .render(id, &ctx)
            .expect("fixed template renders")
    };
    assert_eq!(render(&f.body), String::from_utf8_lossy(&cb.raw));
    assert_eq!(render(&f.event), event);
    let payload = render(&f.payload);
    match serde_json::from_str::<Value>(&payload) {
        Ok(Value::Object(map)) => assert_eq!(map.len(), cb.object.len(), "{payload}"),
        other => panic!("payload | tojson is not a JSON object: {other:?}\n{payload}"),
    }
}

/// Every template a rule owns.
fn rule_templates(rule: &Rule) -> Vec<&TemplateId> {
    let mut ids: Vec<&TemplateId> = rule.when.iter().chain(&rule.order_by).collect();
    match &rule.action {
        Action::Command(c) => {
            ids.extend(&c.argv);
            ids.extend(c.env.iter().map(|(_, t)| t));
        }
        Action::Forward(fw) => {
            ids.push(&fw.url);
            ids.extend(fw.headers.iter().map(|(_, t)| t));
            ids.extend(&fw.body);
        }
        Action::Plugin(_) => {}
    }
    ids
}

/// Config loading: never a panic; every diagnostic points inside the text; a loaded snapshot
/// holds what validation promises.
pub fn check_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new(CONFIG_PATH);
    match zimhook::config::load_str(path, &text) {
        Err(e) => {
            assert!(!e.errors.is_empty(), "an error with no diagnostics");
            check_diagnostics(path, &text, &e.errors);
            assert!(
                e.errors
                    .windows(2)
                    .all(|w| (w[0].line, w[0].col) <= (w[1].line, w[1].col)),
                "errors not in file order"
            );
            let _ = e.to_string();
        }
        Ok(snapshot) => {
            check_diagnostics(path, &text, &snapshot.warnings);
            check_snapshot(&text, &snapshot);
        }
    }
}

fn check_diagnostics(path: &Path, text: &str, diagnostics: &[Diagnostic]) {
    let lines: Vec<&str> = text.split('\n').collect();
    for d in diagnostics {
        assert_eq!(d.file, path);
        assert!(!d.message.trim().is_empty(), "empty message: {d:?}");
        assert!(
            d.line >= 1 && d.line <= lines.len(),
            "line {} outside 1..={}: {d}",
            d.line,
            lines.len()
        );
        let width = lines[d.line - 1].chars().count();
        assert!(
            d.col >= 1 && d.col <= width + 1,
            "column {} outside 1..={} of line {}: {d}",
            d.col,
            width + 1,
            d.line
        );
    }
}

/// A callback to render a loaded config's templates against.
static SAMPLE: LazyLock<Callback> = LazyLock::new(|| {
    let body = r#"{"appid":"1","event":"call_timeout","nonce":"350176","timestamp":1700000000,"signature":"x","call_id":"3501761173612493269","user_ids":["abc","def"],"n":858012925204410400123}"#;
    Callback::decode(Bytes::from_static(body.as_bytes())).unwrap()
});

fn check_snapshot(text: &str, s: &zimhook::config::Snapshot) {
    let lines = text.split('\n').count();
    assert_eq!(s.hash.len(), 64);
    assert!(s.server.path.starts_with('/'));
    assert!(s.server.max_body > 0);
    assert!(s.server.max_connections >= 1 && s.store.workers >= 1);
    assert!(s.verify.insecure || !s.verify.secrets.is_empty());
    assert!(s.verify.secrets.iter().all(|k| !k.expose().is_empty()));
    assert!(s.verify.max_skew.is_none_or(|d| !d.is_zero()));
    let mut names = std::collections::BTreeSet::new();
    // Each template of each rule under its own id: one may not replace another.
    let mut ids = std::collections::BTreeSet::new();
    for rule in &s.rules {
        for id in rule_templates(rule) {
            assert!(
                ids.insert(id.as_str()),
                "template id {:?} is used twice",
                id.as_str()
            );
        }
        assert!(!rule.name.trim().is_empty());
        assert!(
            names.insert(rule.name.as_str()),
            "rule {:?} twice",
            rule.name
        );
        assert!(rule.line >= 1 && rule.line <= lines);
        assert!(!rule.events.is_empty());
        assert!(rule.retry.attempts >= 1 && rule.retry.backoff <= rule.retry.max_backoff);
        for attempt in [0, 1, 2, 31, 32, 64, u32::MAX] {
            assert!(rule.retry.ceiling(attempt) <= rule.retry.max_backoff);
        }
        assert!(rule.sync || rule.fallback.is_none());
        if let Some(fallback) = &rule.fallback {
            serde_json::from_slice::<Value>(fallback).expect("fallback is JSON");
        }
        let _ = rule.matches_event(SAMPLE.event());
        let ctx =
            zimhook::template::callback_context(&SAMPLE, Some((&rule.name, "fuzz-delivery-1")));
        for id in rule_templates(rule) {
            let _ = s.templates.render(id, &ctx);
        }
    }
    let _ = route::plan(s, &SAMPLE, true);
}
