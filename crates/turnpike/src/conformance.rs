//! `turnpike conformance-adapter`: the adapter ABI of the MPP cross-SDK conformance suite.
//!
//! Reads one request from stdin,
//! `{"schema":1,"op":"<op>","input":<value>,"context":{…}}`, and writes exactly one JSON line to
//! stdout: `{"ok":true,"value":<value>}` or
//! `{"ok":false,"error":{"type":"<error_type>","message":"…"}}`. The exit status is 0 for every
//! answer, including operation errors; it is non-zero only when stdin is not a request at all
//! (not JSON, not an object, wrong `schema`, no `op` or `input`), and even then an error envelope
//! of type `unknown_error` is printed first. `context` is accepted and ignored.
//!
//! Supported operations (value shapes per the suite's `protocol.schema.json`):
//!
//! | op | input | value | error type |
//! |---|---|---|---|
//! | `challenge.parse` | `{header}` | Challenge, `request` decoded | `parse_error` |
//! | `challenge.format` | Challenge | `{header}` | `format_error` |
//! | `credential.parse` | `{header}` | Credential, `challenge.request` decoded | `parse_error` |
//! | `credential.format` | Credential (`challenge.request` an object or its base64url) | `{header}` | `format_error` |
//! | `receipt.parse` | `{header}` | Receipt | `parse_error` |
//! | `receipt.format` | Receipt | `{header}` | `format_error` |
//! | `base64url.encode` | `{text}` | `{text}` | `encoding_error` |
//! | `base64url.decode` | `{text}` | `{text}` | `encoding_error` |
//! | `challenge.id` | ChallengeIdInput | `{id}` | `generation_error` |
//! | `tempo.receipt.verify` | `{credential, receipt}` | `{status, reference}` | `verification_error` |
//! | `tempo.transaction.verify` | `{credential, receipt}` | `{status, reference}` | `verification_error` |
//! | `tempo.proof.typed_data` | `{chainId, challengeId, realm}` | EIP-712 typed data | `verification_error` |
//! | `tempo.fee_payer.cosign` | TempoFeePayerCosignInput | TempoFeePayerCosignOutput | `verification_error` |
//!
//! The `tempo.*` operations are in [`tempo`].
//!
//! Any other `op` answers `unsupported_operation`. An input of the wrong shape is answered with
//! the operation's own error type. Error messages are the protocol library's `Display` text.

use std::io::{Read, Write};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use turnpike_protocol::binding::BindingInput;
use turnpike_protocol::challenge::EncodedRequest;
use turnpike_protocol::{BindingSecret, Challenge, ChallengeEcho, Credential, Receipt, b64, jcs};

mod tempo;

/// Longest request read from stdin, in bytes.
const REQUEST_LEN_MAX: usize = 8 * 1024 * 1024;

/// The only request `schema` version this adapter speaks.
const SCHEMA_VERSION: u64 = 1;

const PARSE_ERROR: &str = "parse_error";
const FORMAT_ERROR: &str = "format_error";
const ENCODING_ERROR: &str = "encoding_error";
const GENERATION_ERROR: &str = "generation_error";
const UNSUPPORTED_OPERATION: &str = "unsupported_operation";
const UNKNOWN_ERROR: &str = "unknown_error";

/// Receipt fields the library keeps outside its `extra` map; `extra` may not repeat them.
const RECEIPT_FIELDS: [&str; 4] = ["status", "method", "timestamp", "reference"];

pub fn run() -> anyhow::Result<()> {
    let mut raw = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(REQUEST_LEN_MAX as u64 + 1)
        .read_to_end(&mut raw);
    let request = match read {
        Ok(_) if raw.len() > REQUEST_LEN_MAX => {
            Err(format!("request longer than {REQUEST_LEN_MAX} bytes"))
        }
        Ok(_) => parse_request(&raw),
        Err(err) => Err(format!("cannot read stdin: {err}")),
    };
    let envelope = match &request {
        Ok(request) => match dispatch(&request.op, request.input.clone()) {
            Ok(value) => json!({ "ok": true, "value": value }),
            Err(err) => err.envelope(),
        },
        Err(message) => {
            OpError::new(UNKNOWN_ERROR, format!("invalid adapter request: {message}")).envelope()
        }
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &envelope).context("writing the response")?;
    stdout
        .write_all(b"\n")
        .and_then(|()| stdout.flush())
        .context("writing the response")?;
    if let Err(message) = request {
        bail!("invalid adapter request: {message}");
    }
    Ok(())
}

/// A well-formed adapter request.
#[derive(Debug)]
struct Request {
    op: String,
    input: Value,
}

/// Check the request envelope. Unknown top-level members and the content of `context` are
/// ignored (the harness only sends `caseName`, `vectorName` and `timeoutMs` there).
fn parse_request(raw: &[u8]) -> Result<Request, String> {
    let value: Value = serde_json::from_slice(raw).map_err(|err| format!("not JSON: {err}"))?;
    let Value::Object(mut map) = value else {
        return Err("not a JSON object".into());
    };
    match map.get("schema") {
        Some(Value::Number(n)) if n.as_u64() == Some(SCHEMA_VERSION) => {}
        Some(other) => {
            return Err(format!(
                "unsupported `schema` {other} (expected {SCHEMA_VERSION})"
            ));
        }
        None => return Err("missing `schema`".into()),
    }
    let op = match map.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => return Err("`op` must be a string".into()),
        None => return Err("missing `op`".into()),
    };
    let input = map.remove("input").ok_or("missing `input`")?;
    if map.get("context").is_some_and(|c| !c.is_object()) {
        return Err("`context` must be an object".into());
    }
    Ok(Request { op, input })
}

/// An operation's failure: an error type of the suite's registry and a message.
#[derive(Debug)]
struct OpError {
    kind: &'static str,
    message: String,
}

impl OpError {
    fn new(kind: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
        }
    }

    fn envelope(&self) -> Value {
        json!({ "ok": false, "error": { "type": self.kind, "message": self.message } })
    }
}

fn dispatch(op: &str, input: Value) -> Result<Value, OpError> {
    match op {
        "challenge.parse" => challenge_parse(input),
        "challenge.format" => challenge_format(input),
        "credential.parse" => credential_parse(input),
        "credential.format" => credential_format(input),
        "receipt.parse" => receipt_parse(input),
        "receipt.format" => receipt_format(input),
        "base64url.encode" => base64url_encode(input),
        "base64url.decode" => base64url_decode(input),
        "challenge.id" => challenge_id(input),
        "tempo.receipt.verify" => tempo::receipt_verify(input),
        "tempo.transaction.verify" => tempo::transaction_verify(input),
        "tempo.proof.typed_data" => tempo::proof_typed_data(input),
        "tempo.fee_payer.cosign" => tempo::fee_payer_cosign(input),
        _ => Err(OpError::new(
            UNSUPPORTED_OPERATION,
            format!("operation `{op}` is not supported by this adapter"),
        )),
    }
}

/// Deserialize an op's input; a wrong shape is the op's own error type.
fn read_input<T: DeserializeOwned>(input: Value, kind: &'static str) -> Result<T, OpError> {
    serde_json::from_value(input).map_err(|err| OpError::new(kind, format!("invalid input: {err}")))
}

/// `HeaderInput`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderInput {
    header: String,
}

/// `TextValue`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextInput {
    text: String,
}

/// `Challenge`, as `challenge.format` receives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeInput {
    id: String,
    realm: String,
    method: String,
    intent: String,
    request: Map<String, Value>,
    expires: Option<String>,
    description: Option<String>,
    digest: Option<String>,
    opaque: Option<String>,
    header: Option<String>,
}

/// `Credential`, as `credential.format` receives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialInput {
    challenge: EchoInput,
    payload: Map<String, Value>,
    /// `null` is read as absent.
    source: Option<Value>,
}

/// The echoed challenge of a `Credential`; `request` is an object or its base64url wire form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoInput {
    id: String,
    realm: String,
    method: String,
    intent: String,
    request: Value,
    expires: Option<String>,
    description: Option<String>,
    digest: Option<String>,
    opaque: Option<String>,
    header: Option<String>,
}

/// `Receipt`, as `receipt.format` receives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReceiptInput {
    status: String,
    method: Option<String>,
    timestamp: String,
    reference: String,
    external_id: Option<String>,
    extra: Option<Map<String, Value>>,
}

/// `ChallengeIdInput`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ChallengeIdInput {
    secret_key: String,
    realm: String,
    method: String,
    intent: String,
    request: Map<String, Value>,
    expires: Option<String>,
    digest: Option<String>,
    opaque: Option<String>,
    header: Option<String>,
    /// Display only: not part of the binding.
    #[serde(rename = "description")]
    _description: Option<String>,
}

fn insert_some(out: &mut Map<String, Value>, name: &str, value: Option<&str>) {
    if let Some(value) = value {
        out.insert(name.to_owned(), Value::String(value.to_owned()));
    }
}

fn challenge_parse(input: Value) -> Result<Value, OpError> {
    let HeaderInput { header } = read_input(input, PARSE_ERROR)?;
    let challenge = Challenge::parse(&header).map_err(|err| OpError::new(PARSE_ERROR, err))?;
    let mut out = Map::new();
    out.insert("id".into(), challenge.id.into());
    out.insert("realm".into(), challenge.realm.into());
    out.insert("method".into(), challenge.method.into());
    out.insert("intent".into(), challenge.intent.into());
    out.insert(
        "request".into(),
        Value::Object(challenge.request.json().clone()),
    );
    insert_some(&mut out, "expires", challenge.expires.as_deref());
    insert_some(&mut out, "description", challenge.description.as_deref());
    insert_some(&mut out, "digest", challenge.digest.as_deref());
    insert_some(&mut out, "opaque", challenge.opaque.as_deref());
    insert_some(&mut out, "header", challenge.header.as_deref());
    Ok(Value::Object(out))
}

fn challenge_format(input: Value) -> Result<Value, OpError> {
    let input: ChallengeInput = read_input(input, FORMAT_ERROR)?;
    let request =
        EncodedRequest::from_json(input.request).map_err(|err| OpError::new(FORMAT_ERROR, err))?;
    let challenge = Challenge {
        id: input.id,
        realm: input.realm,
        method: input.method,
        intent: input.intent,
        request,
        expires: input.expires,
        digest: input.digest,
        description: input.description,
        opaque: input.opaque,
        header: input.header,
    };
    let header = challenge
        .to_header_value()
        .map_err(|err| OpError::new(FORMAT_ERROR, err))?;
    Ok(json!({ "header": header }))
}

fn credential_parse(input: Value) -> Result<Value, OpError> {
    let HeaderInput { header } = read_input(input, PARSE_ERROR)?;
    let credential = Credential::parse(&header).map_err(|err| OpError::new(PARSE_ERROR, err))?;
    // The canonical object carries the echoed request decoded; one that does not decode is not a
    // usable credential.
    let request = credential
        .challenge
        .request_json()
        .map_err(|err| OpError::new(PARSE_ERROR, err))?;
    let echo = credential.challenge;
    let mut challenge = Map::new();
    challenge.insert("id".into(), echo.id.into());
    challenge.insert("realm".into(), echo.realm.into());
    challenge.insert("method".into(), echo.method.into());
    challenge.insert("intent".into(), echo.intent.into());
    challenge.insert("request".into(), Value::Object(request));
    insert_some(&mut challenge, "expires", echo.expires.as_deref());
    insert_some(&mut challenge, "description", echo.description.as_deref());
    insert_some(&mut challenge, "digest", echo.digest.as_deref());
    insert_some(&mut challenge, "opaque", echo.opaque.as_deref());
    insert_some(&mut challenge, "header", echo.header.as_deref());
    let mut out = Map::new();
    out.insert("challenge".into(), Value::Object(challenge));
    out.insert("payload".into(), Value::Object(credential.payload));
    if let Some(source) = credential.source {
        out.insert("source".into(), source);
    }
    Ok(Value::Object(out))
}

fn credential_format(input: Value) -> Result<Value, OpError> {
    let input: CredentialInput = read_input(input, FORMAT_ERROR)?;
    let echo = input.challenge;
    let request = match echo.request {
        Value::Object(request) => {
            jcs::to_b64(&request).map_err(|err| OpError::new(FORMAT_ERROR, err))?
        }
        Value::String(wire) => wire,
        _ => {
            return Err(OpError::new(
                FORMAT_ERROR,
                "invalid input: `challenge.request` must be an object or a base64url string",
            ));
        }
    };
    let credential = Credential {
        challenge: ChallengeEcho {
            id: echo.id,
            realm: echo.realm,
            method: echo.method,
            intent: echo.intent,
            request,
            description: echo.description,
            digest: echo.digest,
            expires: echo.expires,
            opaque: echo.opaque,
            header: echo.header,
        },
        source: input.source,
        payload: input.payload,
    };
    let header = credential.to_header_value();
    // `Credential::to_header_value` does not validate; refuse to emit a credential that our own
    // parser (and so any verifier using it) would refuse.
    Credential::parse(&header)
        .map_err(|err| OpError::new(FORMAT_ERROR, err))?
        .challenge
        .request_json()
        .map_err(|err| OpError::new(FORMAT_ERROR, err))?;
    Ok(json!({ "header": header }))
}

fn receipt_parse(input: Value) -> Result<Value, OpError> {
    let HeaderInput { header } = read_input(input, PARSE_ERROR)?;
    let receipt = Receipt::parse(&header).map_err(|err| OpError::new(PARSE_ERROR, err))?;
    let mut extra = receipt.extra;
    let mut out = Map::new();
    out.insert("status".into(), receipt.status.into());
    insert_some(&mut out, "method", receipt.method.as_deref());
    out.insert("timestamp".into(), receipt.timestamp.into());
    out.insert("reference".into(), receipt.reference.into());
    // `externalId` is a field of the canonical receipt when it is a string; any other value stays
    // in `extra` as received.
    if let Some(Value::String(external_id)) = extra.get("externalId") {
        out.insert("externalId".into(), Value::String(external_id.clone()));
        extra.remove("externalId");
    }
    if !extra.is_empty() {
        out.insert("extra".into(), Value::Object(extra));
    }
    Ok(Value::Object(out))
}

fn receipt_format(input: Value) -> Result<Value, OpError> {
    let input: ReceiptInput = read_input(input, FORMAT_ERROR)?;
    let mut extra = input.extra.unwrap_or_default();
    if let Some(field) = RECEIPT_FIELDS.iter().find(|f| extra.contains_key(**f)) {
        return Err(OpError::new(
            FORMAT_ERROR,
            format!("invalid input: `extra.{field}` repeats a receipt field"),
        ));
    }
    if let Some(external_id) = input.external_id {
        if extra.contains_key("externalId") {
            return Err(OpError::new(
                FORMAT_ERROR,
                "invalid input: `externalId` given both as a field and in `extra`",
            ));
        }
        extra.insert("externalId".into(), Value::String(external_id));
    }
    let receipt = Receipt {
        status: input.status,
        method: input.method,
        timestamp: input.timestamp,
        reference: input.reference,
        extra,
    };
    let header = receipt
        .to_header_value()
        .map_err(|err| OpError::new(FORMAT_ERROR, err))?;
    Ok(json!({ "header": header }))
}

fn base64url_encode(input: Value) -> Result<Value, OpError> {
    let TextInput { text } = read_input(input, ENCODING_ERROR)?;
    Ok(json!({ "text": b64::encode(text.as_bytes()) }))
}

fn base64url_decode(input: Value) -> Result<Value, OpError> {
    let TextInput { text } = read_input(input, ENCODING_ERROR)?;
    let decoded = b64::decode_utf8(&text).map_err(|err| OpError::new(ENCODING_ERROR, err))?;
    Ok(json!({ "text": decoded }))
}

fn challenge_id(input: Value) -> Result<Value, OpError> {
    let input: ChallengeIdInput = read_input(input, GENERATION_ERROR)?;
    let secret = BindingSecret::new(input.secret_key.as_bytes())
        .map_err(|err| OpError::new(GENERATION_ERROR, err))?;
    let request = jcs::to_b64(&input.request).map_err(|err| OpError::new(GENERATION_ERROR, err))?;
    let id = secret.challenge_id(&BindingInput {
        realm: &input.realm,
        method: &input.method,
        intent: &input.intent,
        request: &request,
        expires: input.expires.as_deref(),
        digest: input.digest.as_deref(),
        header: input.header.as_deref(),
        opaque: input.opaque.as_deref(),
    });
    Ok(json!({ "id": id }))
}
