//! `/v1/agent/pay` for `evm` charge challenges (`draft-evm-charge-00`): the organisation's own
//! wallet signs an EIP-3009 `authorization` that the merchant's server submits on chain.
//!
//! The spend passes the agent's policy through the same spend guard as a `turnpike` payment
//! (caps, budgets, merchant and method lists, approvals, velocity) and is recorded in the same
//! posting engine, but with no ledger transfer: the funds are on chain, not in a Turnpike
//! balance. Only then is anything signed. The spend's id is derived from every signed term, so
//! asking again for the same challenge finds the recorded spend (counted once) and signs the
//! very same authorization again (signing is deterministic).

use alloy::primitives::Address;
use axum::http::StatusCode;
use serde_json::{Value, json};
use turnpike_ledger::TransferId;
use turnpike_protocol::{Challenge, Credential};
use turnpike_rails::evm::{
    AuthorizationTerms, WalletToken, authorization_payload, challenge_hash, did_pkh, parse_charge,
    sign_authorization,
};

use super::{Payable, check_approval, guard_spend};
use crate::auth::AgentAuth;
use crate::error::{ApiError, ApiResult};
use crate::http::rfc3339;
use crate::ids;
use crate::state::AppState;
use crate::wallets::EvmWallet;

/// What an `evm` authorization for a payable challenge signs, beside its amount.
#[derive(Debug, Clone)]
pub(super) struct EvmPayable {
    /// The wallet's token the challenge asks for.
    token: WalletToken,
    /// The challenge's recipient.
    to: Address,
    /// `validBefore`: the challenge's expiry, Unix seconds.
    valid_before_s: u64,
}

/// Whether the organisation's `wallet` can pay `challenge` (an `evm` charge); why not.
pub(super) fn payable(
    state: &AppState,
    wallet: Option<&EvmWallet>,
    challenge: Challenge,
) -> Result<Payable, String> {
    if challenge.intent != "charge" {
        return Err(format!("evm/{} is not a charge", challenge.intent));
    }
    let wallet = wallet.ok_or("the organisation has no evm wallet (PUT /v1/wallets/evm)")?;
    let charge = parse_charge(challenge.request_json())?;
    let token = wallet.token(charge.chain_id, charge.token).ok_or_else(|| {
        format!(
            "the organisation's evm wallet pays no token {} on chain {}",
            charge.token, charge.chain_id
        )
    })?;
    let expires_at_ms = challenge
        .expires_at()
        .map(|t| t.timestamp_millis())
        .ok_or("the challenge has no expiry")?;
    if expires_at_ms <= state.now_ms() {
        return Err("the challenge has expired".into());
    }
    if charge.recipient == wallet.address() {
        return Err("the challenge pays the organisation's own wallet".into());
    }
    let recipient = charge.recipient.to_checksum(None);
    Ok(Payable {
        amount: charge.amount,
        currency: token.currency.clone(),
        merchant_id: format!("eip155:{}:{recipient}", charge.chain_id),
        recipient,
        expires_at_ms,
        evm: Some(EvmPayable {
            token: token.clone(),
            to: charge.recipient,
            valid_before_s: u64::try_from(expires_at_ms.div_euclid(1000)).unwrap_or(0),
        }),
        challenge,
    })
}

/// The spend of one authorization: derived from the payer and every term it signs.
fn spend_id(payer: &str, from: Address, terms: &AuthorizationTerms<'_>) -> TransferId {
    TransferId(ids::derived_u128(&[
        "evm-spend",
        payer,
        &terms.token.chain_id.to_string(),
        &terms.token.address.to_string(),
        &from.to_string(),
        &terms.to.to_string(),
        &terms.value.to_string(),
        &terms.valid_before_s.to_string(),
        &challenge_hash(terms.challenge_id, terms.realm).to_string(),
    ]))
}

/// Run the agent's policy on `p` and record its spend; then sign its authorization.
pub(super) async fn authorize(
    state: &AppState,
    agent: &AgentAuth,
    p: Payable,
    evm: EvmPayable,
    wallet: &EvmWallet,
    approval_id: Option<String>,
) -> ApiResult<(StatusCode, Value)> {
    if let Some(id) = &approval_id {
        check_approval(state, agent, &p, id).await?;
    }
    let c = &p.challenge;
    let terms = AuthorizationTerms {
        token: &evm.token,
        to: evm.to,
        value: p.amount,
        valid_before_s: evm.valid_before_s,
        challenge_id: &c.id,
        realm: &c.realm,
    };
    let from = wallet.address();
    let spend = spend_id(&agent.claims.tid, from, &terms);
    guard_spend(state, agent, &p, spend, approval_id.as_ref(), Vec::new).await?;
    let signed = sign_authorization(&wallet.signer, &terms).map_err(|_| {
        tracing::error!(agent = %agent.claims.sub, "signing an evm authorization failed");
        ApiError::internal()
    })?;
    let credential = Credential {
        challenge: c.echo(),
        source: Some(Value::String(did_pkh(evm.token.chain_id, from))),
        payload: authorization_payload(&signed),
    };
    tracing::info!(
        agent = %agent.claims.sub,
        recipient = %p.recipient,
        "signed an evm authorization"
    );
    let valid_before_ms = i64::try_from(evm.valid_before_s)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    Ok((
        StatusCode::OK,
        json!({
            "authorization": credential.to_header_value(),
            "challengeId": c.id,
            "amount": p.amount.to_string(),
            "currency": p.currency,
            "recipient": p.recipient,
            "method": c.method,
            "chainId": evm.token.chain_id,
            "token": evm.token.address.to_checksum(None),
            "from": from.to_checksum(None),
            "spendId": spend.to_string(),
            "expiresAt": rfc3339(valid_before_ms),
        }),
    ))
}
