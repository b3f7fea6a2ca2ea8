//! Structured round trip: build a challenge from arbitrary field values, issue it with a
//! keyring, format, parse, echo it in a credential, and verify.
//!
//! Invariants: the formatter refuses exactly the values holding a control character (CR, LF, …);
//! whatever it emits parses back to the same challenge; the binding verifies after the round
//! trip (as a challenge and as a credential's echo) and fails once a bound field changes.
#![no_main]

#[path = "common.rs"]
mod common;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use turnpike_protocol::challenge::ChallengeParams;
use turnpike_protocol::{Challenge, ChallengeEcho, ContentDigest, Credential};

#[derive(Arbitrary, Debug)]
enum Leaf {
    Null,
    Bool(bool),
    /// Integers within ±2^31 survive JCS (every number becomes an IEEE-754 double).
    Int(i32),
    /// Only non-integral doubles are used (1.0 would come back as the integer 1).
    Float(f64),
    Text(String),
    List(Vec<String>),
    Object(Vec<(String, i32)>),
}

impl Leaf {
    fn into_json(self) -> Value {
        match self {
            Leaf::Null => Value::Null,
            Leaf::Bool(b) => Value::Bool(b),
            Leaf::Int(i) => Value::from(i),
            Leaf::Float(f) if f.is_finite() && f.fract() != 0.0 => Value::from(f),
            Leaf::Float(_) => Value::Null,
            Leaf::Text(s) => Value::String(s),
            Leaf::List(items) => Value::Array(items.into_iter().map(Value::String).collect()),
            Leaf::Object(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, Value::from(v)))
                    .collect(),
            ),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Expires {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    millis: Option<u16>,
    offset_minutes: Option<i16>,
}

impl Expires {
    fn rfc3339(&self) -> String {
        let fraction = self
            .millis
            .map(|m| format!(".{:03}", m % 1000))
            .unwrap_or_default();
        let offset = match self.offset_minutes {
            None => "Z".to_owned(),
            Some(m) => {
                let m = i32::from(m) % (24 * 60);
                let sign = if m < 0 { '-' } else { '+' };
                format!("{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60)
            }
        };
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}{offset}",
            1900 + self.year % 8000,
            1 + self.month % 12,
            1 + self.day % 28,
            self.hour % 24,
            self.minute % 60,
            self.second % 60,
        )
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    realm: String,
    method: Vec<u8>,
    intent: Vec<u8>,
    request: Vec<(String, Leaf)>,
    expires: Option<Expires>,
    digest: Option<[u8; 32]>,
    description: Option<String>,
    opaque: Option<String>,
    header: Option<String>,
    /// Which bound field to change afterwards (0..=7), if any.
    change: Option<u8>,
}

fn lowercase(bytes: &[u8]) -> String {
    let s: String = bytes
        .iter()
        .take(16)
        .map(|b| char::from(b'a' + b % 26))
        .collect();
    if s.is_empty() { "tempo".into() } else { s }
}

fn intent_token(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-";
    let s: String = bytes
        .iter()
        .take(16)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    if s.is_empty() { "charge".into() } else { s }
}

fn echo(c: &Challenge) -> ChallengeEcho {
    ChallengeEcho {
        id: c.id.clone(),
        realm: c.realm.clone(),
        method: c.method.clone(),
        intent: c.intent.clone(),
        request: c.request.wire().to_owned(),
        description: c.description.clone(),
        digest: c.digest.clone(),
        expires: c.expires.clone(),
        opaque: c.opaque.clone(),
        header: c.header.clone(),
    }
}

/// (verified as a parsed challenge, verified as a credential's echo)
fn verify_over_the_wire(challenge: &Challenge) -> (bool, bool) {
    let ring = common::keyring();
    let header = challenge.to_header_value().expect("formats");
    common::assert_no_control_bytes(&header);
    let parsed = Challenge::parse(&header).expect("a formatted challenge parses");
    assert_eq!(&parsed, challenge);
    let credential = Credential {
        challenge: echo(&parsed),
        source: None,
        payload: Map::new(),
    };
    let echoed = Credential::parse(&credential.to_header_value()).expect("parses");
    assert_eq!(echoed, credential);
    (
        ring.verify(&parsed.binding_input(), &parsed.id),
        ring.verify(&echoed.challenge.binding_input(), &echoed.challenge.id),
    )
}

fuzz_target!(|input: Input| {
    let request: Map<String, Value> = input
        .request
        .into_iter()
        .take(16)
        .map(|(k, v)| (k, v.into_json()))
        .collect();
    let params = ChallengeParams {
        realm: input.realm,
        method: lowercase(&input.method),
        intent: intent_token(&input.intent),
        request,
        expires: input.expires.as_ref().map(Expires::rfc3339),
        digest: input
            .digest
            .map(|d| ContentDigest::Sha256(d).to_header_value()),
        description: input.description,
        opaque: input.opaque,
    };
    let ring = common::keyring();
    let Ok(mut challenge) = Challenge::issue(ring, params) else {
        return; // e.g. a request larger than the limit
    };
    // `ChallengeParams` has no credential header name: set it, then bind again.
    if input.header.is_some() {
        challenge.header = input.header;
        challenge.id = ring.challenge_id(&challenge.binding_input());
    }

    let c = &challenge;
    let refusable = [Some(c.realm.as_str())]
        .into_iter()
        .chain([&c.description, &c.opaque, &c.header].map(Option::as_deref))
        .flatten()
        .any(common::has_control_byte);
    match challenge.to_header_value() {
        Err(e) => assert!(refusable, "refused a formattable challenge: {e}"),
        Ok(_) if refusable => panic!("formatted a value holding a control character"),
        Ok(_) => {}
    }
    if refusable {
        return;
    }
    assert_eq!(verify_over_the_wire(&challenge), (true, true));

    let Some(change) = input.change else { return };
    let mut changed = challenge.clone();
    match change % 8 {
        0 => changed.realm.push('x'),
        1 => changed.method.push('x'),
        2 => changed.intent.push('x'),
        3 => {
            let mut json = changed.request.json().clone();
            json.insert("\u{0}changed".into(), Value::Bool(true));
            changed.request =
                turnpike_protocol::challenge::EncodedRequest::from_json(json).expect("encodes");
        }
        4 => {
            changed.expires = match changed.expires {
                Some(_) => None,
                None => Some("2031-02-03T04:05:06Z".into()),
            }
        }
        5 => {
            changed.digest = match changed.digest {
                Some(_) => None,
                None => Some(ContentDigest::sha256(b"x").to_header_value()),
            }
        }
        6 => {
            changed.opaque = match changed.opaque.as_deref() {
                Some("") | None => Some("x".into()),
                Some(_) => None,
            }
        }
        _ => {
            let bound = changed
                .header
                .as_deref()
                .is_some_and(|h| !h.eq_ignore_ascii_case("authorization"));
            changed.header = if bound {
                None
            } else {
                Some("Payment-Authorization".into())
            };
        }
    }
    assert_eq!(verify_over_the_wire(&changed), (false, false));
});
