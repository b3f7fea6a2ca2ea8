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

/// Basis points in a whole (100%).
const BPS_PER_WHOLE: u128 = 10_000;

/// The platform fee on `amount`: exactly `floor(amount * fee_bps / 10_000)`, for every `amount`
/// up to `u128::MAX`, without the product ever being formed.
///
/// Write `amount = q * 10_000 + r` with `q = amount / 10_000` and `0 <= r < 10_000`. Then
/// `amount * bps / 10_000 = q * bps + r * bps / 10_000`, and as `q * bps` is an integer,
/// `floor(amount * bps / 10_000) = q * bps + floor(r * bps / 10_000)`, which is what is computed.
/// Neither term overflows when `bps <= 10_000`: `q * bps <= q * 10_000 <= amount`, and
/// `r * bps < 10_000 * 10_000`; their sum is the fee, at most `amount`.
///
/// # Panics
/// When `fee_bps` is above [`PLATFORM_FEE_BPS_MAX`](crate::state::PLATFORM_FEE_BPS_MAX), which
/// the configuration refuses at start-up.
pub fn fee_minor(amount: u128, fee_bps: u32) -> u128 {
    assert!(
        fee_bps <= crate::state::PLATFORM_FEE_BPS_MAX,
        "platform fee of {fee_bps} bps above 100%"
    );
    let bps = u128::from(fee_bps);
    let fee = amount / BPS_PER_WHOLE * bps + amount % BPS_PER_WHOLE * bps / BPS_PER_WHOLE;
    debug_assert!(fee <= amount);
    fee
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use turnpike_ledger::PendingState;
    use turnpike_rails::Settlement;
    use turnpike_store::on_both_databases;
    use turnpike_store::testing::TestDb;

    use super::*;
    use crate::http::admin::{NewTenant, create_tenant};
    use crate::state::Config;

    const FUNDS: u128 = 1_000;

    async fn start(db: &TestDb) -> AppState {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Config {
            public_url: "http://turnpike.test".into(),
            admin_token: None,
            platform_fee_bps: 250,
            upstream_timeout: Duration::from_secs(5),
            test_clock: false,
            secrets_key: Some(crate::secrets::SecretsKey::parse(&"ab".repeat(32)).unwrap()),
            allow_unsealed_signing_keys: false,
            metrics_token: None,
            outbound: Default::default(),
            connections: crate::connections::ConnectionLimits::defaults(Duration::from_secs(5)),
            rate_limits: crate::limits::RateLimits::unlimited(),
        };
        crate::start(db.open().await, config).await.unwrap()
    }

    async fn tenant(state: &AppState, slug: &str) -> TenantRow {
        let input = NewTenant {
            name: slug.into(),
            slug: slug.into(),
            realm: None,
        };
        create_tenant(&state.store, state.now_ms(), input)
            .await
            .unwrap()
            .0
    }

    /// Fund `payer` and reserve `amount` of it for `merchant`, as `/v1/agent/pay` does.
    async fn reserve(state: &AppState, payer: &str, merchant: &str, challenge: &str) -> TransferId {
        let external = state
            .account(PLATFORM_OWNER, AccountKind::External, "usd")
            .await
            .unwrap();
        let balance = state
            .account(payer, AccountKind::PayerBalance, "usd")
            .await
            .unwrap();
        let revenue = state
            .account(merchant, AccountKind::MerchantRevenue, "usd")
            .await
            .unwrap();
        let reservation = reservation_id(payer, challenge);
        for (id, debit, credit, amount, timeout_ms) in [
            (
                TransferId(ids::random_u128()),
                external,
                balance,
                FUNDS,
                None,
            ),
            (reservation, balance, revenue, 400, Some(60_000)),
        ] {
            let request = TransferRequest::Transfer {
                id,
                debit_account_id: debit,
                credit_account_id: credit,
                amount,
                currency: "usd".into(),
                timeout_ms,
                code: codes::RESERVE,
                user_data: None,
            };
            state.engine.transfer(request).await.unwrap().unwrap();
        }
        reservation
    }

    fn grant(reservation: TransferId, payer: &str) -> VerifiedGrant {
        VerifiedGrant {
            reservation: reservation.0,
            grant_id: reservation.to_string(),
            payer_tenant_id: payer.into(),
            agent_id: "agt_test".into(),
            amount_minor: 400,
            currency: "usd".into(),
            expires_at_s: i64::MAX,
        }
    }

    fn payment(id: &str, merchant: &str, challenge: &str) -> PaymentRow {
        PaymentRow {
            id: id.into(),
            tenant_id: merchant.into(),
            challenge_id: challenge.into(),
            proof_key: String::new(),
            state: "settled".into(),
            method: "turnpike".into(),
            amount: "400".into(),
            currency: "usd".into(),
            price_id: "pri_test".into(),
            price_version: 1,
            payer_tenant_id: None,
            reference: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    async fn balance(state: &AppState, owner: &str, kind: AccountKind) -> i128 {
        let id = state.account(owner, kind, "usd").await.unwrap();
        let account = state.store.account(None, id).await.unwrap().unwrap();
        i128::try_from(account.credits_posted).unwrap()
            - i128::try_from(account.debits_posted).unwrap()
    }

    async fn the_balance_rail_posts_once_and_resolves_by_voiding(db: &TestDb) {
        let state = start(db).await;
        let issuer = state.issuer();
        let shop = tenant(&state, "shop").await;
        let buyer = tenant(&state, "buyer").await;
        let rail = BalanceRail::new();
        let config = |id: &str, challenge: &str| BalanceConfig {
            issuer: &issuer,
            recipient: &shop.id,
            ledger: PaymentLedger::new(&state, payment(id, &shop.id, challenge)),
        };

        // Posted: the payment is recorded with the grant as its proof, the fee is taken.
        let posted = grant(
            reserve(&state, &buyer.id, &shop.id, "chal-1").await,
            &buyer.id,
        );
        let first = config("pay_1", "chal-1");
        let prepared = rail.prepare(&first, &posted).await.unwrap();
        let settled = Settlement::Settled {
            reference: posted.grant_id.clone(),
        };
        assert_eq!(rail.submit(&first, &prepared).await, settled);
        let row = state
            .store
            .payment(&shop.id, "pay_1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.proof_key, format!("turnpike:{}", posted.grant_id));
        assert_eq!(row.payer_tenant_id.as_deref(), Some(buyer.id.as_str()));
        assert_eq!(row.reference.as_deref(), Some("pay_1"));
        assert_eq!(
            balance(&state, &shop.id, AccountKind::MerchantRevenue).await,
            390
        );
        assert_eq!(
            balance(&state, PLATFORM_OWNER, AccountKind::PlatformFees).await,
            10
        );
        // Resolving it finds it posted; another payment of the same grant is refused.
        assert_eq!(rail.resolve(&first, &prepared, 0).await, settled);
        let again = config("pay_2", "chal-other");
        assert!(matches!(
            rail.settle(&again, &posted).await,
            Err(PostError::Taken)
        ));

        // Never posted: resolving voids the reservation and the payer has its funds back.
        let reservation = reserve(&state, &buyer.id, &shop.id, "chal-2").await;
        let unposted = grant(reservation, &buyer.id);
        let second = config("pay_3", "chal-2");
        let prepared = rail.prepare(&second, &unposted).await.unwrap();
        assert!(matches!(
            rail.resolve(&second, &prepared, 0).await,
            Settlement::Failed(Rejection {
                kind: ProblemType::PaymentExpired,
                ..
            })
        ));
        assert_eq!(
            state.store.pending_state(reservation).await.unwrap(),
            Some(PendingState::Voided)
        );
        assert_eq!(
            balance(&state, &buyer.id, AccountKind::PayerBalance).await,
            i128::try_from(2 * FUNDS - 400).unwrap()
        );
        // A voided reservation never posts.
        assert!(matches!(
            rail.settle(&second, &unposted).await,
            Err(PostError::Refused(Rejection {
                kind: ProblemType::PaymentExpired,
                ..
            }))
        ));
        assert!(
            state
                .store
                .payment(&shop.id, "pay_3")
                .await
                .unwrap()
                .is_none()
        );
    }

    on_both_databases!(the_balance_rail_posts_once_and_resolves_by_voiding);

    #[test]
    fn fees_round_down_and_never_exceed_the_amount() {
        assert_eq!(fee_minor(1_000, 250), 25);
        assert_eq!(fee_minor(39, 250), 0);
        assert_eq!(fee_minor(40, 250), 1);
        assert_eq!(fee_minor(1_000, 10_000), 1_000);
        assert_eq!(fee_minor(1_000, 0), 0);
        // 100% of anything is all of it, however large.
        assert_eq!(fee_minor(u128::MAX, 10_000), u128::MAX);
        assert_eq!(fee_minor(u128::MAX, 0), 0);
        // floor((2^128 - 1) * 250 / 10_000) = floor((2^128 - 1) / 40).
        assert_eq!(fee_minor(u128::MAX, 250), u128::MAX / 40);
        assert_eq!(fee_minor(u128::MAX, 5_000), u128::MAX / 2);
        assert_eq!(
            fee_minor(u128::MAX, 3_333),
            113_416_112_894_748_789_872_342_756_657_008_344_877
        );
    }

    /// `floor(amount * bps / 10_000)` computed on 256 bits (two u128 halves): the reference
    /// [`fee_minor`] must equal.
    fn fee_wide(amount: u128, bps: u32) -> u128 {
        let product = U256Lite::mul(amount, u128::from(bps));
        product.div_small(10_000)
    }

    /// A 256-bit unsigned integer as high and low u128 halves, just enough for the reference.
    struct U256Lite {
        high: u128,
        low: u128,
    }

    impl U256Lite {
        /// `a * b` for `b < 2^64`, exactly.
        fn mul(a: u128, b: u128) -> Self {
            assert!(b < 1 << 64);
            let (a_high, a_low) = (a >> 64, a & u128::from(u64::MAX));
            let low_part = a_low * b; // < 2^128
            let high_part = a_high * b; // < 2^128, weighs 2^64
            let (low, carry) = low_part.overflowing_add(high_part << 64);
            Self {
                high: (high_part >> 64) + u128::from(carry),
                low,
            }
        }

        /// `floor(self / d)` for `0 < d < 2^64` when the quotient fits in u128, by long
        /// division in 64-bit digits.
        fn div_small(&self, d: u128) -> u128 {
            assert!(0 < d && d < 1 << 64);
            let digits = [
                self.high >> 64,
                self.high & u128::from(u64::MAX),
                self.low >> 64,
                self.low & u128::from(u64::MAX),
            ];
            let mut remainder = 0u128;
            let mut quotient = [0u128; 4];
            for (digit, q) in digits.iter().zip(quotient.iter_mut()) {
                let current = (remainder << 64) | digit; // remainder < d < 2^64: no overflow
                *q = current / d;
                remainder = current % d;
            }
            assert_eq!(quotient[0], 0, "quotient wider than u128");
            assert_eq!(quotient[1], 0, "quotient wider than u128");
            (quotient[2] << 64) | quotient[3]
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        #[test]
        fn fee_is_exactly_the_floor_of_the_wide_product(
            amount in proptest::prelude::any::<u128>(),
            bps in 0u32..=10_000,
        ) {
            proptest::prop_assert_eq!(fee_minor(amount, bps), fee_wide(amount, bps));
        }

        #[test]
        fn fee_is_exact_near_the_top_and_at_multiples(
            below_max in 0u128..100_000,
            bps in 0u32..=10_000,
        ) {
            let amount = u128::MAX - below_max;
            proptest::prop_assert_eq!(fee_minor(amount, bps), fee_wide(amount, bps));
            let multiple = (amount / 10_000) * 10_000;
            proptest::prop_assert_eq!(fee_minor(multiple, bps), fee_wide(multiple, bps));
        }
    }

    #[test]
    fn fee_is_exact_for_small_amounts_and_every_rate() {
        for bps in [0, 1, 99, 100, 250, 3_333, 9_999, 10_000] {
            for amount in 0..30_000u128 {
                assert_eq!(fee_minor(amount, bps), amount * u128::from(bps) / 10_000);
            }
        }
    }

    #[test]
    fn the_wide_reference_is_itself_right() {
        assert_eq!(fee_wide(u128::MAX, 10_000), u128::MAX);
        assert_eq!(fee_wide(u128::MAX, 5_000), u128::MAX / 2);
        // Figures from Python's arbitrary-precision integers.
        assert_eq!(fee_wide(1 << 100, 7), 887_355_420_159_760_581_047_692_243);
        assert_eq!(
            fee_wide(u128::MAX, 3_333),
            113_416_112_894_748_789_872_342_756_657_008_344_877
        );
        assert_eq!(
            fee_wide(u128::MAX - 5, 9_999),
            340_248_338_684_246_369_617_028_269_971_025_034_628
        );
        assert_eq!(fee_wide(123_456_789, 250), 123_456_789 * 250 / 10_000);
    }

    #[test]
    #[should_panic(expected = "above 100%")]
    fn a_fee_above_100_percent_is_refused() {
        let _ = fee_minor(1, 10_001);
    }
}
