//! Helpers shared by the fuzz targets (included with `#[path]`, not a target itself).
#![allow(dead_code)]

use std::sync::LazyLock;

use turnpike_protocol::{AcceptPayment, BindingKeyring, BindingSecret};

/// A keyring after one rotation, as a tenant would hold it (keyed once per process).
pub fn keyring() -> &'static BindingKeyring {
    static KEYRING: LazyLock<BindingKeyring> = LazyLock::new(|| {
        BindingKeyring::rotated(
            BindingSecret::new(&[0xC1; 32]).expect("32-byte secret"),
            BindingSecret::new(&[0x9E; 32]).expect("32-byte secret"),
        )
    });
    &KEYRING
}

/// A formatted header never holds a control byte other than HTAB (so never CR or LF).
pub fn assert_no_control_bytes(header: &str) {
    assert!(
        !header
            .bytes()
            .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f),
        "formatted header holds a control byte: {header:?}"
    );
}

/// True when `s` holds a byte that no quoted-string may carry.
pub fn has_control_byte(s: &str) -> bool {
    s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

pub const OFFERS: [(&str, &str); 6] = [
    ("tempo", "charge"),
    ("tempo", "session"),
    ("stripe", "charge"),
    ("solana", "charge"),
    ("lightning", "charge"),
    ("evm", "charge"),
];

/// The ranking holds each acceptable offer (weight > 0) exactly once and nothing else, sorted by
/// descending weight, ties in server order.
pub fn check_ranking(accept: &AcceptPayment, offers: &[(&str, &str)]) {
    let ranked = accept.rank(offers.iter().copied());
    let weight = |i: usize| accept.weight(offers[i].0, offers[i].1);
    let mut seen = vec![false; offers.len()];
    for &i in &ranked {
        assert!(i < offers.len(), "index {i} is not an offer");
        assert!(!seen[i], "offer {i} ranked twice");
        seen[i] = true;
        assert!(weight(i).is_some_and(|q| q > 0), "offer {i} has q=0");
    }
    for (i, was_ranked) in seen.iter().enumerate() {
        assert_eq!(*was_ranked, weight(i).is_some_and(|q| q > 0), "offer {i}");
    }
    for pair in ranked.windows(2) {
        let (a, b) = (weight(pair[0]), weight(pair[1]));
        assert!(a > b || (a == b && pair[0] < pair[1]), "{ranked:?}");
    }
}
