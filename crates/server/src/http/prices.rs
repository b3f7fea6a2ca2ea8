//! The price catalog: `POST/GET/PATCH/DELETE /v1/prices`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use turnpike_store::PriceRow;

use super::{Json, rfc3339};
use crate::auth::TenantAuth;
use crate::catalog::{PriceDefinition, PriceInput};
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::state::AppState;

/// Most prices per tenant.
pub const PRICES_PER_TENANT_MAX: usize = 1_000;

/// `/v1/prices`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/prices", post(create).get(list))
        .route("/v1/prices/{id}", get(read).patch(update).delete(remove))
}

fn price_json(row: &PriceRow) -> ApiResult<Value> {
    let definition: PriceDefinition =
        serde_json::from_str(&row.definition).map_err(|_| ApiError::internal())?;
    let mut body = serde_json::to_value(definition).map_err(|_| ApiError::internal())?;
    body["id"] = json!(row.id);
    body["version"] = json!(row.version);
    body["createdAt"] = json!(rfc3339(row.created_at));
    body["updatedAt"] = json!(rfc3339(row.updated_at));
    Ok(body)
}

async fn create(
    auth: TenantAuth,
    State(state): State<AppState>,
    Json(input): Json<PriceInput>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let definition = input.create()?;
    if let Some(url) = &definition.upstream_url {
        state.check_outbound("upstreamUrl", url).await?;
    }
    if state.store.prices(&auth.tenant.id).await?.len() >= PRICES_PER_TENANT_MAX {
        return Err(ApiError::conflict(format!(
            "a tenant holds at most {PRICES_PER_TENANT_MAX} prices"
        )));
    }
    let now_ms = state.now_ms();
    let row = PriceRow {
        id: ids::new_id("price"),
        tenant_id: auth.tenant.id.clone(),
        version: 1,
        definition: serde_json::to_string(&definition).map_err(|_| ApiError::internal())?,
        created_at: now_ms,
        updated_at: now_ms,
    };
    state.store.insert_price(&row).await?;
    state.caches.prices.remove(&auth.tenant.id);
    Ok((StatusCode::CREATED, axum::Json(price_json(&row)?)))
}

async fn list(auth: TenantAuth, State(state): State<AppState>) -> ApiResult<axum::Json<Value>> {
    let rows = state.store.prices(&auth.tenant.id).await?;
    let data = rows.iter().map(price_json).collect::<ApiResult<Vec<_>>>()?;
    Ok(axum::Json(json!({"data": data})))
}

async fn read(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let row = state
        .store
        .price(&auth.tenant.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("price"))?;
    Ok(axum::Json(price_json(&row)?))
}

async fn update(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(input): Json<PriceInput>,
) -> ApiResult<axum::Json<Value>> {
    let current = state
        .store
        .price(&auth.tenant.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("price"))?;
    let definition: PriceDefinition =
        serde_json::from_str(&current.definition).map_err(|_| ApiError::internal())?;
    let next = input.apply(&definition)?;
    if let Some(url) = &next.upstream_url {
        state.check_outbound("upstreamUrl", url).await?;
    }
    let text = serde_json::to_string(&next).map_err(|_| ApiError::internal())?;
    let row = state
        .store
        .update_price(&auth.tenant.id, &id, current.version, &text, state.now_ms())
        .await?
        .ok_or_else(|| {
            ApiError::conflict("the price changed meanwhile; read it again and retry")
        })?;
    state.caches.prices.remove(&auth.tenant.id);
    Ok(axum::Json(price_json(&row)?))
}

async fn remove(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    if state
        .store
        .delete_price(&auth.tenant.id, &id, state.now_ms())
        .await?
    {
        state.caches.prices.remove(&auth.tenant.id);
        Ok(axum::Json(json!({"id": id, "deleted": true})))
    } else {
        Err(ApiError::not_found("price"))
    }
}
