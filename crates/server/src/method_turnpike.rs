//! The `turnpike` payment method (docs/methods/turnpike.md), the platform's side: an
//! organisation's balance on the platform pays a merchant on the platform. The payer's amount is
//! reserved as a pending ledger transfer when the agent asks for a credential; the credential
//! carries a grant (Ed25519 JWS) bound to the challenge. The method itself (its request, the
//! offline check of the grant) is [`turnpike_rails::BalanceRail`]; here is the ledger it posts
//! through ([`PaymentLedger`]: the reservation, with the platform fee as a linked transfer and
//! the payment row in the same transaction) and the ids and codes of the method's transfers.

use std::sync::{Arc, Mutex, PoisonError};

use turnpike_ledger::{AccountKind, TransferError, TransferId, TransferRequest};
use turnpike_protocol::{ChallengeEcho, Credential, ProblemType};
use turnpike_rails::balance::{
    BalanceConfig, BalanceLedger, BalanceRail, Issuer, NoLedger, PostError, Posting, VerifiedGrant,
    Voided, is_unknown_key,
};
use turnpike_rails::{ChallengeFacts, PriceTerms, Rail as _, Rejection};
use turnpike_store::{GuardRefusal, LedgerGuard, PaymentRow, TenantRow};

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

/// The transfer that voids a reservation.
pub fn void_id(reservation: TransferId) -> TransferId {
    TransferId(ids::derived_u128(&["void", &reservation.to_string()]))
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

/// A merchant's `turnpike` rail for offering and verifying (it posts nothing).
pub fn offline_config<'a>(
    issuer: &'a Issuer,
    tenant: &'a TenantRow,
) -> BalanceConfig<'a, NoLedger> {
    BalanceConfig {
        issuer,
        recipient: &tenant.id,
        ledger: NoLedger,
    }
}

/// Check a `turnpike` credential offline against its challenge and price (the rail's
/// [`Rail::verify`]). A grant signed under a key this replica has not loaded (rotated in on
/// another replica) is checked again after reloading the keys; the issuer it was checked
/// against comes back with it.
pub async fn verify(
    state: &AppState,
    mut issuer: Arc<Issuer>,
    tenant: &TenantRow,
    challenge: &ChallengeEcho,
    price: &PriceTerms<'_>,
    credential: &Credential,
) -> Result<Result<(VerifiedGrant, Arc<Issuer>), Rejection>, ApiError> {
    let facts = ChallengeFacts {
        id: &challenge.id,
        realm: &challenge.realm,
        expires_at_s: challenge
            .expires_at()
            .ok()
            .flatten()
            .map_or(0, |t| t.timestamp()),
    };
    let now_s = state.now_ms().div_euclid(1000);
    let rail = BalanceRail::new();
    let mut result = rail.verify(
        &offline_config(&issuer, tenant),
        facts,
        price,
        credential,
        now_s,
    );
    if result.as_ref().is_err_and(is_unknown_key) {
        issuer = state.reload_issuer().await?;
        result = rail.verify(
            &offline_config(&issuer, tenant),
            facts,
            price,
            credential,
            now_s,
        );
    }
    Ok(result.map(|grant| (grant, issuer)))
}

/// The ledger one verification settles through: it posts the payer's reservation to the
/// merchant's revenue and moves the platform fee, all or nothing, with the payment row in the
/// same ledger transaction (state `settled`, under the store's single-use constraints: when its
/// challenge or proof was already used, nothing is posted and the result is
/// [`PostError::Taken`]). It posts its one payment once.
#[derive(Debug)]
pub struct PaymentLedger<'a> {
    state: &'a AppState,
    /// The payment row, taken by the posting.
    payment: Mutex<Option<PaymentRow>>,
}

impl<'a> PaymentLedger<'a> {
    /// The ledger that posts `payment` (its proof key, payer and reference are the posting's).
    pub fn new(state: &'a AppState, payment: PaymentRow) -> Self {
        Self {
            state,
            payment: Mutex::new(Some(payment)),
        }
    }
}

impl BalanceLedger for PaymentLedger<'_> {
    type Error = ApiError;

    async fn post(&self, posting: Posting<'_>) -> Result<(), PostError<ApiError>> {
        let taken = self
            .payment
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(payment) = taken else {
            tracing::error!("a payment ledger was asked to post twice");
            return Err(PostError::Ledger(ApiError::internal()));
        };
        let state = self.state;
        let payment_id = payment.id.clone();
        let payment = PaymentRow {
            proof_key: posting.replay_token,
            payer_tenant_id: Some(posting.payer_tenant_id.to_owned()),
            // The balance method settles in the ledger: the payment id is its own reference.
            reference: Some(payment.id.clone()),
            ..payment
        };
        let reservation = TransferId(posting.reservation);
        let fee = fee_minor(posting.amount_minor, state.config.platform_fee_bps);
        let mut transfers = vec![TransferRequest::Post {
            id: post_id(reservation),
            pending_id: reservation,
            amount: None,
        }];
        if fee > 0 {
            let revenue = state
                .account(
                    posting.recipient,
                    AccountKind::MerchantRevenue,
                    posting.currency,
                )
                .await
                .map_err(PostError::Ledger)?;
            let fees = state
                .account(PLATFORM_OWNER, AccountKind::PlatformFees, posting.currency)
                .await
                .map_err(PostError::Ledger)?;
            transfers.push(TransferRequest::Transfer {
                id: fee_id(posting.grant_id),
                debit_account_id: revenue,
                credit_account_id: fees,
                amount: fee,
                currency: posting.currency.to_owned(),
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
                PostError::Ledger(ApiError::unavailable(
                    "the ledger failed; nothing was charged",
                ))
            })?
            .map_err(|refusal| match refusal {
                GuardRefusal::PaymentTaken => PostError::Taken,
                other => {
                    tracing::error!(refusal = ?other, "a payment guard refused for another reason");
                    PostError::Ledger(ApiError::internal())
                }
            })?;
        if let Some(Err(err)) = results.into_iter().find(|r| r.is_err()) {
            let (kind, detail) = match err {
                TransferError::PendingExpired | TransferError::PendingAlreadyVoided => (
                    ProblemType::PaymentExpired,
                    "the payer's reservation has expired; pay again",
                ),
                TransferError::PendingTransferNotFound
                | TransferError::PendingTransferNotPending => (
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
            return Err(PostError::Refused(Rejection {
                kind,
                detail: detail.to_owned(),
            }));
        }
        Ok(())
    }

    async fn void(&self, reservation: u128) -> Result<Voided, ApiError> {
        let reservation = TransferId(reservation);
        let result = self
            .state
            .engine
            .transfer(TransferRequest::Void {
                id: void_id(reservation),
                pending_id: reservation,
            })
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "ledger failed while voiding a reservation");
                ApiError::unavailable("the ledger failed")
            })?;
        match result {
            Ok(_) => Ok(Voided::Released),
            Err(TransferError::PendingAlreadyPosted) => Ok(Voided::AlreadyPosted),
            Err(TransferError::PendingAlreadyVoided | TransferError::PendingExpired) => {
                Ok(Voided::AlreadyReleased)
            }
            Err(
                TransferError::PendingTransferNotFound | TransferError::PendingTransferNotPending,
            ) => Ok(Voided::NotFound),
            Err(other) => {
                tracing::error!(error = %other, "voiding a reservation refused by the ledger");
                Err(ApiError::internal())
            }
        }
    }
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
