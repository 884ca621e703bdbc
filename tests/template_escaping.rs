//! Payload text cannot change what a forward means: values in a forward URL are
//! percent-encoded for where they stand (path segment, query component), values in a JSON body
//! are JSON-encoded; `|safe` opts out.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The one request `target` received (waits for it).
async fn received(target: &Target) -> Received {
    assert!(
        wait_until(Duration::from_secs(10), || target.count() == 1).await,
        "the forward did not arrive"
    );
    target.requests().remove(0)
}

fn query_value(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_values_are_encoded_for_the_path_and_for_the_query() {
    let target = Target::start(&[200]).await;
    let daemon = Daemon::start(&format!(
        r#"{}
[[rule]]
name = "missed"
events = ["call_timeout"]
forward = "{}/missed/{{{{ user_id }}}}?u={{{{ user_id }}}}&n={{{{ n }}}}"
"#,
        verify_section(),
        target.url("")
    ))
    .await;
    let evil = "../../admin?x=1&y#z";
    let body = sign(event(
        "call_timeout",
        json!({"user_id": evil, "n": "a b+c%d=é"}),
    ));
    assert_eq!(daemon.post(to_body(&body)).await.0, 200);
    let got = received(&target).await;
    // One path segment: the value cannot climb the path, start a query or a fragment.
    assert_eq!(got.path, "/missed/..%2F..%2Fadmin%3Fx=1&y%23z");
    let query = got.query.clone().unwrap_or_default();
    assert_eq!(
        query,
        "u=..%2F..%2Fadmin%3Fx%3D1%26y%23z&n=a%20b%2Bc%25d%3D%C3%A9"
    );
    // Decoded, each value is the original text: nothing added, nothing lost.
    let segment = got.path.strip_prefix("/missed/").unwrap();
    assert_eq!(
        percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .unwrap(),
        evil
    );
    assert_eq!(query_value(&query, "u").as_deref(), Some(evil));
    assert_eq!(query_value(&query, "n").as_deref(), Some("a b+c%d=é"));
    assert_eq!(query_value(&query, "x"), None, "no parameter smuggled in");
    daemon.stop().await;
    target.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dot_segment_value_fails_the_delivery_instead_of_climbing_the_path() {
    let target = Target::start(&[200]).await;
    let daemon = Daemon::start(&format!(
        r#"{}
[[rule]]
name = "missed"
events = ["call_timeout"]
retry = {{ attempts = 1 }}
forward = "{}/missed/{{{{ user_id }}}}/x"
"#,
        verify_section(),
        target.url("")
    ))
    .await;
    let body = sign(event("call_timeout", json!({"user_id": ".."})));
    assert_eq!(daemon.post(to_body(&body)).await.0, 200);
    let d = daemon
        .wait_dead_letters(1, Duration::from_secs(10))
        .await
        .remove(0);
    let error = d.last_error.unwrap_or_default();
    assert!(error.contains("\"..\""), "{error}");
    assert_eq!(target.count(), 0, "nothing was sent");
    daemon.stop().await;
    target.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_body_values_are_json_encoded() {
    let target = Target::start(&[200]).await;
    let daemon = Daemon::start(&format!(
        r#"{}
[[rule]]
name = "chat"
events = ["send_msg"]
forward = "{}/chat"
body = '{{"text": {{{{ msg_body }}}}, "from": {{{{ from_user_id }}}}, "n": {{{{ n }}}}, "all": {{{{ payload | tojson }}}}, "raw": {{{{ raw | safe }}}}}}'
"#,
        verify_section(),
        target.url("")
    ))
    .await;
    let text = "he said \"hi\", \\o/\nthen }, {\"admin\": true";
    let body = sign(event(
        "send_msg",
        json!({"msg_body": text, "from_user_id": "u1", "n": 7, "raw": "[1, 2]"}),
    ));
    assert_eq!(daemon.post(to_body(&body)).await.0, 200);
    let got = received(&target).await;
    assert_eq!(got.header("content-type"), Some("application/json"));
    let v: Value = serde_json::from_slice(&got.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&got.body)));
    assert_eq!(v["text"], text);
    assert_eq!(v["from"], "u1");
    assert_eq!(v["n"], 7);
    assert_eq!(v["all"]["msg_body"], text);
    assert_eq!(v["raw"], json!([1, 2]), "|safe inserts the value as is");
    assert_eq!(v.as_object().unwrap().len(), 5, "no key smuggled in: {v}");
    daemon.stop().await;
    target.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_keeps_values_as_they_are() {
    let target = Target::start(&[200]).await;
    let daemon = Daemon::start(&format!(
        r#"{}
[[rule]]
name = "chat"
events = ["send_msg"]
forward = "{}/chat"
headers = {{ Content-Type = "text/plain; charset=utf-8" }}
body = "message: {{{{ msg_body }}}}"
"#,
        verify_section(),
        target.url("")
    ))
    .await;
    let text = "a \"quoted\" line\nand <more> & ../";
    let body = sign(event("send_msg", json!({"msg_body": text})));
    assert_eq!(daemon.post(to_body(&body)).await.0, 200);
    let got = received(&target).await;
    assert_eq!(
        got.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(got.body, format!("message: {text}").as_bytes());
    daemon.stop().await;
    target.stop();
}

#[test]
fn check_warns_where_payload_text_would_change_meaning() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        r#"[verify]
secrets = ["s"]
[[rule]]
name = "chat"
events = ["send_msg"]
forward = "https://x.example/chat"
body = '{"text": "{{ msg_body }}"}'
[[rule]]
name = "shell"
events = ["send_msg"]
command = ["sh", "-c", "echo {{ msg_body }}"]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(common::process::BIN)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "warnings only: {err}");
    assert!(
        err.contains("config.toml:7:19: warning:") && err.contains("JSON string"),
        "{err}"
    );
    assert!(
        err.contains("config.toml:11:30: warning:") && err.contains("shell code"),
        "{err}"
    );
}
