//! MPP attribution memos: the `bytes32` a client puts in `transferWithMemo` when the request has
//! no `methodDetails.memo`, binding the payment to one challenge of one server.
//!
//! Not in `draft-tempo-charge-00`; this is the layout of the reference SDKs (mppx
//! `tempo/Attribution`, mpp-rs `tempo::attribution`), which the conformance vectors require:
//!
//! | bytes | content |
//! |---|---|
//! | 0..4 | `keccak256("mpp")[0..4]` (the tag, `0xef1ed712`) |
//! | 4 | version `0x01` |
//! | 5..15 | `keccak256(realm)[0..10]` (server fingerprint) |
//! | 15..25 | `keccak256(clientId)[0..10]`, or zeros |
//! | 25..32 | `keccak256(challengeId)[0..7]` (challenge nonce) |

use alloy::primitives::{B256, keccak256};

/// The memo version this module reads and writes.
pub const VERSION: u8 = 0x01;

/// `keccak256("mpp")[0..4]`.
pub fn tag() -> [u8; 4] {
    let hash = keccak256(b"mpp");
    [hash[0], hash[1], hash[2], hash[3]]
}

fn prefix<const N: usize>(value: &str) -> [u8; N] {
    let hash = keccak256(value.as_bytes());
    let mut out = [0u8; N];
    out.copy_from_slice(&hash[..N]);
    out
}

/// The memo a client should send for `challenge_id` on `realm` (with an optional client id).
pub fn encode(realm: &str, client_id: Option<&str>, challenge_id: &str) -> B256 {
    let mut memo = [0u8; 32];
    memo[..4].copy_from_slice(&tag());
    memo[4] = VERSION;
    memo[5..15].copy_from_slice(&prefix::<10>(realm));
    if let Some(client_id) = client_id {
        memo[15..25].copy_from_slice(&prefix::<10>(client_id));
    }
    memo[25..32].copy_from_slice(&prefix::<7>(challenge_id));
    B256::from(memo)
}

/// Does the memo carry the MPP tag and a known version?
pub fn is_mpp_memo(memo: &B256) -> bool {
    memo[..4] == tag() && memo[4] == VERSION
}

/// Is this an MPP memo for `challenge_id` on `realm` (any client)?
pub fn is_bound(memo: &B256, challenge_id: &str, realm: &str) -> bool {
    is_mpp_memo(memo)
        && memo[5..15] == prefix::<10>(realm)
        && memo[25..32] == prefix::<7>(challenge_id)
}

#[cfg(test)]
mod tests {
    use alloy::primitives::b256;

    use super::*;

    /// The memo of the conformance vectors for `challenge-123` on `api.example.com`.
    const VECTOR_MEMO: B256 =
        b256!("ef1ed712011ece072f76bd8b82350e00000000000000000000eb18f2d4402269");

    #[test]
    fn matches_the_conformance_vectors() {
        assert_eq!(tag(), [0xef, 0x1e, 0xd7, 0x12]);
        assert_eq!(
            encode("api.example.com", None, "challenge-123"),
            VECTOR_MEMO
        );
        assert!(is_bound(&VECTOR_MEMO, "challenge-123", "api.example.com"));
        // Another challenge, another realm, not an MPP memo.
        let other_challenge =
            b256!("ef1ed712011ece072f76bd8b82350e000000000000000000000ba7f8d2502b26");
        let other_realm = b256!("ef1ed712019daa026d82c6f784db2b00000000000000000000eb18f2d4402269");
        assert!(is_mpp_memo(&other_challenge) && is_mpp_memo(&other_realm));
        assert!(!is_bound(
            &other_challenge,
            "challenge-123",
            "api.example.com"
        ));
        assert!(!is_bound(&other_realm, "challenge-123", "api.example.com"));
        assert!(!is_mpp_memo(&B256::repeat_byte(0xab)));
    }

    #[test]
    fn a_client_id_does_not_affect_the_binding() {
        let memo = encode("api.example.com", Some("my-app"), "c1");
        assert!(is_bound(&memo, "c1", "api.example.com"));
        assert_ne!(memo[15..25], [0u8; 10]);
    }
}
