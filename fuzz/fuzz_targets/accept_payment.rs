//! `Accept-Payment` parsing and ranking.
//!
//! Invariants: the ranking holds each acceptable offer once, no q=0 offer, sorted by weight with
//! ties in server order; `negotiate` never offers nothing while there are offers.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use turnpike_protocol::AcceptPayment;
use turnpike_protocol::accept_payment::negotiate;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(accept) = AcceptPayment::parse(&text) {
        for range in &accept.ranges {
            assert!(range.q_milli <= 1000);
        }
        common::check_ranking(&accept, &common::OFFERS);
    }
    let negotiated = negotiate(Some(&text), &common::OFFERS);
    assert!(!negotiated.is_empty());
});
