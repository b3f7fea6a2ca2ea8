//! Property tests for the wire format: every parser survives any input, every formatter's output
//! parses back to the value it came from, the binding holds through the wire and breaks when a
//! bound field changes, and no formatter ever emits a raw CR or LF.
//!
//! Case counts are kept small so the file runs in a few seconds in debug builds. Set
//! `PROPTEST_CASES` to run every property with more cases (e.g. `PROPTEST_CASES=10000`).

use base64::Engine as _;
use chrono::{DateTime, FixedOffset, SecondsFormat};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Map, Value};
use turnpike_protocol::accept_payment::negotiate;
use turnpike_protocol::challenge::{ChallengeParams, EncodedRequest};
use turnpike_protocol::limits::{CHALLENGE_ID_LEN_MAX, CHALLENGES_MAX};
use turnpike_protocol::{
    AcceptPayment, BindingKeyring, BindingSecret, Challenge, ChallengeEcho, ChallengeError,
    ChargeRequest, ContentDigest, Credential, Receipt, auth_params, b64, find_payment_credential,
    parse_challenges, parse_challenges_from_lines,
};

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// `cases` cases unless `PROPTEST_CASES` is set; never writes regression files into the tree.
fn cases(cases: u32) -> ProptestConfig {
    let mut config = if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default()
    } else {
        ProptestConfig::with_cases(cases)
    };
    config.failure_persistence = None;
    config
}

fn secret(byte: u8) -> BindingSecret {
    BindingSecret::new(&[byte; 32]).expect("32-byte secret")
}

/// The keyring of a tenant after one rotation: `current` issues, both verify.
fn keyring() -> BindingKeyring {
    BindingKeyring::rotated(secret(0xC1), secret(0x9E))
}

// ---------------------------------------------------------------------------------------------
// Generators: text
// ---------------------------------------------------------------------------------------------

/// Printable Unicode (no control characters), biased toward the characters that need quoting
/// or that delimit header syntax.
fn printable_char() -> impl Strategy<Value = char> {
    prop_oneof![
        5 => any::<char>().prop_filter("no control characters", |c| !c.is_control()),
        3 => prop::char::range(' ', '~'),
        3 => prop::sample::select(vec![
            '"', '\\', ',', '=', ' ', ';', ':', '|', '\'', '\u{a0}', '\u{2028}', '\u{feff}', 'é',
            '\u{1f600}',
        ]),
    ]
}

fn printable(max_chars: usize) -> impl Strategy<Value = String> {
    vec(printable_char(), 0..=max_chars).prop_map(String::from_iter)
}

/// Any Unicode text, control characters included.
fn any_text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            3 => any::<char>(),
            1 => prop::sample::select(vec!['\r', '\n', '\0', '\t', '\u{7f}', '\u{85}', '"', '\\']),
        ],
        0..=max_chars,
    )
    .prop_map(String::from_iter)
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec!["tempo", "stripe", "lightning", "evm", "solana"])
            .prop_map(str::to_owned),
        1 => "[a-z]{1,12}",
    ]
}

fn intent() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec!["charge", "session"]).prop_map(str::to_owned),
        1 => "[A-Za-z0-9-]{1,16}",
    ]
}

/// An RFC 3339 date-time between 1900 and 9998, any offset, any sub-second precision.
fn rfc3339() -> impl Strategy<Value = String> {
    let formats = vec![
        SecondsFormat::Secs,
        SecondsFormat::Millis,
        SecondsFormat::Micros,
        SecondsFormat::Nanos,
        SecondsFormat::AutoSi,
    ];
    (
        -2_208_988_800i64..253_370_764_800,
        0u32..1_000_000_000,
        -1439i32..=1439,
        prop::sample::select(formats),
        any::<bool>(),
    )
        .prop_map(|(secs, nanos, offset_minutes, format, use_z)| {
            let offset = FixedOffset::east_opt(offset_minutes * 60).expect("offset within a day");
            DateTime::from_timestamp(secs, nanos)
                .expect("timestamp in range")
                .with_timezone(&offset)
                .to_rfc3339_opts(format, use_z)
        })
}

fn content_digest() -> impl Strategy<Value = ContentDigest> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(ContentDigest::Sha256),
        vec(any::<u8>(), 64).prop_map(|bytes| {
            ContentDigest::Sha512(Box::new(bytes.try_into().expect("64 bytes")))
        }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Generators: JSON
// ---------------------------------------------------------------------------------------------

const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Numbers that survive JCS (RFC 8785 writes every number as an IEEE-754 double in ECMAScript
/// form) and re-parse to an equal `serde_json::Number`: integers within ±2^53, non-integral
/// doubles, and doubles of 1e21 and above (written with an exponent).
fn jcs_stable_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).prop_map(Value::from),
        (-1_000_000_000i64..1_000_000_000, 1i32..8)
            .prop_map(|(mantissa, scale)| mantissa as f64 / 10f64.powi(scale))
            .prop_filter("non-integral", |f| f.fract() != 0.0)
            .prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite, non-integral or huge", |f| {
                f.is_finite() && (f.fract() != 0.0 || f.abs() >= 1e21)
            })
            .prop_map(Value::from),
    ]
}

/// Any JSON number, including those JCS cannot keep apart (1.0 vs 1, -0.0, integers past 2^53).
fn any_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        (-1000i64..1000).prop_map(|i| Value::from(i as f64)),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "amount", "currency", "recipient", "methodDetails", "chainId", "feePayer", "memo",
            "externalId", "description", "splits", "type", "signature", "",
        ])
        .prop_map(str::to_owned),
        2 => "[a-zA-Z_]{1,10}",
        1 => any_text(6),
    ]
}

fn json_value(numbers: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        numbers,
        any_text(10).prop_map(Value::String),
        printable(10).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            vec((json_key(), inner), 0..5)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
    .boxed()
}

fn json_object(numbers: BoxedStrategy<Value>) -> impl Strategy<Value = Map<String, Value>> {
    vec((json_key(), json_value(numbers)), 0..6).prop_map(|entries| entries.into_iter().collect())
}

/// A request object whose canonical form re-parses to an equal object.
fn request_object() -> impl Strategy<Value = Map<String, Value>> {
    json_object(jcs_stable_number().boxed())
}

// ---------------------------------------------------------------------------------------------
// Generators: protocol values
// ---------------------------------------------------------------------------------------------

prop_compose! {
    fn challenge_params()(
        realm in printable(40),
        method in method(),
        intent in intent(),
        request in request_object(),
        expires in prop::option::of(rfc3339()),
        digest in prop::option::of(content_digest().prop_map(|d| d.to_header_value())),
        description in prop::option::of(printable(60)),
        opaque in prop::option::of(printable(40)),
    ) -> ChallengeParams {
        ChallengeParams { realm, method, intent, request, expires, digest, description, opaque }
    }
}

fn issue(params: ChallengeParams) -> Challenge {
    Challenge::issue(&keyring(), params).expect("valid params issue a challenge")
}

prop_compose! {
    /// A valid challenge built field by field: any non-empty id up to the parser's limit, any
    /// credential header name.
    fn constructed_challenge()(
        id in vec(printable_char(), 1..=64)
            .prop_map(String::from_iter)
            .prop_filter("id within the parser's limit", |id| id.len() <= CHALLENGE_ID_LEN_MAX),
        params in challenge_params(),
        header in prop::option::of(printable(24)),
    ) -> Challenge {
        let mut challenge = issue(params);
        challenge.id = id;
        challenge.header = header;
        challenge
    }
}

fn echo_of(c: &Challenge) -> ChallengeEcho {
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

prop_compose! {
    fn challenge_echo()(
        id in vec(any::<char>(), 1..=64).prop_map(String::from_iter),
        realm in any_text(40),
        method in method(),
        intent in intent(),
        request in any_text(40),
        description in prop::option::of(any_text(40)),
        digest in prop::option::of(any_text(40)),
        expires in prop::option::of(any_text(30)),
        opaque in prop::option::of(any_text(40)),
        header in prop::option::of(any_text(20)),
    ) -> ChallengeEcho {
        ChallengeEcho { id, realm, method, intent, request, description, digest, expires, opaque, header }
    }
}

prop_compose! {
    fn credential()(
        challenge in challenge_echo(),
        source in prop::option::of(prop_oneof![
            any_text(40).prop_map(Value::String),
            json_object(any_number().boxed()).prop_map(Value::Object),
        ]),
        payload in json_object(any_number().boxed()),
    ) -> Credential {
        Credential { challenge, source, payload }
    }
}

prop_compose! {
    fn receipt()(
        status in prop_oneof![Just("success".to_owned()), any_text(12)]
            .prop_filter("non-empty", |s| !s.is_empty()),
        method in prop::option::of(any_text(12)),
        timestamp in rfc3339(),
        reference in any_text(40).prop_filter("non-empty", |s| !s.is_empty()),
        extra in json_object(any_number().boxed()).prop_map(|mut extra| {
            // A receipt's own fields cannot also be extras (see the ignored test below).
            for own in ["status", "method", "timestamp", "reference"] {
                extra.remove(own);
            }
            extra
        }),
    ) -> Receipt {
        Receipt { status, method, timestamp, reference, extra }
    }
}

// ---------------------------------------------------------------------------------------------
// Generators: hostile input
// ---------------------------------------------------------------------------------------------

/// Pieces of header syntax, so random concatenations reach deep parser states (quoted strings,
/// escapes, several schemes, parameters, base64, q-values, digests).
const HEADER_ATOMS: &[&str] = &[
    "Payment",
    "payment",
    "PAYMENT",
    "Payment ",
    "Bearer ",
    "Basic ",
    "Negotiate ",
    " ",
    "  ",
    "\t",
    ",",
    ", ",
    ",,",
    "=",
    "==",
    " = ",
    "\"",
    "\\",
    "\\\"",
    "\\\\",
    ":",
    ";",
    "/",
    "*",
    "id=",
    "realm=",
    "method=",
    "intent=",
    "request=",
    "expires=",
    "digest=",
    "description=",
    "opaque=",
    "header=",
    "ID=",
    "\"tempo\"",
    "\"charge\"",
    "tempo",
    "charge",
    "\"e30\"",
    "e30",
    "eyJ",
    "eyJjaGFsbGVuZ2UiOnsi",
    "\"a\"",
    "\"\"",
    "2030-01-01T00:00:00Z",
    "q=",
    "q=0",
    "q=0.5",
    "q=1",
    "q=1.000",
    ";q=0.",
    "tempo/charge",
    "*/*",
    "stripe/*",
    "sha-256=",
    "sha-512=",
    ":X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
    "unixsum=:AAA=:",
    "WWW-Authenticate:",
    "Authorization:",
    "Payment-Receipt:",
    "\r",
    "\n",
    "\r\n",
    "\0",
    "\u{7f}",
    "é",
    "\u{feff}",
    "\u{a0}",
    "-",
    "_",
    "+",
    "{",
    "}",
    "[",
    "]",
    "null",
    "0",
    "1",
];

fn header_ish() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            6 => prop::sample::select(HEADER_ATOMS).prop_map(str::to_owned),
            2 => "[A-Za-z0-9_=+/-]{1,8}",
            1 => any::<char>().prop_map(String::from),
        ],
        0..48,
    )
    .prop_map(|pieces| pieces.concat())
}

/// Pieces of credential/receipt JSON; base64url-encoded, they get past the token check and
/// exercise the JSON and schema layers.
const JSON_ATOMS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\"challenge\"",
    "\"payload\"",
    "\"source\"",
    "\"id\"",
    "\"realm\"",
    "\"method\"",
    "\"intent\"",
    "\"request\"",
    "\"expires\"",
    "\"digest\"",
    "\"opaque\"",
    "\"description\"",
    "\"header\"",
    "\"status\"",
    "\"timestamp\"",
    "\"reference\"",
    "\"success\"",
    "\"tempo\"",
    "\"charge\"",
    "\"e30\"",
    "\"x\"",
    "\"\"",
    "\"2026-01-01T00:00:00Z\"",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e400",
    "1.5",
    "{}",
    "[]",
    "\"\\u0000\"",
    "\"\\ud800\"",
    " ",
];

fn json_ish() -> impl Strategy<Value = String> {
    vec(prop::sample::select(JSON_ATOMS), 0..40).prop_map(|pieces| pieces.concat())
}

/// A credential-shaped JSON document whose fields have arbitrary types.
fn credential_shaped_json() -> impl Strategy<Value = Value> {
    let field = |name: &'static str| {
        prop::option::of(json_value(any_number().boxed())).prop_map(move |v| (name, v))
    };
    let string_or_any = |name: &'static str| {
        prop_oneof![
            3 => any_text(12).prop_map(Value::String),
            1 => json_value(any_number().boxed()),
        ]
        .prop_map(move |v| (name, Some(v)))
    };
    (
        (
            string_or_any("id"),
            string_or_any("realm"),
            prop_oneof![3 => method().prop_map(Value::String), 1 => json_value(any_number().boxed())]
                .prop_map(|v| ("method", Some(v))),
            prop_oneof![3 => intent().prop_map(Value::String), 1 => json_value(any_number().boxed())]
                .prop_map(|v| ("intent", Some(v))),
            string_or_any("request"),
            field("expires"),
            field("opaque"),
        ),
        field("payload"),
        field("source"),
        any::<bool>(),
    )
        .prop_map(|(challenge_fields, payload, source, challenge_is_object)| {
            let (id, realm, method, intent, request, expires, opaque) = challenge_fields;
            let challenge: Map<String, Value> = [id, realm, method, intent, request, expires, opaque]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
                .collect();
            let mut root = Map::new();
            root.insert(
                "challenge".into(),
                if challenge_is_object {
                    Value::Object(challenge)
                } else {
                    Value::Array(vec![])
                },
            );
            for (k, v) in [payload, source] {
                if let Some(v) = v {
                    root.insert(k.into(), v);
                }
            }
            Value::Object(root)
        })
}

/// Byte-level edits applied to a valid header, then read back as lossy UTF-8.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, &'static str),
    Delete(usize, usize),
    Overwrite(usize, u8),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    vec(
        prop_oneof![
            (any::<usize>(), prop::sample::select(HEADER_ATOMS))
                .prop_map(|(at, s)| Edit::Insert(at, s)),
            (any::<usize>(), 1usize..8).prop_map(|(at, n)| Edit::Delete(at, n)),
            (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Overwrite(at, b)),
            any::<usize>().prop_map(Edit::Truncate),
            (any::<usize>(), 1usize..40).prop_map(|(at, n)| Edit::Duplicate(at, n)),
        ],
        1..6,
    )
}

fn apply_edits(input: &str, edits: &[Edit]) -> String {
    let mut bytes = input.as_bytes().to_vec();
    for edit in edits {
        let len = bytes.len();
        let at = |p: usize| p % (len + 1);
        match *edit {
            Edit::Insert(p, s) => {
                let p = at(p);
                bytes.splice(p..p, s.bytes());
            }
            Edit::Delete(p, n) => {
                let p = at(p);
                bytes.drain(p..(p + n).min(len));
            }
            Edit::Overwrite(p, b) => {
                if len > 0 {
                    bytes[p % len] = b;
                }
            }
            Edit::Truncate(p) => bytes.truncate(at(p)),
            Edit::Duplicate(p, n) => {
                let p = at(p);
                let piece = bytes[p..(p + n).min(len)].to_vec();
                bytes.splice(p..p, piece);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Every parser, with the invariants that must hold whenever one accepts its input
// ---------------------------------------------------------------------------------------------

/// Feed `input` to every public parser. Panics (caught and shrunk by proptest) if one panics or
/// if an accepted value breaks a round-trip invariant.
fn exercise_every_parser(input: &str) {
    let ring = keyring();

    // WWW-Authenticate
    if let Ok(challenges) = parse_challenges(input) {
        assert!(!challenges.is_empty() && challenges.len() <= CHALLENGES_MAX);
        for challenge in &challenges {
            let _ = ring.verify(&challenge.binding_input(), &challenge.id);
            let _ = challenge.expires_at();
            let _ = ChargeRequest::from_json(challenge.request_json());
            // A parsed challenge that can be formatted (no control characters) re-parses equal.
            if let Ok(header) = challenge.to_header_value() {
                assert_no_control_bytes(&header);
                assert_eq!(&Challenge::parse(&header).expect("re-parses"), challenge);
            }
        }
    }
    let _ = Challenge::parse(input);
    let _ = parse_challenges_from_lines(input.split(['\r', '\n']));

    // Authorization
    if let Ok(credential) = Credential::parse(input) {
        let _ = ring.verify(
            &credential.challenge.binding_input(),
            &credential.challenge.id,
        );
        let _ = credential.challenge.request_json();
        let _ = credential.challenge.expires_at();
        let again = Credential::parse(&credential.to_header_value()).expect("re-parses");
        assert_eq!(again, credential);
    }
    let _ = Credential::from_token(input);
    let _ = find_payment_credential(input.split(['\r', '\n']));
    let _ = find_payment_credential([input, input]);

    // Payment-Receipt
    if let Ok(receipt) = Receipt::parse(input) {
        let header = receipt.to_header_value().expect("a parsed receipt formats");
        assert_eq!(Receipt::parse(&header).expect("re-parses"), receipt);
    }

    // Accept-Payment
    if let Ok(accept) = AcceptPayment::parse(input) {
        check_ranking(&accept, &DEFAULT_OFFERS);
    }
    let _ = negotiate(Some(input), &DEFAULT_OFFERS);

    // Content-Digest
    if let Ok(digest) = ContentDigest::parse(input) {
        assert_eq!(
            ContentDigest::parse(&digest.to_header_value()).expect("re-parses"),
            digest
        );
        let _ = digest.matches(input.as_bytes());
    }

    // base64url
    if let Ok(bytes) = b64::decode(input) {
        assert_eq!(
            b64::decode(&b64::encode(&bytes)).expect("re-decodes"),
            bytes
        );
    }
    let _ = b64::decode_utf8(input);

    // auth-params
    for scheme in auth_params::group_schemes(input) {
        assert!(!scheme.scheme.is_empty() && scheme.scheme.bytes().all(auth_params::is_tchar));
        for element in scheme.elements {
            assert!(!element.is_empty());
            if let Ok((name, _)) = auth_params::parse_param(element) {
                assert!(!name.is_empty() && name.bytes().all(auth_params::is_tchar));
            }
        }
    }
    let _ = auth_params::parse_param(input);

    // charge request, when the input happens to be a JSON object
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(input) {
        exercise_charge_request(&map);
    }
}

fn exercise_charge_request(map: &Map<String, Value>) {
    if let Ok(request) = ChargeRequest::from_json(map) {
        assert!(request.amount_minor().is_ok());
        assert_eq!(
            ChargeRequest::from_json(&request.to_json()).expect("re-reads"),
            request
        );
    }
}

/// Feed a base64url token to the credential and receipt parsers, bare and behind the scheme.
fn exercise_token(token: &str) {
    exercise_every_parser(token);
    exercise_every_parser(&format!("Payment {token}"));
    exercise_every_parser(&format!("Authorization: Bearer x, Payment {token}"));
}

fn assert_no_control_bytes(header: &str) {
    assert!(
        !header
            .bytes()
            .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f),
        "formatted header holds a control byte: {header:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Accept-Payment model
// ---------------------------------------------------------------------------------------------

const DEFAULT_OFFERS: [(&str, &str); 5] = [
    ("tempo", "charge"),
    ("tempo", "session"),
    ("stripe", "charge"),
    ("solana", "charge"),
    ("lightning", "charge"),
];

/// The weight of `(method, intent)`: the q of the most specific matching range, the first on a
/// tie (method match = 2, intent match = 1, wildcard = 0).
fn model_weight(accept: &AcceptPayment, method: &str, intent: &str) -> Option<u16> {
    let mut best: Option<(u8, u16)> = None;
    for range in &accept.ranges {
        let method_score = match range.method.as_deref() {
            None => 0,
            Some(m) if m == method => 2,
            Some(_) => continue,
        };
        let intent_score = match range.intent.as_deref() {
            None => 0,
            Some(i) if i == intent => 1,
            Some(_) => continue,
        };
        let score = method_score + intent_score;
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, range.q_milli));
        }
    }
    best.map(|(_, q)| q)
}

/// The ranking holds every offer of weight > 0 exactly once and nothing else, by descending
/// weight, and within one weight it is a subsequence of the offers (server order kept).
fn check_ranking(accept: &AcceptPayment, offers: &[(&str, &str)]) {
    let ranked = accept.rank(offers.iter().copied());
    let weight = |i: usize| model_weight(accept, offers[i].0, offers[i].1);
    let mut seen = vec![false; offers.len()];
    for &i in &ranked {
        assert!(i < offers.len(), "index {i} is not an offer");
        assert!(!seen[i], "offer {i} ranked twice");
        seen[i] = true;
        assert!(
            weight(i).is_some_and(|q| q > 0),
            "offer {i} has q=0 or no match"
        );
        assert_eq!(accept.weight(offers[i].0, offers[i].1), weight(i));
    }
    for (i, was_ranked) in seen.iter().enumerate() {
        assert_eq!(
            *was_ranked,
            weight(i).is_some_and(|q| q > 0),
            "offer {i} acceptable but not ranked"
        );
    }
    for pair in ranked.windows(2) {
        let (a, b) = (weight(pair[0]), weight(pair[1]));
        assert!(a >= b, "not sorted by weight: {ranked:?}");
        if a == b {
            assert!(
                pair[0] < pair[1],
                "equal weights out of server order: {ranked:?}"
            );
        }
    }
}

fn q_text(q_milli: u16, style: u8) -> String {
    match (q_milli, style % 3) {
        (1000, 0) => "1".into(),
        (1000, 1) => "1.0".into(),
        (1000, _) => "1.000".into(),
        (0, 0) => "0".into(),
        (q, 0) => format!("0.{q:03}"),
        (q, _) => {
            let digits = format!("{q:03}");
            format!("0.{}", digits.trim_end_matches('0'))
        }
    }
}

prop_compose! {
    fn accept_ranges()(
        ranges in vec(
            (
                prop::sample::select(vec!["tempo", "stripe", "solana", "lightning", "evm", "*"]),
                prop::sample::select(vec!["charge", "session", "*"]),
                prop::option::of((prop_oneof![Just(0u16), Just(1000u16), 0u16..=1000], any::<u8>())),
                prop::sample::select(vec![",", ", ", " ,\t", ",,"]),
            ),
            0..10,
        )
    ) -> (String, Vec<(String, String, u16)>) {
        let mut header = String::new();
        let mut expected = Vec::new();
        for (m, i, q, separator) in ranges {
            if !header.is_empty() {
                header.push_str(separator);
            }
            header.push_str(&format!("{m}/{i}"));
            let q_milli = match q {
                Some((q, style)) => {
                    header.push_str(&format!(";q={}", q_text(q, style)));
                    q
                }
                None => 1000,
            };
            expected.push((m.to_owned(), i.to_owned(), q_milli));
        }
        (header, expected)
    }
}

fn offers() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    vec(
        (
            prop::sample::select(vec!["tempo", "stripe", "solana", "lightning", "bitcoin"]),
            prop::sample::select(vec!["charge", "session", "subscription"]),
        ),
        0..8,
    )
}

// ---------------------------------------------------------------------------------------------
// (a) No parser panics, whatever the input
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn no_parser_panics_on_arbitrary_text(input in any_text(200)) {
        exercise_every_parser(&input);
    }

    #[test]
    fn no_parser_panics_on_arbitrary_bytes_read_as_lossy_utf8(bytes in vec(any::<u8>(), 0..300)) {
        exercise_every_parser(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn no_parser_panics_on_header_syntax_soup(input in header_ish()) {
        exercise_every_parser(&input);
        exercise_every_parser(&format!("Payment {input}"));
        exercise_every_parser(&format!("Payment id=\"a\", realm=\"r\", {input}"));
    }
}

// Generators that build whole protocol values cost more per case.
proptest! {
    #![proptest_config(cases(96))]

    #[test]
    fn no_parser_panics_on_edited_valid_challenges(
        params in challenge_params(),
        header in prop::option::of("[A-Za-z-]{1,20}"),
        edits in edits(),
    ) {
        let mut challenge = issue(params);
        challenge.header = header;
        let valid = challenge.to_header_value().expect("formats");
        exercise_every_parser(&apply_edits(&valid, &edits));
        let two = format!("{valid}, Bearer realm=\"x\", {valid}");
        exercise_every_parser(&apply_edits(&two, &edits));
    }

    #[test]
    fn no_parser_panics_on_edited_valid_credentials(credential in credential(), edits in edits()) {
        // Edits to the header and edits to the JSON under the base64.
        exercise_every_parser(&apply_edits(&credential.to_header_value(), &edits));
        let json = serde_json::to_string(&credential).expect("serializes");
        exercise_token(&b64::encode(apply_edits(&json, &edits)));
    }

    #[test]
    fn no_parser_panics_on_base64_of_json_soup(json in json_ish()) {
        exercise_token(&b64::encode(&json));
        exercise_token(&base64::engine::general_purpose::STANDARD.encode(&json));
    }

    #[test]
    fn no_parser_panics_on_credentials_with_wrongly_typed_fields(doc in credential_shaped_json()) {
        exercise_token(&b64::encode(doc.to_string()));
    }

    #[test]
    fn no_parser_panics_on_edited_valid_receipts(receipt in receipt(), edits in edits()) {
        let header = receipt.to_header_value().expect("formats");
        exercise_every_parser(&apply_edits(&header, &edits));
        let json = serde_json::to_string(&receipt).expect("serializes");
        exercise_token(&b64::encode(apply_edits(&json, &edits)));
    }

    #[test]
    fn no_parser_panics_on_edited_accept_payment_and_digests(
        (accept, _) in accept_ranges(),
        digest in content_digest(),
        edits in edits(),
    ) {
        exercise_every_parser(&apply_edits(&accept, &edits));
        let digests = format!("unixsum=:AAA=:, {}", digest.to_header_value());
        exercise_every_parser(&apply_edits(&digests, &edits));
    }

    #[test]
    fn charge_request_reader_never_panics_on_arbitrary_objects(
        mut map in json_object(any_number().boxed()),
        amount in prop::option::of(prop_oneof![
            "(0|[1-9][0-9]{0,45})".prop_map(Value::String),
            any_text(8).prop_map(Value::String),
            json_value(any_number().boxed()),
        ]),
        currency in prop::option::of(prop_oneof![
            any_text(8).prop_map(Value::String),
            json_value(any_number().boxed()),
        ]),
    ) {
        if let Some(amount) = amount {
            map.insert("amount".into(), amount);
        }
        if let Some(currency) = currency {
            map.insert("currency".into(), currency);
        }
        exercise_charge_request(&map);
    }

    #[test]
    fn challenge_and_credential_parsers_never_panic_on_several_lines(
        lines in vec(header_ish(), 0..6),
    ) {
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let _ = parse_challenges_from_lines(lines.iter().copied());
        let _ = find_payment_credential(lines.iter().copied());
    }
}

/// Lengths on both sides of every size limit, and well past the longest.
const LONG_LENGTHS: &[usize] = &[
    1023, 1024, 1025, 4095, 4096, 4097, 16_383, 16_384, 16_385, 49_151, 49_152, 49_153, 50_176,
    50_177, 65_535, 65_536, 65_537, 200_000,
];

proptest! {
    #![proptest_config(cases(16))]

    #[test]
    fn no_parser_panics_on_very_long_inputs(
        unit in header_ish().prop_filter("non-empty", |s| !s.is_empty()),
        len in prop::sample::select(LONG_LENGTHS),
        prefix in prop::sample::select(vec!["", "Payment ", "Payment id=\"", "Payment request=\"", "sha-256=:"]),
    ) {
        let mut input = String::with_capacity(len + unit.len());
        input.push_str(prefix);
        while input.len() < len {
            input.push_str(&unit);
        }
        exercise_every_parser(&input);
    }

    #[test]
    fn no_parser_panics_on_very_long_base64_tokens(
        json in json_ish(),
        len in prop::sample::select(LONG_LENGTHS),
    ) {
        let json = json.repeat(len / json.len().max(1) * 3 / 4 + 1);
        exercise_token(&b64::encode(&json));
    }

    #[test]
    fn many_challenges_on_one_line_are_counted_against_the_limit(
        params in challenge_params(),
        count in 1usize..=CHALLENGES_MAX + 8,
    ) {
        let one = issue(params).to_header_value().expect("formats");
        let line = vec![one.as_str(); count].join(", ");
        match parse_challenges(&line) {
            Ok(found) => prop_assert_eq!(found.len(), count),
            Err(ChallengeError::TooManyChallenges) => prop_assert!(count > CHALLENGES_MAX),
            Err(ChallengeError::TooLong) => {}
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Round trips
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn issued_challenge_parses_back_to_itself(params in challenge_params()) {
        let challenge = issue(params);
        let header = challenge.to_header_value().expect("formats");
        prop_assert_eq!(Challenge::parse(&header).expect("parses"), challenge.clone());
        // With the header name, and as the only element of a one-line list.
        let line = format!("WWW-Authenticate: {header}");
        prop_assert_eq!(parse_challenges(&line).expect("parses"), vec![challenge]);
    }

    #[test]
    fn any_valid_challenge_parses_back_to_itself(challenge in constructed_challenge()) {
        let header = challenge.to_header_value().expect("formats");
        prop_assert_eq!(Challenge::parse(&header).expect("parses"), challenge);
    }

    #[test]
    fn several_challenges_among_other_schemes_parse_back_in_order(
        challenges in vec(constructed_challenge(), 1..4),
        others in vec(
            prop::sample::select(vec![
                "Bearer realm=\"x, y\", error=\"invalid_token\"",
                "Basic realm=\"z\"",
                "Negotiate abc==",
                "Bearer",
            ]),
            0..4,
        ),
        separate_lines in any::<bool>(),
    ) {
        let mut parts: Vec<String> = Vec::new();
        for (i, challenge) in challenges.iter().enumerate() {
            if let Some(other) = others.get(i) {
                parts.push((*other).to_owned());
            }
            parts.push(challenge.to_header_value().expect("formats"));
        }
        let parsed = if separate_lines {
            parse_challenges_from_lines(parts.iter().map(String::as_str))
        } else {
            parse_challenges(&parts.join(", "))
        };
        prop_assert_eq!(parsed.expect("parses"), challenges);
    }

    #[test]
    fn request_objects_round_trip_through_their_canonical_wire_form(
        request in request_object(),
    ) {
        let encoded = EncodedRequest::from_json(request.clone()).expect("encodes");
        let decoded = EncodedRequest::from_wire(encoded.wire()).expect("decodes");
        prop_assert_eq!(decoded.json(), &request);
        prop_assert_eq!(&decoded, &encoded);
        // Canonical: re-encoding the decoded object gives the same wire string.
        let again = EncodedRequest::from_json(decoded.json().clone()).expect("encodes");
        prop_assert_eq!(again.wire(), encoded.wire());
    }

    #[test]
    fn credentials_parse_back_to_themselves(credential in credential()) {
        let header = credential.to_header_value();
        prop_assert_eq!(Credential::parse(&header).expect("parses"), credential.clone());
        prop_assert_eq!(Credential::from_token(&credential.to_token()).expect("parses"), credential.clone());
        let named = format!("Authorization: {header}");
        prop_assert_eq!(Credential::parse(&named).expect("parses"), credential.clone());
        let among_others = format!("Bearer abc.def, {header}, Basic dXNlcjpwYXNz");
        prop_assert_eq!(
            find_payment_credential(["Bearer x", among_others.as_str()]).expect("finds"),
            Some(credential)
        );
    }

    #[test]
    fn receipts_parse_back_to_themselves_with_their_extra_fields(receipt in receipt()) {
        let header = receipt.to_header_value().expect("formats");
        prop_assert_eq!(Receipt::parse(&header).expect("parses"), receipt.clone());
        prop_assert_eq!(
            Receipt::parse(&format!("Payment-Receipt: {header}")).expect("parses"),
            receipt
        );
    }

    #[test]
    fn base64url_decodes_what_it_encodes_in_every_accepted_spelling(bytes in vec(any::<u8>(), 0..200)) {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
        let unpadded = b64::encode(&bytes);
        prop_assert!(unpadded.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert_eq!(b64::decode(&unpadded).expect("decodes"), bytes.clone());
        for spelling in [URL_SAFE.encode(&bytes), STANDARD.encode(&bytes), STANDARD_NO_PAD.encode(&bytes)] {
            prop_assert_eq!(b64::decode(&spelling).expect("decodes"), bytes.clone());
        }
    }

    #[test]
    fn content_digests_parse_back_in_both_spellings(digest in content_digest(), body in vec(any::<u8>(), 0..64)) {
        let header = digest.to_header_value();
        prop_assert_eq!(ContentDigest::parse(&header).expect("parses"), digest.clone());
        // The legacy spelling without the byte-sequence colons.
        let legacy = header.replacen("=:", "=", 1).trim_end_matches(':').to_owned();
        prop_assert_eq!(ContentDigest::parse(&legacy).expect("parses"), digest);
        let of_body = ContentDigest::sha256(&body);
        prop_assert!(ContentDigest::parse(&of_body.to_header_value()).expect("parses").matches(&body));
    }

    #[test]
    fn accept_payment_ranking_keeps_only_acceptable_offers_by_weight(
        (header, expected) in accept_ranges(),
        offers in offers(),
    ) {
        let accept = AcceptPayment::parse(&header).expect("parses");
        let got: Vec<(String, String, u16)> = accept
            .ranges
            .iter()
            .map(|r| {
                (
                    r.method.clone().unwrap_or_else(|| "*".into()),
                    r.intent.clone().unwrap_or_else(|| "*".into()),
                    r.q_milli,
                )
            })
            .collect();
        prop_assert_eq!(got, expected);
        check_ranking(&accept, &offers);
        // negotiate never leaves the client with nothing while there are offers.
        let negotiated = negotiate(Some(&header), &offers);
        prop_assert_eq!(negotiated.is_empty(), offers.is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// (b) The binding
// ---------------------------------------------------------------------------------------------

/// A bound field and a different value for it.
#[derive(Debug, Clone)]
enum BoundChange {
    Realm(String),
    Method(String),
    Intent(String),
    Request(String),
    Expires(Option<String>),
    Digest(Option<String>),
    Opaque(Option<String>),
    Header,
}

fn bound_change() -> impl Strategy<Value = BoundChange> {
    prop_oneof![
        printable(20).prop_map(BoundChange::Realm),
        method().prop_map(BoundChange::Method),
        intent().prop_map(BoundChange::Intent),
        printable(8).prop_map(BoundChange::Request),
        prop::option::of(rfc3339()).prop_map(BoundChange::Expires),
        prop::option::of(content_digest().prop_map(|d| d.to_header_value()))
            .prop_map(BoundChange::Digest),
        prop::option::of(printable(20)).prop_map(BoundChange::Opaque),
        Just(BoundChange::Header),
    ]
}

/// `candidate`, or, when it equals `old`, something else.
fn different(old: &str, candidate: String, filler: &str) -> String {
    if candidate == old {
        format!("{old}{filler}")
    } else {
        candidate
    }
}

/// An optional slot changed so that its bound form (absent = empty) differs.
fn different_optional(
    old: Option<&str>,
    candidate: Option<String>,
    filler: &str,
) -> Option<String> {
    match (old.unwrap_or(""), candidate) {
        (old_slot, Some(new)) if new != old_slot => Some(new),
        ("", _) => Some(filler.to_owned()),
        _ => None,
    }
}

fn apply_bound_change(c: &mut Challenge, change: BoundChange) {
    match change {
        BoundChange::Realm(v) => c.realm = different(&c.realm, v, "x"),
        BoundChange::Method(v) => c.method = different(&c.method, v, "x"),
        BoundChange::Intent(v) => c.intent = different(&c.intent, v, "x"),
        BoundChange::Request(key) => {
            let mut json = c.request.json().clone();
            let value = json
                .get(&key)
                .map_or(Value::Null, |v| Value::Array(vec![v.clone()]));
            json.insert(key, value);
            c.request = EncodedRequest::from_json(json).expect("encodes");
        }
        BoundChange::Expires(v) => {
            c.expires = different_optional(c.expires.as_deref(), v, "2031-02-03T04:05:06Z");
        }
        BoundChange::Digest(v) => {
            let filler = ContentDigest::sha256(b"other").to_header_value();
            c.digest = different_optional(c.digest.as_deref(), v, &filler);
        }
        BoundChange::Opaque(v) => c.opaque = different_optional(c.opaque.as_deref(), v, "x"),
        BoundChange::Header => {
            // The default header `Authorization` is not bound; any other name is.
            let bound = c
                .header
                .as_deref()
                .is_some_and(|h| !h.eq_ignore_ascii_case("authorization"));
            c.header = if bound {
                None
            } else {
                Some("Payment-Authorization".into())
            };
        }
    }
}

/// Verify `challenge` after it went over the wire both ways: as a `WWW-Authenticate` value and
/// echoed inside an `Authorization` credential.
fn verifies_over_the_wire(ring: &BindingKeyring, challenge: &Challenge) -> (bool, bool) {
    let parsed = Challenge::parse(&challenge.to_header_value().expect("formats")).expect("parses");
    let as_challenge = ring.verify(&parsed.binding_input(), &parsed.id);
    let credential = Credential {
        challenge: echo_of(&parsed),
        source: Some(Value::String("did:pkh:eip155:1:0x00".into())),
        payload: Map::new(),
    };
    let echoed = Credential::parse(&credential.to_header_value()).expect("parses");
    let as_echo = ring.verify(&echoed.challenge.binding_input(), &echoed.challenge.id);
    (as_challenge, as_echo)
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn issued_challenge_verifies_after_format_and_parse_and_when_echoed(params in challenge_params()) {
        let challenge = issue(params);
        prop_assert_eq!(verifies_over_the_wire(&keyring(), &challenge), (true, true));
    }

    #[test]
    fn changing_any_bound_field_breaks_the_binding(
        params in challenge_params(),
        change in bound_change(),
    ) {
        let mut challenge = issue(params);
        apply_bound_change(&mut challenge, change);
        prop_assert_eq!(verifies_over_the_wire(&keyring(), &challenge), (false, false));
    }

    #[test]
    fn changing_the_description_keeps_the_binding(
        params in challenge_params(),
        description in prop::option::of(printable(30)),
    ) {
        let mut challenge = issue(params);
        challenge.description = description;
        prop_assert_eq!(verifies_over_the_wire(&keyring(), &challenge), (true, true));
    }

    #[test]
    fn challenge_issued_before_a_rotation_verifies_and_a_foreign_one_does_not(
        params in challenge_params(),
    ) {
        let before_rotation = Challenge::issue(&BindingKeyring::new(secret(0x9E)), params.clone())
            .expect("issues");
        prop_assert_eq!(verifies_over_the_wire(&keyring(), &before_rotation), (true, true));
        let foreign = Challenge::issue_with_secret(&secret(0x42), params).expect("issues");
        prop_assert_eq!(verifies_over_the_wire(&keyring(), &foreign), (false, false));
    }
}

// ---------------------------------------------------------------------------------------------
// (c) No formatter emits a raw CR or LF
// ---------------------------------------------------------------------------------------------

/// Which challenge field receives an injected line break.
#[derive(Debug, Clone, Copy)]
enum Target {
    Id,
    Realm,
    Method,
    Intent,
    Expires,
    Digest,
    Description,
    Opaque,
    Header,
}

fn inject(value: Option<&str>, at: usize, line_break: &str) -> String {
    let value = value.unwrap_or("");
    let mut at = at % (value.len() + 1);
    while !value.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}{line_break}{}", &value[..at], &value[at..])
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn challenge_formatting_refuses_any_value_with_cr_or_lf(
        challenge in constructed_challenge(),
        target in prop::sample::select(vec![
            Target::Id, Target::Realm, Target::Method, Target::Intent, Target::Expires,
            Target::Digest, Target::Description, Target::Opaque, Target::Header,
        ]),
        at in any::<usize>(),
        line_break in prop::sample::select(vec!["\r", "\n", "\r\n", "\n\r", "\r\n "]),
    ) {
        let mut c = challenge;
        match target {
            Target::Id => c.id = inject(Some(&c.id), at, line_break),
            Target::Realm => c.realm = inject(Some(&c.realm), at, line_break),
            Target::Method => c.method = inject(Some(&c.method), at, line_break),
            Target::Intent => c.intent = inject(Some(&c.intent), at, line_break),
            Target::Expires => c.expires = Some(inject(c.expires.as_deref(), at, line_break)),
            Target::Digest => c.digest = Some(inject(c.digest.as_deref(), at, line_break)),
            Target::Description => {
                c.description = Some(inject(c.description.as_deref(), at, line_break));
            }
            Target::Opaque => c.opaque = Some(inject(c.opaque.as_deref(), at, line_break)),
            Target::Header => c.header = Some(inject(c.header.as_deref(), at, line_break)),
        }
        let formatted = c.to_header_value();
        prop_assert!(formatted.is_err(), "formatted {formatted:?}");
    }

    #[test]
    fn challenge_formatting_never_emits_control_characters_and_what_it_emits_parses_back(
        id in any_text(64).prop_filter("non-empty", |s| !s.is_empty()),
        realm in any_text(30),
        description in prop::option::of(any_text(30)),
        opaque in prop::option::of(any_text(30)),
        digest in prop::option::of(any_text(30)),
        header in prop::option::of(any_text(20)),
        params in challenge_params(),
    ) {
        let mut c = issue(params);
        c.id = id;
        c.realm = realm;
        c.description = description;
        c.opaque = opaque;
        c.digest = digest;
        c.header = header;
        if let Ok(formatted) = c.to_header_value() {
            assert_no_control_bytes(&formatted);
            if c.id.len() <= CHALLENGE_ID_LEN_MAX {
                prop_assert_eq!(Challenge::parse(&formatted).expect("parses"), c);
            }
        }
    }

    #[test]
    fn credential_receipt_and_digest_headers_never_hold_cr_or_lf(
        credential in credential(),
        receipt in receipt(),
        digest in content_digest(),
        line_break in prop::sample::select(vec!["\r", "\n", "\r\n"]),
    ) {
        let mut credential = credential;
        credential.challenge.realm.push_str(line_break);
        credential.payload.insert(line_break.into(), Value::String(format!("a{line_break}b")));
        let value = credential.to_header_value();
        let token = value.strip_prefix("Payment ").expect("scheme first");
        prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));

        let mut receipt = receipt;
        receipt.reference.push_str(line_break);
        let value = receipt.to_header_value().expect("formats");
        prop_assert!(value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));

        let value = digest.to_header_value();
        prop_assert!(!value.contains(['\r', '\n']));
        prop_assert!(value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-=:+/".contains(&b)));
    }

    #[test]
    fn line_breaks_inside_the_request_object_stay_inside_the_base64(
        params in challenge_params(),
        key in any_text(6),
        line_break in prop::sample::select(vec!["\r", "\n", "\r\n"]),
    ) {
        let mut params = params;
        params.request.insert(format!("{key}{line_break}"), Value::String(line_break.into()));
        let challenge = issue(params);
        let header = challenge.to_header_value().expect("formats");
        prop_assert!(!header.contains(['\r', '\n']));
        prop_assert_eq!(Challenge::parse(&header).expect("parses"), challenge);
    }
}

// ---------------------------------------------------------------------------------------------
// Example-based checks of the same properties at their edges
// ---------------------------------------------------------------------------------------------

#[test]
fn htab_inside_quoted_values_round_trips() {
    let mut challenge = issue(ChallengeParams {
        realm: "\ta\tb\t".into(),
        method: "tempo".into(),
        intent: "charge".into(),
        request: Map::new(),
        expires: None,
        digest: None,
        description: Some("\t".into()),
        opaque: None,
    });
    challenge.header = Some("x\ty".into());
    let header = challenge.to_header_value().expect("formats");
    assert_eq!(Challenge::parse(&header).expect("parses"), challenge);
}

#[test]
fn the_default_credential_header_is_not_bound() {
    let ring = keyring();
    let challenge = issue(ChallengeParams {
        realm: "r".into(),
        method: "tempo".into(),
        intent: "charge".into(),
        request: Map::new(),
        expires: None,
        digest: None,
        description: None,
        opaque: None,
    });
    let mut named = challenge.clone();
    named.header = Some("AUTHORIZATION".into());
    assert!(ring.verify(&named.binding_input(), &challenge.id));
}

// ---------------------------------------------------------------------------------------------
// Regressions: edge cases the properties above found, pinned as plain tests.
// ---------------------------------------------------------------------------------------------

fn request_with(value: Value) -> Map<String, Value> {
    let mut request = Map::new();
    request.insert("amount".into(), Value::String("1000".into()));
    request.insert("n".into(), value);
    request
}

#[test]
fn issued_challenge_with_any_json_numbers_parses_back_to_itself() {
    for n in [
        Value::from(1.0f64),
        Value::from(-0.0f64),
        Value::from(9_007_199_254_740_993u64),
        Value::from(i64::MIN + 1),
    ] {
        let challenge = issue(ChallengeParams {
            realm: "r".into(),
            method: "tempo".into(),
            intent: "charge".into(),
            request: request_with(n.clone()),
            expires: None,
            digest: None,
            description: None,
            opaque: None,
        });
        let header = challenge.to_header_value().expect("formats");
        assert_eq!(
            Challenge::parse(&header).expect("parses"),
            challenge,
            "request number {n}"
        );
    }
}

#[test]
fn challenge_formatter_refuses_an_id_its_parser_would_refuse() {
    let mut challenge = issue(ChallengeParams {
        realm: "r".into(),
        method: "tempo".into(),
        intent: "charge".into(),
        request: Map::new(),
        expires: None,
        digest: None,
        description: None,
        opaque: None,
    });
    challenge.id = "a".repeat(CHALLENGE_ID_LEN_MAX + 1);
    if let Ok(header) = challenge.to_header_value() {
        assert_eq!(Challenge::parse(&header), Ok(challenge));
    }
}

#[test]
fn receipt_formatter_refuses_a_receipt_its_parser_would_not_return() {
    let mut receipt = Receipt::success(
        "tempo",
        DateTime::from_timestamp(1_800_000_000, 0).expect("in range"),
        "0xabc",
    );
    receipt.extra.insert("status".into(), Value::from(5));
    if let Ok(header) = receipt.to_header_value() {
        assert_eq!(Receipt::parse(&header), Ok(receipt));
    }
}

#[test]
fn credential_with_a_null_source_is_a_credential_without_source() {
    let credential = Credential {
        challenge: ChallengeEcho {
            id: "a".into(),
            realm: "r".into(),
            method: "tempo".into(),
            intent: "charge".into(),
            request: "e30".into(),
            description: None,
            digest: None,
            expires: None,
            opaque: None,
            header: None,
        },
        source: Some(Value::Null),
        payload: Map::new(),
    };
    let parsed = Credential::parse(&credential.to_header_value()).expect("parses");
    assert_eq!(parsed.source, None);
    assert_eq!(parsed.challenge, credential.challenge);
}
