//! Offline verification of `evm` credential payloads (spec §"Verification"): every field and
//! signature is checked against the challenge before anything touches the chain.

use alloy::consensus::transaction::SignerRecoverable;
use alloy::consensus::{Transaction, TxEnvelope};
use alloy::eips::eip2718::Decodable2718;
use alloy::primitives::{Address, B256, Bytes, Signature, TxKind, U256};
use alloy::sol_types::{Eip712Domain, SolCall, SolStruct};
use serde_json::{Map, Value};
use turnpike_protocol::Credential;

use super::settle::abi;
use super::{CredentialType, EvmConfig, challenge_hash, did_pkh};
use crate::{ChallengeFacts, PriceTerms, Rejection};

/// Longest hex payload accepted for a signed transaction (bytes): a `transfer` is ~110.
pub const RAW_TX_LEN_MAX: usize = 4_096;

/// An EIP-3009 authorization as signed by the payer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// `from`: the payer, who signed.
    pub from: Address,
    /// `to`: the recipient.
    pub to: Address,
    /// `value`: base units.
    pub value: U256,
    /// `validAfter`, Unix seconds.
    pub valid_after: U256,
    /// `validBefore`, Unix seconds.
    pub valid_before: U256,
    /// `nonce`: the challenge hash.
    pub nonce: B256,
    /// The payer's signature.
    pub signature: Signature,
}

/// Permit2's witness type string for [`abi::PaymentWitness`]: what follows
/// `PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,`
/// in the signed type. Canonical EIP-712 (digest §10 [ERRATA]: the spec's string has a space after
/// the comma, which no EIP-712 signer produces).
pub const PERMIT2_WITNESS_TYPE: &str = "PaymentWitness witness)PaymentWitness(bytes32 challengeHash,string externalId)TokenPermissions(address token,uint256 amount)";

/// A Permit2 `permitWitnessTransferFrom` signed by the payer (one transfer: Turnpike offers no
/// splits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit2Transfer {
    /// The Permit2 contract.
    pub permit2: Address,
    /// The payer, who signed (recovered; `source` must agree when present).
    pub owner: Address,
    /// `permit.permitted[0].amount`: the most the spender may move.
    pub permitted: U256,
    /// `permit.nonce` (Permit2's unordered nonce).
    pub nonce: U256,
    /// `permit.deadline`, Unix seconds.
    pub deadline: U256,
    /// `witness.challengeHash`.
    pub challenge_hash: B256,
    /// `witness.externalId` (empty: Turnpike's challenges carry none).
    pub external_id: String,
    /// The payer's signature, as sent (65 bytes, or 64 in EIP-2098 form).
    pub signature: Bytes,
}

/// How a verified credential pays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifiedKind {
    /// Permit2: the hot wallet (the permit's spender) submits `permitWitnessTransferFrom`.
    Permit2(Permit2Transfer),
    /// EIP-3009: the hot wallet submits `transferWithAuthorization`.
    Authorization(Authorization),
    /// A signed `transfer` the server broadcasts.
    Transaction {
        /// The signed EIP-2718 bytes.
        raw: Bytes,
        /// Its hash.
        hash: B256,
        /// The recovered sender.
        sender: Address,
    },
    /// A transaction the client broadcast: its receipt is checked on the chain.
    Hash {
        /// The transaction hash.
        hash: B256,
    },
}

/// A credential that passed every offline check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEvm {
    /// How it pays.
    pub kind: VerifiedKind,
    /// The chain.
    pub chain_id: u64,
    /// The token.
    pub token: Address,
    /// Who must receive the tokens.
    pub recipient: Address,
    /// How many base units.
    pub amount: U256,
    /// The payer, when known offline.
    pub payer: Option<Address>,
}

/// Check `credential` (an `evm` charge) against its challenge and price.
pub fn verify_credential(
    config: &EvmConfig,
    challenge: ChallengeFacts<'_>,
    price: &PriceTerms<'_>,
    credential: &Credential,
    now_s: i64,
) -> Result<VerifiedEvm, Rejection> {
    let token = config.token(price.currency).ok_or_else(|| {
        Rejection::failed(format!(
            "this merchant no longer accepts `{}` on the evm rail",
            price.currency
        ))
    })?;
    let payload = &credential.payload;
    let kind = match payload.get("type").and_then(Value::as_str) {
        Some("permit2") => CredentialType::Permit2,
        Some("authorization") => CredentialType::Authorization,
        Some("transaction") => CredentialType::Transaction,
        Some("hash") => CredentialType::Hash,
        Some(_) => {
            return Err(Rejection::malformed(
                "payload `type` is not an evm credential type",
            ));
        }
        None => return Err(Rejection::malformed("payload has no `type`")),
    };
    if !config
        .credential_types_for(token, price.amount_minor)
        .contains(&kind)
    {
        return Err(Rejection::failed(format!(
            "credential type `{kind}` is not accepted by this challenge"
        )));
    }
    let chain_id = config.settings.chain_id;
    let recipient = config.settings.recipient;
    let amount = U256::from(price.amount_minor);
    let base = |kind, payer| VerifiedEvm {
        kind,
        chain_id,
        token: token.address,
        recipient,
        amount,
        payer,
    };
    match kind {
        CredentialType::Authorization => {
            let auth = parse_authorization(payload)?;
            if auth.to != recipient {
                return Err(Rejection::failed(
                    "the authorization pays another recipient",
                ));
            }
            if auth.value != amount {
                return Err(Rejection::failed(
                    "the authorization's value differs from the requested amount",
                ));
            }
            if auth.nonce != challenge_hash(challenge.id, challenge.realm) {
                return Err(Rejection::failed(
                    "the authorization's nonce is not this challenge's hash",
                ));
            }
            let now = U256::from(now_s.max(0));
            if auth.valid_before <= now {
                return Err(Rejection::expired(
                    "the authorization's validBefore has passed",
                ));
            }
            if auth.valid_after >= now {
                return Err(Rejection::failed(
                    "the authorization is not valid yet (validAfter)",
                ));
            }
            let (Some(name), Some(version)) = (&token.name, &token.version) else {
                return Err(Rejection::failed("the token takes no authorizations"));
            };
            let domain = Eip712Domain::new(
                Some(name.clone().into()),
                Some(version.clone().into()),
                Some(U256::from(chain_id)),
                Some(token.address),
                None,
            );
            let message = abi::TransferWithAuthorization {
                from: auth.from,
                to: auth.to,
                value: auth.value,
                validAfter: auth.valid_after,
                validBefore: auth.valid_before,
                nonce: auth.nonce,
            };
            let hash = message.eip712_signing_hash(&domain);
            match auth.signature.recover_address_from_prehash(&hash) {
                Ok(signer) if signer == auth.from => {}
                _ => {
                    return Err(Rejection::failed(
                        "the authorization's signature is not `from`'s",
                    ));
                }
            }
            check_source(credential, chain_id, auth.from)?;
            let from = auth.from;
            Ok(base(VerifiedKind::Authorization(auth), Some(from)))
        }
        CredentialType::Transaction => {
            let raw = hex_field(payload, "signature", RAW_TX_LEN_MAX)?;
            let envelope = TxEnvelope::decode_2718(&mut raw.as_slice())
                .map_err(|_| Rejection::malformed("`signature` is not a signed transaction"))?;
            let TxEnvelope::Eip1559(signed) = &envelope else {
                return Err(Rejection::failed(
                    "the transaction must be EIP-1559 (type 0x02)",
                ));
            };
            let tx = signed.tx();
            if tx.chain_id != chain_id {
                return Err(Rejection::failed("the transaction is for another chain"));
            }
            if tx.to != TxKind::Call(token.address) {
                return Err(Rejection::failed("the transaction does not call the token"));
            }
            if !tx.value().is_zero() {
                return Err(Rejection::failed(
                    "the transaction must not send the native coin",
                ));
            }
            let call = abi::transferCall::abi_decode(tx.input())
                .map_err(|_| Rejection::failed("the transaction is not an ERC-20 transfer"))?;
            if call.to != recipient {
                return Err(Rejection::failed("the transfer pays another recipient"));
            }
            if call.amount != amount {
                return Err(Rejection::failed(
                    "the transfer's amount differs from the requested amount",
                ));
            }
            let sender = envelope
                .recover_signer()
                .map_err(|_| Rejection::failed("the transaction's signature does not recover"))?;
            check_source(credential, chain_id, sender)?;
            let hash = *signed.hash();
            Ok(base(
                VerifiedKind::Transaction {
                    raw: raw.into(),
                    hash,
                    sender,
                },
                Some(sender),
            ))
        }
        CredentialType::Hash => {
            let hash = hex_field(payload, "hash", 32)?;
            let hash = B256::try_from(hash.as_slice())
                .map_err(|_| Rejection::malformed("`hash` must be 32 bytes"))?;
            Ok(base(VerifiedKind::Hash { hash }, None))
        }
        CredentialType::Permit2 => {
            let spender = config
                .hot_wallet
                .as_ref()
                .map(|w| w.address())
                .ok_or_else(|| Rejection::failed("permit2 is not accepted by this merchant"))?;
            let permit = parse_permit2(payload, config.permit2())?;
            let (permitted_token, requested_to, requested_amount) = permit.1;
            let permit = permit.0;
            if permitted_token != token.address {
                return Err(Rejection::failed("the permit is for another token"));
            }
            if requested_to != recipient {
                return Err(Rejection::failed("the permit pays another recipient"));
            }
            if requested_amount != amount {
                return Err(Rejection::failed(
                    "the permit's requestedAmount differs from the requested amount",
                ));
            }
            if permit.permitted < amount {
                return Err(Rejection::failed(
                    "the permit allows less than the requested amount",
                ));
            }
            if permit.challenge_hash != challenge_hash(challenge.id, challenge.realm) {
                return Err(Rejection::failed(
                    "the permit's witness is not this challenge's hash",
                ));
            }
            if !permit.external_id.is_empty() {
                return Err(Rejection::failed(
                    "the permit's witness names an externalId this challenge does not have",
                ));
            }
            if permit.deadline <= U256::from(now_s.max(0)) {
                return Err(Rejection::expired("the permit's deadline has passed"));
            }
            let domain = Eip712Domain::new(
                Some("Permit2".into()),
                None,
                Some(U256::from(chain_id)),
                Some(permit.permit2),
                None,
            );
            let message = abi::PermitWitnessTransferFrom {
                permitted: abi::TokenPermissions {
                    token: token.address,
                    amount: permit.permitted,
                },
                spender,
                nonce: permit.nonce,
                deadline: permit.deadline,
                witness: abi::PaymentWitness {
                    challengeHash: permit.challenge_hash,
                    externalId: permit.external_id.clone(),
                },
            };
            let hash = message.eip712_signing_hash(&domain);
            let signature = match permit.signature.len() {
                65 => Signature::from_raw(&permit.signature).ok(),
                64 => Some(Signature::from_erc2098(&permit.signature)),
                _ => None,
            }
            .ok_or_else(|| Rejection::malformed("`signature` must be a 65-byte signature"))?;
            let owner = signature
                .recover_address_from_prehash(&hash)
                .map_err(|_| Rejection::failed("the permit's signature does not recover"))?;
            // The spec: the signature recovers to `source`. Without a `source` the recovered
            // owner is taken; a signature over other terms recovers to an account that holds
            // no approval, and the simulation refuses it before anything is sent.
            check_source(credential, chain_id, owner)?;
            Ok(base(
                VerifiedKind::Permit2(Permit2Transfer { owner, ..permit }),
                Some(owner),
            ))
        }
    }
}

/// Most `permitted` entries accepted (Turnpike offers no splits: one).
const PERMITTED_MAX: usize = 1;

/// The permit and its single transfer: (permit, (token, to, requestedAmount)). The owner is
/// filled in by the caller once the signature is recovered.
fn parse_permit2(
    payload: &Map<String, Value>,
    permit2: Address,
) -> Result<(Permit2Transfer, (Address, Address, U256)), Rejection> {
    let object = |map: &Map<String, Value>, name: &str| -> Result<Map<String, Value>, Rejection> {
        match map.get(name) {
            Some(Value::Object(o)) => Ok(o.clone()),
            _ => Err(Rejection::malformed(format!(
                "payload has no `{name}` object"
            ))),
        }
    };
    let list = |map: &Map<String, Value>, name: &str| -> Result<Vec<Value>, Rejection> {
        match map.get(name) {
            Some(Value::Array(a)) => Ok(a.clone()),
            _ => Err(Rejection::malformed(format!("`{name}` must be an array"))),
        }
    };
    let permit = object(payload, "permit")?;
    let witness = object(payload, "witness")?;
    let permitted = list(&permit, "permitted")?;
    let details = list(payload, "transferDetails")?;
    if permitted.is_empty() || permitted.len() != details.len() {
        return Err(Rejection::malformed(
            "`permit.permitted` and `transferDetails` must have the same, non-zero length",
        ));
    }
    if permitted.len() > PERMITTED_MAX {
        return Err(Rejection::failed(
            "this challenge has no splits: the permit must hold exactly one transfer",
        ));
    }
    let (Value::Object(first), Value::Object(detail)) = (&permitted[0], &details[0]) else {
        return Err(Rejection::malformed(
            "`permit.permitted[0]` and `transferDetails[0]` must be objects",
        ));
    };
    let address = |map: &Map<String, Value>, name: &str| -> Result<Address, Rejection> {
        str_field(map, name)?
            .parse::<Address>()
            .map_err(|_| Rejection::malformed(format!("`{name}` is not an address")))
    };
    let challenge_hash = hex_field(&witness, "challengeHash", 32)?;
    let challenge_hash = B256::try_from(challenge_hash.as_slice())
        .map_err(|_| Rejection::malformed("`witness.challengeHash` must be 32 bytes"))?;
    let external_id = match witness.get("externalId") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= 256 => s.clone(),
        Some(_) => {
            return Err(Rejection::malformed(
                "`witness.externalId` must be a string of at most 256 bytes",
            ));
        }
    };
    let signature = hex_field(payload, "signature", 65)?;
    Ok((
        Permit2Transfer {
            permit2,
            owner: Address::ZERO,
            permitted: decimal(first, "amount")?,
            nonce: decimal(&permit, "nonce")?,
            deadline: decimal(&permit, "deadline")?,
            challenge_hash,
            external_id,
            signature: signature.into(),
        },
        (
            address(first, "token")?,
            address(detail, "to")?,
            decimal(detail, "requestedAmount")?,
        ),
    ))
}

/// A non-negative integer field: a decimal string (or a JSON integer below 2^64).
fn decimal(payload: &Map<String, Value>, name: &str) -> Result<U256, Rejection> {
    let s = match payload.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        _ => {
            return Err(Rejection::malformed(format!(
                "`{name}` must be a decimal string"
            )));
        }
    };
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::malformed(format!(
            "`{name}` must be a decimal string"
        )));
    }
    U256::from_str_radix(&s, 10)
        .map_err(|_| Rejection::malformed(format!("`{name}` is out of range")))
}

fn parse_authorization(payload: &Map<String, Value>) -> Result<Authorization, Rejection> {
    let address = |name: &str| -> Result<Address, Rejection> {
        str_field(payload, name)?
            .parse::<Address>()
            .map_err(|_| Rejection::malformed(format!("`{name}` is not an address")))
    };
    let number = |name: &str| decimal(payload, name);
    let nonce = hex_field(payload, "nonce", 32)?;
    let nonce = B256::try_from(nonce.as_slice())
        .map_err(|_| Rejection::malformed("`nonce` must be 32 bytes"))?;
    let signature = hex_field(payload, "signature", 65)?;
    let signature = Signature::from_raw(&signature)
        .map_err(|_| Rejection::malformed("`signature` must be a 65-byte signature"))?;
    Ok(Authorization {
        from: address("from")?,
        to: address("to")?,
        value: number("value")?,
        valid_after: number("validAfter")?,
        valid_before: number("validBefore")?,
        nonce,
        signature,
    })
}

fn str_field<'a>(payload: &'a Map<String, Value>, name: &str) -> Result<&'a str, Rejection> {
    payload
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Rejection::malformed(format!("payload has no `{name}` string")))
}

/// A `0x` hex field of at most `len_max` bytes. The error never quotes the value.
fn hex_field(
    payload: &Map<String, Value>,
    name: &str,
    len_max: usize,
) -> Result<Vec<u8>, Rejection> {
    let text = str_field(payload, name)?;
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .ok_or_else(|| Rejection::malformed(format!("`{name}` must be 0x-prefixed hex")))?;
    if digits.len() > len_max * 2 {
        return Err(Rejection::malformed(format!("`{name}` is too long")));
    }
    alloy::hex::decode(digits)
        .map_err(|_| Rejection::malformed(format!("`{name}` must be 0x-prefixed hex")))
}

/// A `source`, when present, must name the payer (`did:pkh:eip155:<chainId>:<address>`).
fn check_source(credential: &Credential, chain_id: u64, payer: Address) -> Result<(), Rejection> {
    match credential.source.as_ref() {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(source)) if source.eq_ignore_ascii_case(&did_pkh(chain_id, payer)) => {
            Ok(())
        }
        Some(_) => Err(Rejection::failed(
            "the credential's source is not the payer",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permit2_witness_type_is_canonical_eip712() {
        // Permit2 hashes `stub ‖ witnessTypeString`; it must equal what an EIP-712 signer hashes.
        let stub = "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,";
        assert_eq!(
            abi::PermitWitnessTransferFrom::eip712_encode_type(),
            format!("{stub}{PERMIT2_WITNESS_TYPE}")
        );
        // The digest's canonical `PaymentWitness` type hash (§16.3).
        assert_eq!(
            abi::PaymentWitness::eip712_type_hash(&abi::PaymentWitness {
                challengeHash: B256::ZERO,
                externalId: String::new(),
            })
            .to_string(),
            "0xfc4067aba5a6e55362943059e330014e3a9c9548304913f01bd877bf13f68d30"
        );
    }
}
