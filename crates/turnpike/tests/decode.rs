//! `turnpike mpp decode` against the real binary, fed the examples of the MPP specs.
//!
//! Spec text is copied verbatim from `draft-httpauth-payment-00` ("core") and
//! `draft-stripe-charge-00` ("stripe"). Note that the core example's `request` blob encodes
//! `"currency":"USD"` although the decoded JSON printed next to it shows `"usd"`; the decoder
//! shows what is on the wire.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// core, "Example Challenge": the 402 response exactly as printed, folded header included.
const CORE_CHALLENGE_RESPONSE: &str = r#"HTTP/1.1 402 Payment Required
Cache-Control: no-store
WWW-Authenticate: Payment id="x7Tg2pLqR9mKvNwY3hBcZa",
    realm="api.example.com",
    method="example",
    intent="charge",
    expires="2025-01-15T12:05:00Z",
    request="eyJhbW91bnQiOiIxMDAwIiwiY3VycmVuY3kiOiJVU0QiLCJyZWNpcGllbnQiOiJhY2N0XzEyMyJ9"
"#;

/// The same challenge as one `WWW-Authenticate` value.
const CORE_CHALLENGE_VALUE: &str = r#"Payment id="x7Tg2pLqR9mKvNwY3hBcZa", realm="api.example.com", method="example", intent="charge", expires="2025-01-15T12:05:00Z", request="eyJhbW91bnQiOiIxMDAwIiwiY3VycmVuY3kiOiJVU0QiLCJyZWNpcGllbnQiOiJhY2N0XzEyMyJ9""#;

const CORE_REQUEST_WIRE: &str =
    "eyJhbW91bnQiOiIxMDAwIiwiY3VycmVuY3kiOiJVU0QiLCJyZWNpcGllbnQiOiJhY2N0XzEyMyJ9";

/// core, "Example Credential".
const CORE_CREDENTIAL_TOKEN: &str = "eyJjaGFsbGVuZ2UiOnsiaWQiOiJ4N1RnMnBMcVI5bUt2TndZM2hCY1phIiwicmVhbG0iOiJhcGkuZXhhbXBsZS5jb20iLCJtZXRob2QiOiJleGFtcGxlIiwiaW50ZW50IjoiY2hhcmdlIiwicmVxdWVzdCI6ImV5SmhiVzkxYm5RaU9pSXhNREF3SWl3aVkzVnljbVZ1WTNraU9pSlZVMFFpTENKeVpXTnBjR2xsYm5RaU9pSmhZMk4wWHpFeU15SjkiLCJleHBpcmVzIjoiMjAyNS0wMS0xNVQxMjowNTowMFoifSwicGF5bG9hZCI6eyJwcm9vZiI6IjB4YWJjMTIzLi4uIn19";

/// core, "One-Time Charge" credential: a legacy flat `{"id","payload"}` with no `challenge`.
const CORE_LEGACY_CREDENTIAL_TOKEN: &str =
    "eyJpZCI6InFCM3dFclR5VTdpT3BBc0Q5ZkdoSmsiLCJwYXlsb2FkIjp7InByZWltYWdlIjoiMHhhYmMxMjMuLi4ifX0";

/// core, "One-Time Charge" receipt.
const CORE_RECEIPT_LINE: &str = "Payment-Receipt: eyJzdGF0dXMiOiJzdWNjZXNzIiwibWV0aG9kIjoiaW52b2ljZSIsInRpbWVzdGFtcCI6IjIwMjUtMDEtMTVUMTI6MDA6MDBaIiwicmVmZXJlbmNlIjoiaW52XzEyMzQ1In0";

/// stripe, "Charge Example", step 2: the whole 402 response, body included.
const STRIPE_CHALLENGE_RESPONSE: &str = r#"HTTP/1.1 402 Payment Required
WWW-Authenticate: Payment id="ch_1a2b3c4d5e",
  realm="api.example.com",
  method="stripe",
  intent="charge",
  request="eyJhbW91bnQiOiI1MDAwIiwiY3VycmVuY3kiOiJ1c2QiLCJkZXNjcmlwdGlvbiI6IkFJIGdlbmVyYXRpb24ifQ"
Cache-Control: no-store
Content-Type: application/json

{
  "type": "https://paymentauth.org/problems/payment-required",
  "title": "Payment Required",
  "status": 402,
  "detail": "This resource requires payment"
}
"#;

/// stripe, step 3: the credential.
const STRIPE_CREDENTIAL_TOKEN: &str = "eyJjaGFsbGVuZ2UiOnsiaWQiOiJjaF8xYTJiM2M0ZDVlIiwicmVhbG0iOiJhcGkuZXhhbXBsZS5jb20iLCJtZXRob2QiOiJzdHJpcGUiLCJpbnRlbnQiOiJjaGFyZ2UiLCJyZXF1ZXN0IjoiZXlKaGJXOTFiblFpT2lJMU1EQXdJaXdpWTNWeWNtVnVZM2tpT2lKMWMyUWlMQ0prWlhOamNtbHdkR2x2YmlJNklrRkpJR2RsYm1WeVlYUnBiMjRpZlEiLCJleHBpcmVzIjoiMjAyNS0wMS0xNVQxMjowNTowMFoifSwicGF5bG9hZCI6eyJzcHQiOiJzcHRfMU40WnYzMmVadktZbG8yQ1BoVlBrSmxXIn19";

/// stripe, step 4: the receipt.
const STRIPE_RECEIPT_TOKEN: &str = "eyJtZXRob2QiOiJzdHJpcGUiLCJyZWZlcmVuY2UiOiJwaV8xTjRadjMyZVp2S1lsbzJDUGhWUGtKbFciLCJzdGF0dXMiOiJzdWNjZXNzIiwidGltZXN0YW1wIjoiMjAyNS0wMS0xNVQxMjowNDozMloifQ";

/// Run `turnpike mpp decode [arg]` with `stdin` (closed when `None`).
fn run_decode(arg: Option<&str>, stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_turnpike"));
    command.args(["mpp", "decode"]);
    if let Some(arg) = arg {
        command.arg(arg);
    }
    command
        .env("RUST_BACKTRACE", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn turnpike");
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let bytes = bytes.to_vec();
        // The binary may stop reading early (oversized input): a broken pipe is expected then.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let output = child.wait_with_output().expect("wait for turnpike");
    if let Some(writer) = writer {
        writer.join().expect("stdin writer thread");
    }
    output
}

/// Decode successfully and return the JSON printed on stdout.
fn decoded(arg: Option<&str>, stdin: Option<&str>) -> Value {
    let output = run_decode(arg, stdin.map(str::as_bytes));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "decode failed: {stderr}");
    assert!(stderr.is_empty(), "unexpected stderr: {stderr}");
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    assert!(
        stdout.ends_with("}\n") || stdout.ends_with("]\n"),
        "{stdout}"
    );
    serde_json::from_str(&stdout).expect("stdout is JSON")
}

/// Fail with exit 1, nothing on stdout and exactly one `error:` line on stderr; return it.
fn rejected(arg: Option<&str>, stdin: Option<&[u8]>) -> String {
    let output = run_decode(arg, stdin);
    let stderr = String::from_utf8(output.stderr).expect("stderr is UTF-8");
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "stdout not empty on error");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got: {stderr}");
    assert!(stderr.ends_with('\n'), "{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    lines[0].to_owned()
}

fn keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn challenge_value_shows_every_param_with_request_decoded_and_its_wire_form() {
    let json = decoded(Some(CORE_CHALLENGE_VALUE), None);
    assert_eq!(
        keys(&json),
        [
            "kind",
            "id",
            "realm",
            "method",
            "intent",
            "request",
            "requestEncoded",
            "expires"
        ]
    );
    assert_eq!(json["kind"], "challenge");
    assert_eq!(json["id"], "x7Tg2pLqR9mKvNwY3hBcZa");
    assert_eq!(json["realm"], "api.example.com");
    assert_eq!(json["method"], "example");
    assert_eq!(json["intent"], "charge");
    assert_eq!(json["expires"], "2025-01-15T12:05:00Z");
    assert_eq!(json["requestEncoded"], CORE_REQUEST_WIRE);
    assert_eq!(
        json["request"],
        serde_json::json!({"amount": "1000", "currency": "USD", "recipient": "acct_123"})
    );
    assert_eq!(keys(&json["request"]), ["amount", "currency", "recipient"]);
}

#[test]
fn folded_challenge_as_printed_in_the_spec_decodes_like_the_one_line_value() {
    let one_line = decoded(Some(CORE_CHALLENGE_VALUE), None);
    let whole_response = decoded(None, Some(CORE_CHALLENGE_RESPONSE));
    assert_eq!(whole_response, one_line);
    let folded_header = CORE_CHALLENGE_RESPONSE
        .split_once("WWW-Authenticate")
        .map(|(_, rest)| format!("WWW-Authenticate{rest}"))
        .unwrap();
    assert_eq!(decoded(Some(&folded_header), None), one_line);
    let crlf = CORE_CHALLENGE_RESPONSE.replace('\n', "\r\n");
    assert_eq!(decoded(None, Some(&crlf)), one_line);
}

#[test]
fn indented_paste_is_dedented_before_unfolding() {
    let indented: String = CORE_CHALLENGE_RESPONSE
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect();
    assert_eq!(
        decoded(None, Some(&indented)),
        decoded(Some(CORE_CHALLENGE_VALUE), None)
    );
}

#[test]
fn payment_challenges_are_picked_out_of_a_value_with_other_schemes() {
    let stripe = r#"Payment id="ch_1a2b3c4d5e", realm="api.example.com", method="stripe", intent="charge", request="eyJhbW91bnQiOiI1MDAwIiwiY3VycmVuY3kiOiJ1c2QiLCJkZXNjcmlwdGlvbiI6IkFJIGdlbmVyYXRpb24ifQ""#;
    let value = format!(
        r#"WWW-Authenticate: Bearer realm="api", {CORE_CHALLENGE_VALUE}, Basic realm="x", {stripe}"#
    );
    let json = decoded(Some(&value), None);
    let items = json.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["kind"], "challenge");
    assert_eq!(items[0]["id"], "x7Tg2pLqR9mKvNwY3hBcZa");
    assert_eq!(items[0]["request"]["amount"], "1000");
    assert_eq!(items[1]["kind"], "challenge");
    assert_eq!(items[1]["method"], "stripe");
    assert_eq!(items[1]["request"]["amount"], "5000");
    assert_eq!(items[1]["request"]["currency"], "usd");
    assert_eq!(items[1]["request"]["description"], "AI generation");
    assert!(items[1].get("expires").is_none());
}

#[test]
fn authorization_line_decodes_to_the_echoed_challenge_and_payload() {
    let line = format!("Authorization: Payment {CORE_CREDENTIAL_TOKEN}");
    let json = decoded(Some(&line), None);
    assert_eq!(keys(&json), ["kind", "challenge", "payload"]);
    assert_eq!(json["kind"], "credential");
    let echo = &json["challenge"];
    assert_eq!(
        keys(echo),
        [
            "id",
            "realm",
            "method",
            "intent",
            "request",
            "requestEncoded",
            "expires"
        ]
    );
    assert_eq!(echo["id"], "x7Tg2pLqR9mKvNwY3hBcZa");
    assert_eq!(echo["method"], "example");
    assert_eq!(echo["expires"], "2025-01-15T12:05:00Z");
    assert_eq!(echo["requestEncoded"], CORE_REQUEST_WIRE);
    assert_eq!(echo["request"]["amount"], "1000");
    assert_eq!(echo["request"]["currency"], "USD");
    assert_eq!(echo["request"]["recipient"], "acct_123");
    assert_eq!(json["payload"], serde_json::json!({"proof": "0xabc123..."}));
}

#[test]
fn bare_credential_token_on_stdin_is_recognised_by_its_challenge_object() {
    let json = decoded(None, Some(&format!("{STRIPE_CREDENTIAL_TOKEN}\n")));
    assert_eq!(json["kind"], "credential");
    assert_eq!(json["challenge"]["id"], "ch_1a2b3c4d5e");
    assert_eq!(json["challenge"]["method"], "stripe");
    assert_eq!(json["challenge"]["request"]["amount"], "5000");
    assert_eq!(json["challenge"]["request"]["currency"], "usd");
    assert_eq!(json["payload"]["spt"], "spt_1N4Zv32eZvKYlo2CPhVPkJlW");
}

#[test]
fn payment_scheme_and_token_without_header_name_is_a_credential() {
    let from_arg = decoded(Some(&format!("Payment {STRIPE_CREDENTIAL_TOKEN}")), None);
    let from_dash = decoded(
        Some("-"),
        Some(&format!("Payment {STRIPE_CREDENTIAL_TOKEN}")),
    );
    assert_eq!(from_arg, from_dash);
    assert_eq!(from_arg["kind"], "credential");
    assert_eq!(from_arg["payload"]["spt"], "spt_1N4Zv32eZvKYlo2CPhVPkJlW");
}

#[test]
fn receipt_line_decodes_every_field() {
    let json = decoded(Some(CORE_RECEIPT_LINE), None);
    assert_eq!(
        keys(&json),
        ["kind", "status", "method", "timestamp", "reference"]
    );
    assert_eq!(json["kind"], "receipt");
    assert_eq!(json["status"], "success");
    assert_eq!(json["method"], "invoice");
    assert_eq!(json["timestamp"], "2025-01-15T12:00:00Z");
    assert_eq!(json["reference"], "inv_12345");
}

#[test]
fn bare_receipt_token_is_recognised_by_its_status_and_keeps_method_extras() {
    let json = decoded(Some(STRIPE_RECEIPT_TOKEN), None);
    assert_eq!(json["kind"], "receipt");
    assert_eq!(json["method"], "stripe");
    assert_eq!(json["reference"], "pi_1N4Zv32eZvKYlo2CPhVPkJlW");
    assert_eq!(json["timestamp"], "2025-01-15T12:04:32Z");

    // {"status":"success","method":"tempo","timestamp":"2026-01-01T00:00:00Z",
    //  "reference":"0xabc","chainId":4217}
    let with_extra = "eyJzdGF0dXMiOiJzdWNjZXNzIiwibWV0aG9kIjoidGVtcG8iLCJ0aW1lc3RhbXAiOiIyMDI2LTAxLTAxVDAwOjAwOjAwWiIsInJlZmVyZW5jZSI6IjB4YWJjIiwiY2hhaW5JZCI6NDIxN30";
    let json = decoded(Some(with_extra), None);
    assert_eq!(json["reference"], "0xabc");
    assert_eq!(json["chainId"], 4217);
}

#[test]
fn pasted_response_with_body_decodes_only_its_payment_header() {
    let json = decoded(None, Some(STRIPE_CHALLENGE_RESPONSE));
    assert_eq!(json["kind"], "challenge");
    assert_eq!(json["id"], "ch_1a2b3c4d5e");
    assert_eq!(json["request"]["amount"], "5000");
    assert_eq!(json["request"]["currency"], "usd");
    assert_eq!(json["request"]["description"], "AI generation");
}

#[test]
fn several_pasted_messages_give_an_array_of_their_payment_items_in_order() {
    // As `curl -i` prints them over HTTP/2 (lower-case names), plus the request in between.
    let paste = format!(
        "HTTP/2 402\r\n\
         date: Wed, 15 Jan 2025 12:00:00 GMT\r\n\
         www-authenticate: Bearer realm=\"api\"\r\n\
         {www}\
         content-type: application/problem+json\r\n\
         \r\n\
         {{\"type\": \"https://paymentauth.org/problems/payment-required\"}}\r\n\
         GET /api/generate HTTP/1.1\r\n\
         Host: api.example.com\r\n\
         authorization: Payment {STRIPE_CREDENTIAL_TOKEN}\r\n\
         \r\n\
         HTTP/2 200\r\n\
         payment-receipt: {STRIPE_RECEIPT_TOKEN}\r\n\
         cache-control: private\r\n\
         \r\n\
         Here is your generated content...\r\n",
        www = STRIPE_CHALLENGE_RESPONSE
            .lines()
            .skip(1)
            .take(5)
            .map(|l| format!("{}\r\n", l.replace("WWW-Authenticate", "www-authenticate")))
            .collect::<String>(),
    );
    let json = decoded(None, Some(&paste));
    let items = json.as_array().unwrap();
    let kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["challenge", "credential", "receipt"]);
    assert_eq!(items[0]["request"]["amount"], "5000");
    assert_eq!(items[0]["request"]["currency"], "usd");
    assert_eq!(items[1]["challenge"]["id"], items[0]["id"]);
    assert_eq!(items[1]["payload"]["spt"], "spt_1N4Zv32eZvKYlo2CPhVPkJlW");
    assert_eq!(items[2]["reference"], "pi_1N4Zv32eZvKYlo2CPhVPkJlW");
}

#[test]
fn opaque_is_also_shown_decoded_when_it_is_base64url_json() {
    // opaque = base64url({"route":"/v1/generate"}); request = base64url({"amount":"5000"})
    let value = r#"Payment id="abc", realm="api.example.com", method="stripe", intent="charge", request="eyJhbW91bnQiOiI1MDAwIn0", description="AI \"generation\"", digest="sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:", opaque="eyJyb3V0ZSI6Ii92MS9nZW5lcmF0ZSJ9""#;
    let json = decoded(Some(value), None);
    assert_eq!(
        keys(&json),
        [
            "kind",
            "id",
            "realm",
            "method",
            "intent",
            "request",
            "requestEncoded",
            "description",
            "digest",
            "opaque",
            "opaqueDecoded"
        ]
    );
    assert_eq!(json["description"], "AI \"generation\"");
    assert_eq!(
        json["digest"],
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    );
    assert_eq!(json["opaque"], "eyJyb3V0ZSI6Ii92MS9nZW5lcmF0ZSJ9");
    assert_eq!(json["opaqueDecoded"]["route"], "/v1/generate");

    let not_json = value.replace("eyJyb3V0ZSI6Ii92MS9nZW5lcmF0ZSJ9", "tenant-7");
    let json = decoded(Some(&not_json), None);
    assert_eq!(json["opaque"], "tenant-7");
    assert!(json.get("opaqueDecoded").is_none());
}

#[test]
fn legacy_flat_credential_from_the_spec_is_an_error_about_its_missing_challenge() {
    let as_header = format!("Authorization: Payment {CORE_LEGACY_CREDENTIAL_TOKEN}");
    let error = rejected(Some(&as_header), None);
    assert!(error.contains("missing `challenge`"), "{error}");

    let error = rejected(Some(CORE_LEGACY_CREDENTIAL_TOKEN), None);
    assert!(error.contains("no `challenge` object"), "{error}");
    assert!(error.contains("legacy flat credential"), "{error}");
}

#[test]
fn garbage_is_an_error_saying_what_was_expected() {
    for garbage in ["hello, world!", "%%%", r#"{"challenge": {}}"#] {
        let error = rejected(Some(garbage), None);
        assert!(
            error.starts_with("error: not a Payment challenge, credential or receipt: expected"),
            "{garbage}: {error}"
        );
    }
    let error = rejected(Some("notbase64json"), None);
    assert!(
        error.starts_with("error: not a Payment challenge, credential or receipt: "),
        "{error}"
    );
}

#[test]
fn truncated_base64_is_an_error_that_does_not_echo_the_token() {
    // 1 mod 4 characters: not even base64; 120 characters: base64 of cut-off JSON.
    for cut in [CORE_CREDENTIAL_TOKEN.len() - 2, 120] {
        let truncated = &CORE_CREDENTIAL_TOKEN[..cut];
        let bare = rejected(Some(truncated), None);
        assert!(
            bare.starts_with("error: not a Payment challenge, credential or receipt: "),
            "{bare}"
        );
        let header = rejected(Some(&format!("Authorization: Payment {truncated}")), None);
        assert!(
            header.starts_with("error: Authorization: not a valid Payment credential: "),
            "{header}"
        );
        for error in [bare, header] {
            assert!(!error.contains(&truncated[40..60]), "{error}");
        }
    }
    let receipt = &CORE_RECEIPT_LINE[..CORE_RECEIPT_LINE.len() - 10];
    let error = rejected(Some(receipt), None);
    assert!(
        error.starts_with("error: Payment-Receipt: not a valid receipt: "),
        "{error}"
    );
}

#[test]
fn empty_input_is_an_error() {
    for empty in ["", "\n", "  \r\n\t\n"] {
        let error = rejected(None, Some(empty.as_bytes()));
        assert!(
            error.starts_with("error: empty input: expected "),
            "{error}"
        );
    }
    let error = rejected(Some(""), None);
    assert!(error.starts_with("error: empty input: "), "{error}");
    // stdin closed at once, no argument
    let error = rejected(None, None);
    assert!(error.starts_with("error: empty input: "), "{error}");
}

#[test]
fn input_with_no_payment_header_is_an_error() {
    let error = rejected(None, Some(b"HTTP/1.1 200 OK\nContent-Type: text/plain\n"));
    assert!(
        error.starts_with("error: no Payment challenge, credential or receipt in the input"),
        "{error}"
    );
    let error = rejected(Some(r#"WWW-Authenticate: Bearer realm="api""#), None);
    assert!(
        error.contains("only other schemes in WWW-Authenticate"),
        "{error}"
    );
}

#[test]
fn malformed_header_in_a_paste_is_an_error_naming_its_line() {
    let paste = "HTTP/1.1 402 Payment Required\n\
                 Cache-Control: no-store\n\
                 WWW-Authenticate: Payment id=\"a\", realm=\"r\",\n\
                 \x20   method=\"tempo\", intent=\"charge\"\n";
    let error = rejected(None, Some(paste.as_bytes()));
    assert_eq!(
        error,
        "error: line 3: WWW-Authenticate: not a valid Payment challenge: missing required \
         parameter `request`"
    );
}

#[test]
fn stdin_over_one_mebibyte_is_an_error() {
    let big = vec![b'A'; 1024 * 1024 + 1];
    let error = rejected(None, Some(&big));
    assert!(error.contains("longer than 1048576 bytes"), "{error}");
}

#[test]
fn stdin_that_is_not_utf8_is_an_error() {
    let error = rejected(None, Some(b"Payment-Receipt: \xff\xfe\n"));
    assert!(error.contains("not UTF-8"), "{error}");
}
