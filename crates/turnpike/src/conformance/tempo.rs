//! The `tempo.*` operations of the conformance adapter, over `turnpike_rails::tempo`.
//!
//! | op | input | value |
//! |---|---|---|
//! | `tempo.receipt.verify` | `{credential (type "hash"), receipt}` | `{status:"success", reference}` |
//! | `tempo.transaction.verify` | `{credential (type "transaction"), receipt}` | `{status:"success", reference}` |
//! | `tempo.proof.typed_data` | `{chainId, challengeId, realm}` | EIP-712 typed data (domain MPP v2) |
//! | `tempo.fee_payer.cosign` | `TempoFeePayerCosignInput` | `TempoFeePayerCosignOutput` |
//!
//! Every failure is `verification_error` (the only error type `operations.json` declares for a
//! tempo op).
//!
//! `tempo.transaction.verify` is the pull-mode check *after* broadcast: the vectors' `signature`
//! is a placeholder, not a decodable transaction, and the receipt is what the broadcast returned.
//! It checks that the request allows pull mode and that the receipt's logs satisfy the charge
//! with the challenge-bound memo; decoding and verifying the signed transaction before broadcast
//! is `turnpike_rails::tempo::verify_transaction` (unit-tested in `turnpike-rails`). The
//! reference is the receipt's `transactionHash` as given.
//!
//! `tempo.fee_payer.cosign` plays both sides: it builds the described transaction, signs it as
//! the client (`payerPrivateKey`) for a sponsor, then runs the server's policy, verification and
//! co-signing (`feePayerPrivateKey`, `feeToken`) and reports the decoded result. `"max"` is
//! `U256::MAX` and `"now+N"` is N seconds after the adapter's clock.

use std::num::NonZeroU64;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy::eips::eip2930::{AccessList, AccessListItem};
use alloy::primitives::{Address, B256, Bytes, Log, LogData, TxKind, U256};
use alloy::signers::local::PrivateKeySigner;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use turnpike_protocol::ChallengeEcho;
use turnpike_rails::tempo::tempo_primitives::TempoTransaction;
use turnpike_rails::tempo::tempo_primitives::transaction::Call;
use turnpike_rails::tempo::{
    self, ChallengeRef, ChargeRequest, ProofVersion, SponsorPolicy, SubmissionMode,
};

use super::{OpError, read_input};

const VERIFICATION_ERROR: &str = "verification_error";

fn fail(message: impl std::fmt::Display) -> OpError {
    OpError::new(VERIFICATION_ERROR, message)
}

fn now_unix() -> Result<u64, OpError> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| fail("system clock is before 1970"))
}

/// A challenge as the tempo inputs carry it (`request` decoded).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeInput {
    id: String,
    realm: String,
    method: String,
    intent: String,
    request: Map<String, Value>,
    expires: Option<String>,
    description: Option<String>,
    digest: Option<String>,
    opaque: Option<String>,
}

impl ChallengeInput {
    fn check_method(&self) -> Result<(), OpError> {
        if self.method != "tempo" || self.intent != "charge" {
            return Err(fail(format!(
                "challenge is {}/{}, not tempo/charge",
                self.method, self.intent
            )));
        }
        Ok(())
    }

    /// `expires` as Unix seconds.
    fn expires_unix(&self) -> Result<Option<u64>, OpError> {
        let echo = ChallengeEcho {
            id: self.id.clone(),
            realm: self.realm.clone(),
            method: self.method.clone(),
            intent: self.intent.clone(),
            request: String::new(),
            description: self.description.clone(),
            digest: self.digest.clone(),
            expires: self.expires.clone(),
            opaque: self.opaque.clone(),
            header: None,
        };
        Ok(echo
            .expires_at()
            .map_err(fail)?
            .map(|t| u64::try_from(t.timestamp()).unwrap_or(0)))
    }

    fn binding(&self) -> ChallengeRef<'_> {
        ChallengeRef {
            id: &self.id,
            realm: &self.realm,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialInput {
    challenge: ChallengeInput,
    payload: Map<String, Value>,
    #[serde(rename = "source")]
    _source: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptVerifyInput {
    credential: CredentialInput,
    receipt: Map<String, Value>,
}

/// The receipt members the check reads (JSON-RPC `eth_getTransactionReceipt` shape).
struct ReceiptFixture {
    transaction_hash: String,
    success: bool,
    logs: Vec<Log>,
}

fn hex_bytes(what: &str, value: Option<&Value>) -> Result<Vec<u8>, OpError> {
    value
        .and_then(Value::as_str)
        .and_then(|s| s.strip_prefix("0x"))
        .and_then(|h| alloy::hex::decode(h).ok())
        .ok_or_else(|| fail(format!("receipt {what} is not 0x-prefixed hex")))
}

fn read_receipt(receipt: &Map<String, Value>) -> Result<ReceiptFixture, OpError> {
    let transaction_hash = receipt
        .get("transactionHash")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| fail("receipt has no transactionHash"))?
        .to_owned();
    let success = match receipt.get("status") {
        Some(Value::String(s)) => s == "0x1" || s == "success",
        Some(Value::Number(n)) => n.as_u64() == Some(1),
        Some(Value::Bool(b)) => *b,
        _ => false,
    };
    let mut logs = Vec::new();
    for entry in receipt
        .get("logs")
        .and_then(Value::as_array)
        .ok_or_else(|| fail("receipt has no logs array"))?
    {
        let address = hex_bytes("log address", entry.get("address"))?;
        if address.len() != 20 {
            return Err(fail("receipt log address is not 20 bytes"));
        }
        let mut topics = Vec::new();
        for topic in entry
            .get("topics")
            .and_then(Value::as_array)
            .ok_or_else(|| fail("receipt log has no topics"))?
        {
            let topic = hex_bytes("log topic", Some(topic))?;
            if topic.len() != 32 {
                return Err(fail("receipt log topic is not 32 bytes"));
            }
            topics.push(B256::from_slice(&topic));
        }
        let data = hex_bytes("log data", entry.get("data"))?;
        let data = LogData::new(topics, Bytes::from(data))
            .ok_or_else(|| fail("receipt log has more than four topics"))?;
        logs.push(Log {
            address: Address::from_slice(&address),
            data,
        });
    }
    Ok(ReceiptFixture {
        transaction_hash,
        success,
        logs,
    })
}

fn payload_type(payload: &Map<String, Value>) -> Option<&str> {
    payload.get("type").and_then(Value::as_str)
}

fn charge_of(challenge: &ChallengeInput) -> Result<tempo::Charge, OpError> {
    ChargeRequest::from_json(Value::Object(challenge.request.clone()))
        .and_then(|r| r.validate())
        .map_err(fail)
}

fn success(reference: String) -> Value {
    json!({ "status": "success", "reference": reference })
}

/// `tempo.receipt.verify`: push mode.
pub(super) fn receipt_verify(input: Value) -> Result<Value, OpError> {
    let input: ReceiptVerifyInput = read_input(input, VERIFICATION_ERROR)?;
    let challenge = &input.credential.challenge;
    challenge.check_method()?;
    let payload = &input.credential.payload;
    if payload_type(payload) != Some("hash") {
        return Err(fail("credential payload type is not `hash`"));
    }
    let credential_hash = payload
        .get("hash")
        .and_then(Value::as_str)
        .and_then(|h| h.parse::<B256>().ok())
        .filter(|_| payload["hash"].as_str().is_some_and(|h| h.len() == 66))
        .ok_or_else(|| fail("credential hash is not a 0x-prefixed 32-byte hex value"))?;
    let charge = charge_of(challenge)?;
    let receipt = read_receipt(&input.receipt)?;
    let receipt_hash = receipt
        .transaction_hash
        .parse::<B256>()
        .map_err(|_| fail("receipt transactionHash is not a 32-byte hex value"))?;
    tempo::verify_hash_receipt(
        &charge,
        Some(challenge.binding()),
        credential_hash,
        receipt_hash,
        receipt.success,
        &receipt.logs,
    )
    .map_err(fail)?;
    Ok(success(receipt.transaction_hash))
}

/// `tempo.transaction.verify`: pull mode, after broadcast (module docs).
pub(super) fn transaction_verify(input: Value) -> Result<Value, OpError> {
    let input: ReceiptVerifyInput = read_input(input, VERIFICATION_ERROR)?;
    let challenge = &input.credential.challenge;
    challenge.check_method()?;
    let payload = &input.credential.payload;
    if payload_type(payload) != Some("transaction") {
        return Err(fail("credential payload type is not `transaction`"));
    }
    if !payload.get("signature").is_some_and(Value::is_string) {
        return Err(fail("credential payload has no signature"));
    }
    let charge = charge_of(challenge)?;
    charge.check_mode(SubmissionMode::Pull).map_err(fail)?;
    let receipt = read_receipt(&input.receipt)?;
    tempo::verify_receipt_logs(
        &charge,
        Some(challenge.binding()),
        receipt.success,
        &receipt.logs,
    )
    .map_err(fail)?;
    Ok(success(receipt.transaction_hash))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProofInput {
    chain_id: u64,
    challenge_id: String,
    realm: String,
}

/// `tempo.proof.typed_data`.
pub(super) fn proof_typed_data(input: Value) -> Result<Value, OpError> {
    let input: ProofInput = read_input(input, VERIFICATION_ERROR)?;
    Ok(tempo::proof::typed_data(
        ProofVersion::V2,
        input.chain_id,
        &input.challenge_id,
        &input.realm,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CosignInput {
    payer_private_key: String,
    fee_payer_private_key: String,
    fee_token: String,
    challenge: Option<ChallengeInput>,
    request: Map<String, Value>,
    transaction: TransactionInput,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TransactionInput {
    chain_id: Value,
    max_priority_fee_per_gas: Value,
    max_fee_per_gas: Value,
    gas_limit: Value,
    calls: Vec<CallInput>,
    access_list: Vec<Value>,
    nonce_key: Value,
    nonce: Value,
    valid_before: Value,
    fee_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallInput {
    to: String,
    value: Value,
    data: String,
}

/// A `UintValue`: an integer, a decimal string, `"max"` or `"now+N"`.
fn uint(what: &str, value: &Value, now: u64) -> Result<U256, OpError> {
    let bad = || fail(format!("transaction {what} is not a uint value"));
    match value {
        Value::Number(n) => n.as_u64().map(U256::from).ok_or_else(bad),
        Value::String(s) if s == "max" => Ok(U256::MAX),
        Value::String(s) => {
            if let Some(offset) = s.strip_prefix("now+") {
                let offset: u64 = offset.parse().map_err(|_| bad())?;
                return now.checked_add(offset).map(U256::from).ok_or_else(bad);
            }
            U256::from_str_radix(s, 10).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

fn narrow<T: TryFrom<U256>>(what: &str, value: U256) -> Result<T, OpError> {
    T::try_from(value).map_err(|_| fail(format!("transaction {what} is out of range")))
}

fn address(what: &str, s: &str) -> Result<Address, OpError> {
    s.parse::<Address>()
        .map_err(|_| fail(format!("{what} is not an address")))
}

fn private_key(what: &str, s: &str) -> Result<PrivateKeySigner, OpError> {
    s.parse::<PrivateKeySigner>()
        .map_err(|_| fail(format!("{what} is not a secp256k1 private key")))
}

/// An access-list entry: `[address, [keys]]` or `{address, storageKeys}`.
fn access_list_item(entry: &Value) -> Result<AccessListItem, OpError> {
    let bad = || fail("transaction accessList entry is malformed");
    let (addr, keys) = match entry {
        Value::Array(pair) if pair.len() == 2 => (&pair[0], &pair[1]),
        Value::Object(o) => (
            o.get("address").ok_or_else(bad)?,
            o.get("storageKeys").ok_or_else(bad)?,
        ),
        _ => return Err(bad()),
    };
    let address = address("accessList address", addr.as_str().ok_or_else(bad)?)?;
    let storage_keys = keys
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|k| {
            k.as_str()
                .and_then(|k| k.parse::<B256>().ok())
                .ok_or_else(bad)
        })
        .collect::<Result<_, _>>()?;
    Ok(AccessListItem {
        address,
        storage_keys,
    })
}

fn build_transaction(input: &TransactionInput, now: u64) -> Result<TempoTransaction, OpError> {
    let calls = input
        .calls
        .iter()
        .map(|call| {
            let data = call
                .data
                .strip_prefix("0x")
                .and_then(|h| alloy::hex::decode(h).ok())
                .ok_or_else(|| fail("call data is not 0x-prefixed hex"))?;
            Ok(Call {
                to: TxKind::Call(address("call to", &call.to)?),
                value: uint("call value", &call.value, now)?,
                input: data.into(),
            })
        })
        .collect::<Result<Vec<_>, OpError>>()?;
    let access_list = AccessList(
        input
            .access_list
            .iter()
            .map(access_list_item)
            .collect::<Result<_, _>>()?,
    );
    let valid_before: u64 = narrow(
        "validBefore",
        uint("validBefore", &input.valid_before, now)?,
    )?;
    Ok(TempoTransaction {
        chain_id: narrow("chainId", uint("chainId", &input.chain_id, now)?)?,
        max_priority_fee_per_gas: narrow(
            "maxPriorityFeePerGas",
            uint("maxPriorityFeePerGas", &input.max_priority_fee_per_gas, now)?,
        )?,
        max_fee_per_gas: narrow(
            "maxFeePerGas",
            uint("maxFeePerGas", &input.max_fee_per_gas, now)?,
        )?,
        gas_limit: narrow("gasLimit", uint("gasLimit", &input.gas_limit, now)?)?,
        calls,
        access_list,
        nonce_key: uint("nonceKey", &input.nonce_key, now)?,
        nonce: narrow("nonce", uint("nonce", &input.nonce, now)?)?,
        fee_token: input
            .fee_token
            .as_deref()
            .map(|t| address("transaction feeToken", t))
            .transpose()?,
        fee_payer_signature: None,
        valid_before: NonZeroU64::new(valid_before),
        valid_after: None,
        key_authorization: None,
        tempo_authorization_list: vec![],
    })
}

/// `tempo.fee_payer.cosign`.
pub(super) fn fee_payer_cosign(input: Value) -> Result<Value, OpError> {
    let input: CosignInput = read_input(input, VERIFICATION_ERROR)?;
    let now = now_unix()?;
    let payer = private_key("payerPrivateKey", &input.payer_private_key)?;
    let sponsor = private_key("feePayerPrivateKey", &input.fee_payer_private_key)?;
    let fee_token = address("feeToken", &input.fee_token)?;
    let charge = ChargeRequest::from_json(Value::Object(input.request.clone()))
        .and_then(|r| r.validate())
        .map_err(fail)?;
    let (binding, expires) = match &input.challenge {
        Some(challenge) => {
            challenge.check_method()?;
            (Some(challenge.binding()), challenge.expires_unix()?)
        }
        None => (None, None),
    };
    let tx = build_transaction(&input.transaction, now)?;
    let client_bytes = tempo::sign_for_sponsor(tx, &payer).map_err(fail)?;
    let policy = SponsorPolicy::for_chain(charge.chain_id);
    let cosigned = tempo::cosign_fee_payer(
        &charge,
        binding,
        &client_bytes,
        expires,
        now,
        fee_token,
        &policy,
        &sponsor,
    )
    .map_err(fail)?;
    // Report what the broadcast bytes actually hold.
    let decoded = tempo::transaction::decode(&cosigned.bytes).map_err(fail)?;
    let tx = decoded.tx();
    let fee_token = tx
        .fee_token
        .ok_or_else(|| fail("co-signed transaction has no fee token"))?;
    let fee_payer_signature_present = tx
        .fee_payer_signature
        .is_some_and(|sig| !sig.r().is_zero() && !sig.s().is_zero());
    Ok(json!({
        "type": format!("0x{:02x}", turnpike_rails::tempo::tempo_primitives::transaction::TEMPO_TX_TYPE_ID),
        "feeToken": format!("{fee_token:#x}"),
        "feePayerSignaturePresent": fee_payer_signature_present,
        "accessListLength": tx.access_list.len(),
        "callCount": tx.calls.len(),
    }))
}
