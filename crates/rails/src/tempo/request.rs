//! The tempo charge `request` (spec "Request Schema"): its JSON shape ([`ChargeRequest`], serde,
//! camelCase) and its validated, typed form ([`Charge`]).

use std::str::FromStr;

use alloy::primitives::{Address, B256, U256};
use serde::{Deserialize, Serialize};

use super::matching::Transfer;
use super::{DEFAULT_CHAIN_ID, SPLITS_MAX, TempoError};

/// The request as it travels in the challenge (JSON, camelCase). Unknown members are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeRequest {
    /// Base units, a base-10 integer string; `"0"` means proof mode.
    pub amount: String,
    /// The TIP-20 token address.
    pub currency: String,
    pub recipient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method_details: Option<MethodDetails>,
}

/// `methodDetails`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodDetails {
    /// Default [`DEFAULT_CHAIN_ID`] (42431, Moderato), per the spec; always emit it (digest §14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee_payer: Option<bool>,
    /// A `bytes32` hex value for the primary transfer's `transferWithMemo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splits: Option<Vec<Split>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_modes: Option<Vec<SubmissionMode>>,
}

/// One `methodDetails.splits[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Split {
    pub amount: String,
    pub recipient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
}

/// A non-zero submission mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubmissionMode {
    /// `type="transaction"`: the server broadcasts.
    Pull,
    /// `type="hash"`: the client broadcast.
    Push,
}

/// A validated request: parsed amounts, 20-byte addresses, the chain id with its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub amount: U256,
    pub currency: Address,
    pub recipient: Address,
    pub chain_id: u64,
    pub fee_payer: bool,
    pub memo: Option<B256>,
    /// The split transfers, in request order (order is not significant for verification).
    pub splits: Vec<Transfer>,
    /// `None` when absent: both modes allowed.
    pub supported_modes: Option<Vec<SubmissionMode>>,
}

impl ChargeRequest {
    /// Decode a request object (e.g. the challenge's decoded `request`).
    pub fn from_json(value: serde_json::Value) -> Result<Self, TempoError> {
        serde_json::from_value(value).map_err(|err| TempoError::InvalidRequest(err.to_string()))
    }

    /// Check every rule of the spec's request schema and return the typed form.
    pub fn validate(&self) -> Result<Charge, TempoError> {
        let amount = parse_amount("amount", &self.amount)?;
        let currency = parse_address("currency", &self.currency)?;
        let recipient = parse_address("recipient", &self.recipient)?;
        if currency.is_zero() {
            return Err(invalid("`currency` is the zero address"));
        }
        if recipient.is_zero() {
            return Err(invalid("`recipient` is the zero address"));
        }
        let details = self.method_details.clone().unwrap_or_default();
        let chain_id = details.chain_id.unwrap_or(DEFAULT_CHAIN_ID);
        let memo = details
            .memo
            .as_deref()
            .map(|m| parse_memo("methodDetails.memo", m))
            .transpose()?;
        let mut splits = Vec::new();
        if let Some(entries) = &details.splits {
            if entries.is_empty() {
                return Err(invalid("`methodDetails.splits` is present but empty"));
            }
            if entries.len() > SPLITS_MAX {
                return Err(TempoError::InvalidRequest(format!(
                    "`methodDetails.splits` has {} entries; at most {SPLITS_MAX} are supported",
                    entries.len()
                )));
            }
            let mut total = U256::ZERO;
            for (i, split) in entries.iter().enumerate() {
                let amount =
                    parse_amount(&format!("methodDetails.splits[{i}].amount"), &split.amount)?;
                if amount.is_zero() {
                    return Err(TempoError::InvalidRequest(format!(
                        "`methodDetails.splits[{i}].amount` must be greater than zero"
                    )));
                }
                let recipient = parse_address(
                    &format!("methodDetails.splits[{i}].recipient"),
                    &split.recipient,
                )?;
                if recipient.is_zero() {
                    return Err(TempoError::InvalidRequest(format!(
                        "`methodDetails.splits[{i}].recipient` is the zero address"
                    )));
                }
                let memo = split
                    .memo
                    .as_deref()
                    .map(|m| parse_memo(&format!("methodDetails.splits[{i}].memo"), m))
                    .transpose()?;
                total = total
                    .checked_add(amount)
                    .ok_or_else(|| invalid("`methodDetails.splits` amounts overflow 256 bits"))?;
                splits.push(Transfer {
                    recipient,
                    amount,
                    memo,
                });
            }
            if total >= amount {
                return Err(TempoError::SplitsTooLarge {
                    splits: total,
                    amount,
                });
            }
        }
        if let Some(modes) = &details.supported_modes
            && modes.is_empty()
        {
            return Err(invalid(
                "`methodDetails.supportedModes` must list `pull` and/or `push`",
            ));
        }
        Ok(Charge {
            amount,
            currency,
            recipient,
            chain_id,
            fee_payer: details.fee_payer.unwrap_or(false),
            memo,
            splits,
            supported_modes: details.supported_modes,
        })
    }
}

impl Charge {
    /// `amount == 0`: only a `proof` credential is acceptable.
    pub fn is_zero_amount(&self) -> bool {
        self.amount.is_zero()
    }

    /// What the primary recipient receives: `amount − Σ splits` (validation keeps it positive).
    pub fn primary_amount(&self) -> U256 {
        self.splits
            .iter()
            .fold(self.amount, |rest, split| rest.saturating_sub(split.amount))
    }

    /// Every transfer the payment must contain: the primary one first, then the splits.
    pub fn expected_transfers(&self) -> Vec<Transfer> {
        let mut out = Vec::with_capacity(1 + self.splits.len());
        out.push(Transfer {
            recipient: self.recipient,
            amount: self.primary_amount(),
            memo: self.memo,
        });
        out.extend(self.splits.iter().cloned());
        out
    }

    /// Is `mode` allowed? A missing `supportedModes` allows both.
    pub fn allows(&self, mode: SubmissionMode) -> bool {
        self.supported_modes
            .as_ref()
            .is_none_or(|modes| modes.contains(&mode))
    }

    /// Refuse a `transaction` (pull) or `hash` (push) credential where the request forbids it:
    /// a zero amount, `supportedModes` without the mode, or `hash` with `feePayer: true`.
    pub fn check_mode(&self, mode: SubmissionMode) -> Result<(), TempoError> {
        let credential = match mode {
            SubmissionMode::Pull => "transaction",
            SubmissionMode::Push => "hash",
        };
        if self.is_zero_amount() {
            return Err(TempoError::ModeNotAllowed {
                credential,
                reason: "a zero amount takes a proof credential",
            });
        }
        if !self.allows(mode) {
            return Err(TempoError::ModeNotAllowed {
                credential,
                reason: "`methodDetails.supportedModes` does not list it",
            });
        }
        if mode == SubmissionMode::Push && self.fee_payer {
            return Err(TempoError::ModeNotAllowed {
                credential,
                reason: "hash credentials are refused when `feePayer` is true",
            });
        }
        Ok(())
    }
}

fn invalid(message: &str) -> TempoError {
    TempoError::InvalidRequest(message.to_owned())
}

/// A base-10 integer string: digits only, no sign, point, exponent or whitespace, no leading
/// zero (other than `"0"`), at most 256 bits.
pub(crate) fn parse_amount(field: &str, s: &str) -> Result<U256, TempoError> {
    let well_formed =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !well_formed {
        return Err(TempoError::InvalidRequest(format!(
            "`{field}` must be a base-10 integer string without sign, leading zeros or spaces"
        )));
    }
    U256::from_str_radix(s, 10)
        .map_err(|_| TempoError::InvalidRequest(format!("`{field}` exceeds 256 bits")))
}

/// `0x` + 40 hex digits, any case (the EIP-55 checksum is not enforced: the spec compares
/// addresses as 20-byte values).
pub(crate) fn parse_address(field: &str, s: &str) -> Result<Address, TempoError> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"));
    match hex {
        Some(h) if h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Address::from_str(h).map_err(|_| bad_address(field))
        }
        _ => Err(bad_address(field)),
    }
}

fn bad_address(field: &str) -> TempoError {
    TempoError::InvalidRequest(format!(
        "`{field}` must be a 0x-prefixed 20-byte hex address"
    ))
}

/// `0x` + 64 hex digits.
pub(crate) fn parse_memo(field: &str, s: &str) -> Result<B256, TempoError> {
    let hex = s.strip_prefix("0x");
    match hex {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            B256::from_str(h).map_err(|_| bad_memo(field))
        }
        _ => Err(bad_memo(field)),
    }
}

fn bad_memo(field: &str) -> TempoError {
    TempoError::InvalidRequest(format!("`{field}` must be a 0x-prefixed bytes32 hex value"))
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{address, b256};
    use serde_json::json;

    use super::*;

    /// The spec's split example (digest §16.1, tempo/charge L276–305).
    fn spec_split_example() -> serde_json::Value {
        json!({
            "amount": "1000000",
            "currency": "0x20c0000000000000000000000000000000000000",
            "recipient": "0x742d35Cc6634C0532925a3b844Bc9e7595f8fE00",
            "methodDetails": {
                "chainId": 4217,
                "feePayer": true,
                "splits": [
                    { "amount": "50000", "recipient": "0xA1B2C3D4E5F6A1B2C3D4E5F6A1B2C3D4E5F6A1B2" },
                    {
                        "amount": "10000",
                        "memo": "0x00000000000000000000000000000000000000000000000000000000deadbeef",
                        "recipient": "0xC4D5E6F7A8B9C4D5E6F7A8B9C4D5E6F7A8B9C4D5"
                    }
                ]
            }
        })
    }

    #[test]
    fn spec_split_example_leaves_940000_to_the_primary_recipient() {
        let charge = ChargeRequest::from_json(spec_split_example())
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(charge.chain_id, 4217);
        assert!(charge.fee_payer);
        assert_eq!(charge.primary_amount(), U256::from(940_000));
        let expected = charge.expected_transfers();
        assert_eq!(expected.len(), 3);
        assert_eq!(
            expected[0].recipient,
            address!("742d35Cc6634C0532925a3b844Bc9e7595f8fE00")
        );
        assert_eq!(expected[0].amount, U256::from(940_000));
        assert_eq!(expected[1].amount, U256::from(50_000));
        assert_eq!(expected[2].amount, U256::from(10_000));
        assert_eq!(
            expected[2].memo,
            Some(b256!(
                "00000000000000000000000000000000000000000000000000000000deadbeef"
            ))
        );
    }

    #[test]
    fn chain_id_defaults_to_moderato_and_modes_to_both() {
        let charge = ChargeRequest::from_json(json!({
            "amount": "1", "currency": "0x20c0000000000000000000000000000000000000",
            "recipient": "0x742d35Cc6634C0532925a3b844Bc9e7595f8fE00"
        }))
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(charge.chain_id, 42431);
        assert!(charge.allows(SubmissionMode::Pull) && charge.allows(SubmissionMode::Push));
        assert!(!charge.fee_payer);
    }

    #[test]
    fn serializes_camel_case_and_round_trips() {
        let request = ChargeRequest::from_json(spec_split_example()).unwrap();
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(value["methodDetails"]["feePayer"], true);
        assert!(value.get("externalId").is_none());
        assert_eq!(ChargeRequest::from_json(value).unwrap(), request);
    }

    fn with_details(details: serde_json::Value, amount: &str) -> Result<Charge, TempoError> {
        ChargeRequest::from_json(json!({
            "amount": amount, "currency": "0x20c0000000000000000000000000000000000000",
            "recipient": "0x742d35Cc6634C0532925a3b844Bc9e7595f8fE00", "methodDetails": details
        }))?
        .validate()
    }

    #[test]
    fn splits_must_leave_a_remainder_and_be_positive() {
        let split = |amount: &str| json!({ "splits": [{ "amount": amount, "recipient": "0xA1B2C3D4E5F6A1B2C3D4E5F6A1B2C3D4E5F6A1B2" }] });
        assert!(with_details(split("99"), "100").is_ok());
        assert!(matches!(
            with_details(split("100"), "100"),
            Err(TempoError::SplitsTooLarge { .. })
        ));
        assert!(matches!(
            with_details(split("1"), "0"),
            Err(TempoError::SplitsTooLarge { .. })
        ));
        assert!(with_details(split("0"), "100").is_err());
        assert!(with_details(json!({ "splits": [] }), "100").is_err());
        let eleven: Vec<_> = (0..11)
            .map(|_| json!({ "amount": "1", "recipient": "0xA1B2C3D4E5F6A1B2C3D4E5F6A1B2C3D4E5F6A1B2" }))
            .collect();
        assert!(with_details(json!({ "splits": eleven }), "100").is_err());
    }

    #[test]
    fn malformed_fields_are_refused() {
        for amount in ["", "-1", "+1", "1.0", "1e3", " 1", "01", "0x10"] {
            assert!(with_details(json!({}), amount).is_err(), "{amount:?}");
        }
        assert!(with_details(json!({ "memo": "0xdeadbeef" }), "1").is_err());
        assert!(with_details(json!({ "supportedModes": [] }), "1").is_err());
        assert!(with_details(json!({ "supportedModes": ["pull", "stream"] }), "1").is_err());
        let bad_recipient = ChargeRequest::from_json(json!({
            "amount": "1", "currency": "0x20c0000000000000000000000000000000000000",
            "recipient": "0x742d35"
        }))
        .unwrap();
        assert!(bad_recipient.validate().is_err());
    }

    #[test]
    fn modes_and_fee_payer_gate_credential_types() {
        let pull_only = with_details(json!({ "supportedModes": ["pull"] }), "5").unwrap();
        assert!(pull_only.check_mode(SubmissionMode::Pull).is_ok());
        assert!(pull_only.check_mode(SubmissionMode::Push).is_err());
        let sponsored = with_details(json!({ "feePayer": true }), "5").unwrap();
        assert!(sponsored.check_mode(SubmissionMode::Push).is_err());
        let zero = with_details(json!({}), "0").unwrap();
        assert!(zero.check_mode(SubmissionMode::Pull).is_err());
    }
}
