//! Fee sponsorship (`feePayer: true`): check the client's placeholder-signed transaction against
//! the charge and a sponsor policy, then add the fee payer's signature (signature domain `0x78`,
//! committing to the server-chosen `fee_token` and the sender) and return the bytes to broadcast.
//!
//! The policy rules are not in `draft-tempo-charge-00`; they are what the conformance vectors
//! (`tempo-fee-payer-cosign.json`, mpp-tools `oss-303`) require, with the reference SDK's default
//! limits (mpp-rs `FeePayerPolicy`): gas ≤ 2 000 000, a validity window ≤ 15 minutes, the
//! expiring nonce key, no access list, no authorization list or key authorization, no
//! client-chosen fee token, and exactly the payment calls.

use alloy::eips::Encodable2718;
use alloy::primitives::{Address, B256, Bytes};
use alloy::signers::SignerSync;
use tempo_primitives::transaction::{PrimitiveSignature, TEMPO_EXPIRING_NONCE_KEY, TempoSignature};

use super::matching::{ChallengeRef, Transfer};
use super::request::Charge;
use super::transaction::{self, SignatureKind, has_placeholder, verify_transaction};
use super::{CHAIN_ID_MODERATO, TempoError};

/// Limits on what the server agrees to pay for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SponsorPolicy {
    pub max_gas: u64,
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
    /// `gas_limit × max_fee_per_gas`, in fee-token base units × 10¹² (wei-like).
    pub max_total_fee: u128,
    /// Longest `valid_before − now`, in seconds.
    pub max_validity_window_secs: u64,
}

impl SponsorPolicy {
    /// The reference SDK's defaults; Moderato allows a higher priority fee.
    pub fn for_chain(chain_id: u64) -> Self {
        Self {
            max_gas: 2_000_000,
            max_fee_per_gas: 100_000_000_000,
            max_priority_fee_per_gas: if chain_id == CHAIN_ID_MODERATO {
                50_000_000_000
            } else {
                10_000_000_000
            },
            max_total_fee: 50_000_000_000_000_000,
            max_validity_window_secs: 15 * 60,
        }
    }
}

/// A sponsored transaction, ready to broadcast.
#[derive(Debug, Clone)]
pub struct CosignedTransaction {
    /// `0x76 ‖ rlp(...)` with the fee token and both signatures.
    pub bytes: Bytes,
    /// The transaction hash of [`Self::bytes`].
    pub tx_hash: B256,
    pub sender: Address,
    pub signature_kind: SignatureKind,
    /// The fee payer the co-signature recovers to.
    pub fee_payer: Address,
    pub fee_token: Address,
    /// The matched transfers, primary first.
    pub transfers: Vec<Transfer>,
    pub call_count: usize,
    pub access_list_len: usize,
}

fn policy(message: String) -> TempoError {
    TempoError::SponsorPolicy(message)
}

/// Check the sponsor policy on the decoded client transaction, before any charge checks (cheap
/// structural refusals first).
fn check_policy(
    signed: &tempo_primitives::AASigned,
    policy_limits: &SponsorPolicy,
    now: u64,
) -> Result<(), TempoError> {
    let tx = signed.tx();
    if !has_placeholder(signed) {
        return Err(TempoError::FeePayerPlaceholder(
            "must carry the fee_payer_signature placeholder",
        ));
    }
    if tx.fee_token.is_some() {
        return Err(TempoError::FeePayerPlaceholder(
            "must not include fee_token (the server sets it)",
        ));
    }
    if !tx.access_list.is_empty() {
        return Err(policy("access list is not allowed".into()));
    }
    if !tx.tempo_authorization_list.is_empty() {
        return Err(policy("an authorization list is not allowed".into()));
    }
    if tx.key_authorization.is_some() {
        return Err(policy("a key authorization is not allowed".into()));
    }
    if tx.nonce_key != TEMPO_EXPIRING_NONCE_KEY {
        return Err(policy("must use expiring nonce key (U256::MAX)".into()));
    }
    let Some(valid_before) = tx.valid_before.map(|v| v.get()) else {
        return Err(policy("must set valid_before".into()));
    };
    if valid_before <= now {
        return Err(TempoError::TransactionExpired { valid_before, now });
    }
    let window = valid_before - now;
    if window > policy_limits.max_validity_window_secs {
        return Err(policy(format!(
            "validity window exceeds sponsor policy ({window}s > {}s)",
            policy_limits.max_validity_window_secs
        )));
    }
    if tx.gas_limit > policy_limits.max_gas {
        return Err(policy(format!(
            "gas limit exceeds sponsor policy ({} > {})",
            tx.gas_limit, policy_limits.max_gas
        )));
    }
    if tx.max_fee_per_gas > policy_limits.max_fee_per_gas {
        return Err(policy(format!(
            "max_fee_per_gas exceeds sponsor policy ({} > {})",
            tx.max_fee_per_gas, policy_limits.max_fee_per_gas
        )));
    }
    if tx.max_priority_fee_per_gas > tx.max_fee_per_gas
        || tx.max_priority_fee_per_gas > policy_limits.max_priority_fee_per_gas
    {
        return Err(policy(format!(
            "max_priority_fee_per_gas {} exceeds max_fee_per_gas or sponsor policy",
            tx.max_priority_fee_per_gas
        )));
    }
    let total = u128::from(tx.gas_limit).saturating_mul(tx.max_fee_per_gas);
    if total > policy_limits.max_total_fee {
        return Err(policy(format!(
            "total fee exceeds sponsor policy ({total} > {})",
            policy_limits.max_total_fee
        )));
    }
    Ok(())
}

/// The client side: sign `tx` for a sponsor (the placeholder set, signing domain `0x76`) and
/// encode it. Without a fee token this is the spec's layout (`fee_payer_signature` = `0x00`);
/// a transaction that names a fee token (which a sponsor refuses) is encoded with the zero
/// signature as placeholder, the only layout that carries the fee token.
pub fn sign_for_sponsor<S: SignerSync + ?Sized>(
    mut tx: tempo_primitives::TempoTransaction,
    signer: &S,
) -> Result<Bytes, TempoError> {
    tx.fee_payer_signature = Some(alloy::primitives::Signature::new(
        alloy::primitives::U256::ZERO,
        alloy::primitives::U256::ZERO,
        false,
    ));
    let signature = signer
        .sign_hash_sync(&tx.signature_hash())
        .map_err(|err| TempoError::Signing(err.to_string()))?;
    let names_fee_token = tx.fee_token.is_some();
    let signed = tx.into_signed(TempoSignature::Primitive(PrimitiveSignature::Secp256k1(
        signature,
    )));
    let mut out = Vec::new();
    if names_fee_token {
        signed.encode_2718(&mut out);
    } else {
        signed.encode_for_fee_payer_service(&mut out);
    }
    Ok(out.into())
}

/// Verify a sponsored pull credential and co-sign it.
///
/// `raw` is the client's transaction (fee-payer placeholder, no fee token); `fee_token` the
/// USD TIP-20 the server pays fees in; `signer` the server's fee-payer key. Runs the sponsor
/// policy, then [`verify_transaction`] (which, for `feePayer: true`, requires exactly the payment
/// calls), then signs the fee-payer hash over the transaction with `fee_token` set.
#[allow(clippy::too_many_arguments)]
pub fn cosign_fee_payer<S: SignerSync + ?Sized>(
    charge: &Charge,
    binding: Option<ChallengeRef<'_>>,
    raw: &[u8],
    expires: Option<u64>,
    now: u64,
    fee_token: Address,
    policy_limits: &SponsorPolicy,
    signer: &S,
) -> Result<CosignedTransaction, TempoError> {
    if !charge.fee_payer {
        return Err(TempoError::ModeNotAllowed {
            credential: "transaction",
            reason: "the request does not ask the server to pay fees",
        });
    }
    let decoded = transaction::decode(raw)?;
    check_policy(&decoded, policy_limits, now)?;
    let verified = verify_transaction(charge, binding, raw, expires, now)?;
    let (mut tx, client_signature, _) = verified.signed.into_parts();
    tx.fee_token = Some(fee_token);
    tx.fee_payer_signature = None;
    let hash = tx.fee_payer_signature_hash(verified.sender);
    let fee_payer_signature = signer
        .sign_hash_sync(&hash)
        .map_err(|err| TempoError::Signing(err.to_string()))?;
    tx.fee_payer_signature = Some(fee_payer_signature);
    let fee_payer = tx
        .recover_fee_payer(verified.sender)
        .map_err(|_| TempoError::Recovery)?;
    let call_count = tx.calls.len();
    let access_list_len = tx.access_list.len();
    let signed = tx.into_signed(client_signature);
    let bytes = Bytes::from(signed.encoded_2718());
    Ok(CosignedTransaction {
        tx_hash: *signed.hash(),
        bytes,
        sender: verified.sender,
        signature_kind: verified.signature_kind,
        fee_payer,
        fee_token,
        transfers: verified.transfers,
        call_count,
        access_list_len,
    })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use alloy::consensus::transaction::SignerRecoverable;
    use alloy::eips::eip2930::{AccessList, AccessListItem};
    use alloy::primitives::U256;
    use alloy::signers::local::PrivateKeySigner;

    use super::super::transaction::tests::*;
    use super::*;

    fn sponsor() -> PrivateKeySigner {
        PrivateKeySigner::from_bytes(&B256::repeat_byte(0x22)).unwrap()
    }

    fn cosign(tx: tempo_primitives::TempoTransaction) -> Result<CosignedTransaction, TempoError> {
        cosign_fee_payer(
            &charge(serde_json::json!({ "feePayer": true })),
            Some(C),
            &sign(tx),
            None,
            NOW,
            CURRENCY,
            &SponsorPolicy::for_chain(42431),
            &sponsor(),
        )
    }

    type Mutation = Box<dyn Fn(&mut tempo_primitives::TempoTransaction)>;

    fn payment() -> Vec<tempo_primitives::transaction::Call> {
        vec![transfer_call(MERCHANT, 1_000_000, Some(bound_memo()))]
    }

    #[test]
    fn a_valid_envelope_is_cosigned_and_decodes_with_both_signers() {
        let cosigned = cosign(base_tx(payment(), true)).unwrap();
        assert_eq!(cosigned.sender, payer().address());
        assert_eq!(cosigned.fee_payer, sponsor().address());
        assert_eq!(cosigned.fee_token, CURRENCY);
        assert_eq!((cosigned.call_count, cosigned.access_list_len), (1, 0));
        let decoded = transaction::decode(&cosigned.bytes).unwrap();
        assert_eq!(*decoded.hash(), cosigned.tx_hash);
        assert_eq!(decoded.tx().fee_token, Some(CURRENCY));
        assert!(!has_placeholder(&decoded));
        assert_eq!(decoded.recover_signer().unwrap(), payer().address());
        assert_eq!(
            decoded.tx().recover_fee_payer(payer().address()).unwrap(),
            sponsor().address()
        );
    }

    #[test]
    fn policy_violations_are_refused_before_signing() {
        let cases: Vec<(&str, Mutation)> = vec![
            ("gas limit exceeds", Box::new(|tx| tx.gas_limit = 2_000_001)),
            (
                "expiring nonce key",
                Box::new(|tx| tx.nonce_key = U256::ZERO),
            ),
            (
                "validity window exceeds",
                Box::new(|tx| tx.valid_before = NonZeroU64::new(NOW + 1800)),
            ),
            (
                "access list is not allowed",
                Box::new(|tx| {
                    tx.access_list = AccessList(vec![AccessListItem {
                        address: CURRENCY,
                        storage_keys: vec![B256::ZERO],
                    }])
                }),
            ),
            (
                "must not include fee_token",
                Box::new(|tx| tx.fee_token = Some(Address::repeat_byte(0x99))),
            ),
            (
                "max_fee_per_gas",
                Box::new(|tx| tx.max_fee_per_gas = 200_000_000_000),
            ),
        ];
        for (message, mutate) in cases {
            let mut tx = base_tx(payment(), true);
            mutate(&mut tx);
            let err = cosign(tx).unwrap_err();
            assert!(err.to_string().contains(message), "{message}: {err}");
        }
        let mut two = payment();
        two.push(transfer_call(MERCHANT, 1_000_000, Some(bound_memo())));
        assert!(matches!(
            cosign(base_tx(two, true)),
            Err(TempoError::ExtraCalls { .. })
        ));
        let plain = vec![transfer_call(MERCHANT, 1_000_000, None)];
        assert_eq!(
            cosign(base_tx(plain, true)).unwrap_err(),
            TempoError::MemoNotBound
        );
    }
}
