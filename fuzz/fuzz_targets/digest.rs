//! `Content-Digest` / challenge `digest` parsing (RFC 9530 and the legacy form).
//!
//! Invariant: an accepted digest formats and re-parses equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnpike_protocol::{ContentDigest, b64};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(digest) = ContentDigest::parse(&text) {
        let header = digest.to_header_value();
        assert!(!header.contains(['\r', '\n']));
        assert_eq!(ContentDigest::parse(&header).expect("re-parses"), digest);
        let _ = digest.matches(data);
    }
    // The base64url decoder sees the same text.
    if let Ok(bytes) = b64::decode(&text) {
        assert_eq!(
            b64::decode(&b64::encode(&bytes)).expect("re-decodes"),
            bytes
        );
    }
});
