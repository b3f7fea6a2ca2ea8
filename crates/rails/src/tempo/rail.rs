//! The `tempo` rail behind [`Rail`]: challenge requests from a tenant's [`TempoConfig`], offline
//! verification of `transaction` (pull; co-signed by the fee payer when it sponsors fees),
//! `hash` (push) and `proof` (zero amount) credentials, then settlement through the JSON-RPC
//! code shared with `evm` ([`crate::rpc`]): the server's `transaction` is recorded and
//! broadcast, a `hash` is looked up, and either counts only once its receipt's TIP-20 logs
//! satisfy the charge (amount, splits, the challenge-bound memo) with the configured
//! confirmations. A `proof` moves nothing: it settles at once with the challenge id as reference.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use turnpike_protocol::Credential;

use super::config::TempoConfig;
use super::fee_payer::{SponsorPolicy, cosign_fee_payer};
use super::matching::ChallengeRef;
use super::proof::{ProofVersion, verify_proof};
use super::receipt_logs::verify_receipt_logs;
use super::request::{Charge, ChargeRequest, SubmissionMode};
use super::transaction::{self, payload_bytes, verify_transaction};
use super::{ITip20Payments, METHOD, TempoError};
use crate::outbound::OutboundPolicy;
use crate::rpc::{self, Broadcast, Providers, ReceiptState, Submitted, short};
use crate::{
    ChallengeFacts, PrepareError, Prepared, PriceTerms, Rail, Rejection, Settlement, Unavailable,
};

/// Longest hex payload accepted for a signed transaction (bytes).
pub const RAW_TX_LEN_MAX: usize = 16_384;

/// The `tempo` rail.
#[derive(Debug, Default)]
pub struct TempoRail {
    providers: Providers,
    /// (chain id, fee payer) → below its floor at the last reading.
    fee_low: RwLock<HashMap<(u64, Address), bool>>,
}

/// How a verified credential pays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifiedTempoKind {
    /// A signed 0x76 transaction the server broadcasts (co-signed when sponsored).
    Transaction {
        /// The bytes to broadcast.
        raw: Bytes,
        /// Their transaction hash.
        hash: B256,
        /// The recovered sender.
        sender: Address,
        /// `valid_before`, Unix seconds (required: challenges expire).
        valid_before: Option<u64>,
    },
    /// A transaction the client broadcast.
    Hash {
        /// The transaction hash.
        hash: B256,
    },
    /// A zero-amount proof of the `source` account.
    Proof {
        /// The signer.
        signer: Address,
    },
}

/// A credential that passed every offline check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTempo {
    /// How it pays.
    pub kind: VerifiedTempoKind,
    /// The chain.
    pub chain_id: u64,
    /// The request the payment must satisfy (its logs are checked against it once mined).
    pub request: ChargeRequest,
    /// The challenge `id` (the memo binding; a proof's reference).
    pub challenge_id: String,
    /// The challenge `realm`.
    pub realm: String,
}

/// What is recorded for a submission (the `Prepared` state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recorded {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash: Option<B256>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raw: Option<Bytes>,
    request: ChargeRequest,
    challenge_id: String,
    realm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_before: Option<u64>,
}

/// The challenge `request` of a `tempo` charge (spec "Request Schema"). No `memo`: the payment
/// must carry the MPP attribution memo bound to the challenge instead.
pub fn charge_request(
    config: &TempoConfig,
    token: Address,
    amount: &str,
    description: Option<&str>,
) -> Map<String, Value> {
    let mut details = Map::new();
    details.insert("chainId".into(), Value::from(config.settings.chain_id));
    if config.fee_payer.is_some() {
        details.insert("feePayer".into(), Value::Bool(true));
    }
    if let Some(modes) = config.supported_modes() {
        details.insert(
            "supportedModes".into(),
            serde_json::to_value(modes).unwrap_or_default(),
        );
    }
    let mut request = Map::new();
    request.insert("amount".into(), Value::from(amount));
    request.insert("currency".into(), Value::from(token.to_checksum(None)));
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

fn rejection(err: TempoError) -> Rejection {
    match err {
        TempoError::Decode(_) | TempoError::InvalidPayload(_) => {
            Rejection::malformed(err.to_string())
        }
        TempoError::TransactionExpired { .. } => Rejection::expired(err.to_string()),
        _ => Rejection::failed(err.to_string()),
    }
}

fn charge_of(request: &ChargeRequest) -> Result<Charge, Rejection> {
    request.validate().map_err(rejection)
}

impl TempoRail {
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
    pub fn provider(&self, config: &TempoConfig) -> Result<RootProvider, Unavailable> {
        self.providers.get(&config.settings.rpc_url)
    }

    /// Read the fee payer's balance of the fee token and remember whether it is below the
    /// floor. Returns the balance, or `None` without a fee payer.
    pub async fn refresh_fee_balance(
        &self,
        config: &TempoConfig,
    ) -> Result<Option<U256>, Unavailable> {
        let Some(fee_payer) = &config.fee_payer else {
            return Ok(None);
        };
        let provider = self.provider(config)?;
        let call = ITip20Payments::balanceOfCall {
            account: fee_payer.address(),
        };
        let request = TransactionRequest::default()
            .to(config.fee_token())
            .input(Bytes::from(call.abi_encode()).into());
        let unanswered = || Unavailable("the chain's RPC did not answer".into());
        let out = provider.call(request).await.map_err(|_| unanswered())?;
        let balance =
            ITip20Payments::balanceOfCall::abi_decode_returns(&out).map_err(|_| unanswered())?;
        self.fee_low
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (config.settings.chain_id, fee_payer.address()),
                balance < config.min_fee_balance,
            );
        Ok(Some(balance))
    }

    /// True when the last [`TempoRail::refresh_fee_balance`] found the fee payer below its
    /// floor.
    pub fn fee_low(&self, config: &TempoConfig) -> bool {
        let Some(fee_payer) = &config.fee_payer else {
            return false;
        };
        self.fee_low
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(config.settings.chain_id, fee_payer.address()))
            .copied()
            .unwrap_or(false)
    }

    fn request_for(
        config: &TempoConfig,
        price: &PriceTerms<'_>,
    ) -> Result<ChargeRequest, Unavailable> {
        let token = config.token(price.currency).ok_or_else(|| {
            Unavailable(format!(
                "no token settles `{}` on this merchant's tempo rail",
                price.currency
            ))
        })?;
        let request = charge_request(config, token.address, price.amount, price.description);
        ChargeRequest::from_json(Value::Object(request))
            .map_err(|err| Unavailable(format!("the tempo request is invalid: {err}")))
    }

    /// Who paid a settled payment: the sender of the receipt's TIP-20 transfer that satisfied
    /// the charge. `None` for a proof (nothing moved), an unreadable record, or when the chain
    /// does not answer.
    pub async fn payer(&self, config: &TempoConfig, prepared: &Prepared) -> Option<Address> {
        let recorded = serde_json::from_value::<Recorded>(prepared.state.clone()).ok()?;
        let hash = recorded.hash?;
        let charge = charge_of(&recorded.request).ok()?;
        let provider = self.provider(config).ok()?;
        let receipt = rpc::get_receipt(&provider, hash).await.ok()??;
        let binding = ChallengeRef {
            id: &recorded.challenge_id,
            realm: &recorded.realm,
        };
        let verified = verify_receipt_logs(
            &charge,
            Some(binding),
            receipt.success(),
            &receipt.primitive_logs(),
        )
        .ok()?;
        verified.transfers.first().map(|t| t.from)
    }

    /// Check a mined receipt's TIP-20 logs against the record.
    fn settled_if_paid(recorded: &Recorded, receipt: &rpc::MinedReceipt) -> Settlement {
        let charge = match charge_of(&recorded.request) {
            Ok(charge) => charge,
            Err(rejection) => return Settlement::Failed(rejection),
        };
        let binding = ChallengeRef {
            id: &recorded.challenge_id,
            realm: &recorded.realm,
        };
        match verify_receipt_logs(
            &charge,
            Some(binding),
            receipt.success(),
            &receipt.primitive_logs(),
        ) {
            Ok(_) => Settlement::Settled {
                reference: receipt.transaction_hash.to_string(),
            },
            Err(err) => Settlement::Failed(rejection(err)),
        }
    }
}

fn payload_str<'a>(payload: &'a Map<String, Value>, field: &str) -> Result<&'a str, Rejection> {
    payload
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| Rejection::malformed(format!("payload `{field}` must be a string")))
}

#[async_trait]
impl Rail for TempoRail {
    type Config = TempoConfig;
    type Verified = VerifiedTempo;

    fn method(&self) -> &'static str {
        METHOD
    }

    fn challenge_request(
        &self,
        config: &TempoConfig,
        price: &PriceTerms<'_>,
    ) -> Result<Map<String, Value>, Unavailable> {
        let token = config.token(price.currency).ok_or_else(|| {
            Unavailable(format!(
                "no token settles `{}` on this merchant's tempo rail",
                price.currency
            ))
        })?;
        if self.fee_low(config) {
            return Err(Unavailable(
                "the tempo fee payer's balance is below its floor; tempo is not offered until it is refilled"
                    .into(),
            ));
        }
        Ok(charge_request(
            config,
            token.address,
            price.amount,
            price.description,
        ))
    }

    fn verify(
        &self,
        config: &TempoConfig,
        challenge: ChallengeFacts<'_>,
        price: &PriceTerms<'_>,
        credential: &Credential,
        now_s: i64,
    ) -> Result<VerifiedTempo, Rejection> {
        let request = Self::request_for(config, price).map_err(|why| Rejection::failed(why.0))?;
        let charge = charge_of(&request)?;
        let binding = ChallengeRef {
            id: challenge.id,
            realm: challenge.realm,
        };
        let now = u64::try_from(now_s).unwrap_or(0);
        let expires = u64::try_from(challenge.expires_at_s).ok();
        let payload = &credential.payload;
        let kind = match payload.get("type").and_then(Value::as_str) {
            Some("transaction") => {
                let hex = payload_str(payload, "signature")?;
                if hex.len() > 2 + 2 * RAW_TX_LEN_MAX {
                    return Err(Rejection::malformed("the signed transaction is too long"));
                }
                let raw = payload_bytes(hex).map_err(rejection)?;
                match &config.fee_payer {
                    Some(signer) => {
                        let fee_token = config.fee_token();
                        let cosigned = cosign_fee_payer(
                            &charge,
                            Some(binding),
                            &raw,
                            expires,
                            now,
                            fee_token,
                            &SponsorPolicy::for_chain(charge.chain_id),
                            signer,
                        )
                        .map_err(rejection)?;
                        let valid_before = transaction::decode(&cosigned.bytes)
                            .ok()
                            .and_then(|signed| signed.tx().valid_before.map(|v| v.get()));
                        VerifiedTempoKind::Transaction {
                            raw: cosigned.bytes,
                            hash: cosigned.tx_hash,
                            sender: cosigned.sender,
                            valid_before,
                        }
                    }
                    None => {
                        let verified =
                            verify_transaction(&charge, Some(binding), &raw, expires, now)
                                .map_err(rejection)?;
                        VerifiedTempoKind::Transaction {
                            raw: verified.raw,
                            hash: verified.tx_hash,
                            sender: verified.sender,
                            valid_before: verified.valid_before,
                        }
                    }
                }
            }
            Some("hash") => {
                charge.check_mode(SubmissionMode::Push).map_err(rejection)?;
                let hash = payload_str(payload, "hash")?;
                let hash = (hash.len() == 66 && hash.starts_with("0x"))
                    .then(|| hash.parse::<B256>().ok())
                    .flatten()
                    .ok_or_else(|| {
                        Rejection::malformed("payload `hash` must be 0x and 64 hex digits")
                    })?;
                VerifiedTempoKind::Hash { hash }
            }
            Some("proof") => {
                let signature = payload_str(payload, "signature")?;
                let source = credential.source.as_ref().and_then(Value::as_str);
                // The spec's domain (version "1") and the conformance vectors' (version "2",
                // with the realm) are both accepted.
                let signer = verify_proof(
                    &charge,
                    ProofVersion::V2,
                    challenge.id,
                    challenge.realm,
                    source,
                    signature,
                )
                .or_else(|_| {
                    verify_proof(
                        &charge,
                        ProofVersion::V1,
                        challenge.id,
                        challenge.realm,
                        source,
                        signature,
                    )
                })
                .map_err(rejection)?;
                VerifiedTempoKind::Proof { signer }
            }
            Some(_) => {
                return Err(Rejection::malformed(
                    "payload `type` is not a tempo credential type (transaction, hash, proof)",
                ));
            }
            None => return Err(Rejection::malformed("payload has no `type`")),
        };
        Ok(VerifiedTempo {
            kind,
            chain_id: charge.chain_id,
            request,
            challenge_id: challenge.id.to_owned(),
            realm: challenge.realm.to_owned(),
        })
    }

    fn replay_token(&self, verified: &VerifiedTempo) -> String {
        // A transaction hash pays once, as `transaction` or as `hash` (one namespace); a proof
        // is single-use with its challenge.
        match &verified.kind {
            VerifiedTempoKind::Transaction { hash, .. } | VerifiedTempoKind::Hash { hash } => {
                format!("tempo:{}:tx:{hash}", verified.chain_id)
            }
            VerifiedTempoKind::Proof { .. } => format!("tempo:proof:{}", verified.challenge_id),
        }
    }

    async fn prepare(
        &self,
        _config: &TempoConfig,
        verified: &VerifiedTempo,
    ) -> Result<Prepared, PrepareError> {
        let mut recorded = Recorded {
            kind: String::new(),
            hash: None,
            raw: None,
            request: verified.request.clone(),
            challenge_id: verified.challenge_id.clone(),
            realm: verified.realm.clone(),
            valid_before: None,
        };
        let reference = match &verified.kind {
            VerifiedTempoKind::Transaction {
                raw,
                hash,
                valid_before,
                ..
            } => {
                recorded.kind = "transaction".into();
                recorded.hash = Some(*hash);
                recorded.raw = Some(raw.clone());
                recorded.valid_before = *valid_before;
                hash.to_string()
            }
            VerifiedTempoKind::Hash { hash } => {
                recorded.kind = "hash".into();
                recorded.hash = Some(*hash);
                hash.to_string()
            }
            VerifiedTempoKind::Proof { .. } => {
                recorded.kind = "proof".into();
                verified.challenge_id.clone()
            }
        };
        Ok(Prepared {
            reference,
            state: serde_json::to_value(&recorded).unwrap_or_default(),
        })
    }

    async fn submit(&self, config: &TempoConfig, prepared: &Prepared) -> Settlement {
        let Ok(recorded) = serde_json::from_value::<Recorded>(prepared.state.clone()) else {
            return Settlement::Failed(Rejection::failed("the settlement record is unreadable"));
        };
        let Some(hash) = recorded.hash else {
            // A proof: nothing to submit.
            return Settlement::Settled {
                reference: recorded.challenge_id,
            };
        };
        let Ok(provider) = self.provider(config) else {
            return Settlement::Pending;
        };
        let submitted = rpc::submit_and_wait(
            &provider,
            recorded.raw.as_ref(),
            hash,
            config.settings.confirmations,
        )
        .await;
        match submitted {
            Submitted::Refused(message) => Settlement::Failed(Rejection::failed(format!(
                "the chain refused the transaction: {}",
                short(&message)
            ))),
            Submitted::NotMined => {
                Settlement::Failed(Rejection::failed("no mined transaction has this hash"))
            }
            Submitted::Reverted => {
                Settlement::Failed(Rejection::failed("the transaction reverted"))
            }
            Submitted::Confirmed(receipt) => Self::settled_if_paid(&recorded, &receipt),
            Submitted::Unknown => Settlement::Pending,
        }
    }

    async fn resolve(&self, config: &TempoConfig, prepared: &Prepared, now_s: i64) -> Settlement {
        let Ok(recorded) = serde_json::from_value::<Recorded>(prepared.state.clone()) else {
            return Settlement::Failed(Rejection::failed("the settlement record is unreadable"));
        };
        let Some(hash) = recorded.hash else {
            return Settlement::Settled {
                reference: recorded.challenge_id,
            };
        };
        let Ok(provider) = self.provider(config) else {
            return Settlement::Pending;
        };
        match rpc::receipt_state(&provider, hash, config.settings.confirmations).await {
            ReceiptState::Confirmed(receipt) => return Self::settled_if_paid(&recorded, &receipt),
            ReceiptState::Reverted => {
                return Settlement::Failed(Rejection::failed("the transaction reverted"));
            }
            ReceiptState::Unconfirmed | ReceiptState::Unreachable => return Settlement::Pending,
            ReceiptState::NotFound => {}
        }
        let Some(raw) = &recorded.raw else {
            return Settlement::Failed(Rejection::failed(
                "the transaction is no longer on the chain",
            ));
        };
        // Not mined: send the very same bytes again (a node that has them says so).
        match rpc::broadcast(&provider, raw).await {
            Broadcast::Unknown => return Settlement::Pending,
            Broadcast::Accepted | Broadcast::Rejected(_) => {}
        }
        // Past its `valid_before` and still not mined, it never will be.
        if let Some(valid_before) = recorded.valid_before
            && u64::try_from(now_s).unwrap_or(0) > valid_before
            && let ReceiptState::NotFound = rpc::receipt_state(&provider, hash, 1).await
        {
            return Settlement::Failed(Rejection::expired(
                "the transaction's validBefore passed before it was mined",
            ));
        }
        Settlement::Pending
    }
}
