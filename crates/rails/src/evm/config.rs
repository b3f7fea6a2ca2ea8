//! A tenant's `evm` rail configuration (`PUT /v1/rails/evm`): the chain, where payments go, which
//! tokens stand for which ledger currency, and the hot wallet that submits `authorization`
//! credentials. The hot wallet's key is a secret: it is set here but never read back.

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use serde::{Deserialize, Serialize};

use super::CredentialType;

/// Most tokens one configuration may list.
pub const TOKENS_MAX: usize = 16;
/// Most confirmations a tenant may ask for before a payment counts.
pub const CONFIRMATIONS_MAX: u32 = 64;
/// The gas floor when none is configured: 0.001 of the chain's native coin.
pub const MIN_GAS_WEI_DEFAULT: u128 = 1_000_000_000_000_000;

/// Uniswap's Permit2, deployed at the same address on every chain (spec: the default
/// `permit2Address`).
pub const PERMIT2_CANONICAL: Address =
    alloy::primitives::address!("0x000000000022D473030F116dDEE9F6B43aC78BA3");

/// One ERC-20 token accepted on the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenConfig {
    /// The ledger currency it settles (a price in this currency is paid with this token, one
    /// minor unit per token base unit).
    pub currency: String,
    /// The token contract (challenge `currency`).
    #[serde(serialize_with = "checksummed")]
    pub address: Address,
    /// Its `decimals()` (challenge `methodDetails.decimals`).
    pub decimals: u8,
    /// Its EIP-712 domain `name` (for EIP-3009 `authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its EIP-712 domain `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl TokenConfig {
    /// True when the token can take EIP-3009 authorizations (it has an EIP-712 domain).
    pub fn supports_authorization(&self) -> bool {
        self.name.is_some() && self.version.is_some()
    }
}

/// The public part of the configuration, as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvmSettings {
    /// EIP-155 chain id (challenge `methodDetails.chainId`).
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
    pub tokens: Vec<TokenConfig>,
    /// Credential types offered, in order of preference (`methodDetails.credentialTypes`);
    /// default: `authorization` (when a hot wallet is set), `transaction`, `hash`. `permit2` is
    /// offered only when listed here (the chain must have Permit2 and the payer must have
    /// approved it), and needs the hot wallet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_types: Option<Vec<CredentialType>>,
    /// Below this native balance (wei, decimal string) the hot wallet stops offering
    /// `authorization` and the low-gas alert is raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_gas_wei: Option<String>,
    /// The largest price (base units, decimal string) for which `hash` is offered. A `hash`
    /// credential is not bound to its challenge (whoever saw the transaction can present it
    /// first; the spec: "limit `hash` to low values"). Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_max_amount: Option<String>,
    /// The Permit2 contract (`methodDetails.permit2Address`); default: the canonical
    /// deployment at [`PERMIT2_CANONICAL`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "checksummed_opt"
    )]
    pub permit2_address: Option<Address>,
    /// The hot wallet's address (derived from its key; read only).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "checksummed_opt"
    )]
    pub hot_wallet_address: Option<Address>,
}

/// Addresses are written EIP-55 checksummed (as in challenges).
pub(crate) fn checksummed<S: serde::Serializer>(
    address: &Address,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&address.to_checksum(None))
}

pub(crate) fn checksummed_opt<S: serde::Serializer>(
    address: &Option<Address>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match address {
        Some(address) => checksummed(address, s),
        None => s.serialize_none(),
    }
}

fn one() -> u32 {
    1
}

/// A validated configuration with its hot wallet.
#[derive(Debug, Clone)]
pub struct EvmConfig {
    /// Public settings.
    pub settings: EvmSettings,
    /// The gas floor.
    pub min_gas_wei: U256,
    /// The hot wallet that submits `authorization` transfers (it pays their gas).
    pub hot_wallet: Option<PrivateKeySigner>,
    /// `hashMaxAmount`, parsed.
    pub hash_max_amount: Option<u128>,
}

/// Why a configuration is refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl EvmConfig {
    /// Validate `settings` and parse the hot wallet key (`0x` + 64 hex digits).
    pub fn new(
        mut settings: EvmSettings,
        hot_wallet_key: Option<&str>,
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
        for (i, token) in settings.tokens.iter().enumerate() {
            if token.decimals > 36 {
                return Err(ConfigError(format!(
                    "`tokens[{i}].decimals` must be at most 36"
                )));
            }
            if token.name.is_some() != token.version.is_some() {
                return Err(ConfigError(format!(
                    "`tokens[{i}]` needs both `name` and `version` (its EIP-712 domain), or neither"
                )));
            }
        }
        let min_gas_wei = match settings.min_gas_wei.as_deref() {
            None => U256::from(MIN_GAS_WEI_DEFAULT),
            Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                U256::from_str_radix(s, 10)
                    .map_err(|_| ConfigError("`minGasWei` is too large".into()))?
            }
            Some(_) => return err("`minGasWei` must be a decimal string of wei"),
        };
        let hot_wallet =
            match hot_wallet_key {
                None => None,
                Some(key) => Some(key.parse::<PrivateKeySigner>().map_err(|_| {
                    ConfigError("`hotWalletKey` must be 0x and 64 hex digits".into())
                })?),
            };
        settings.hot_wallet_address = hot_wallet.as_ref().map(PrivateKeySigner::address);
        if settings.permit2_address == Some(Address::ZERO) {
            return err("`permit2Address` must not be the zero address");
        }
        if let Some(types) = &settings.credential_types {
            if types.is_empty() {
                return err("`credentialTypes` must not be empty");
            }
            for (i, t) in types.iter().enumerate() {
                if types[..i].contains(t) {
                    return Err(ConfigError(format!("`credentialTypes` lists `{t}` twice")));
                }
            }
            if types.contains(&CredentialType::Permit2) && hot_wallet.is_none() {
                return err(
                    "`credentialTypes`: `permit2` needs `hotWalletKey` (it submits the transfer, pays its gas and is the permit's spender)",
                );
            }
            if types.contains(&CredentialType::Authorization) && hot_wallet.is_none() {
                return err(
                    "`credentialTypes`: `authorization` needs `hotWalletKey` (it submits the transfer and pays its gas)",
                );
            }
        }
        let hash_max_amount = match settings.hash_max_amount.as_deref() {
            None => None,
            Some(s) if !s.is_empty() && s.len() <= 39 && s.bytes().all(|b| b.is_ascii_digit()) => {
                Some(
                    s.parse::<u128>()
                        .map_err(|_| ConfigError("`hashMaxAmount` is too large".into()))?,
                )
            }
            Some(_) => return err("`hashMaxAmount` must be a decimal string of base units"),
        };
        Ok(Self {
            settings,
            min_gas_wei,
            hot_wallet,
            hash_max_amount,
        })
    }

    /// The token that settles `currency`.
    pub fn token(&self, currency: &str) -> Option<&TokenConfig> {
        self.settings.tokens.iter().find(|t| t.currency == currency)
    }

    /// The Permit2 contract permits are verified against and submitted to.
    pub fn permit2(&self) -> Address {
        self.settings.permit2_address.unwrap_or(PERMIT2_CANONICAL)
    }

    /// The credential types offered for `amount` base units of `token`, in preference order
    /// (`hash` only up to `hashMaxAmount`).
    pub fn credential_types_for(&self, token: &TokenConfig, amount: u128) -> Vec<CredentialType> {
        let mut types = self.credential_types(token);
        if self.hash_max_amount.is_some_and(|max| amount > max) {
            types.retain(|t| *t != CredentialType::Hash);
        }
        types
    }

    /// The credential types offered for `token`, in preference order.
    pub fn credential_types(&self, token: &TokenConfig) -> Vec<CredentialType> {
        let wanted = self.settings.credential_types.clone().unwrap_or_else(|| {
            vec![
                CredentialType::Authorization,
                CredentialType::Transaction,
                CredentialType::Hash,
            ]
        });
        wanted
            .into_iter()
            .filter(|t| match t {
                CredentialType::Authorization => {
                    self.hot_wallet.is_some() && token.supports_authorization()
                }
                CredentialType::Permit2 => self.hot_wallet.is_some(),
                CredentialType::Transaction | CredentialType::Hash => true,
            })
            .collect()
    }
}

/// The checks every on-chain rail's settings share (`evm`, `tempo`): a chain id, an http(s) RPC
/// URL, a non-zero recipient, 1 to [`CONFIRMATIONS_MAX`] confirmations, and 1 to [`TOKENS_MAX`]
/// tokens, each a lowercase ledger currency listed once at a non-zero address. Messages name the
/// field.
pub(crate) fn check_chain_settings<'a>(
    chain_id: u64,
    rpc_url: &str,
    recipient: Address,
    confirmations: u32,
    tokens: impl ExactSizeIterator<Item = (&'a str, Address)>,
) -> Result<(), ConfigError> {
    let err = |s: &str| Err(ConfigError(s.to_owned()));
    if chain_id == 0 {
        return err("`chainId` must be a positive EIP-155 chain id");
    }
    match url_scheme(rpc_url) {
        Some("http" | "https") => {}
        _ => return err("`rpcUrl` must be an http or https URL"),
    }
    if recipient == Address::ZERO {
        return err("`recipient` must not be the zero address");
    }
    if confirmations == 0 || confirmations > CONFIRMATIONS_MAX {
        return Err(ConfigError(format!(
            "`confirmations` must be between 1 and {CONFIRMATIONS_MAX}"
        )));
    }
    if tokens.len() == 0 || tokens.len() > TOKENS_MAX {
        return Err(ConfigError(format!(
            "`tokens` must list 1 to {TOKENS_MAX} tokens"
        )));
    }
    let mut seen: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, (currency, address)) in tokens.enumerate() {
        if !valid_currency(currency) {
            return Err(ConfigError(format!(
                "`tokens[{i}].currency` must be a lowercase currency code (a-z, 0-9, 1 to 16)"
            )));
        }
        if seen.contains(&currency) {
            return Err(ConfigError(format!(
                "`tokens[{i}].currency` `{currency}` is listed twice"
            )));
        }
        seen.push(currency);
        if address == Address::ZERO {
            return Err(ConfigError(format!(
                "`tokens[{i}].address` must not be zero"
            )));
        }
    }
    Ok(())
}

pub(crate) fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    (!rest.is_empty() && !rest.starts_with('/')).then_some(scheme)
}

pub(crate) fn valid_currency(code: &str) -> bool {
    (1..=16).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}
