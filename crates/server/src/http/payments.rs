//! The merchant's per-request calls (`/v1/challenges`, `/v1/verify`) and its payments.

use std::str::FromStr;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use turnpike_ledger::TransferId;
use turnpike_protocol::b64;
use turnpike_store::{LIST_LIMIT_MAX, PaymentRow};

use super::{Json, rfc3339};
use crate::auth::TenantAuth;
use crate::decision::Decision;
use crate::error::{ApiError, ApiResult};
use crate::method_turnpike::{fee_id, fee_refund_id, post_id, refund_id};
use crate::pipeline::{self, RequestFacts};
use crate::rails;
use crate::state::AppState;

/// Most `Authorization` values one verify call may carry.
pub const AUTHORIZATION_VALUES_MAX: usize = 8;

/// `/v1/challenges`, `/v1/verify`, `/v1/payments`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/challenges", post(challenges))
        .route("/v1/verify", post(verify))
        .route("/v1/payments", get(list))
        .route("/v1/payments/{id}", get(read))
        .route("/v1/payments/{id}/refunds", post(record_refund))
}

async fn challenges(
    auth: TenantAuth,
    State(state): State<AppState>,
    Json(facts): Json<RequestFacts>,
) -> ApiResult<axum::Json<Decision>> {
    state.limiters.challenge_by_key(&auth.key_id)?;
    Ok(axum::Json(
        pipeline::challenge(&state, &auth.tenant, &facts).await?,
    ))
}

/// One `Authorization` value or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Authorization {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyBody {
    #[serde(default)]
    authorization: Option<Authorization>,
    #[serde(flatten)]
    facts: RequestFacts,
}

async fn verify(
    auth: TenantAuth,
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<VerifyBody>,
) -> ApiResult<axum::Json<Decision>> {
    state.limiters.verification_by_key(&auth.key_id)?;
    let values = match body.authorization {
        None => Vec::new(),
        Some(Authorization::One(value)) => vec![value],
        Some(Authorization::Many(values)) => values,
    };
    if values.len() > AUTHORIZATION_VALUES_MAX {
        return Err(ApiError::invalid(format!(
            "`authorization` holds at most {AUTHORIZATION_VALUES_MAX} values"
        )));
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::invalid("`Idempotency-Key` must be visible ASCII"))?,
        ),
    };
    Ok(axum::Json(
        pipeline::verify(&state, &auth.tenant, &values, &body.facts, key).await?,
    ))
}

/// The transfers a `turnpike` payment booked, found by their derived ids.
async fn payment_transfers(state: &AppState, payment: &PaymentRow) -> ApiResult<Vec<Value>> {
    let Some(grant) = payment.proof_key.strip_prefix("turnpike:") else {
        return Ok(Vec::new());
    };
    let Ok(reservation) = TransferId::from_str(grant) else {
        return Ok(Vec::new());
    };
    let candidates = [
        reservation,
        post_id(reservation),
        fee_id(grant),
        refund_id(&payment.id),
        fee_refund_id(&payment.id),
    ];
    let mut out = Vec::new();
    for id in candidates {
        if let Some(t) = state.store.transfer(id).await? {
            out.push(transfer_json(&t));
        }
    }
    Ok(out)
}

fn transfer_json(t: &turnpike_ledger::Transfer) -> Value {
    json!({
        "id": t.id.to_string(),
        "kind": t.kind.as_str(),
        "debitAccountId": t.debit_account_id.to_string(),
        "creditAccountId": t.credit_account_id.to_string(),
        "amount": t.amount.to_string(),
        "currency": t.currency,
        "code": t.code,
        "timestamp": rfc3339(t.timestamp_ms),
    })
}

/// The transfers of an outside-rail payment (its booking, and its reversal when it is owed
/// back on chain), found by their derived ids.
async fn rail_transfers(state: &AppState, payment: &PaymentRow) -> ApiResult<Vec<Value>> {
    let mut out = Vec::new();
    for id in [
        rails::rail_payment_id(&payment.id),
        rails::rail_fee_id(&payment.id),
        rails::rail_reversal_id(&payment.id),
        rails::rail_fee_reversal_id(&payment.id),
    ] {
        if let Some(t) = state.store.transfer(id).await? {
            out.push(transfer_json(&t));
        }
    }
    Ok(out)
}

/// The JSON form of a payment, with its ledger transfers. A chain payment owed back (or
/// refunded) by its merchant also names `payerAddress` and `refundReference`.
pub async fn payment_json(state: &AppState, p: &PaymentRow) -> ApiResult<Value> {
    let on_rail = p.payer_tenant_id.is_none();
    let refund = if on_rail && OWED_BACK_STATES.contains(&p.state.as_str()) {
        state.store.payment_refund(&p.tenant_id, &p.id).await?
    } else {
        None
    };
    let transfers = if on_rail {
        rail_transfers(state, p).await?
    } else {
        payment_transfers(state, p).await?
    };
    let (payer_address, refund_reference) = refund
        .map(|r| (r.payer_address, r.refund_reference))
        .unwrap_or_default();
    Ok(json!({
        "id": p.id, "state": p.state, "method": p.method, "amount": p.amount, "currency": p.currency,
        "challengeId": p.challenge_id, "priceId": p.price_id, "priceVersion": p.price_version,
        "payerTenantId": p.payer_tenant_id, "payerAddress": payer_address, "reference": p.reference,
        "refundReference": refund_reference,
        "createdAt": rfc3339(p.created_at), "updatedAt": rfc3339(p.updated_at),
        "transfers": transfers,
    }))
}

/// States in which a chain payment may be owed back by its merchant.
const OWED_BACK_STATES: [&str; 2] = ["refund_due", "refunded"];

/// Every payment state (`GET /v1/payments?state=`).
pub const PAYMENT_STATES: [&str; 5] = ["claimed", "pending", "settled", "refund_due", "refunded"];

/// Longest refund reference accepted (a `0x` transaction hash is 66).
pub const REFUND_REFERENCE_LEN: usize = 66;

/// `POST /v1/payments/{id}/refunds`: the merchant returned a `refund_due` payment on chain.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RefundBody {
    /// The refund's transaction hash (`0x` + 64 hex digits).
    reference: String,
}

fn is_tx_hash(reference: &str) -> bool {
    reference.len() == REFUND_REFERENCE_LEN
        && reference.starts_with("0x")
        && reference[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

async fn record_refund(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(body): Json<RefundBody>,
) -> ApiResult<axum::Json<Value>> {
    if !is_tx_hash(&body.reference) {
        return Err(ApiError::invalid(
            "`reference` must be the refund's transaction hash: 0x and 64 hex digits",
        ));
    }
    let payment = state
        .store
        .payment(&auth.tenant.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment"))?;
    let not_due = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "refund-not-due",
            format!("payment {id} is not owed back (state `refund_due`)"),
        )
    };
    if payment.state != "refund_due" {
        return Err(not_due().with("state", payment.state.clone().into()));
    }
    let reference = body.reference.to_ascii_lowercase();
    if !state
        .store
        .record_refund(&auth.tenant.id, &id, &reference, state.now_ms())
        .await?
    {
        return Err(not_due());
    }
    tracing::info!(payment = %id, "the merchant recorded its on-chain refund");
    let payment = state
        .store
        .payment(&auth.tenant.id, &id)
        .await?
        .ok_or_else(ApiError::internal)?;
    Ok(axum::Json(payment_json(&state, &payment).await?))
}

async fn read(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let payment = state
        .store
        .payment(&auth.tenant.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment"))?;
    Ok(axum::Json(payment_json(&state, &payment).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
    state: Option<String>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// Payments per page unless `limit` says otherwise.
pub const LIST_LIMIT_DEFAULT: i64 = 100;

/// The cursor after `p`: its creation time and id, base64url (opaque to clients).
fn cursor_after(p: &PaymentRow) -> String {
    b64::encode(format!("{}:{}", p.created_at, p.id).as_bytes())
}

/// The position a cursor names, or `None` when it is not one this server issued.
fn parse_cursor(cursor: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(b64::decode(cursor).ok()?).ok()?;
    let (at, id) = text.split_once(':')?;
    let at = at.parse::<i64>().ok()?;
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    id_ok.then(|| (at, id.to_owned()))
}

async fn list(
    auth: TenantAuth,
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Value>> {
    // Serde's message names the parameter: "unknown field `x`", "invalid digit" for `limit`.
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    if let Some(wanted) = q.state.as_deref()
        && !PAYMENT_STATES.contains(&wanted)
    {
        return Err(ApiError::invalid(format!(
            "`state` must be one of {}",
            PAYMENT_STATES.join(", ")
        )));
    }
    let limit = q.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "`limit` must be 1 to {LIST_LIMIT_MAX}"
        )));
    }
    let before = match q.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(parse_cursor(cursor).ok_or_else(|| {
            ApiError::invalid("`cursor` is not a `nextCursor` this API returned")
        })?),
    };
    let mut rows = state
        .store
        .payments(
            &auth.tenant.id,
            q.state.as_deref(),
            before.as_ref().map(|(at, id)| (*at, id.as_str())),
            limit + 1,
        )
        .await?;
    // One more than asked for was read: if it came, another page follows.
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        rows.last().map(cursor_after)
    } else {
        None
    };
    let mut data = Vec::with_capacity(rows.len());
    for row in &rows {
        data.push(payment_json(&state, row).await?);
    }
    Ok(axum::Json(json!({"data": data, "nextCursor": next_cursor})))
}
