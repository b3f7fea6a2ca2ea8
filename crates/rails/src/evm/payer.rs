//! The payer side of `evm` (`draft-evm-charge-00` §"Authorization Payload"): an organisation's
//! wallet answers an `evm` charge challenge with an EIP-3009 `transferWithAuthorization` signed
//! off-chain; the merchant's server submits it and pays the gas.
//!
//! What is signed is fixed by the challenge: `from` = the wallet, `to` = `recipient`, `value` =
//! `amount`, `validAfter` = 0, `validBefore` = the challenge's `expires`, `nonce` =
//! `challengeHash` (keccak256(id ‖ realm)), under the token's own EIP-712 domain. Signing is
//! deterministic (RFC 6979), so the same terms always give the same authorization.

use alloy::primitives::{Address, Bytes, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::Eip712Domain;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::ConfigError;
use super::payload::Authorization;
use super::settle::abi;
use super::{CredentialType, challenge_hash};

/// Most tokens one wallet may list.
pub const WALLET_TOKENS_MAX: usize = 16;
/// Longest EIP-712 domain `name` or `version` accepted, in bytes.
pub const DOMAIN_FIELD_LEN_MAX: usize = 128;
/// Most `splits` entries read from a challenge (the spec's limit is 10).
const SPLITS_MAX: usize = 10;

/// One token an organisation pays with (`PUT /v1/wallets/evm` `tokens[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WalletToken {
    /// EIP-155 chain id (challenge `methodDetails.chainId`).
    pub chain_id: u64,
    /// The ERC-20 / EIP-3009 token contract (challenge `currency`).
    #[serde(serialize_with = "checksummed")]
    pub address: Address,
    /// The ledger currency code the agents' policies and budgets use for it (e.g. `usdc`);
    /// one minor unit per token base unit.
    pub currency: String,
    /// The token's EIP-712 domain `name`.
    pub name: String,
    /// The token's EIP-712 domain `version`.
    pub version: String,
}

fn checksummed<S: serde::Serializer>(address: &Address, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&address.to_checksum(None))
}

impl WalletToken {
    /// The token's EIP-712 domain.
    pub fn domain(&self) -> Eip712Domain {
        Eip712Domain::new(
            Some(self.name.clone().into()),
            Some(self.version.clone().into()),
            Some(U256::from(self.chain_id)),
            Some(self.address),
            None,
        )
    }
}

/// Check a wallet's token list; the error names the field.
pub fn validate_tokens(tokens: &[WalletToken]) -> Result<(), ConfigError> {
    if tokens.is_empty() || tokens.len() > WALLET_TOKENS_MAX {
        return Err(ConfigError(format!(
            "`tokens` must list 1 to {WALLET_TOKENS_MAX} tokens"
        )));
    }
    for (i, token) in tokens.iter().enumerate() {
        if token.chain_id == 0 {
            return Err(ConfigError(format!(
                "`tokens[{i}].chainId` must be a positive EIP-155 chain id"
            )));
        }
        if token.address == Address::ZERO {
            return Err(ConfigError(format!(
                "`tokens[{i}].address` must not be zero"
            )));
        }
        if !super::config::valid_currency(&token.currency) {
            return Err(ConfigError(format!(
                "`tokens[{i}].currency` must be a lowercase currency code (a-z, 0-9, 1 to 16)"
            )));
        }
        for (field, value) in [("name", &token.name), ("version", &token.version)] {
            if value.is_empty()
                || value.len() > DOMAIN_FIELD_LEN_MAX
                || value.chars().any(char::is_control)
            {
                return Err(ConfigError(format!(
                    "`tokens[{i}].{field}` must be 1 to {DOMAIN_FIELD_LEN_MAX} bytes without control characters (the token's EIP-712 domain {field})"
                )));
            }
        }
        if tokens[..i]
            .iter()
            .any(|t| t.chain_id == token.chain_id && t.address == token.address)
        {
            return Err(ConfigError(format!(
                "`tokens[{i}]`: this token on chain {} is listed twice",
                token.chain_id
            )));
        }
    }
    Ok(())
}

/// An `evm` charge request as the payer reads it (spec §"Request Schema").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvmCharge {
    /// `amount`, base units (> 0).
    pub amount: u128,
    /// `currency`: the token contract.
    pub token: Address,
    /// `recipient`.
    pub recipient: Address,
    /// `methodDetails.chainId`.
    pub chain_id: u64,
}

/// Read a challenge `request` as an `evm` charge this payer can answer with an `authorization`;
/// the error says why not (it quotes no more than field names).
pub fn parse_charge(request: &Map<String, Value>) -> Result<EvmCharge, String> {
    let text = |name: &str| {
        request
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the evm challenge has no `{name}` string"))
    };
    let amount = text("amount")?;
    let amount =
        (!amount.is_empty() && amount.len() <= 39 && amount.bytes().all(|b| b.is_ascii_digit()))
            .then(|| amount.parse::<u128>().ok())
            .flatten()
            .filter(|a| *a > 0)
            .ok_or("the evm challenge's amount is not a positive integer of base units")?;
    let address = |name: &str| -> Result<Address, String> {
        text(name)?
            .parse::<Address>()
            .map_err(|_| format!("the evm challenge's `{name}` is not an address"))
    };
    let token = address("currency")?;
    let recipient = address("recipient")?;
    let details = request
        .get("methodDetails")
        .and_then(Value::as_object)
        .ok_or("the evm challenge has no `methodDetails`")?;
    let chain_id = details
        .get("chainId")
        .and_then(Value::as_u64)
        .filter(|c| *c > 0)
        .ok_or("the evm challenge has no valid `methodDetails.chainId`")?;
    if let Some(types) = details.get("credentialTypes") {
        let types = types
            .as_array()
            .ok_or("the evm challenge's `credentialTypes` is not a list")?;
        let wanted = CredentialType::Authorization.as_str();
        if !types.iter().any(|t| t.as_str() == Some(wanted)) {
            return Err(
                "the evm challenge does not accept `authorization` credentials (the only kind this payer signs)"
                    .into(),
            );
        }
    }
    match details.get("splits") {
        None | Some(Value::Null) => {}
        Some(Value::Array(splits)) if splits.is_empty() => {}
        Some(Value::Array(splits)) if splits.len() <= SPLITS_MAX => {
            return Err("the evm challenge has splits, which an authorization cannot pay".into());
        }
        Some(_) => return Err("the evm challenge's `splits` is invalid".into()),
    }
    Ok(EvmCharge {
        amount,
        token,
        recipient,
        chain_id,
    })
}

/// What one authorization pays.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizationTerms<'a> {
    /// The token (its chain and EIP-712 domain).
    pub token: &'a WalletToken,
    /// `to`: the challenge's recipient.
    pub to: Address,
    /// `value`: the challenge's amount, base units.
    pub value: u128,
    /// `validBefore`, Unix seconds: the challenge's expiry.
    pub valid_before_s: u64,
    /// The challenge `id`.
    pub challenge_id: &'a str,
    /// The challenge `realm`.
    pub realm: &'a str,
}

/// Sign the EIP-3009 `TransferWithAuthorization` the terms describe (alloy's EIP-712 hashing).
pub fn sign_authorization(
    signer: &PrivateKeySigner,
    terms: &AuthorizationTerms<'_>,
) -> Result<Authorization, alloy::signers::Error> {
    let message = abi::TransferWithAuthorization {
        from: signer.address(),
        to: terms.to,
        value: U256::from(terms.value),
        validAfter: U256::ZERO,
        validBefore: U256::from(terms.valid_before_s),
        nonce: challenge_hash(terms.challenge_id, terms.realm),
    };
    let signature = signer.sign_typed_data_sync(&message, &terms.token.domain())?;
    Ok(Authorization {
        from: message.from,
        to: message.to,
        value: message.value,
        valid_after: message.validAfter,
        valid_before: message.validBefore,
        nonce: message.nonce,
        signature,
    })
}

/// The credential `payload` of `type="authorization"` (spec §"Authorization Payload").
pub fn authorization_payload(auth: &Authorization) -> Map<String, Value> {
    let mut payload = Map::new();
    let mut put = |k: &str, v: String| {
        payload.insert(k.to_owned(), Value::String(v));
    };
    put("type", CredentialType::Authorization.as_str().to_owned());
    put("from", auth.from.to_checksum(None));
    put("to", auth.to.to_checksum(None));
    put("value", auth.value.to_string());
    put("validAfter", auth.valid_after.to_string());
    put("validBefore", auth.valid_before.to_string());
    put("nonce", auth.nonce.to_string());
    put(
        "signature",
        Bytes::from(auth.signature.as_bytes()).to_string(),
    );
    payload
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;
    use turnpike_protocol::challenge::ChallengeParams;
    use turnpike_protocol::{BindingSecret, Challenge, Credential};

    use super::*;
    use crate::evm::{EvmConfig, EvmSettings, TokenConfig, VerifiedKind, verify_credential};
    use crate::{ChallengeFacts, PriceTerms};

    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    fn token() -> WalletToken {
        WalletToken {
            chain_id: 31_337,
            address: "0x5FbDB2315678afecb367f032d93F642f64180aa3"
                .parse()
                .unwrap(),
            currency: "usdc".into(),
            name: "Turnpike Test USD".into(),
            version: "1".into(),
        }
    }

    fn merchant(recipient: Address) -> EvmConfig {
        let t = token();
        EvmConfig::new(
            EvmSettings {
                chain_id: t.chain_id,
                rpc_url: "http://127.0.0.1:8545".into(),
                recipient,
                confirmations: 1,
                tokens: vec![TokenConfig {
                    currency: t.currency,
                    address: t.address,
                    decimals: 6,
                    name: Some(t.name),
                    version: Some(t.version),
                }],
                credential_types: None,
                min_gas_wei: None,
                hash_max_amount: None,
                permit2_address: None,
                hot_wallet_address: None,
            },
            Some("0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"),
        )
        .unwrap()
    }

    fn challenge(recipient: Address, expires: &str) -> Challenge {
        let request = json!({
            "amount": "250000",
            "currency": token().address.to_checksum(None),
            "recipient": recipient.to_checksum(None),
            "methodDetails": {"chainId": 31_337, "credentialTypes": ["authorization", "hash"]},
        });
        let secret = BindingSecret::new(&[9u8; 32]).unwrap();
        Challenge::issue_with_secret(
            &secret,
            ChallengeParams {
                realm: "shop.example".into(),
                method: "evm".into(),
                intent: "charge".into(),
                request: request.as_object().unwrap().clone(),
                expires: Some(expires.into()),
                digest: None,
                description: None,
                opaque: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn a_signed_authorization_verifies_where_the_merchant_checks_it() {
        let signer: PrivateKeySigner = KEY.parse().unwrap();
        let recipient: Address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
            .parse()
            .unwrap();
        let c = challenge(recipient, "2030-01-01T00:00:00Z");
        let charge = parse_charge(c.request_json()).unwrap();
        assert_eq!(charge.amount, 250_000);
        assert_eq!(charge.recipient, recipient);
        let t = token();
        let expires_s = c.expires_at().unwrap().timestamp();
        let terms = AuthorizationTerms {
            token: &t,
            to: charge.recipient,
            value: charge.amount,
            valid_before_s: u64::try_from(expires_s).unwrap(),
            challenge_id: &c.id,
            realm: &c.realm,
        };
        let auth = sign_authorization(&signer, &terms).unwrap();
        assert_eq!(
            auth,
            sign_authorization(&signer, &terms).unwrap(),
            "deterministic"
        );
        assert_eq!(auth.nonce, challenge_hash(&c.id, &c.realm));
        let credential = Credential {
            challenge: c.echo(),
            source: Some(json!(crate::evm::did_pkh(t.chain_id, signer.address()))),
            payload: authorization_payload(&auth),
        };
        // Round trip through the wire form, then the merchant's offline verification.
        let credential = Credential::parse(&credential.to_header_value()).unwrap();
        let verified = verify_credential(
            &merchant(recipient),
            ChallengeFacts {
                id: &c.id,
                realm: &c.realm,
                expires_at_s: expires_s,
            },
            &PriceTerms {
                amount: "250000",
                amount_minor: 250_000,
                currency: "usdc",
                description: None,
            },
            &credential,
            expires_s - 60,
        )
        .unwrap();
        assert_eq!(verified.payer, Some(signer.address()));
        assert!(matches!(verified.kind, VerifiedKind::Authorization(_)));
    }

    #[test]
    fn charges_the_payer_cannot_sign_are_refused_with_a_reason() {
        let recipient = Address::repeat_byte(7);
        let base = challenge(recipient, "2030-01-01T00:00:00Z")
            .request_json()
            .clone();
        let with = |f: &dyn Fn(&mut Map<String, Value>)| {
            let mut r = base.clone();
            f(&mut r);
            parse_charge(&r)
        };
        assert!(with(&|_| {}).is_ok());
        let no_types = with(&|r| {
            r["methodDetails"]["credentialTypes"] = json!(["transaction"]);
        });
        assert!(no_types.unwrap_err().contains("authorization"));
        let zero = with(&|r| {
            r["amount"] = json!("0");
        });
        assert!(zero.unwrap_err().contains("amount"));
        let splits = with(&|r| {
            r["methodDetails"]["splits"] = json!([{"recipient": recipient, "amount": "1"}]);
        });
        assert!(splits.unwrap_err().contains("splits"));
        let bad_address = with(&|r| {
            r["recipient"] = json!("0x12");
        });
        assert!(bad_address.unwrap_err().contains("recipient"));
        let no_chain = with(&|r| {
            r["methodDetails"] = json!({});
        });
        assert!(no_chain.unwrap_err().contains("chainId"));
    }

    #[test]
    fn token_lists_are_validated_by_field() {
        assert!(validate_tokens(&[token()]).is_ok());
        assert!(validate_tokens(&[]).unwrap_err().0.contains("`tokens`"));
        let mut t = token();
        t.currency = "USDC".into();
        assert!(validate_tokens(&[t]).unwrap_err().0.contains("currency"));
        let mut t = token();
        t.name = String::new();
        assert!(validate_tokens(&[t]).unwrap_err().0.contains("name"));
        assert!(
            validate_tokens(&[token(), token()])
                .unwrap_err()
                .0
                .contains("twice")
        );
    }
}
