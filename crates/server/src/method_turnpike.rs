//! The `turnpike` payment method (docs/methods/turnpike.md): an organisation's balance on the
//! platform pays a merchant on the platform. The payer's amount is reserved as a pending ledger
//! transfer when the agent asks for a credential; the credential carries a grant (Ed25519 JWS)
//! bound to the challenge; verify checks the grant offline and posts the reservation, with the
//! platform fee as a linked transfer.

use std::str::FromStr;

use serde_json::{Map, Value};
use turnpike_ledger::{AccountKind, TransferError, TransferId, TransferRequest};
use turnpike_policy::{GrantClaims, TokenError};
use turnpike_protocol::{Credential, ProblemType};
use turnpike_store::{GuardRefusal, LedgerGuard, PaymentRow, TenantRow};

use crate::catalog::PriceDefinition;
use crate::error::ApiError;
use crate::ids;
use crate::state::{AppState, PLATFORM_OWNER};

/// Ledger codes of the transfers this method books.
pub mod codes {
    /// A payer's reservation for one challenge (pending).
    pub const RESERVE: u16 = 1;
    /// The platform fee taken from a payment.
    pub const FEE: u16 = 2;
    /// An operator credit to a tenant's balance.
    pub const CREDIT: u16 = 3;
    /// A refund of a payment to its payer.
    pub const REFUND: u16 = 4;
    /// The fee returned to the merchant on a refund.
    pub const FEE_REFUND: u16 = 5;
}

/// How long a reservation outlives its challenge: time for the merchant to verify.
pub const RESERVATION_GRACE_MS: i64 = 60_000;

/// The challenge `request` of a `turnpike` charge.
pub fn challenge_request(
    state: &AppState,
    tenant: &TenantRow,
    def: &PriceDefinition,
) -> Map<String, Value> {
    let mut details = Map::new();
    details.insert(
        "issuer".into(),
        Value::String(state.config.public_url.clone()),
    );
    let mut request = Map::new();
    request.insert("amount".into(), Value::String(def.amount.clone()));
    request.insert("currency".into(), Value::String(def.currency.clone()));
    request.insert("recipient".into(), Value::String(tenant.id.clone()));
    request.insert("methodDetails".into(), Value::Object(details));
    request
}

/// A grant that passed the offline checks.
#[derive(Debug, Clone)]
pub struct VerifiedGrant {
    /// The reservation (pending transfer) it spends.
    pub reservation: TransferId,
    /// Its id as text (the proof that is single-use).
    pub grant_id: String,
    /// The payer.
    pub payer_tenant_id: String,
    /// The paying agent.
    pub agent_id: String,
    /// Amount in minor units.
    pub amount_minor: u128,
}

/// Check a `turnpike` credential's grant offline against the price it pays.
pub async fn verify_offline(
    state: &AppState,
    tenant: &TenantRow,
    credential: &Credential,
    def: &PriceDefinition,
) -> Result<Result<VerifiedGrant, (ProblemType, String)>, ApiError> {
    let Some(grant) = credential.payload.get("grant").and_then(Value::as_str) else {
        return Ok(Err((
            ProblemType::VerificationFailed,
            "payload has no `grant`".into(),
        )));
    };
    let now_s = state.now_ms().div_euclid(1000);
    let mut result = state.keys().verify_grant(grant, now_s);
    if result == Err(TokenError::UnknownKey) {
        result = state.reload_keys().await?.verify_grant(grant, now_s);
    }
    let claims: GrantClaims = match result {
        Ok(claims) => claims,
        Err(TokenError::Expired) => {
            return Ok(Err((
                ProblemType::PaymentExpired,
                "the grant has expired".into(),
            )));
        }
        Err(err) => {
            return Ok(Err((
                ProblemType::VerificationFailed,
                format!("grant: {err}"),
            )));
        }
    };
    let mismatch = if claims.chal != credential.challenge.id {
        Some("the grant pays another challenge")
    } else if claims.amt != def.amount || claims.cur != def.currency {
        Some("the grant's amount or currency differs from the request")
    } else if claims.rcp != tenant.id {
        Some("the grant pays another recipient")
    } else if claims.iss != state.config.public_url {
        Some("the grant was issued by another platform")
    } else if credential
        .source
        .as_ref()
        .is_some_and(|s| s.as_str() != Some(format!("turnpike:{}", claims.pyr).as_str()))
    {
        Some("the credential's source is not the grant's payer")
    } else {
        None
    };
    if let Some(detail) = mismatch {
        return Ok(Err((ProblemType::VerificationFailed, detail.into())));
    }
    let Ok(reservation) = TransferId::from_str(&claims.jti) else {
        return Ok(Err((
            ProblemType::VerificationFailed,
            "the grant names no reservation".into(),
        )));
    };
    Ok(Ok(VerifiedGrant {
        reservation,
        grant_id: claims.jti.clone(),
        payer_tenant_id: claims.pyr,
        agent_id: claims.agt,
        amount_minor: def.amount_minor(),
    }))
}

/// Why a settlement failed.
#[derive(Debug)]
pub enum SettleError {
    /// The reservation cannot be posted (expired, voided, not found): 402 with this problem.
    Refused(ProblemType, String),
    /// Another payment already used this challenge or proof; nothing was posted.
    Taken,
    /// The ledger failed; nothing was posted.
    Api(ApiError),
}

// The ids of this method's transfers are derived, so retries are idempotent and a payment's
// transfers can be found again from the payment alone.

/// The reservation a payer makes for one challenge.
pub fn reservation_id(payer_tenant_id: &str, challenge_id: &str) -> TransferId {
    TransferId(ids::derived_u128(&[
        "reserve",
        payer_tenant_id,
        challenge_id,
    ]))
}

/// The transfer that posts a reservation.
pub fn post_id(reservation: TransferId) -> TransferId {
    TransferId(ids::derived_u128(&["post", &reservation.to_string()]))
}

/// The platform fee taken when a grant is settled.
pub fn fee_id(grant_id: &str) -> TransferId {
    TransferId(ids::derived_u128(&["fee", grant_id]))
}

/// The refund of a payment to its payer.
pub fn refund_id(payment_id: &str) -> TransferId {
    TransferId(ids::derived_u128(&["refund", payment_id]))
}

/// The platform fee returned to the merchant on a refund.
pub fn fee_refund_id(payment_id: &str) -> TransferId {
    TransferId(ids::derived_u128(&["fee-refund", payment_id]))
}

/// Post the reservation to the merchant's revenue and move the platform fee, all or nothing.
///
/// `payment` (state `settled`) is written in the same ledger transaction as the posting, under
/// the store's single-use constraints: when its challenge or proof was already used, nothing is
/// posted and the result is [`SettleError::Taken`].
pub async fn settle(
    state: &AppState,
    tenant: &TenantRow,
    payment: PaymentRow,
    grant: &VerifiedGrant,
    def: &PriceDefinition,
) -> Result<(), SettleError> {
    let payment_id = payment.id.clone();
    let fee = fee_minor(grant.amount_minor, state.config.platform_fee_bps);
    let mut transfers = vec![TransferRequest::Post {
        id: post_id(grant.reservation),
        pending_id: grant.reservation,
        amount: None,
    }];
    if fee > 0 {
        let revenue = state
            .account(&tenant.id, AccountKind::MerchantRevenue, &def.currency)
            .await
            .map_err(SettleError::Api)?;
        let fees = state
            .account(PLATFORM_OWNER, AccountKind::PlatformFees, &def.currency)
            .await
            .map_err(SettleError::Api)?;
        transfers.push(TransferRequest::Transfer {
            id: fee_id(&grant.grant_id),
            debit_account_id: revenue,
            credit_account_id: fees,
            amount: fee,
            currency: def.currency.clone(),
            timeout_ms: None,
            code: codes::FEE,
            user_data: Some(payment_id),
        });
    }
    let results = state
        .engine
        .guarded(LedgerGuard::Payment(Box::new(payment)), transfers)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "ledger failed while settling");
            SettleError::Api(ApiError::unavailable(
                "the ledger failed; nothing was charged",
            ))
        })?
        .map_err(|refusal| match refusal {
            GuardRefusal::PaymentTaken => SettleError::Taken,
            other => {
                tracing::error!(refusal = ?other, "a payment guard refused for another reason");
                SettleError::Api(ApiError::internal())
            }
        })?;
    if let Some(Err(err)) = results.into_iter().find(|r| r.is_err()) {
        let (kind, detail) = match err {
            TransferError::PendingExpired | TransferError::PendingAlreadyVoided => (
                ProblemType::PaymentExpired,
                "the payer's reservation has expired; pay again",
            ),
            TransferError::PendingTransferNotFound | TransferError::PendingTransferNotPending => (
                ProblemType::VerificationFailed,
                "the grant's reservation does not exist",
            ),
            TransferError::PendingAlreadyPosted => (
                ProblemType::VerificationFailed,
                "the grant's reservation was already spent",
            ),
            other => {
                tracing::error!(error = %other, "settlement refused by the ledger");
                (
                    ProblemType::VerificationFailed,
                    "the payment could not be settled",
                )
            }
        };
        return Err(SettleError::Refused(kind, detail.to_owned()));
    }
    Ok(())
}

/// The platform fee on `amount` (rounded down).
pub fn fee_minor(amount: u128, fee_bps: u32) -> u128 {
    amount.saturating_mul(u128::from(fee_bps)) / 10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fees_round_down_and_never_exceed_the_amount() {
        assert_eq!(fee_minor(1_000, 250), 25);
        assert_eq!(fee_minor(39, 250), 0);
        assert_eq!(fee_minor(1_000, 10_000), 1_000);
        assert_eq!(fee_minor(u128::MAX, 10_000), u128::MAX / 10_000);
    }
}
