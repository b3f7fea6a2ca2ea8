//! The merchant's per-request calls (`/v1/challenges`, `/v1/verify`) and its payments.

use std::str::FromStr;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use turnpike_ledger::TransferId;
use turnpike_store::PaymentRow;

use super::{Json, rfc3339};
use crate::auth::TenantAuth;
use crate::decision::Decision;
use crate::error::{ApiError, ApiResult};
use crate::method_turnpike::{fee_id, fee_refund_id, post_id, refund_id};
use crate::pipeline::{self, RequestFacts};
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
}

async fn challenges(
    auth: TenantAuth,
    State(state): State<AppState>,
    Json(facts): Json<RequestFacts>,
) -> ApiResult<axum::Json<Decision>> {
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
            out.push(json!({
                "id": t.id.to_string(),
                "kind": t.kind.as_str(),
                "debitAccountId": t.debit_account_id.to_string(),
                "creditAccountId": t.credit_account_id.to_string(),
                "amount": t.amount.to_string(),
                "currency": t.currency,
                "code": t.code,
                "timestamp": rfc3339(t.timestamp_ms),
            }));
        }
    }
    Ok(out)
}

/// The JSON form of a payment, with its ledger transfers.
pub async fn payment_json(state: &AppState, p: &PaymentRow) -> ApiResult<Value> {
    Ok(json!({
        "id": p.id, "state": p.state, "method": p.method, "amount": p.amount, "currency": p.currency,
        "challengeId": p.challenge_id, "priceId": p.price_id, "priceVersion": p.price_version,
        "payerTenantId": p.payer_tenant_id, "reference": p.reference,
        "createdAt": rfc3339(p.created_at), "updatedAt": rfc3339(p.updated_at),
        "transfers": payment_transfers(state, p).await?,
    }))
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
struct ListQuery {
    limit: Option<i64>,
}

async fn list(
    auth: TenantAuth,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<Value>> {
    let rows = state
        .store
        .payments(&auth.tenant.id, q.limit.unwrap_or(100))
        .await?;
    let mut data = Vec::with_capacity(rows.len());
    for row in &rows {
        data.push(payment_json(&state, row).await?);
    }
    Ok(axum::Json(json!({"data": data})))
}
