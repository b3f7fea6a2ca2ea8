//! The `tempo` charge rail (`draft-tempo-charge-00`, digest §5): verification without I/O in the
//! modules below, and [`TempoRail`] (the [`crate::Rail`]) that settles through [`crate::rpc`].
//!
//! A caller decodes the challenge's `request` into a [`ChargeRequest`], validates it into a
//! [`Charge`], and then, by credential type:
//!
//! - `transaction` (pull): [`verify_transaction`] decodes the signed Tempo 0x76 transaction,
//!   recovers its sender and checks it against the charge; when `feePayer` is true,
//!   [`cosign_fee_payer`] checks the sponsor policy and adds the fee payer's 0x78-domain signature.
//!   The caller broadcasts the returned bytes, then checks the receipt with
//!   [`verify_receipt_logs`].
//! - `hash` (push): the caller fetches the receipt and passes it to [`verify_hash_receipt`].
//! - `proof` (amount `"0"`): [`verify_proof`] recovers the EIP-712 signer and compares it with the
//!   credential's `did:pkh` source.
//!
//! **Challenge-bound memo.** The conformance vectors (mpp-tools `oss-302`/`oss-303`) require, when
//! the request has no explicit `methodDetails.memo`, that the matched transfers carry an MPP
//! attribution memo bound to the challenge id and realm ([`attribution`]); the spec itself has no
//! such rule (digest §14 item 8 notes push mode has no challenge binding). We follow the vectors.
//!
//! The Tempo transaction type, its signing hashes and signature kinds come from the
//! `tempo-primitives` crate (tempoxyz/tempo); see [`transaction`].

pub mod attribution;
pub mod config;
mod error;
pub mod fee_payer;
mod matching;
pub mod proof;
mod rail;
pub mod receipt_logs;
pub mod request;
pub mod transaction;

use alloy::primitives::{B256, FixedBytes, b256};

pub use config::{TempoConfig, TempoSettings, TempoToken};
pub use error::TempoError;
pub use fee_payer::{CosignedTransaction, SponsorPolicy, cosign_fee_payer, sign_for_sponsor};
pub use matching::{ChallengeRef, Transfer};
pub use proof::{ProofVersion, verify_proof};
pub use rail::{TempoRail, VerifiedTempo, VerifiedTempoKind, charge_request};
pub use receipt_logs::{VerifiedReceipt, verify_hash_receipt, verify_receipt_logs};
pub use request::{Charge, ChargeRequest, MethodDetails, Split, SubmissionMode};
/// The Tempo transaction types this module speaks, for callers that build transactions.
pub use tempo_primitives;
pub use transaction::{SignatureKind, VerifiedTransaction, verify_transaction};

/// The method name.
pub const METHOD: &str = "tempo";

/// Tempo mainnet.
pub const CHAIN_ID_MAINNET: u64 = 4217;
/// Moderato testnet, the charge spec's default `chainId` (digest §14 item 1).
pub const CHAIN_ID_MODERATO: u64 = 42431;
/// `methodDetails.chainId` when absent, per `draft-tempo-charge-00`.
pub const DEFAULT_CHAIN_ID: u64 = CHAIN_ID_MODERATO;

/// Servers SHOULD limit splits to 10 entries; we reject more.
pub const SPLITS_MAX: usize = 10;

/// `transfer(address,uint256)`.
pub const TRANSFER_SELECTOR: FixedBytes<4> = FixedBytes([0xa9, 0x05, 0x9c, 0xbb]);
/// `transferWithMemo(address,uint256,bytes32)`.
pub const TRANSFER_WITH_MEMO_SELECTOR: FixedBytes<4> = FixedBytes([0x95, 0x77, 0x7d, 0x59]);
/// `Transfer(address,address,uint256)`.
pub const TRANSFER_TOPIC: B256 =
    b256!("ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef");
/// `TransferWithMemo(address,address,uint256,bytes32)`.
pub const TRANSFER_WITH_MEMO_TOPIC: B256 =
    b256!("57bc7354aa85aed339e000bccffabbc529466af35f0772c8f8ee1145927de7f0");

alloy::sol! {
    /// The TIP-20 payment functions and events a charge is made of.
    interface ITip20Payments {
        function transfer(address to, uint256 amount) external returns (bool);
        function transferWithMemo(address to, uint256 amount, bytes32 memo) external;
        function balanceOf(address account) external view returns (uint256);
        event Transfer(address indexed from, address indexed to, uint256 amount);
        event TransferWithMemo(address indexed from, address indexed to, uint256 amount, bytes32 indexed memo);
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::keccak256;
    use alloy::sol_types::{SolCall, SolEvent};

    use super::*;

    /// Digest §16.3, recomputed.
    #[test]
    fn selectors_and_topics_match_the_digest_constants() {
        assert_eq!(ITip20Payments::transferCall::SELECTOR, TRANSFER_SELECTOR.0);
        assert_eq!(
            ITip20Payments::transferWithMemoCall::SELECTOR,
            TRANSFER_WITH_MEMO_SELECTOR.0
        );
        assert_eq!(ITip20Payments::Transfer::SIGNATURE_HASH, TRANSFER_TOPIC);
        assert_eq!(
            ITip20Payments::TransferWithMemo::SIGNATURE_HASH,
            TRANSFER_WITH_MEMO_TOPIC
        );
        assert_eq!(
            &keccak256("transfer(address,uint256)")[..4],
            TRANSFER_SELECTOR.as_slice()
        );
        assert_eq!(
            &keccak256("transferWithMemo(address,uint256,bytes32)")[..4],
            TRANSFER_WITH_MEMO_SELECTOR.as_slice()
        );
    }
}
