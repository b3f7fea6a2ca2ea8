//! The tempo rail's one error type. Messages name fields and values of the request, addresses and
//! amounts, never a credential's signature bytes.

use alloy::primitives::{Address, U256};

/// Why a tempo request, credential, transaction or receipt was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TempoError {
    // --- the request -------------------------------------------------------------------------
    /// A request field is missing, malformed or out of range.
    #[error("invalid tempo charge request: {0}")]
    InvalidRequest(String),
    /// `splits` sum to `amount` or more (the primary recipient must keep a non-zero remainder).
    #[error("invalid tempo charge request: splits total {splits} is not less than amount {amount}")]
    SplitsTooLarge { splits: U256, amount: U256 },
    /// The credential type is not allowed for this request (`supportedModes`, `feePayer`, or a
    /// zero/non-zero amount).
    #[error("credential type `{credential}` is not accepted for this request: {reason}")]
    ModeNotAllowed {
        credential: &'static str,
        reason: &'static str,
    },

    // --- the credential payload ----------------------------------------------------------------
    /// The payload's hex could not be read (the bytes themselves are not quoted).
    #[error("invalid credential payload: {0}")]
    InvalidPayload(&'static str),
    /// The signed transaction did not decode as a Tempo 0x76 transaction.
    #[error("invalid tempo transaction: {0}")]
    Decode(String),
    /// The signature did not recover to an address.
    #[error("signature recovery failed")]
    Recovery,

    // --- the transaction -----------------------------------------------------------------------
    #[error("transaction chain id {got} does not match the request's chain id {expected}")]
    ChainIdMismatch { expected: u64, got: u64 },
    #[error("transaction valid_before {valid_before} is after the challenge expiry {expires}")]
    ValidBeforeAfterExpiry { valid_before: u64, expires: u64 },
    #[error("transaction valid_before {valid_before} is not in the future (now {now})")]
    TransactionExpired { valid_before: u64, now: u64 },
    #[error("transaction must set valid_before when the challenge expires")]
    MissingValidBefore,
    /// A `feePayer: true` transaction without the client placeholder, or one naming a fee token.
    #[error("fee-payer transaction {0}")]
    FeePayerPlaceholder(&'static str),
    /// A `feePayer: false` transaction that leaves fees to someone else.
    #[error(
        "transaction must set fee_token and no fee_payer_signature when the server does not pay fees"
    )]
    ClientMustPayFees,
    /// The sponsor policy refused the envelope (gas, fees, validity window, access list, …).
    #[error("fee-payer transaction rejected by sponsor policy: {0}")]
    SponsorPolicy(String),
    #[error(
        "fee-payer transaction contains unauthorized extra calls ({calls} calls, {expected} payment transfers expected)"
    )]
    ExtraCalls { calls: usize, expected: usize },
    /// An expected transfer has no matching call or log.
    #[error("no matching payment {found_in} found: {amount} to {recipient:#x}{memo}")]
    TransferNotFound {
        found_in: &'static str,
        amount: U256,
        recipient: Address,
        memo: &'static str,
    },
    /// No memo on the matched transfers binds the payment to this challenge and realm.
    #[error("payment memo is not bound to this challenge")]
    MemoNotBound,

    // --- the receipt ---------------------------------------------------------------------------
    #[error("transaction receipt does not report success")]
    ReceiptFailed,
    #[error("receipt is for transaction {got}, not the credential's {expected}")]
    ReceiptHashMismatch { expected: String, got: String },

    // --- proof ---------------------------------------------------------------------------------
    #[error("proof credential source is missing or not a did:pkh:eip155 DID")]
    InvalidSource,
    #[error("proof source chain id {got} does not match the request's chain id {expected}")]
    SourceChainMismatch { expected: u64, got: u64 },
    #[error("signer {recovered:#x} does not match {expected:#x}")]
    SignerMismatch {
        expected: Address,
        recovered: Address,
    },

    // --- co-signing ----------------------------------------------------------------------------
    #[error("fee-payer signing failed: {0}")]
    Signing(String),
}
