//! `Authorization: Payment <token>` parsing: `Credential::parse`, `Credential::from_token`,
//! `find_payment_credential`, and (to reach the JSON layer without guessing base64) the same
//! bytes base64url-encoded as a token.
//!
//! Invariant: an accepted credential re-formats and re-parses equal.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use turnpike_protocol::{Credential, b64, find_payment_credential};

fn check(credential: &Credential) {
    let ring = common::keyring();
    let echo = &credential.challenge;
    let _ = ring.verify(&echo.binding_input(), &echo.id);
    let _ = echo.request_json();
    let _ = echo.expires_at();
    let header = credential.to_header_value();
    common::assert_no_control_bytes(&header);
    let again = Credential::parse(&header).expect("a formatted credential parses");
    assert_eq!(&again, credential);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(credential) = Credential::parse(&text) {
        check(&credential);
    }
    let _ = Credential::from_token(&text);
    if let Ok(Some(credential)) = find_payment_credential(text.split(['\r', '\n'])) {
        check(&credential);
    }

    // The bytes as the JSON inside a token.
    let token = b64::encode(data);
    if let Ok(credential) = Credential::from_token(&token) {
        check(&credential);
        let from_bytes = Credential::from_json_bytes(data).expect("same JSON, same result");
        assert_eq!(from_bytes, credential);
    }
    let header = format!("Bearer x, Payment {token}");
    if let Ok(Some(credential)) = find_payment_credential([header.as_str()]) {
        check(&credential);
    }
});
