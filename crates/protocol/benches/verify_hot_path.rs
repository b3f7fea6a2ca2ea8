//! The verifier's hot path: parse an `Authorization: Payment <token>` value and check its
//! challenge binding against a keyring that holds a current and a previous secret.
//!
//! Every benchmark processes one element per iteration (`Throughput::Elements(1)`), so
//! criterion's `thrpt` line reads directly as operations per second on one core.
//!
//! `cargo bench -p turnpike-protocol --bench verify_hot_path`

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use turnpike_protocol::challenge::ChallengeParams;
use turnpike_protocol::{
    BindingKeyring, BindingSecret, Challenge, ChallengeEcho, Credential, b64, jcs,
};

/// The keyring of a tenant after one rotation: `current` issues, both verify.
fn keyring() -> BindingKeyring {
    let current = BindingSecret::new(b"tenant-7f3a-binding-secret-2026-05-current")
        .expect("secret of 32+ bytes");
    let previous = BindingSecret::new(b"tenant-7f3a-binding-secret-2026-04-previous")
        .expect("secret of 32+ bytes");
    BindingKeyring::rotated(current, previous)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("json! object literal"),
    }
}

/// A Tempo charge as a server would issue it.
fn challenge_params() -> ChallengeParams {
    ChallengeParams {
        realm: "api.example.com".into(),
        method: "tempo".into(),
        intent: "charge".into(),
        request: object(json!({
            "amount": "250000",
            "currency": "0x20c0000000000000000000000000000000000001",
            "recipient": "0x742d35cc6634c0532925a3b844bc9e7595f8fe00",
            "methodDetails": {"chainId": 42431}
        })),
        expires: Some("2026-05-01T12:05:00Z".into()),
        digest: None,
        description: None,
        opaque: Some(jcs::to_b64(&json!({"o": "ord_8812"})).expect("canonicalizes")),
    }
}

/// The `Authorization` value a client sends for `challenge`: the echo plus a 65-byte signature.
fn authorization_value(challenge: &Challenge) -> String {
    let signature: String = (0u8..65)
        .map(|i| format!("{:02x}", i.wrapping_mul(37)))
        .collect();
    let credential = Credential {
        challenge: ChallengeEcho {
            id: challenge.id.clone(),
            realm: challenge.realm.clone(),
            method: challenge.method.clone(),
            intent: challenge.intent.clone(),
            request: challenge.request.wire().to_owned(),
            description: challenge.description.clone(),
            digest: challenge.digest.clone(),
            expires: challenge.expires.clone(),
            opaque: challenge.opaque.clone(),
            header: challenge.header.clone(),
        },
        source: None,
        payload: object(json!({"signature": format!("0x{signature}"), "type": "proof"})),
    };
    credential.to_header_value()
}

/// The whole check a verifier makes before anything else: well-formed and bound by us.
fn parse_and_verify(ring: &BindingKeyring, authorization: &str) -> bool {
    match Credential::parse(authorization) {
        Ok(credential) => ring.verify(
            &credential.challenge.binding_input(),
            &credential.challenge.id,
        ),
        Err(_) => false,
    }
}

fn verify_hot_path(c: &mut Criterion) {
    let ring = keyring();
    let params = challenge_params();
    let challenge = Challenge::issue(&ring, params.clone()).expect("issues");
    let authorization = authorization_value(&challenge);
    let credential = Credential::parse(&authorization).expect("parses");
    assert!(parse_and_verify(&ring, &authorization), "fixture verifies");
    assert!(
        !parse_and_verify(&keyring_without_our_secrets(), &authorization),
        "fixture is bound to this keyring only"
    );
    eprintln!(
        "credential: `Authorization: {}` value of {} bytes (token {} bytes, JSON {} bytes)",
        crate_scheme(),
        authorization.len(),
        authorization.len() - crate_scheme().len() - 1,
        b64::decode(&authorization[crate_scheme().len() + 1..])
            .expect("token decodes")
            .len(),
    );

    let mut group = c.benchmark_group("verify_hot_path");
    group.throughput(Throughput::Elements(1));

    group.bench_function("parse_and_verify", |b| {
        b.iter(|| parse_and_verify(black_box(&ring), black_box(&authorization)))
    });

    group.bench_function("parse_only", |b| {
        b.iter(|| Credential::parse(black_box(&authorization)))
    });

    let input = credential.challenge.binding_input();
    let id = credential.challenge.id.as_str();
    group.bench_function("binding_only", |b| {
        b.iter(|| black_box(&ring).verify(black_box(&input), black_box(id)))
    });

    group.bench_function("issue_and_format_challenge", |b| {
        b.iter_batched(
            || params.clone(),
            |params| {
                Challenge::issue(black_box(&ring), params)
                    .and_then(|challenge| challenge.to_header_value())
            },
            BatchSize::SmallInput,
        )
    });

    group.finish();

    // Where parsing spends its time: the base64url decode of the token, then the JSON.
    let token = &authorization[crate_scheme().len() + 1..];
    let json = b64::decode(token).expect("token decodes");
    let mut pieces = c.benchmark_group("parse_pieces");
    pieces.throughput(Throughput::Elements(1));
    pieces.bench_function("base64url_decode", |b| {
        b.iter(|| b64::decode(black_box(token)))
    });
    pieces.bench_function("json_to_credential", |b| {
        b.iter(|| Credential::from_json_bytes(black_box(&json)))
    });
    pieces.finish();
}

fn keyring_without_our_secrets() -> BindingKeyring {
    BindingKeyring::new(BindingSecret::new(&[0x55; 32]).expect("32-byte secret"))
}

fn crate_scheme() -> &'static str {
    turnpike_protocol::SCHEME
}

criterion_group!(benches, verify_hot_path);
criterion_main!(benches);
