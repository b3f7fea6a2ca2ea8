//! Pull mode: decode a signed Tempo transaction (EIP-2718 type `0x76`) and verify it against a
//! charge before the caller broadcasts it (spec "Transaction Verification", digest §5).
//!
//! The transaction type, its RLP layout, signing hashes and the four signature kinds
//! (secp256k1, P256, WebAuthn, keychain) come from `tempo-primitives` (tempoxyz/tempo).
//!
//! **The fee-payer placeholder.** A client signing for a sponsor (`feePayer: true`) sends the
//! spec's layout: `fee_token` empty and the `fee_payer_signature` field the single byte `0x00`
//! (`tempo-primitives`' `encode_for_fee_payer_service`). `tempo-primitives` cannot decode that
//! byte (it expects an RLP list there), so [`decode`] rewrites it to the zero signature
//! `[0, 0, 0]`, which the crate treats as the same placeholder (the client's signing hash is the
//! same either way). Both encodings are accepted.

use alloy::eips::Decodable2718;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use alloy::rlp::Header;
use alloy::sol_types::SolCall;
use tempo_primitives::AASigned;
use tempo_primitives::transaction::{PrimitiveSignature, TEMPO_TX_TYPE_ID, TempoSignature};

use super::matching::{ChallengeRef, Transfer, match_transfers};
use super::request::{Charge, SubmissionMode};
use super::{ITip20Payments, TRANSFER_SELECTOR, TRANSFER_WITH_MEMO_SELECTOR, TempoError};

/// The RLP of `Signature { r: 0, s: 0, y_parity: false }` as `tempo-primitives` writes it.
const ZERO_SIGNATURE_RLP: [u8; 4] = [0xc3, 0x80, 0x80, 0x80];

/// Index of `fee_payer_signature` among the transaction's RLP fields.
const FEE_PAYER_SIGNATURE_FIELD: usize = 11;

/// How the sender signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureKind {
    Secp256k1,
    P256,
    WebAuthn,
    /// An access key acting for `sender`. The signature is checked, but whether the key is
    /// authorized for the account is on-chain state (the keychain precompile): the caller must
    /// not treat `sender` as proven before the transaction executes (simulate or broadcast).
    Keychain,
}

/// A transaction that satisfies the charge.
#[derive(Debug, Clone)]
pub struct VerifiedTransaction {
    /// The recovered sender (for [`SignatureKind::Keychain`], the account the key acts for).
    pub sender: Address,
    pub signature_kind: SignatureKind,
    /// The matched transfers, in [`Charge::expected_transfers`] order (primary first).
    pub transfers: Vec<Transfer>,
    pub valid_before: Option<u64>,
    /// The client signed for a sponsor: co-sign with [`super::cosign_fee_payer`] before
    /// broadcasting; [`Self::raw`] and [`Self::tx_hash`] are then not what goes on chain.
    pub fee_payer: bool,
    /// The bytes as received.
    pub raw: Bytes,
    /// `keccak256(raw)`: the transaction hash when broadcast as-is (not fee-payer).
    pub tx_hash: B256,
    /// The decoded transaction (placeholder normalized).
    pub signed: AASigned,
}

/// Decode `0x76 ‖ rlp(...)` into a signed transaction, accepting the `0x00` fee-payer
/// placeholder (module docs).
pub fn decode(raw: &[u8]) -> Result<AASigned, TempoError> {
    let normalized = normalize_placeholder(raw)?;
    let bytes = normalized.as_deref().unwrap_or(raw);
    let mut buf = bytes;
    let signed = AASigned::decode_2718(&mut buf)
        .map_err(|err| TempoError::Decode(format!("not a Tempo 0x76 transaction: {err}")))?;
    if !buf.is_empty() {
        return Err(TempoError::Decode(
            "trailing bytes after the transaction".into(),
        ));
    }
    Ok(signed)
}

/// Where `fee_payer_signature` is the single byte `0x00`, the same transaction with the zero
/// signature there instead; `None` when there is nothing to rewrite.
fn normalize_placeholder(raw: &[u8]) -> Result<Option<Vec<u8>>, TempoError> {
    let malformed = |what: &str| TempoError::Decode(what.to_owned());
    let Some((&ty, rest)) = raw.split_first() else {
        return Err(malformed("empty transaction"));
    };
    if ty != TEMPO_TX_TYPE_ID {
        return Err(TempoError::Decode(format!(
            "transaction type 0x{ty:02x} is not 0x{TEMPO_TX_TYPE_ID:02x}"
        )));
    }
    let mut buf = rest;
    let header = Header::decode(&mut buf).map_err(|err| malformed(&err.to_string()))?;
    if !header.list || header.payload_length > buf.len() {
        return Err(malformed("transaction is not an RLP list"));
    }
    let payload = &buf[..header.payload_length];
    let mut offset = 0;
    for _ in 0..FEE_PAYER_SIGNATURE_FIELD {
        offset += item_len(&payload[offset..])?;
    }
    if payload.get(offset) != Some(&0x00) {
        return Ok(None);
    }
    let mut fields = Vec::with_capacity(payload.len() + 3);
    fields.extend_from_slice(&payload[..offset]);
    fields.extend_from_slice(&ZERO_SIGNATURE_RLP);
    fields.extend_from_slice(&payload[offset + 1..]);
    fields.extend_from_slice(&buf[header.payload_length..]);
    let mut out = vec![TEMPO_TX_TYPE_ID];
    Header {
        list: true,
        payload_length: fields.len() - (buf.len() - header.payload_length),
    }
    .encode(&mut out);
    out.extend_from_slice(&fields);
    Ok(Some(out))
}

/// The encoded length of the RLP item at the start of `buf`.
fn item_len(buf: &[u8]) -> Result<usize, TempoError> {
    let mut cursor = buf;
    let header = Header::decode(&mut cursor).map_err(|err| TempoError::Decode(err.to_string()))?;
    let len = (buf.len() - cursor.len()) + header.payload_length;
    if len > buf.len() {
        return Err(TempoError::Decode("truncated transaction field".into()));
    }
    Ok(len)
}

/// Is the fee-payer signature the client's placeholder (present, all zero)?
pub(crate) fn has_placeholder(signed: &AASigned) -> bool {
    signed
        .tx()
        .fee_payer_signature
        .is_some_and(|sig| sig.r().is_zero() && sig.s().is_zero())
}

/// A call as a TIP-20 payment of `currency`, or `None`.
fn payment_call(to: &TxKind, value: &U256, input: &[u8], currency: Address) -> Option<Transfer> {
    if *to != TxKind::Call(currency) || !value.is_zero() || input.len() < 4 {
        return None;
    }
    let selector = &input[..4];
    if selector == TRANSFER_SELECTOR.as_slice() {
        let call = ITip20Payments::transferCall::abi_decode(input).ok()?;
        Some(Transfer {
            recipient: call.to,
            amount: call.amount,
            memo: None,
        })
    } else if selector == TRANSFER_WITH_MEMO_SELECTOR.as_slice() {
        let call = ITip20Payments::transferWithMemoCall::abi_decode(input).ok()?;
        Some(Transfer {
            recipient: call.to,
            amount: call.amount,
            memo: Some(call.memo),
        })
    } else {
        None
    }
}

fn signature_kind(signature: &TempoSignature) -> SignatureKind {
    match signature {
        TempoSignature::Primitive(PrimitiveSignature::Secp256k1(_)) => SignatureKind::Secp256k1,
        TempoSignature::Primitive(PrimitiveSignature::P256(_)) => SignatureKind::P256,
        TempoSignature::Primitive(PrimitiveSignature::WebAuthn(_)) => SignatureKind::WebAuthn,
        TempoSignature::Keychain(_) => SignatureKind::Keychain,
    }
}

/// Parse a credential's `signature` field (`0x` + hex) into bytes.
pub fn payload_bytes(hex: &str) -> Result<Bytes, TempoError> {
    hex.strip_prefix("0x")
        .and_then(|h| alloy::hex::decode(h).ok())
        .map(Bytes::from)
        .ok_or(TempoError::InvalidPayload(
            "transaction is not 0x-prefixed hex",
        ))
}

/// Verify a `transaction` credential's signed transaction against the charge.
///
/// - the request allows pull mode (non-zero amount, `supportedModes`);
/// - the transaction's `chain_id` is the request's;
/// - `valid_before` is in the future and, when the challenge has an expiry (`expires`, Unix
///   seconds), present and not after it;
/// - `feePayer: true`: the fee-payer placeholder is present and `fee_token` empty, and every call
///   is one of the required transfers (a sponsor pays for every call); `feePayer` false:
///   `fee_token` is set and there is no placeholder; other calls are allowed (the spec lets the
///   client use any transaction structure);
/// - the calls to `transfer`/`transferWithMemo` on `currency` (value 0) contain every required
///   transfer, order-insensitive, with the challenge-bound memo rule when `binding` is given and
///   the request has no memo;
/// - the sender signature recovers.
pub fn verify_transaction(
    charge: &Charge,
    binding: Option<ChallengeRef<'_>>,
    raw: &[u8],
    expires: Option<u64>,
    now: u64,
) -> Result<VerifiedTransaction, TempoError> {
    charge.check_mode(SubmissionMode::Pull)?;
    let signed = decode(raw)?;
    let tx = signed.tx();
    if tx.chain_id != charge.chain_id {
        return Err(TempoError::ChainIdMismatch {
            expected: charge.chain_id,
            got: tx.chain_id,
        });
    }
    let valid_before = tx.valid_before.map(|v| v.get());
    if let Some(valid_before) = valid_before
        && valid_before <= now
    {
        return Err(TempoError::TransactionExpired { valid_before, now });
    }
    if let Some(expires) = expires {
        match valid_before {
            None => return Err(TempoError::MissingValidBefore),
            Some(valid_before) if valid_before > expires => {
                return Err(TempoError::ValidBeforeAfterExpiry {
                    valid_before,
                    expires,
                });
            }
            Some(_) => {}
        }
    }
    let placeholder = has_placeholder(&signed);
    if charge.fee_payer {
        if !placeholder {
            return Err(TempoError::FeePayerPlaceholder(
                "must carry the fee_payer_signature placeholder",
            ));
        }
        if tx.fee_token.is_some() {
            return Err(TempoError::FeePayerPlaceholder(
                "must not include fee_token (the server sets it)",
            ));
        }
    } else if placeholder || tx.fee_token.is_none() {
        return Err(TempoError::ClientMustPayFees);
    }
    let expected = charge.expected_transfers();
    let mut observed = Vec::with_capacity(tx.calls.len());
    for call in &tx.calls {
        match payment_call(&call.to, &call.value, &call.input, charge.currency) {
            Some(transfer) => observed.push(transfer),
            None if charge.fee_payer => {
                return Err(TempoError::ExtraCalls {
                    calls: tx.calls.len(),
                    expected: expected.len(),
                });
            }
            None => {}
        }
    }
    if charge.fee_payer && observed.len() > expected.len() {
        return Err(TempoError::ExtraCalls {
            calls: tx.calls.len(),
            expected: expected.len(),
        });
    }
    let matched = match_transfers(&expected, &observed, "call", charge.memo.is_some(), binding)?;
    let sender = alloy::consensus::transaction::SignerRecoverable::recover_signer(&signed)
        .map_err(|_| TempoError::Recovery)?;
    Ok(VerifiedTransaction {
        sender,
        signature_kind: signature_kind(signed.signature()),
        transfers: matched.into_iter().map(|j| observed[j]).collect(),
        valid_before,
        fee_payer: charge.fee_payer,
        raw: Bytes::copy_from_slice(raw),
        tx_hash: keccak256(raw),
        signed,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::num::NonZeroU64;

    use alloy::eips::Encodable2718;
    use alloy::primitives::Signature;
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;
    use tempo_primitives::TempoTransaction;
    use tempo_primitives::transaction::{Call, TEMPO_EXPIRING_NONCE_KEY};

    use super::super::attribution;
    use super::super::request::ChargeRequest;
    use super::*;

    pub(crate) const CURRENCY: Address = Address::repeat_byte(0x20);
    pub(crate) const MERCHANT: Address = Address::repeat_byte(0x74);
    pub(crate) const PLATFORM: Address = Address::repeat_byte(0xa1);
    pub(crate) const NOW: u64 = 1_800_000_000;
    pub(crate) const C: ChallengeRef<'static> = ChallengeRef {
        id: "ch",
        realm: "api.example.com",
    };

    pub(crate) fn payer() -> PrivateKeySigner {
        PrivateKeySigner::from_bytes(&B256::repeat_byte(0x11)).unwrap()
    }

    pub(crate) fn charge(details: serde_json::Value) -> Charge {
        ChargeRequest::from_json(serde_json::json!({
            "amount": "1000000", "currency": format!("{CURRENCY:#x}"),
            "recipient": format!("{MERCHANT:#x}"), "methodDetails": details
        }))
        .unwrap()
        .validate()
        .unwrap()
    }

    pub(crate) fn transfer_call(to: Address, amount: u64, memo: Option<B256>) -> Call {
        let input = match memo {
            None => ITip20Payments::transferCall {
                to,
                amount: U256::from(amount),
            }
            .abi_encode(),
            Some(memo) => ITip20Payments::transferWithMemoCall {
                to,
                amount: U256::from(amount),
                memo,
            }
            .abi_encode(),
        };
        Call {
            to: TxKind::Call(CURRENCY),
            value: U256::ZERO,
            input: input.into(),
        }
    }

    pub(crate) fn bound_memo() -> B256 {
        attribution::encode("api.example.com", None, "ch")
    }

    pub(crate) fn base_tx(calls: Vec<Call>, sponsored: bool) -> TempoTransaction {
        TempoTransaction {
            chain_id: 42431,
            max_priority_fee_per_gas: 1,
            max_fee_per_gas: 1,
            gas_limit: 1_000_000,
            calls,
            access_list: Default::default(),
            nonce_key: TEMPO_EXPIRING_NONCE_KEY,
            nonce: 0,
            fee_token: (!sponsored).then_some(CURRENCY),
            fee_payer_signature: sponsored.then(|| Signature::new(U256::ZERO, U256::ZERO, false)),
            valid_before: NonZeroU64::new(NOW + 60),
            valid_after: None,
            key_authorization: None,
            tempo_authorization_list: vec![],
        }
    }

    /// Sign as the client; sponsored transactions in the spec's `0x00`-placeholder layout, unless
    /// they name a fee token (that layout cannot carry one; the zero-signature layout can).
    pub(crate) fn sign(tx: TempoTransaction) -> Vec<u8> {
        let sig = payer().sign_hash_sync(&tx.signature_hash()).unwrap();
        let sponsored = tx.fee_payer_signature.is_some() && tx.fee_token.is_none();
        let signed = tx.into_signed(TempoSignature::Primitive(PrimitiveSignature::Secp256k1(
            sig,
        )));
        let mut out = Vec::new();
        if sponsored {
            signed.encode_for_fee_payer_service(&mut out);
        } else {
            signed.encode_2718(&mut out);
        }
        out
    }

    #[test]
    fn a_client_paid_transaction_verifies_and_reports_sender_and_transfers() {
        let charge = charge(serde_json::json!({
            "splits": [{ "amount": "50000", "recipient": format!("{PLATFORM:#x}") }]
        }));
        let raw = sign(base_tx(
            vec![
                transfer_call(PLATFORM, 50_000, None),
                transfer_call(MERCHANT, 950_000, Some(bound_memo())),
            ],
            false,
        ));
        let verified = verify_transaction(&charge, Some(C), &raw, Some(NOW + 300), NOW).unwrap();
        assert_eq!(verified.sender, payer().address());
        assert_eq!(verified.signature_kind, SignatureKind::Secp256k1);
        assert_eq!(verified.transfers[0].recipient, MERCHANT);
        assert_eq!(verified.transfers[1].amount, U256::from(50_000));
        assert_eq!(verified.tx_hash, *verified.signed.hash());
        assert!(!verified.fee_payer);
    }

    #[test]
    fn the_zero_byte_placeholder_decodes_to_the_same_transaction() {
        let tx = base_tx(
            vec![transfer_call(MERCHANT, 1_000_000, Some(bound_memo()))],
            true,
        );
        let raw = sign(tx.clone());
        let normalized = normalize_placeholder(&raw).unwrap().expect("rewritten");
        let signed = decode(&raw).unwrap();
        assert_eq!(signed.tx(), &tx);
        assert_eq!(signed.encoded_2718(), normalized);
        assert!(has_placeholder(&signed));
        // Already-normalized bytes decode unchanged.
        assert!(normalize_placeholder(&normalized).unwrap().is_none());
        let verified = verify_transaction(
            &charge(serde_json::json!({ "feePayer": true })),
            Some(C),
            &raw,
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(verified.sender, payer().address());
        assert!(verified.fee_payer);
    }

    #[test]
    fn mismatches_are_refused() {
        let plain = charge(serde_json::json!({}));
        let good = || vec![transfer_call(MERCHANT, 1_000_000, Some(bound_memo()))];
        let check = |tx: TempoTransaction, charge: &Charge, expires: Option<u64>| {
            verify_transaction(charge, Some(C), &sign(tx), expires, NOW)
        };
        let mut other_chain = base_tx(good(), false);
        other_chain.chain_id = 4217;
        assert!(matches!(
            check(other_chain, &plain, None),
            Err(TempoError::ChainIdMismatch { .. })
        ));
        assert!(matches!(
            check(base_tx(good(), false), &plain, Some(NOW + 30)),
            Err(TempoError::ValidBeforeAfterExpiry { .. })
        ));
        let mut expired = base_tx(good(), false);
        expired.valid_before = NonZeroU64::new(NOW);
        assert!(matches!(
            check(expired, &plain, None),
            Err(TempoError::TransactionExpired { .. })
        ));
        let mut no_deadline = base_tx(good(), false);
        no_deadline.valid_before = None;
        assert_eq!(
            check(no_deadline, &plain, Some(NOW + 300)).unwrap_err(),
            TempoError::MissingValidBefore
        );
        assert!(matches!(
            check(
                base_tx(
                    vec![transfer_call(MERCHANT, 999_999, Some(bound_memo()))],
                    false
                ),
                &plain,
                None
            ),
            Err(TempoError::TransferNotFound { .. })
        ));
        assert_eq!(
            check(
                base_tx(vec![transfer_call(MERCHANT, 1_000_000, None)], false),
                &plain,
                None
            )
            .unwrap_err(),
            TempoError::MemoNotBound
        );
        // Wrong fee mode either way.
        assert_eq!(
            check(base_tx(good(), true), &plain, None).unwrap_err(),
            TempoError::ClientMustPayFees
        );
        let sponsored = charge(serde_json::json!({ "feePayer": true }));
        assert!(matches!(
            check(base_tx(good(), false), &sponsored, None),
            Err(TempoError::FeePayerPlaceholder(_))
        ));
        // A sponsored transaction may not carry anything but the payment.
        let mut extra = good();
        extra.push(Call {
            to: TxKind::Call(Address::repeat_byte(0x99)),
            value: U256::ZERO,
            input: Bytes::new(),
        });
        assert!(matches!(
            check(base_tx(extra.clone(), true), &sponsored, None),
            Err(TempoError::ExtraCalls { .. })
        ));
        // A client-paid one may.
        assert!(check(base_tx(extra, false), &plain, None).is_ok());
        // Push-only requests refuse transaction credentials.
        let push_only = charge(serde_json::json!({ "supportedModes": ["push"] }));
        assert!(matches!(
            check(base_tx(good(), false), &push_only, None),
            Err(TempoError::ModeNotAllowed { .. })
        ));
    }

    #[test]
    fn garbage_is_a_decode_error_that_does_not_quote_the_bytes() {
        for raw in [
            &b""[..],
            &[0x02, 0xc0],
            &[0x76, 0xc0],
            &[0x76, 0xab, 0xcd, 0xef],
        ] {
            let err = verify_transaction(&charge(serde_json::json!({})), None, raw, None, NOW)
                .unwrap_err();
            assert!(matches!(err, TempoError::Decode(_)), "{err:?}");
            assert!(!err.to_string().contains("abcdef"), "{err}");
        }
        assert!(payload_bytes("abcd").is_err());
        assert!(payload_bytes("0xzz").is_err());
    }
}
