//! Refunds and reversals read what a payment booked, never the live price or fee rate: the
//! payment's own transfers, found again by their derived ids, are what goes back. A price
//! raised, a currency switched or a fee rate changed after the payment changes nothing here.

use std::str::FromStr as _;

use turnpike_ledger::{Transfer, TransferId, TransferRequest};
use turnpike_store::{
    CheckReport, GuardRefusal, LedgerGuard, PaymentRow, RefundGuard, Store, StoreError,
};

use crate::error::ApiError;
use crate::method_turnpike::{codes, fee_id, fee_refund_id, post_id, refund_id, reservation_id};
use crate::rails;
use crate::state::AppState;

/// The transfers that booked one payment: what it paid the merchant, and the platform fee
/// taken from that (when there was one).
#[derive(Debug, Clone)]
pub struct Booked {
    /// The payment's booking: payer (or the rail's clearing) to the merchant's revenue.
    pub payment: Transfer,
    /// The platform fee: the merchant's revenue to the platform's fees.
    pub fee: Option<Transfer>,
}

impl Booked {
    /// What reached the merchant net of the fee.
    pub fn net(&self) -> Option<u128> {
        self.payment
            .amount
            .checked_sub(self.fee.as_ref().map_or(0, |f| f.amount))
    }
}

/// The ids of a payment's booking transfers: (payment, fee).
fn booking_ids(row: &PaymentRow) -> Option<(TransferId, TransferId)> {
    if row.payer_tenant_id.is_some() {
        // A `turnpike` payment: the proof key names the grant, whose id is the reservation's.
        let grant = row.proof_key.strip_prefix("turnpike:")?;
        let reservation = TransferId::from_str(grant).ok()?;
        return Some((post_id(reservation), fee_id(grant)));
    }
    Some((rails::rail_payment_id(&row.id), rails::rail_fee_id(&row.id)))
}

/// The payment's booked transfers, checked against its row (amount, currency, and the fee
/// taken from the account the payment credited). `None` when nothing was booked (a zero
/// amount, or not settled yet); an error, logged, when the books and the row disagree: nothing
/// is returned on a booking that cannot be trusted.
pub async fn booked(state: &AppState, row: &PaymentRow) -> Result<Option<Booked>, ApiError> {
    let Some((payment_id, fee_id)) = booking_ids(row) else {
        tracing::error!(payment = %row.id, "a payment without a readable proof key");
        return Err(ApiError::internal());
    };
    let Some(payment) = state.store.transfer(payment_id).await? else {
        return Ok(None);
    };
    let fee = state.store.transfer(fee_id).await?;
    if !booking_problems(row, Some(&payment), fee.as_ref()).is_empty() {
        tracing::error!(payment = %row.id, "the payment's row and its booking disagree; not reversed");
        return Err(ApiError::internal());
    }
    Ok(Some(Booked { payment, fee }))
}

/// How a payment's row and its booking transfers disagree (nothing when they agree).
fn booking_problems(
    row: &PaymentRow,
    payment: Option<&Transfer>,
    fee: Option<&Transfer>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(payment) = payment else {
        if fee.is_some() {
            problems.push("a fee was booked without the payment".to_owned());
        }
        return problems;
    };
    if row.amount.parse::<u128>().ok() != Some(payment.amount) || payment.currency != row.currency {
        problems.push(format!(
            "booked {} {}, the row says {} {}",
            payment.amount, payment.currency, row.amount, row.currency
        ));
    }
    if let Some(fee) = fee
        && (fee.currency != payment.currency
            || fee.debit_account_id != payment.credit_account_id
            || fee.amount > payment.amount)
    {
        problems.push(format!(
            "its fee of {} {} is not taken from the {} {} it booked",
            fee.amount, fee.currency, payment.amount, payment.currency
        ));
    }
    problems
}

/// The ids of the transfers that undo a payment's booking: (payment, fee).
fn undoing_ids(row: &PaymentRow) -> (TransferId, TransferId) {
    if row.payer_tenant_id.is_some() {
        (refund_id(&row.id), fee_refund_id(&row.id))
    } else {
        (
            rails::rail_reversal_id(&row.id),
            rails::rail_fee_reversal_id(&row.id),
        )
    }
}

/// What a payment's undoing transfers must return, from what it booked: a `turnpike` refund
/// returns the amount to the payer and the fee to the merchant; a rail reversal returns the
/// merchant's net and the fee to the rail's clearing. `None` when the fee exceeds the amount.
fn expected_undo(row: &PaymentRow, booked: u128, fee: u128) -> Option<(u128, u128)> {
    if row.payer_tenant_id.is_some() {
        Some((booked, fee))
    } else {
        Some((booked.checked_sub(fee)?, fee))
    }
}

/// Payments read per page by [`audit`].
const AUDIT_PAGE: i64 = 500;

/// Tie every payment to its transfers, for `turnpike ledger check`: a settled (or owed back,
/// or refunded) payment booked exactly its amount and currency, with a fee taken from what it
/// booked; an unsettled one booked nothing; a refund or reversal exists only for a payment in
/// a refunded or owed-back state, and returns exactly what was booked, never more.
pub async fn audit(store: &Store, report: &mut CheckReport) -> Result<(), StoreError> {
    let mut after: Option<String> = None;
    loop {
        let page = store.payments_by_id(after.as_deref(), AUDIT_PAGE).await?;
        for row in &page {
            let problems = payment_problems(store, row).await?;
            report.record_payment(&row.id, problems);
        }
        match page.last() {
            Some(last) if i64::try_from(page.len()).unwrap_or(i64::MAX) == AUDIT_PAGE => {
                after = Some(last.id.clone());
            }
            _ => return Ok(()),
        }
    }
}

async fn payment_problems(store: &Store, row: &PaymentRow) -> Result<Vec<String>, StoreError> {
    let Some((payment_id, fee_id)) = booking_ids(row) else {
        return Ok(vec!["its proof key does not name a grant".to_owned()]);
    };
    let payment = store.transfer(payment_id).await?;
    let fee = store.transfer(fee_id).await?;
    let mut problems = booking_problems(row, payment.as_ref(), fee.as_ref());
    let (undo_payment, undo_fee) = undoing_ids(row);
    let undo = (
        store.transfer(undo_payment).await?,
        store.transfer(undo_fee).await?,
    );
    let zero = row.amount == "0";
    match row.state.as_str() {
        "claimed" | "pending" if payment.is_some() => {
            problems.push(format!("booked while {}", row.state));
        }
        "settled" | "refund_due" | "refunded" if payment.is_none() && !zero => {
            problems.push(format!("{} but nothing was booked", row.state));
        }
        "claimed" | "pending" | "settled" | "refund_due" | "refunded" => {}
        other => problems.push(format!("unknown state {other:?}")),
    }
    let amount = |t: &Option<Transfer>| t.as_ref().map_or(0, |t| t.amount);
    let undone = (amount(&undo.0), amount(&undo.1));
    let undone_state = matches!(row.state.as_str(), "refunded" | "refund_due");
    if undo.0.is_none() && undo.1.is_none() {
        if undone_state && payment.is_some() {
            problems.push(format!("{} but its booking was not undone", row.state));
        }
    } else if !undone_state {
        problems.push(format!(
            "a refund or reversal was booked while {}",
            row.state
        ));
    } else {
        let expected = expected_undo(row, amount(&payment), amount(&fee));
        if expected != Some(undone) {
            problems.push(format!(
                "its refund or reversal returns {} and {} in fees, not what it booked",
                undone.0, undone.1
            ));
        }
    }
    Ok(problems)
}

/// Return a settled `turnpike` payment to its payer: exactly the transfers it booked, reversed
/// (the fee back to the merchant first, then the payment from the merchant to the payer),
/// with the payment marked `refunded` and the agent's spend released in the same ledger
/// transaction. True when refunded now, false when it was not settled any more (refunded
/// already by a racing failure or another replica): nothing is returned twice.
pub async fn refund_balance(state: &AppState, row: &PaymentRow) -> Result<bool, ApiError> {
    let payer = row
        .payer_tenant_id
        .as_deref()
        .ok_or_else(ApiError::internal)?;
    let Some(booked) = booked(state, row).await? else {
        tracing::error!(payment = %row.id, "a settled payment without its booking; not refunded");
        return Err(ApiError::internal());
    };
    let mut transfers = Vec::with_capacity(2);
    if let Some(fee) = &booked.fee {
        transfers.push(reversal(
            fee,
            fee_refund_id(&row.id),
            codes::FEE_REFUND,
            &row.id,
        ));
    }
    let payment = &booked.payment;
    transfers.push(reversal(
        payment,
        refund_id(&row.id),
        codes::REFUND,
        &row.id,
    ));
    let guard = LedgerGuard::Refund(Box::new(RefundGuard {
        payment_id: row.id.clone(),
        spend_id: Some(reservation_id(payer, &row.challenge_id).to_string()),
    }));
    let results = state
        .engine
        .guarded(guard, transfers)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, payment = %row.id, "ledger failed while refunding");
            ApiError::unavailable("the refund could not be booked yet")
        })?;
    match results {
        Err(GuardRefusal::PaymentTaken) => Ok(false),
        Err(other) => {
            tracing::error!(refusal = ?other, "unexpected refusal refunding a payment");
            Err(ApiError::internal())
        }
        Ok(results) if results.iter().all(Result::is_ok) => {
            tracing::info!(payment = %row.id, "payment refunded");
            Ok(true)
        }
        Ok(results) => {
            tracing::error!(?results, payment = %row.id, "refund refused by the ledger; left settled");
            Err(ApiError::internal())
        }
    }
}

/// The transfer undoing `booked`: the same amount and currency, between the same accounts the
/// other way.
pub fn reversal(booked: &Transfer, id: TransferId, code: u16, payment_id: &str) -> TransferRequest {
    TransferRequest::Transfer {
        id,
        debit_account_id: booked.credit_account_id,
        credit_account_id: booked.debit_account_id,
        amount: booked.amount,
        currency: booked.currency.clone(),
        timeout_ms: None,
        code,
        user_data: Some(payment_id.to_owned()),
    }
}
