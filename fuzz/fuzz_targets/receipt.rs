//! `Payment-Receipt` parsing: `Receipt::parse` on the raw text and on the bytes
//! base64url-encoded (to reach the JSON layer).
//!
//! Invariant: an accepted receipt formats and re-parses equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnpike_protocol::{Receipt, b64};

fn check(receipt: &Receipt) {
    let header = receipt.to_header_value().expect("a parsed receipt formats");
    assert!(
        header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    let again = Receipt::parse(&header).expect("a formatted receipt parses");
    assert_eq!(&again, receipt);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(receipt) = Receipt::parse(&text) {
        check(&receipt);
    }
    if let Ok(receipt) = Receipt::parse(&b64::encode(data)) {
        check(&receipt);
    }
});
