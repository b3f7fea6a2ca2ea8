//! Payer wallets: an organisation's own `evm` wallet, with which its agents answer `evm` charge
//! challenges (`/v1/agent/pay`). The private key is sealed at rest with the server's
//! [`SecretsKey`](crate::secrets::SecretsKey), bound to the tenant and the wallet, and opened
//! only to sign; it never reaches a log, an error or an answer.

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use serde::{Deserialize, Serialize};
use turnpike_rails::evm::WalletToken;

use crate::error::ApiError;
use crate::state::AppState;

/// The rail of the wallets this server keeps.
pub const EVM: &str = "evm";

/// The public settings of an `evm` wallet, as stored and as the API returns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvmWalletSettings {
    /// The (chain, token) pairs the organisation pays with, and their ledger currency.
    pub tokens: Vec<WalletToken>,
}

/// An organisation's opened `evm` wallet.
pub struct EvmWallet {
    /// Its key (never printed: this type's `Debug` shows the address only).
    pub signer: PrivateKeySigner,
    /// Its public settings.
    pub settings: EvmWalletSettings,
}

impl std::fmt::Debug for EvmWallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmWallet")
            .field("address", &self.address())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl EvmWallet {
    /// The wallet's address (the `from` of its authorizations).
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// The token the wallet pays `token` on `chain_id` with.
    pub fn token(&self, chain_id: u64, token: Address) -> Option<&WalletToken> {
        self.settings
            .tokens
            .iter()
            .find(|t| t.chain_id == chain_id && t.address == token)
    }
}

/// The context a wallet's sealed key is bound to (never the rail configuration's).
pub fn sealed_context(tenant_id: &str) -> String {
    format!("{tenant_id}/wallet:{EVM}")
}

/// Parse a private key given as `0x` + 64 hex digits; the error never quotes it.
pub fn parse_key(text: &str) -> Option<PrivateKeySigner> {
    let digits = text.strip_prefix("0x")?;
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    text.parse::<PrivateKeySigner>().ok()
}

/// The key as stored (sealed): `0x` + 64 hex digits.
pub fn key_text(signer: &PrivateKeySigner) -> String {
    format!("0x{}", alloy::hex::encode(signer.to_bytes()))
}

/// A tenant's `evm` wallet, opened; `None` when it has none.
pub async fn evm_wallet(state: &AppState, tenant_id: &str) -> Result<Option<EvmWallet>, ApiError> {
    let Some(row) = state.store.payer_wallet(tenant_id, EVM).await? else {
        return Ok(None);
    };
    let broken = |what: &str| {
        tracing::error!(tenant = %tenant_id, what, "a stored evm wallet is unusable");
        ApiError::unavailable("the organisation's evm wallet is unusable on this server")
    };
    let settings: EvmWalletSettings =
        serde_json::from_str(&row.settings).map_err(|_| broken("settings"))?;
    let key = state
        .config
        .secrets_key
        .as_ref()
        .ok_or_else(|| broken("no TURNPIKE_SECRETS_KEY"))?;
    let plain = key
        .open(&row.sealed, &sealed_context(tenant_id))
        .map_err(|_| broken("the key does not open"))?;
    let signer = std::str::from_utf8(&plain)
        .ok()
        .and_then(parse_key)
        .ok_or_else(|| broken("the key"))?;
    Ok(Some(EvmWallet { signer, settings }))
}
