//! `turnpike mpp decode`: turn any Payment header into readable JSON.
//!
//! Accepts, as the argument or on stdin:
//! - a `WWW-Authenticate` value or line, with one or several challenges (other schemes are
//!   skipped), possibly folded over several lines (continuation lines start with whitespace);
//! - an `Authorization: Payment <token>` line, `Payment <token>`, or the bare token;
//! - a `Payment-Receipt` line or its bare token;
//! - several header lines at once, e.g. a response head copied from `curl -i`: status and
//!   request lines, unrelated headers and message bodies are skipped.
//!
//! A bare base64url token is classified by its JSON: a `challenge` object makes a credential
//! (`draft-httpauth-payment-00` §5.2), a `status` field a receipt (§5.3).
//!
//! Prints one JSON object (`"kind": "challenge" | "credential" | "receipt"` first) or, for several
//! items, an array of them. Any malformed Payment item fails the whole command with a one-line
//! error. Errors never repeat the input (a credential is a bearer secret): at most they name an
//! invalid base64 character's code and offset.

use std::io::{IsTerminal, Read, Write};

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value};
use turnpike_protocol::{
    Challenge, ChallengeError, Credential, Receipt, auth_params, b64, find_payment_credential,
    parse_challenges_from_lines,
};

/// Longest input read from the argument or stdin, in bytes.
const INPUT_LEN_MAX: usize = 1024 * 1024;

/// What the input may be, for error messages.
const EXPECTED: &str = "expected a WWW-Authenticate, Authorization or Payment-Receipt header, \
                        `Payment <token>`, or a base64url token";

/// For a value whose kind cannot be told from a header name.
const UNRECOGNIZED: &str = "not a Payment challenge, credential or receipt";

pub fn run(value: Option<String>) -> anyhow::Result<()> {
    let input = match value {
        None => read_stdin()?,
        Some(v) if v == "-" => read_stdin()?,
        Some(v) => {
            if v.len() > INPUT_LEN_MAX {
                bail!("input longer than {INPUT_LEN_MAX} bytes");
            }
            v
        }
    };
    let mut items = decode_input(&input)?;
    let output = if items.len() == 1 {
        items.swap_remove(0)
    } else {
        Value::Array(items)
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &output).context("writing the output")?;
    writeln!(stdout).context("writing the output")?;
    stdout.flush().context("writing the output")?;
    Ok(())
}

fn read_stdin() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("reading the header from stdin; end it with Ctrl-D");
    }
    let mut bytes = Vec::new();
    stdin
        .lock()
        .take(INPUT_LEN_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .context("reading stdin")?;
    if bytes.len() > INPUT_LEN_MAX {
        bail!("input on stdin longer than {INPUT_LEN_MAX} bytes");
    }
    String::from_utf8(bytes).map_err(|_| anyhow!("input on stdin is not UTF-8 text"))
}

/// Decode every Payment item in the input, in input order.
fn decode_input(input: &str) -> anyhow::Result<Vec<Value>> {
    let lines = logical_lines(input);
    if lines.is_empty() && input.trim().is_empty() {
        bail!("empty input: {EXPECTED}");
    }
    let numbered = lines.len() > 1;
    let mut items = Vec::new();
    let mut other_schemes_in: Vec<&'static str> = Vec::new();
    for line in &lines {
        let decoded = decode_line(&line.text).map_err(|err| {
            if numbered {
                anyhow!("line {}: {err:#}", line.number)
            } else {
                err
            }
        })?;
        match decoded {
            Line::Items(mut found) => items.append(&mut found),
            Line::OtherSchemes(header) => {
                if !other_schemes_in.contains(&header) {
                    other_schemes_in.push(header);
                }
            }
            Line::Unrelated => {}
        }
    }
    if items.is_empty() {
        if !other_schemes_in.is_empty() {
            bail!(
                "no Payment challenge, credential or receipt in the input (only other schemes in \
                 {})",
                other_schemes_in.join(" and ")
            );
        }
        bail!("no Payment challenge, credential or receipt in the input: {EXPECTED}");
    }
    Ok(items)
}

/// One header line or value after unfolding, with the number of its first physical line.
#[derive(Debug)]
struct LogicalLine {
    number: usize,
    text: String,
}

/// Split the input into logical lines: common indentation removed, folded continuation lines
/// (starting with a space or tab) joined to the line above with one space, blank lines dropped.
/// An HTTP status or request line is skipped, and a blank line after one starts a message body,
/// which is skipped up to the next status or request line.
fn logical_lines(input: &str) -> Vec<LogicalLine> {
    let indent = input
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches([' ', '\t']).len())
        .min()
        .unwrap_or(0);
    let mut lines: Vec<LogicalLine> = Vec::new();
    let mut can_continue = false;
    let mut in_head = false;
    let mut in_body = false;
    for (index, raw) in input.lines().enumerate() {
        if raw.trim().is_empty() {
            can_continue = false;
            if in_head {
                in_head = false;
                in_body = true;
            }
            continue;
        }
        // Non-blank lines start with at least `indent` ASCII blanks, so this slice is in bounds.
        let line = &raw[indent..];
        let folded = line.starts_with([' ', '\t']);
        if !folded && is_start_line(line) {
            in_head = true;
            in_body = false;
            can_continue = false;
            continue;
        }
        if in_body {
            continue;
        }
        match lines.last_mut() {
            Some(last) if folded && can_continue => {
                last.text.push(' ');
                last.text.push_str(line.trim());
            }
            _ => {
                lines.push(LogicalLine {
                    number: index + 1,
                    text: line.trim().to_owned(),
                });
                can_continue = true;
            }
        }
    }
    lines
}

/// `HTTP/1.1 402 Payment Required`, `HTTP/2 402`, or `GET /path HTTP/1.1`.
fn is_start_line(line: &str) -> bool {
    let is_version = |word: &str| {
        word.get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("HTTP/"))
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [first, _, ..] if is_version(first) => true,
        [method, _, version] => {
            is_version(version) && method.bytes().all(|b| b.is_ascii_uppercase())
        }
        _ => false,
    }
}

/// `Name: value` when the line starts with a header field name.
fn split_header(line: &str) -> Option<(&str, &str)> {
    let name_len = line
        .bytes()
        .take_while(|&b| auth_params::is_tchar(b))
        .count();
    if name_len == 0 {
        return None;
    }
    let rest = line[name_len..].trim_start_matches([' ', '\t']);
    let value = rest.strip_prefix(':')?;
    Some((&line[..name_len], value.trim()))
}

/// What one logical line held.
#[derive(Debug)]
enum Line {
    /// Decoded Payment items.
    Items(Vec<Value>),
    /// A `WWW-Authenticate` or `Authorization` header with no Payment scheme in it.
    OtherSchemes(&'static str),
    /// A header unrelated to Payment.
    Unrelated,
}

/// Decode one logical line: a Payment-related header, another header, or a bare value.
fn decode_line(line: &str) -> anyhow::Result<Line> {
    let Some((name, value)) = split_header(line) else {
        return decode_bare(line).map(Line::Items);
    };
    if name.eq_ignore_ascii_case("www-authenticate") {
        return match parse_challenges_from_lines([value]) {
            Ok(challenges) => Ok(Line::Items(challenges.iter().map(challenge_json).collect())),
            Err(ChallengeError::Empty | ChallengeError::NoPaymentChallenge) => {
                Ok(Line::OtherSchemes("WWW-Authenticate"))
            }
            Err(err) => Err(anyhow!(
                "WWW-Authenticate: not a valid Payment challenge: {err}"
            )),
        };
    }
    if name.eq_ignore_ascii_case("authorization") {
        return match find_payment_credential([value]) {
            Ok(Some(credential)) => credential_json(&credential).map(|v| Line::Items(vec![v])),
            Ok(None) => Ok(Line::OtherSchemes("Authorization")),
            Err(err) => Err(anyhow!(
                "Authorization: not a valid Payment credential: {err}"
            )),
        };
    }
    if name.eq_ignore_ascii_case("payment-receipt") {
        return match Receipt::parse(value) {
            Ok(receipt) => Ok(Line::Items(vec![receipt_json(&receipt)])),
            Err(err) => Err(anyhow!("Payment-Receipt: not a valid receipt: {err}")),
        };
    }
    Ok(Line::Unrelated)
}

/// A value without a header name: a bare token, `Payment <token>`, or challenges.
fn decode_bare(value: &str) -> anyhow::Result<Vec<Value>> {
    if turnpike_protocol::b64::looks_like_b64(value) {
        return decode_token(value).map(|v| vec![v]);
    }
    let groups = auth_params::group_schemes(value);
    let payment: Vec<_> = groups
        .iter()
        .filter(|g| g.scheme.eq_ignore_ascii_case(turnpike_protocol::SCHEME))
        .collect();
    if payment.is_empty() {
        bail!("{UNRECOGNIZED}: {EXPECTED}");
    }
    let holds_token = payment.iter().any(
        |g| matches!(g.elements.as_slice(), [only] if turnpike_protocol::b64::looks_like_b64(only)),
    );
    if holds_token {
        return match find_payment_credential([value]) {
            Ok(Some(credential)) => credential_json(&credential).map(|v| vec![v]),
            Ok(None) => bail!("{UNRECOGNIZED}: {EXPECTED}"),
            Err(err) => bail!("not a valid Payment credential: {err}"),
        };
    }
    match parse_challenges_from_lines([value]) {
        Ok(challenges) => Ok(challenges.iter().map(challenge_json).collect()),
        Err(err) => bail!("not a valid Payment challenge: {err}"),
    }
}

/// A bare base64url token: a credential when its JSON has `challenge`, a receipt when it has
/// `status`.
fn decode_token(token: &str) -> anyhow::Result<Value> {
    let bytes = b64::decode(token).map_err(|err| anyhow!("{UNRECOGNIZED}: {err}"))?;
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|err| anyhow!("{UNRECOGNIZED}: the token does not decode to JSON ({err})"))?;
    let Some(object) = json.as_object() else {
        bail!("{UNRECOGNIZED}: the token's JSON is not an object");
    };
    if object.contains_key("challenge") {
        let credential = Credential::from_token(token)
            .map_err(|err| anyhow!("not a valid Payment credential: {err}"))?;
        return credential_json(&credential);
    }
    if object.contains_key("status") {
        let receipt =
            Receipt::parse(token).map_err(|err| anyhow!("not a valid Payment receipt: {err}"))?;
        return Ok(receipt_json(&receipt));
    }
    if object.contains_key("id") && object.contains_key("payload") {
        bail!(
            "not a Payment credential or receipt: the JSON has no `challenge` object; it looks \
             like the legacy flat credential `{{id, payload}}`, but a credential must echo the \
             challenge in `challenge`"
        );
    }
    bail!(
        "not a Payment credential or receipt: the JSON has no `challenge` object (credential) \
         and no `status` (receipt)"
    )
}

/// The parameters a challenge and a credential's echo share, in `to_header_value` order.
struct ChallengeFields<'a> {
    id: &'a str,
    realm: &'a str,
    method: &'a str,
    intent: &'a str,
    request: Map<String, Value>,
    request_encoded: &'a str,
    description: Option<&'a str>,
    digest: Option<&'a str>,
    expires: Option<&'a str>,
    opaque: Option<&'a str>,
    header: Option<&'a str>,
}

impl ChallengeFields<'_> {
    fn write_to(self, out: &mut Map<String, Value>) {
        let mut put = |key: &str, value: &str| {
            out.insert(key.to_owned(), Value::String(value.to_owned()));
        };
        put("id", self.id);
        put("realm", self.realm);
        put("method", self.method);
        put("intent", self.intent);
        out.insert("request".to_owned(), Value::Object(self.request));
        out.insert(
            "requestEncoded".to_owned(),
            Value::String(self.request_encoded.to_owned()),
        );
        let optional = [
            ("description", self.description),
            ("digest", self.digest),
            ("expires", self.expires),
            ("opaque", self.opaque),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                out.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        }
        if let Some(decoded) = self.opaque.and_then(decode_opaque) {
            out.insert("opaqueDecoded".to_owned(), decoded);
        }
        if let Some(header) = self.header {
            out.insert("header".to_owned(), Value::String(header.to_owned()));
        }
    }
}

/// `opaque` is base64url of a JSON object (§5.1.2); anything else is shown only as sent.
fn decode_opaque(opaque: &str) -> Option<Value> {
    let bytes = b64::decode(opaque).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        object @ Value::Object(_) => Some(object),
        _ => None,
    }
}

fn challenge_json(challenge: &Challenge) -> Value {
    let mut out = Map::new();
    out.insert("kind".to_owned(), Value::from("challenge"));
    ChallengeFields {
        id: &challenge.id,
        realm: &challenge.realm,
        method: &challenge.method,
        intent: &challenge.intent,
        request: challenge.request_json().clone(),
        request_encoded: challenge.request.wire(),
        description: challenge.description.as_deref(),
        digest: challenge.digest.as_deref(),
        expires: challenge.expires.as_deref(),
        opaque: challenge.opaque.as_deref(),
        header: challenge.header.as_deref(),
    }
    .write_to(&mut out);
    Value::Object(out)
}

fn credential_json(credential: &Credential) -> anyhow::Result<Value> {
    let echo = &credential.challenge;
    let request = echo
        .request_json()
        .map_err(|err| anyhow!("not a valid Payment credential: echoed challenge: {err}"))?;
    let mut challenge = Map::new();
    ChallengeFields {
        id: &echo.id,
        realm: &echo.realm,
        method: &echo.method,
        intent: &echo.intent,
        request,
        request_encoded: &echo.request,
        description: echo.description.as_deref(),
        digest: echo.digest.as_deref(),
        expires: echo.expires.as_deref(),
        opaque: echo.opaque.as_deref(),
        header: echo.header.as_deref(),
    }
    .write_to(&mut challenge);
    let mut out = Map::new();
    out.insert("kind".to_owned(), Value::from("credential"));
    out.insert("challenge".to_owned(), Value::Object(challenge));
    if let Some(source) = &credential.source {
        out.insert("source".to_owned(), source.clone());
    }
    out.insert(
        "payload".to_owned(),
        Value::Object(credential.payload.clone()),
    );
    Ok(Value::Object(out))
}

fn receipt_json(receipt: &Receipt) -> Value {
    let mut out = Map::new();
    out.insert("kind".to_owned(), Value::from("receipt"));
    out.insert("status".to_owned(), Value::from(receipt.status.as_str()));
    if let Some(method) = &receipt.method {
        out.insert("method".to_owned(), Value::from(method.as_str()));
    }
    out.insert(
        "timestamp".to_owned(),
        Value::from(receipt.timestamp.as_str()),
    );
    out.insert(
        "reference".to_owned(),
        Value::from(receipt.reference.as_str()),
    );
    for (key, value) in &receipt.extra {
        if key == "kind" {
            // The envelope's `kind` is not overwritten; say so rather than hide the field.
            eprintln!("warning: the receipt's own `kind` field is not shown");
            continue;
        }
        out.insert(key.clone(), value.clone());
    }
    Value::Object(out)
}
