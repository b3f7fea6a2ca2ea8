//! A tenant's `tempo` rail configuration (`PUT /v1/rails/tempo`): the Tempo chain, where payments
//! go, which TIP-20 tokens stand for which ledger currency, the submission modes offered, and an
//! optional fee-payer key that sponsors the payers' fees (`feePayer: true`). The fee-payer key is
//! a secret: it is set here but never read back.

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use serde::{Deserialize, Serialize};

use super::SubmissionMode;
use crate::evm::ConfigError;
use crate::evm::config::{check_chain_settings, checksummed, checksummed_opt};

pub use crate::evm::config::{CONFIRMATIONS_MAX, TOKENS_MAX};
/// The fee payer's floor when none is configured: 1.000000 of the fee token.
pub const MIN_FEE_BALANCE_DEFAULT: u64 = 1_000_000;

/// One TIP-20 token accepted on the chain (TIP-20 tokens have 6 decimals).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TempoToken {
    /// The ledger currency it settles (one minor unit per token base unit).
    pub currency: String,
    /// The TIP-20 address (challenge `currency`).
    #[serde(serialize_with = "checksummed")]
    pub address: Address,
}

/// The public part of the configuration, as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TempoSettings {
    /// The Tempo chain id (challenge `methodDetails.chainId`): 4217 mainnet, 42431 Moderato.
    pub chain_id: u64,
    /// JSON-RPC endpoint (http or https).
    pub rpc_url: String,
    /// Where payments go (challenge `recipient`).
    #[serde(serialize_with = "checksummed")]
    pub recipient: Address,
    /// Blocks that must include and follow a payment's transaction, at least 1.
    #[serde(default = "one")]
    pub confirmations: u32,
    /// Accepted tokens.
    pub tokens: Vec<TempoToken>,
    /// Submission modes offered (`methodDetails.supportedModes`); default both (`pull` only
    /// with a fee payer: a sponsored request refuses `hash` credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_modes: Option<Vec<SubmissionMode>>,
    /// The USD TIP-20 the fee payer pays fees in; default: the first of `tokens`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "checksummed_opt"
    )]
    pub fee_token: Option<Address>,
    /// Below this balance of the fee token (base units, decimal string) the fee payer stops
    /// sponsoring: `tempo` is not offered and the low-balance alert is raised (the spec: a
    /// sponsoring server MUST reject new requests when its fee balance runs low).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_fee_balance: Option<String>,
    /// The fee payer's address (derived from `feePayerKey`; read only).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "checksummed_opt"
    )]
    pub fee_payer_address: Option<Address>,
}

fn one() -> u32 {
    1
}

/// A validated configuration with its fee payer.
#[derive(Debug, Clone)]
pub struct TempoConfig {
    /// Public settings.
    pub settings: TempoSettings,
    /// The key that co-signs sponsored transactions (`feePayer: true`) and pays their fees.
    pub fee_payer: Option<PrivateKeySigner>,
    /// The fee payer's floor, in fee-token base units.
    pub min_fee_balance: U256,
}

impl TempoConfig {
    /// Validate `settings` and parse the fee-payer key (`0x` + 64 hex digits).
    pub fn new(
        mut settings: TempoSettings,
        fee_payer_key: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let err = |s: &str| Err(ConfigError(s.to_owned()));
        check_chain_settings(
            settings.chain_id,
            &settings.rpc_url,
            settings.recipient,
            settings.confirmations,
            settings
                .tokens
                .iter()
                .map(|t| (t.currency.as_str(), t.address)),
        )?;
        if settings.fee_token == Some(Address::ZERO) {
            return err("`feeToken` must not be the zero address");
        }
        let fee_payer =
            match fee_payer_key {
                None => None,
                Some(key) => Some(key.parse::<PrivateKeySigner>().map_err(|_| {
                    ConfigError("`feePayerKey` must be 0x and 64 hex digits".into())
                })?),
            };
        if settings.fee_token.is_some() && fee_payer.is_none() {
            return err("`feeToken` needs `feePayerKey` (only a fee payer pays fees)");
        }
        let min_fee_balance = match settings.min_fee_balance.as_deref() {
            None => U256::from(MIN_FEE_BALANCE_DEFAULT),
            Some(_) if fee_payer.is_none() => {
                return err("`minFeeBalance` needs `feePayerKey` (only a fee payer pays fees)");
            }
            Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                U256::from_str_radix(s, 10)
                    .map_err(|_| ConfigError("`minFeeBalance` is too large".into()))?
            }
            Some(_) => return err("`minFeeBalance` must be a decimal string of base units"),
        };
        settings.fee_payer_address = fee_payer.as_ref().map(PrivateKeySigner::address);
        if let Some(modes) = &settings.supported_modes {
            if modes.is_empty() {
                return err("`supportedModes` must list `pull` and/or `push`");
            }
            if modes.len() == 2 && modes[0] == modes[1] {
                return err("`supportedModes` lists a mode twice");
            }
            if fee_payer.is_some() && modes.contains(&SubmissionMode::Push) {
                return err(
                    "`supportedModes`: `push` cannot be offered with `feePayerKey` (a sponsored request refuses `hash` credentials)",
                );
            }
        }
        Ok(Self {
            settings,
            fee_payer,
            min_fee_balance,
        })
    }

    /// The token that settles `currency`.
    pub fn token(&self, currency: &str) -> Option<&TempoToken> {
        self.settings.tokens.iter().find(|t| t.currency == currency)
    }

    /// The TIP-20 the fee payer pays fees in: `feeToken`, else the first token.
    pub fn fee_token(&self) -> Address {
        self.settings
            .fee_token
            .unwrap_or(self.settings.tokens[0].address)
    }

    /// The modes offered, `None` for both (the request then omits `supportedModes`).
    pub fn supported_modes(&self) -> Option<Vec<SubmissionMode>> {
        if self.fee_payer.is_some() {
            return Some(vec![SubmissionMode::Pull]);
        }
        self.settings.supported_modes.clone()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    fn settings(extra: serde_json::Value) -> TempoSettings {
        let mut body = json!({
            "chainId": 4217, "rpcUrl": "https://rpc.example", "recipient": format!("{:#x}", Address::repeat_byte(0x74)),
            "tokens": [{"currency": "usd", "address": "0x20c0000000000000000000000000000000000000"}],
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn a_fee_payer_offers_pull_only_and_defaults_its_fee_token_and_floor() {
        let plain = TempoConfig::new(settings(json!({})), None).unwrap();
        assert_eq!(plain.supported_modes(), None);
        assert!(plain.settings.fee_payer_address.is_none());
        let sponsored = TempoConfig::new(settings(json!({})), Some(KEY)).unwrap();
        assert_eq!(
            sponsored.supported_modes(),
            Some(vec![SubmissionMode::Pull])
        );
        assert_eq!(sponsored.fee_token(), sponsored.settings.tokens[0].address);
        assert_eq!(
            sponsored.min_fee_balance,
            U256::from(MIN_FEE_BALANCE_DEFAULT)
        );
        assert!(sponsored.settings.fee_payer_address.is_some());
        // The derived address is public; the key is not in the settings.
        let public = serde_json::to_string(&sponsored.settings).unwrap();
        assert!(!public.contains(&KEY[2..]), "{public}");
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let cases = [
            (json!({"chainId": 0}), None, "chainId"),
            (json!({"rpcUrl": "ws://x"}), None, "rpcUrl"),
            (json!({"confirmations": 65}), None, "confirmations"),
            (json!({"tokens": []}), None, "tokens"),
            (json!({"supportedModes": []}), None, "supportedModes"),
            (
                json!({"supportedModes": ["push", "push"]}),
                None,
                "supportedModes",
            ),
            (
                json!({"supportedModes": ["push"]}),
                Some(KEY),
                "supportedModes",
            ),
            (
                json!({"feeToken": "0x20c0000000000000000000000000000000000001"}),
                None,
                "feeToken",
            ),
            (json!({"minFeeBalance": "5"}), None, "minFeeBalance"),
            (json!({"minFeeBalance": "-5"}), Some(KEY), "minFeeBalance"),
            (json!({}), Some("0x1234"), "feePayerKey"),
        ];
        for (extra, key, field) in cases {
            let err = TempoConfig::new(settings(extra.clone()), key).unwrap_err();
            assert!(err.0.contains(field), "{extra}: {err}");
            assert!(!err.0.contains("1234"), "{err}");
        }
    }
}
