//! Settling `evm` credentials on the chain: the `authorization` transfer is simulated, signed by
//! the hot wallet and recorded before it is sent; a client's signed `transaction` is recorded and
//! broadcast; a `hash` is looked up. Each counts only with a successful receipt whose `Transfer`
//! log pays the recipient, after the configured confirmations. An unknown outcome is `Pending`
//! and [`EvmRail::resolve`](crate::Rail::resolve) finishes it from the record: it re-sends the
//! very same signed bytes (never a new transaction) and books nothing twice.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, RwLock};

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::Encodable2718;
use alloy::network::TxSignerSync;
use alloy::primitives::{Address, B256, Bytes, TxKind, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::{SolCall, SolStruct};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use turnpike_protocol::Credential;

use super::payload::{VerifiedEvm, VerifiedKind, verify_credential};
use super::{EvmConfig, METHOD, charge_request};
use crate::outbound::OutboundPolicy;
use crate::rpc::{self, Broadcast, Providers, ReceiptState, Submitted, short};
use crate::{
    ChallengeFacts, PrepareError, Prepared, PriceTerms, Rail, Rejection, Settlement, Unavailable,
};

/// The Solidity interface Turnpike calls.
pub(crate) mod abi {
    alloy::sol! {
        /// EIP-3009's signed message.
        struct TransferWithAuthorization {
            address from;
            address to;
            uint256 value;
            uint256 validAfter;
            uint256 validBefore;
            bytes32 nonce;
        }
        /// ERC-20 `transfer` (selector `0xa9059cbb`).
        function transfer(address to, uint256 amount) returns (bool);
        /// EIP-3009 (selector `0xe3ee160e`).
        function transferWithAuthorization(
            address from,
            address to,
            uint256 value,
            uint256 validAfter,
            uint256 validBefore,
            bytes32 nonce,
            uint8 v,
            bytes32 r,
            bytes32 s
        );
        /// EIP-3009: true once `nonce` of `authorizer` was used.
        function authorizationState(address authorizer, bytes32 nonce) returns (bool);

        /// Permit2: a token and the most that may be moved.
        struct TokenPermissions {
            address token;
            uint256 amount;
        }
        /// The witness binding a permit to its challenge (spec §"Witness Data").
        struct PaymentWitness {
            bytes32 challengeHash;
            string externalId;
        }
        /// What the payer signs (EIP-712 primary type; domain `Permit2`, no version).
        struct PermitWitnessTransferFrom {
            TokenPermissions permitted;
            address spender;
            uint256 nonce;
            uint256 deadline;
            PaymentWitness witness;
        }
        /// Permit2's calldata form of the permit (the spender is `msg.sender`).
        struct PermitTransferFrom {
            TokenPermissions permitted;
            uint256 nonce;
            uint256 deadline;
        }
        /// Where the permitted tokens go.
        struct SignatureTransferDetails {
            address to;
            uint256 requestedAmount;
        }
        /// Permit2 `SignatureTransfer.permitWitnessTransferFrom` (selector `0x137c29fe`).
        function permitWitnessTransferFrom(
            PermitTransferFrom permit,
            SignatureTransferDetails transferDetails,
            address owner,
            bytes32 witness,
            string witnessTypeString,
            bytes signature
        );
        /// Permit2's unordered nonces: bit `nonce & 255` of word `nonce >> 8` is set once used.
        function nonceBitmap(address owner, uint256 wordPos) returns (uint256);
    }
}

/// Gas limit headroom over the estimate, in percent.
pub const GAS_HEADROOM_PCT: u64 = 25;

/// The next nonce of each hot wallet per chain, so concurrent settlements never reuse one.
#[derive(Debug, Default)]
pub struct HotWallets {
    next_nonce: Mutex<HashMap<(u64, Address), u64>>,
    gas_low: RwLock<HashMap<(u64, Address), bool>>,
}

/// The `evm` rail.
#[derive(Debug, Default)]
pub struct EvmRail {
    providers: Providers,
    wallets: HotWallets,
}

/// What is recorded for a submission (the `Prepared` state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recorded {
    kind: String,
    hash: B256,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw: Option<Bytes>,
    token: Address,
    recipient: Address,
    amount: U256,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payer: Option<Address>,
    /// `authorization`: the EIP-3009 nonce and its deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_nonce: Option<B256>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_before: Option<U256>,
    /// `permit2`: the Permit2 contract and the permit's nonce (its deadline is `valid_before`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    permit2: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    permit_nonce: Option<U256>,
    /// `transaction` / `authorization` / `permit2`: the sending account and its nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sender: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sender_nonce: Option<u64>,
}

impl EvmRail {
    /// A rail with no providers yet, connecting to public addresses only.
    pub fn new() -> Self {
        Self::default()
    }

    /// A rail whose RPC connections follow `policy`.
    pub fn with_outbound(policy: OutboundPolicy) -> Self {
        Self {
            providers: Providers::new(policy),
            ..Self::default()
        }
    }

    /// The provider of a configuration's chain.
    pub fn provider(&self, config: &EvmConfig) -> Result<RootProvider, Unavailable> {
        self.providers.get(&config.settings.rpc_url)
    }

    /// Read the hot wallet's native balance and remember whether it is below the floor. Returns
    /// the balance, or `None` without a hot wallet.
    pub async fn refresh_gas(&self, config: &EvmConfig) -> Result<Option<U256>, Unavailable> {
        let Some(wallet) = &config.hot_wallet else {
            return Ok(None);
        };
        let provider = self.provider(config)?;
        let balance = provider
            .get_balance(wallet.address())
            .await
            .map_err(|_| Unavailable("the chain's RPC did not answer".into()))?;
        self.wallets
            .gas_low
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (config.settings.chain_id, wallet.address()),
                balance < config.min_gas_wei,
            );
        Ok(Some(balance))
    }

    /// True when the last [`EvmRail::refresh_gas`] found the hot wallet below its floor.
    pub fn gas_low(&self, config: &EvmConfig) -> bool {
        let Some(wallet) = &config.hot_wallet else {
            return false;
        };
        self.wallets
            .gas_low
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(config.settings.chain_id, wallet.address()))
            .copied()
            .unwrap_or(false)
    }

    async fn prepare_authorization(
        &self,
        config: &EvmConfig,
        verified: &VerifiedEvm,
        auth: &super::Authorization,
    ) -> Result<Prepared, PrepareError> {
        let sig = auth.signature;
        let input = abi::transferWithAuthorizationCall {
            from: auth.from,
            to: auth.to,
            value: auth.value,
            validAfter: auth.valid_after,
            validBefore: auth.valid_before,
            nonce: auth.nonce,
            v: 27 + u8::from(sig.v()),
            r: sig.r().into(),
            s: sig.s().into(),
        }
        .abi_encode();
        let signed = self
            .sign_hot_wallet_call(
                config,
                verified.token,
                input,
                "the token refused the authorization",
            )
            .await?;
        Ok(to_prepared(&Recorded {
            kind: "authorization".into(),
            payer: Some(auth.from),
            auth_nonce: Some(auth.nonce),
            valid_before: Some(auth.valid_before),
            ..signed.recorded(verified)
        }))
    }

    async fn prepare_permit2(
        &self,
        config: &EvmConfig,
        verified: &VerifiedEvm,
        permit: &super::Permit2Transfer,
    ) -> Result<Prepared, PrepareError> {
        let witness = abi::PaymentWitness {
            challengeHash: permit.challenge_hash,
            externalId: permit.external_id.clone(),
        };
        let input = abi::permitWitnessTransferFromCall {
            permit: abi::PermitTransferFrom {
                permitted: abi::TokenPermissions {
                    token: verified.token,
                    amount: permit.permitted,
                },
                nonce: permit.nonce,
                deadline: permit.deadline,
            },
            transferDetails: abi::SignatureTransferDetails {
                to: verified.recipient,
                requestedAmount: verified.amount,
            },
            owner: permit.owner,
            witness: witness.eip712_hash_struct(),
            witnessTypeString: super::PERMIT2_WITNESS_TYPE.into(),
            signature: permit.signature.clone(),
        }
        .abi_encode();
        let signed = self
            .sign_hot_wallet_call(config, permit.permit2, input, "Permit2 refused the permit")
            .await?;
        Ok(to_prepared(&Recorded {
            kind: "permit2".into(),
            payer: Some(permit.owner),
            valid_before: Some(permit.deadline),
            permit2: Some(permit.permit2),
            permit_nonce: Some(permit.nonce),
            ..signed.recorded(verified)
        }))
    }

    /// Simulate the hot wallet calling `target` with `input` (spec: SHOULD simulate first; a
    /// reverting call is refused before any gas is spent, with the contract's reason after
    /// `refused`), then sign it with the wallet's next nonce. Nothing is sent.
    async fn sign_hot_wallet_call(
        &self,
        config: &EvmConfig,
        target: Address,
        input: Vec<u8>,
        refused: &str,
    ) -> Result<SignedCall, PrepareError> {
        let wallet = config.hot_wallet.as_ref().ok_or_else(|| {
            PrepareError::Unavailable(Unavailable("the evm rail has no hot wallet".into()))
        })?;
        let unavailable = |what: &str| {
            PrepareError::Unavailable(Unavailable(format!("the chain's RPC failed ({what})")))
        };
        let provider = self.provider(config).map_err(PrepareError::Unavailable)?;
        let request = TransactionRequest::default()
            .from(wallet.address())
            .to(target)
            .input(Bytes::from(input.clone()).into());
        let gas = match provider.estimate_gas(request).await {
            Ok(gas) => gas,
            Err(err) => {
                return Err(match err.as_error_resp() {
                    Some(resp) => PrepareError::Rejected(Rejection::failed(format!(
                        "{refused}: {}",
                        short(&resp.message)
                    ))),
                    None => unavailable("estimate gas"),
                });
            }
        };
        let fees = provider
            .estimate_eip1559_fees()
            .await
            .map_err(|_| unavailable("fees"))?;
        let nonce = self.next_nonce(&provider, config, wallet.address()).await?;
        let mut tx = TxEip1559 {
            chain_id: config.settings.chain_id,
            nonce,
            gas_limit: gas.saturating_mul(100 + GAS_HEADROOM_PCT) / 100,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: TxKind::Call(target),
            value: U256::ZERO,
            access_list: Default::default(),
            input: input.into(),
        };
        let signature = wallet
            .sign_transaction_sync(&mut tx)
            .map_err(|_| unavailable("signing"))?;
        let envelope = TxEnvelope::from(tx.into_signed(signature));
        Ok(SignedCall {
            hash: *envelope.tx_hash(),
            raw: envelope.encoded_2718().into(),
            sender: wallet.address(),
            nonce,
        })
    }

    async fn next_nonce(
        &self,
        provider: &RootProvider,
        config: &EvmConfig,
        wallet: Address,
    ) -> Result<u64, PrepareError> {
        let key = (config.settings.chain_id, wallet);
        let cached = self
            .wallets
            .next_nonce
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        let base = match cached {
            Some(n) => n,
            None => provider
                .get_transaction_count(wallet)
                .pending()
                .await
                .map_err(|_| {
                    PrepareError::Unavailable(Unavailable("the chain's RPC failed (nonce)".into()))
                })?,
        };
        let mut map = self
            .wallets
            .next_nonce
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Another settlement may have taken nonces meanwhile: take the larger.
        let next = map.get(&key).copied().unwrap_or(base).max(base);
        map.insert(key, next + 1);
        Ok(next)
    }

    /// Forget a wallet's cached nonce (after a refused broadcast): it is read again from the
    /// chain next time.
    fn reset_nonce(&self, chain_id: u64, wallet: Address) {
        self.wallets
            .next_nonce
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(chain_id, wallet));
    }

    /// Who paid a settled payment: the payer known offline (the signer of an authorization
    /// or permit, the sender of a transaction), else the sender of the receipt's `Transfer` of
    /// the amount to the recipient (a `hash` credential). `None` when the record is unreadable
    /// or the chain does not answer.
    pub async fn payer(&self, config: &EvmConfig, prepared: &Prepared) -> Option<Address> {
        let recorded = serde_json::from_value::<Recorded>(prepared.state.clone()).ok()?;
        if let Some(payer) = recorded.payer {
            return Some(payer);
        }
        let provider = self.provider(config).ok()?;
        let receipt = rpc::get_receipt(&provider, recorded.hash).await.ok()??;
        rpc::token_transfers(&receipt, recorded.token)
            .into_iter()
            .find(|t| t.to == recorded.recipient && t.value == recorded.amount)
            .map(|t| t.from)
    }

    /// Check a confirmed receipt's `Transfer` logs against the record.
    fn settled_if_paid(recorded: &Recorded, receipt: &ReceiptState) -> Settlement {
        let ReceiptState::Confirmed(receipt) = receipt else {
            return Settlement::Pending;
        };
        let paid = rpc::token_transfers(receipt, recorded.token)
            .iter()
            .any(|t| {
                t.to == recorded.recipient
                    && t.value == recorded.amount
                    && recorded.payer.is_none_or(|payer| payer == t.from)
            });
        if paid {
            Settlement::Settled {
                reference: recorded.hash.to_string(),
            }
        } else {
            Settlement::Failed(Rejection::failed(
                "the transaction did not transfer the requested amount of the token to the recipient",
            ))
        }
    }
}

/// A hot-wallet transaction, signed and not sent.
struct SignedCall {
    hash: B256,
    raw: Bytes,
    sender: Address,
    nonce: u64,
}

impl SignedCall {
    /// The record of this transaction paying `verified` (the caller names its kind).
    fn recorded(self, verified: &VerifiedEvm) -> Recorded {
        Recorded {
            kind: String::new(),
            hash: self.hash,
            raw: Some(self.raw),
            token: verified.token,
            recipient: verified.recipient,
            amount: verified.amount,
            payer: verified.payer,
            auth_nonce: None,
            valid_before: None,
            permit2: None,
            permit_nonce: None,
            sender: Some(self.sender),
            sender_nonce: Some(self.nonce),
        }
    }
}

fn to_prepared(recorded: &Recorded) -> Prepared {
    Prepared {
        reference: recorded.hash.to_string(),
        state: serde_json::to_value(recorded).unwrap_or_default(),
    }
}

#[async_trait]
impl Rail for EvmRail {
    type Config = EvmConfig;
    type Verified = VerifiedEvm;

    fn method(&self) -> &'static str {
        METHOD
    }

    fn challenge_request(
        &self,
        config: &EvmConfig,
        price: &PriceTerms<'_>,
    ) -> Result<Map<String, Value>, Unavailable> {
        let token = config.token(price.currency).ok_or_else(|| {
            Unavailable(format!(
                "no token settles `{}` on this merchant's evm rail",
                price.currency
            ))
        })?;
        if self.gas_low(config) {
            return Err(Unavailable(
                "the evm hot wallet is low on gas; evm is not offered until it is refilled".into(),
            ));
        }
        let types = config.credential_types_for(token, price.amount_minor);
        if types.is_empty() {
            return Err(Unavailable("no evm credential type can be offered".into()));
        }
        Ok(charge_request(
            config,
            token,
            price.amount,
            price.description,
            &types,
        ))
    }

    fn verify(
        &self,
        config: &EvmConfig,
        challenge: ChallengeFacts<'_>,
        price: &PriceTerms<'_>,
        credential: &Credential,
        now_s: i64,
    ) -> Result<VerifiedEvm, Rejection> {
        verify_credential(config, challenge, price, credential, now_s)
    }

    fn replay_token(&self, verified: &VerifiedEvm) -> String {
        // The spec's replay table: (signer, nonce) for `authorization`, the transaction hash for
        // `transaction` and `hash` (one namespace: a hash can't pay once as each).
        match &verified.kind {
            VerifiedKind::Authorization(auth) => format!(
                "evm:{}:auth:{:#x}:{:#x}:{}",
                verified.chain_id, verified.token, auth.from, auth.nonce
            ),
            VerifiedKind::Permit2(permit) => format!(
                "evm:{}:permit2:{:#x}:{:#x}:{}",
                verified.chain_id, permit.permit2, permit.owner, permit.nonce
            ),
            VerifiedKind::Transaction { hash, .. } | VerifiedKind::Hash { hash } => {
                format!("evm:{}:tx:{hash}", verified.chain_id)
            }
        }
    }

    async fn prepare(
        &self,
        config: &EvmConfig,
        verified: &VerifiedEvm,
    ) -> Result<Prepared, PrepareError> {
        let mut recorded = Recorded {
            kind: String::new(),
            hash: B256::ZERO,
            raw: None,
            token: verified.token,
            recipient: verified.recipient,
            amount: verified.amount,
            payer: verified.payer,
            auth_nonce: None,
            valid_before: None,
            permit2: None,
            permit_nonce: None,
            sender: None,
            sender_nonce: None,
        };
        match &verified.kind {
            VerifiedKind::Authorization(auth) => {
                return self.prepare_authorization(config, verified, auth).await;
            }
            VerifiedKind::Permit2(permit) => {
                return self.prepare_permit2(config, verified, permit).await;
            }
            VerifiedKind::Transaction { raw, hash, sender } => {
                recorded.kind = "transaction".into();
                recorded.hash = *hash;
                recorded.raw = Some(raw.clone());
                recorded.sender = Some(*sender);
            }
            VerifiedKind::Hash { hash } => {
                recorded.kind = "hash".into();
                recorded.hash = *hash;
            }
        }
        Ok(to_prepared(&recorded))
    }

    async fn submit(&self, config: &EvmConfig, prepared: &Prepared) -> Settlement {
        let Ok(recorded) = serde_json::from_value::<Recorded>(prepared.state.clone()) else {
            return Settlement::Failed(Rejection::failed("the settlement record is unreadable"));
        };
        let Ok(provider) = self.provider(config) else {
            return Settlement::Pending;
        };
        let submitted = rpc::submit_and_wait(
            &provider,
            recorded.raw.as_ref(),
            recorded.hash,
            config.settings.confirmations,
        )
        .await;
        match submitted {
            Submitted::Refused(message) => {
                if let Some(sender) = recorded.sender
                    && matches!(recorded.kind.as_str(), "authorization" | "permit2")
                {
                    self.reset_nonce(config.settings.chain_id, sender);
                }
                Settlement::Failed(Rejection::failed(format!(
                    "the chain refused the transaction: {}",
                    short(&message)
                )))
            }
            Submitted::NotMined => {
                Settlement::Failed(Rejection::failed("no mined transaction has this hash"))
            }
            Submitted::Reverted => {
                Settlement::Failed(Rejection::failed("the transaction reverted"))
            }
            Submitted::Confirmed(receipt) => {
                Self::settled_if_paid(&recorded, &ReceiptState::Confirmed(receipt))
            }
            Submitted::Unknown => Settlement::Pending,
        }
    }

    async fn resolve(&self, config: &EvmConfig, prepared: &Prepared, now_s: i64) -> Settlement {
        let Ok(recorded) = serde_json::from_value::<Recorded>(prepared.state.clone()) else {
            return Settlement::Failed(Rejection::failed("the settlement record is unreadable"));
        };
        let Ok(provider) = self.provider(config) else {
            return Settlement::Pending;
        };
        let state =
            rpc::receipt_state(&provider, recorded.hash, config.settings.confirmations).await;
        match state {
            ReceiptState::Confirmed(_) => return Self::settled_if_paid(&recorded, &state),
            ReceiptState::Reverted => {
                return Settlement::Failed(Rejection::failed("the transaction reverted"));
            }
            ReceiptState::Unconfirmed | ReceiptState::Unreachable => return Settlement::Pending,
            ReceiptState::NotFound => {}
        }
        // Not mined. Send the very same bytes again (a node that has them says so).
        let Some(raw) = &recorded.raw else {
            // A `hash` that vanished (a reorg): it can never pay this challenge now.
            return Settlement::Failed(Rejection::failed(
                "the transaction is no longer on the chain",
            ));
        };
        if let Broadcast::Unknown = rpc::broadcast(&provider, raw).await {
            return Settlement::Pending;
        }
        // Can it still be mined? An authorization whose deadline passed unused never will; a
        // transaction whose sender's nonce moved past it was replaced.
        if let (Some(from), Some(nonce), Some(valid_before)) =
            (recorded.payer, recorded.auth_nonce, recorded.valid_before)
            && recorded.kind == "authorization"
            && valid_before < U256::from(now_s.max(0))
        {
            let call = abi::authorizationStateCall {
                authorizer: from,
                nonce,
            };
            let request = TransactionRequest::default()
                .to(recorded.token)
                .input(Bytes::from(call.abi_encode()).into());
            if let Ok(out) = provider.call(request).await
                && let Ok(used) = abi::authorizationStateCall::abi_decode_returns(&out)
                && !used
            {
                return Settlement::Failed(Rejection::expired(
                    "the authorization expired before it was mined",
                ));
            }
        }
        if let (Some(owner), Some(permit2), Some(nonce), Some(deadline)) = (
            recorded.payer,
            recorded.permit2,
            recorded.permit_nonce,
            recorded.valid_before,
        ) && recorded.kind == "permit2"
            && deadline < U256::from(now_s.max(0))
        {
            let call = abi::nonceBitmapCall {
                owner,
                wordPos: nonce >> 8,
            };
            let request = TransactionRequest::default()
                .to(permit2)
                .input(Bytes::from(call.abi_encode()).into());
            if let Ok(out) = provider.call(request).await
                && let Ok(bitmap) = abi::nonceBitmapCall::abi_decode_returns(&out)
                && !bitmap.bit(usize::try_from(nonce & U256::from(255)).unwrap_or(0))
            {
                return Settlement::Failed(Rejection::expired(
                    "the permit expired before it was mined",
                ));
            }
        }
        if let (Some(sender), Some(nonce)) = (recorded.sender, recorded.sender_nonce)
            && let Ok(mined) = provider.get_transaction_count(sender).latest().await
            && mined > nonce
            && recorded.kind == "transaction"
        {
            // Its nonce was used by another transaction, and this one has no receipt.
            if let ReceiptState::NotFound = rpc::receipt_state(&provider, recorded.hash, 1).await {
                return Settlement::Failed(Rejection::failed(
                    "the transaction was replaced by another with the same nonce",
                ));
            }
        }
        Settlement::Pending
    }
}
