//! The `evm` charge method (`draft-evm-charge-00`, digest §10): ERC-20 payments on any EVM chain.
//!
//! Offline first: the credential's signature and every field are checked against the challenge
//! before the chain is touched. Then the single-use token of the spec's replay table is claimed
//! by the caller, the transfer is prepared (signed, its hash known), recorded, submitted, and
//! counted only after a successful receipt with the configured confirmations.

pub(crate) mod config;
mod payer;
mod payload;
mod settle;

use std::fmt;

use alloy::primitives::{Address, B256, keccak256};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use config::{ConfigError, EvmConfig, EvmSettings, PERMIT2_CANONICAL, TokenConfig};
pub use payer::{
    AuthorizationTerms, EvmCharge, WalletToken, authorization_payload, parse_charge,
    sign_authorization, validate_tokens,
};
pub use payload::{
    Authorization, PERMIT2_WITNESS_TYPE, Permit2Transfer, VerifiedEvm, VerifiedKind,
    verify_credential,
};
pub use settle::{EvmRail, HotWallets};

/// The method name.
pub const METHOD: &str = "evm";

/// `methodDetails.credentialTypes` values (spec §"Credential types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialType {
    /// Permit2 `permitWitnessTransferFrom`, submitted by the server's hot wallet (the spender).
    Permit2,
    /// EIP-3009 `transferWithAuthorization`, submitted by the server's hot wallet.
    Authorization,
    /// A signed EIP-1559 `transfer` transaction, broadcast by the server.
    Transaction,
    /// The hash of a `transfer` the client broadcast itself.
    Hash,
}

impl CredentialType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permit2 => "permit2",
            Self::Authorization => "authorization",
            Self::Transaction => "transaction",
            Self::Hash => "hash",
        }
    }
}

impl fmt::Display for CredentialType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `challengeHash = keccak256(challenge.id ‖ challenge.realm)` (spec §"Challenge hash"): the
/// EIP-3009 nonce that binds an `authorization` to its challenge.
pub fn challenge_hash(challenge_id: &str, realm: &str) -> B256 {
    let mut bytes = Vec::with_capacity(challenge_id.len() + realm.len());
    bytes.extend_from_slice(challenge_id.as_bytes());
    bytes.extend_from_slice(realm.as_bytes());
    keccak256(bytes)
}

/// The `did:pkh` source of an address on a chain.
pub fn did_pkh(chain_id: u64, address: Address) -> String {
    format!("did:pkh:eip155:{chain_id}:{address}")
}

/// The challenge `request` of an `evm` charge for `amount` of `token` (spec §"Request").
/// Addresses are EIP-55 checksummed; `chainId` is always present.
pub fn charge_request(
    config: &EvmConfig,
    token: &TokenConfig,
    amount: &str,
    description: Option<&str>,
    types: &[CredentialType],
) -> Map<String, Value> {
    let mut details = Map::new();
    details.insert("chainId".into(), Value::from(config.settings.chain_id));
    details.insert(
        "credentialTypes".into(),
        Value::Array(types.iter().map(|t| Value::from(t.as_str())).collect()),
    );
    details.insert("decimals".into(), Value::from(token.decimals));
    if types.contains(&CredentialType::Permit2) {
        details.insert(
            "permit2Address".into(),
            Value::from(config.permit2().to_checksum(None)),
        );
        // Permit2 binds the permit to its spender, the account that submits it: the hot
        // wallet. The spec has no field for it (digest §10 [GAP]); Turnpike names it here.
        if let Some(spender) = config.settings.hot_wallet_address {
            details.insert("spender".into(), Value::from(spender.to_checksum(None)));
        }
    }
    let mut request = Map::new();
    request.insert("amount".into(), Value::from(amount));
    request.insert(
        "currency".into(),
        Value::from(token.address.to_checksum(None)),
    );
    request.insert(
        "recipient".into(),
        Value::from(config.settings.recipient.to_checksum(None)),
    );
    if let Some(description) = description {
        request.insert("description".into(), Value::from(description));
    }
    request.insert("methodDetails".into(), Value::Object(details));
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_hash_matches_the_digest_vector() {
        // Digest §16.3: id `aB3cDeF4gHiJkLmN`, realm `api.example.com`.
        assert_eq!(
            challenge_hash("aB3cDeF4gHiJkLmN", "api.example.com").to_string(),
            "0x899e3a8fe6830644e150b972d4ba1fce69bcdf0bf9ea7f13d57cada71c6f281d"
        );
    }
}
