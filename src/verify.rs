//! Is this callback from ZEGO, and fresh? Signature (constant-time, every configured secret
//! tried), appid allow-list and timestamp skew. The replay decision uses the store's table (see
//! `deliver::Store::check_replay`); this module only builds its key ([`ReplayKey`]: the
//! signature, the one thing the secret vouches for). HTTP is not this
//! module's business: the caller maps a [`VerifyError`] to a status.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use crate::config::VerifySettings;
use crate::receive::Envelope;

/// ZEGO's callback signature: `lower_hex(sha1(concat(sort_as_strings([secret, timestamp,
/// nonce]))))`. Sorted as strings (byte order), no separator; the timestamp is its literal text.
/// Every product family signs so, over its own timestamp and nonce fields (Mini Game's nonce is
/// `SignatureNonce`).
///
/// Mini Game's docs contradict each other: its "Making API Requests" page gives
/// `md5(AppId + SignatureNonce + CallbackSecret + Timestamp)`, its ZH callback page this sorted
/// SHA-1, its EN callback page no check at all, and its sample signature is URL-encoded Base64
/// of 20 bytes, neither. Only this SHA-1 is accepted: the MD5 form is the outbound API signing
/// scheme, and the Base64 sample cannot be reproduced from anything documented.
pub fn signature(secret: &str, timestamp: &str, nonce: &str) -> String {
    let mut parts = [secret, timestamp, nonce];
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for p in parts {
        hasher.update(p.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Why a callback was refused (all of these answer 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing envelope field `{0}`")]
    Missing(&'static str),
    #[error("appid {0} is not allowed")]
    AppidNotAllowed(String),
    #[error("signature does not match")]
    BadSignature,
    #[error("timestamp {timestamp} is {skew_secs}s away from now (max_skew is {max_secs}s)")]
    Stale {
        timestamp: String,
        skew_secs: u64,
        max_secs: u64,
    },
    #[error("timestamp {0:?} is not a number")]
    BadTimestamp(String),
}

impl VerifyError {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            VerifyError::Missing(_) => "missing_field",
            VerifyError::AppidNotAllowed(_) => "appid_not_allowed",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Stale { .. } | VerifyError::BadTimestamp(_) => "stale",
        }
    }
}

/// The single-use identity of a callback within the replay window.
///
/// For a signed callback it is the signature alone: the secret signs only the timestamp and the
/// nonce, sorted and concatenated without a separator, so the appid, the event and the body are
/// not covered, and digits can move between timestamp and nonce without changing what is
/// signed. The signature is the one thing an attacker cannot vary, so it is what may be used
/// once, whatever comes with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReplayKey {
    /// The signature, lower-case hex.
    Signature(String),
    /// `verify.insecure`: nothing is signed, so the sender's own (appid, nonce, timestamp).
    Unsigned {
        appid: String,
        nonce: String,
        timestamp: String,
    },
}

impl ReplayKey {
    /// A stable byte encoding, for store tables. The two kinds never collide.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ReplayKey::Signature(sig) => {
                let mut v = Vec::with_capacity(sig.len() + 2);
                v.extend_from_slice(b"s\0");
                v.extend_from_slice(sig.as_bytes());
                v
            }
            ReplayKey::Unsigned {
                appid,
                nonce,
                timestamp,
            } => {
                let mut v = Vec::with_capacity(appid.len() + nonce.len() + timestamp.len() + 4);
                v.extend_from_slice(b"u\0");
                v.extend_from_slice(appid.as_bytes());
                v.push(0);
                v.extend_from_slice(nonce.as_bytes());
                v.push(0);
                v.extend_from_slice(timestamp.as_bytes());
                v
            }
        }
    }
}

/// Checks a callback's envelope. Returns the replay key to check next (none in insecure mode
/// when the callback carries no nonce).
pub fn verify(
    envelope: &Envelope,
    settings: &VerifySettings,
    now: SystemTime,
) -> Result<Option<ReplayKey>, VerifyError> {
    // Missing fields are named as the callback's family spells them (`SignatureNonce`, ...).
    let names = envelope.family.spelling();
    let event = envelope.event.as_deref();
    if event.is_none() {
        return Err(VerifyError::Missing(names.event));
    }
    if settings.insecure {
        return Ok(match (&envelope.nonce, &envelope.timestamp) {
            (Some(nonce), Some(timestamp)) => Some(ReplayKey::Unsigned {
                appid: envelope.appid.clone().unwrap_or_default(),
                nonce: nonce.clone(),
                timestamp: timestamp.clone(),
            }),
            _ => None,
        });
    }
    let appid = envelope
        .appid
        .as_deref()
        .ok_or(VerifyError::Missing(names.appid))?;
    let nonce = envelope
        .nonce
        .as_deref()
        .ok_or(VerifyError::Missing(names.nonce))?;
    let timestamp = envelope
        .timestamp
        .as_deref()
        .ok_or(VerifyError::Missing(names.timestamp))?;
    let given = envelope
        .signature
        .as_deref()
        .ok_or(VerifyError::Missing(names.signature))?;

    if !settings.appids.is_empty() && !settings.appids.iter().any(|a| a == appid) {
        return Err(VerifyError::AppidNotAllowed(appid.to_string()));
    }
    let given = given.to_ascii_lowercase();
    // Every secret is tried, whatever matched, so timing says nothing about which one did.
    let matched = settings.secrets.iter().fold(0u8, |acc, secret| {
        let expected = signature(secret.expose(), timestamp, nonce);
        acc | expected.as_bytes().ct_eq(given.as_bytes()).unwrap_u8()
    });
    if matched == 0 {
        return Err(VerifyError::BadSignature);
    }
    if let Some(max) = settings.max_skew {
        check_skew(timestamp, max, now)?;
    }
    Ok(Some(ReplayKey::Signature(given)))
}

/// Seconds or milliseconds: a value above 10^12 is milliseconds (ZEGO's room and group pages
/// say milliseconds since 2025; samples show seconds).
pub fn timestamp_to_time(timestamp: &str) -> Option<SystemTime> {
    let n: u64 = timestamp.trim().parse().ok()?;
    let d = if n > 1_000_000_000_000 {
        Duration::from_millis(n)
    } else {
        Duration::from_secs(n)
    };
    UNIX_EPOCH.checked_add(d)
}

fn check_skew(timestamp: &str, max: Duration, now: SystemTime) -> Result<(), VerifyError> {
    let at = timestamp_to_time(timestamp)
        .ok_or_else(|| VerifyError::BadTimestamp(timestamp.to_string()))?;
    let skew = match now.duration_since(at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > max {
        return Err(VerifyError::Stale {
            timestamp: timestamp.to_string(),
            skew_secs: skew.as_secs(),
            max_secs: max.as_secs(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn official_test_vector() {
        assert_eq!(
            signature("secret", "1470820198", "123412"),
            "5bd59fd62953a8059fb7eaba95720f66d19e4517"
        );
    }

    #[test]
    fn sorts_as_strings_not_numbers() {
        // Numerically 99 < 1470820198, but as strings "1470820198" < "99" < "abc".
        assert_eq!(
            signature("abc", "1470820198", "99"),
            "622967e792ce67be63d020d2e4972306fcd9909c"
        );
    }

    fn settings(secrets: &[&str]) -> VerifySettings {
        VerifySettings {
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            service_only: vec![],
            max_skew: Some(Duration::from_secs(300)),
            appids: vec![],
            insecure: false,
        }
    }

    fn envelope(secret: &str, ts: &str) -> Envelope {
        Envelope {
            family: Default::default(),
            appid: Some("1".into()),
            event: Some("call_timeout".into()),
            nonce: Some("9223372036854775809".into()),
            timestamp: Some(ts.into()),
            signature: Some(signature(secret, ts, "9223372036854775809")),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn any_configured_secret_may_match() {
        let s = settings(&["old", "new"]);
        assert!(verify(&envelope("new", "1700000000"), &s, at(1700000000)).is_ok());
        assert!(verify(&envelope("old", "1700000000"), &s, at(1700000000)).is_ok());
        assert_eq!(
            verify(&envelope("other", "1700000000"), &s, at(1700000000)),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn skew_in_seconds_and_milliseconds() {
        let s = settings(&["k"]);
        assert!(verify(&envelope("k", "1700000000"), &s, at(1700000299)).is_ok());
        assert!(matches!(
            verify(&envelope("k", "1700000000"), &s, at(1700000301)),
            Err(VerifyError::Stale { .. })
        ));
        assert!(verify(&envelope("k", "1700000000000"), &s, at(1700000010)).is_ok());
        assert!(matches!(
            verify(&envelope("k", "1700000000000"), &s, at(1700001000)),
            Err(VerifyError::Stale { .. })
        ));
    }

    #[test]
    fn the_replay_key_is_the_signature_whatever_comes_with_it() {
        let s = settings(&["k"]);
        let e = envelope("k", "1700000000");
        let key = verify(&e, &s, at(1700000000)).unwrap().unwrap();
        assert_eq!(key, ReplayKey::Signature(e.signature.clone().unwrap()));
        // Another allowed appid with the same nonce, timestamp and signature: the same key.
        let mut other_app = e.clone();
        other_app.appid = Some("2".into());
        assert_eq!(verify(&other_app, &s, at(1700000000)).unwrap(), Some(key));
        // Digits moved from the nonce into the timestamp (read as milliseconds) sign the same
        // text, so they make the same key too.
        let secret = "zsecret";
        let (ts_a, nonce_a) = ("1796155339", "5359848011");
        let (ts_b, nonce_b) = ("1796155339535", "9848011");
        assert_eq!(
            signature(secret, ts_a, nonce_a),
            signature(secret, ts_b, nonce_b)
        );
        let moved = |ts: &str, nonce: &str| Envelope {
            family: Default::default(),
            appid: Some("1".into()),
            event: Some("call_timeout".into()),
            nonce: Some(nonce.into()),
            timestamp: Some(ts.into()),
            signature: Some(signature(secret, ts, nonce).to_uppercase()),
        };
        let s = settings(&[secret]);
        let now = at(1796155339);
        let a = verify(&moved(ts_a, nonce_a), &s, now).unwrap().unwrap();
        let b = verify(&moved(ts_b, nonce_b), &s, now).unwrap().unwrap();
        assert_eq!(a.encode(), b.encode());
        // Unsigned keys never collide with signed ones.
        let unsigned = ReplayKey::Unsigned {
            appid: String::new(),
            nonce: String::new(),
            timestamp: String::new(),
        };
        assert_ne!(unsigned.encode()[0], a.encode()[0]);
    }

    #[test]
    fn appid_allow_list_and_missing_fields() {
        let mut s = settings(&["k"]);
        s.appids = vec!["2".into()];
        assert_eq!(
            verify(&envelope("k", "1700000000"), &s, at(1700000000)),
            Err(VerifyError::AppidNotAllowed("1".into()))
        );
        let mut e = envelope("k", "1700000000");
        e.signature = None;
        assert_eq!(
            verify(&e, &settings(&["k"]), at(1700000000)),
            Err(VerifyError::Missing("signature"))
        );
    }

    /// A body of `family`, signed with `secret` under its own field names.
    fn signed_body(family: crate::receive::Family, secret: &str, ts: &str, nonce: &str) -> String {
        let names = family.spelling();
        let mut body = serde_json::Map::new();
        body.insert(names.appid.into(), serde_json::json!(1234567890));
        body.insert(names.event.into(), serde_json::json!(1));
        body.insert(names.nonce.into(), serde_json::json!(nonce));
        body.insert(names.timestamp.into(), serde_json::json!(ts));
        body.insert(
            names.signature.into(),
            serde_json::json!(signature(secret, ts, nonce)),
        );
        serde_json::Value::Object(body).to_string()
    }

    #[test]
    fn every_family_signs_over_its_own_fields() {
        use crate::receive::{Callback, Family};
        let s = settings(&["k"]);
        for family in Family::ALL {
            let body = signed_body(family, "k", "1700000000", "7450395512627324902");
            let cb = Callback::decode(body.clone().into()).unwrap();
            assert_eq!(cb.envelope.family, family, "{body}");
            assert!(verify(&cb.envelope, &s, at(1700000000)).is_ok(), "{body}");
            let mut wrong = cb.envelope.clone();
            wrong.nonce = Some("7450395512627324903".into());
            assert_eq!(
                verify(&wrong, &s, at(1700000000)),
                Err(VerifyError::BadSignature),
                "{family:?}"
            );
        }
    }

    #[test]
    fn missing_fields_are_named_as_the_family_spells_them() {
        use crate::receive::Callback;
        let s = settings(&["k"]);
        for (body, field) in [
            (
                r#"{"AppId":1,"ReportType":1,"SignatureNonce":"n","Signature":"x"}"#,
                "Timestamp",
            ),
            (
                r#"{"AppId":1,"ReportType":1,"Timestamp":1,"Signature":"x","SignatureNonce":null}"#,
                "SignatureNonce",
            ),
            (
                r#"{"app_id":1,"event_type":1,"nonce":"n","timestamp":"1"}"#,
                "signature",
            ),
            (
                r#"{"event_type":1,"nonce":"n","timestamp":"1","signature":"x"}"#,
                "app_id",
            ),
            (
                r#"{"AppID":1,"Nonce":"n","Timestamp":"1","Signature":"x"}"#,
                "EventType",
            ),
        ] {
            let cb = Callback::decode(body.to_string().into()).unwrap();
            assert_eq!(
                verify(&cb.envelope, &s, at(1)),
                Err(VerifyError::Missing(field)),
                "{body}"
            );
        }
    }

    #[test]
    fn mini_game_accepts_only_the_sorted_sha1() {
        use crate::receive::Callback;
        let s = settings(&["k"]);
        let mini = |sig: &str| {
            let body = format!(
                r#"{{"AppId":1234567890,"SignatureNonce":"15215528852396","Timestamp":1700000000,"Signature":"{sig}","ReportType":1}}"#
            );
            let cb = Callback::decode(body.into()).unwrap();
            verify(&cb.envelope, &s, at(1700000000))
        };
        assert!(mini(&signature("k", "1700000000", "15215528852396")).is_ok());
        // md5(AppId + SignatureNonce + CallbackSecret + Timestamp), the other page's formula.
        // md5("123456789015215528852396k1700000000"):
        assert_eq!(
            mini("417b9e9f6643906fdae2a2c89f89508b"),
            Err(VerifyError::BadSignature)
        );
        // The sample's shape: URL-encoded Base64 of 20 bytes.
        assert_eq!(
            mini("Pc5WB8gokVn0xfeu%2FZV%2BiNM1dgI%3D"),
            Err(VerifyError::BadSignature)
        );
    }
}
