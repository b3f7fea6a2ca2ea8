//! Deposits: the operator's configuration (`PUT/GET /v1/admin/deposits/evm`, admin token), a
//! tenant's deposit address (`POST/GET /v1/deposits/evm/address`) and its credited deposits
//! (`GET /v1/deposits`). The address's private key is sealed at rest and never returned.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use turnpike_rails::rpc;
use turnpike_store::{CursorStart, DepositAddressRow, DepositRow};

use super::rfc3339;
use crate::auth::{Admin, TenantAuth};
use crate::deposits::{
    EvmDepositInput, EvmDepositSettings, METHOD, evm_settings, new_deposit_key, sealed_context,
};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// `/v1/admin/deposits/evm`, `/v1/deposits/evm/address`, `/v1/deposits`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/admin/deposits/evm",
            axum::routing::put(put_config).get(get_config),
        )
        .route(
            "/v1/deposits/evm/address",
            post(create_address).get(get_address),
        )
        .route("/v1/deposits", get(list))
}

fn deposits_disabled() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "deposits-disabled",
        "the operator has not configured deposits on this server",
    )
}

async fn config_json(state: &AppState, settings: &EvmDepositSettings) -> ApiResult<Value> {
    let row = state
        .store
        .deposit_config(METHOD)
        .await?
        .ok_or_else(ApiError::internal)?;
    let chain_id = i64::try_from(settings.chain_id).map_err(|_| ApiError::internal())?;
    let next_block = state.store.deposit_cursor(METHOD, chain_id).await?;
    let mut body = serde_json::to_value(settings).map_err(|_| ApiError::internal())?;
    body["method"] = json!(METHOD);
    body["version"] = json!(row.version);
    body["updatedAt"] = json!(rfc3339(row.updated_at));
    body["nextBlock"] = json!(next_block);
    Ok(body)
}

/// `PUT /v1/admin/deposits/evm`: validate, check that the RPC serves the chain, store.
async fn put_config(
    _: Admin,
    State(state): State<AppState>,
    super::Body(body): super::Body,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|err| ApiError::invalid(format!("invalid JSON body: {err}")))?;
    let input: EvmDepositInput = serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            ApiError::invalid(format!("invalid deposit configuration: {inner}"))
        } else {
            ApiError::invalid(format!(
                "invalid deposit configuration at `{path}`: {inner}"
            ))
        }
    })?;
    let (settings, start_block) = input.validate().map_err(ApiError::invalid)?;
    state.check_outbound("rpcUrl", &settings.rpc_url).await?;
    let provider = state
        .rails
        .deposits_rpc
        .get(&settings.rpc_url)
        .map_err(|_| ApiError::invalid("`rpcUrl` is not a usable URL"))?;
    let unreachable = |_| {
        ApiError::unavailable("the RPC at `rpcUrl` did not answer; nothing was stored")
            .retry_after(5)
    };
    let served = rpc::chain_id(&provider).await.map_err(unreachable)?;
    if served != settings.chain_id {
        return Err(ApiError::invalid(format!(
            "`rpcUrl` serves chain {served}, not `chainId` {}",
            settings.chain_id
        )));
    }
    let start = match start_block {
        Some(block) => CursorStart::Reset(block),
        None => {
            let head = rpc::block_number(&provider).await.map_err(unreachable)?;
            CursorStart::IfNew(i64::try_from(head).map_err(|_| ApiError::internal())?)
        }
    };
    let text = serde_json::to_string(&settings).map_err(|_| ApiError::internal())?;
    let chain_id = i64::try_from(settings.chain_id).map_err(|_| ApiError::internal())?;
    let version = state
        .store
        .put_deposit_config(METHOD, &text, chain_id, start, state.now_ms())
        .await?;
    let status = if version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(config_json(&state, &settings).await?)))
}

async fn get_config(_: Admin, State(state): State<AppState>) -> ApiResult<axum::Json<Value>> {
    let settings = evm_settings(&state)
        .await?
        .ok_or_else(|| ApiError::not_found("deposit configuration"))?;
    Ok(axum::Json(config_json(&state, &settings).await?))
}

/// What a tenant needs to deposit: its address and the chain's terms (never the RPC URL).
fn address_json(address: &str, settings: &EvmDepositSettings) -> Value {
    json!({
        "method": METHOD,
        "address": address,
        "chainId": settings.chain_id,
        "confirmations": settings.confirmations,
        "tokens": settings.tokens,
    })
}

/// `POST /v1/deposits/evm/address`: the tenant's deposit address, created on first call.
async fn create_address(
    auth: TenantAuth,
    State(state): State<AppState>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let settings = evm_settings(&state).await?.ok_or_else(deposits_disabled)?;
    let tenant_id = &auth.tenant.id;
    if let Some(row) = state.store.deposit_address(tenant_id, METHOD).await? {
        return Ok((
            StatusCode::OK,
            axum::Json(address_json(&row.address, &settings)),
        ));
    }
    let secrets_key = state.config.secrets_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "secrets-key-missing",
            "this server has no TURNPIKE_SECRETS_KEY, so it cannot keep a deposit address's \
             key; ask the operator to set one",
        )
    })?;
    let signer = new_deposit_key();
    let key_hex = format!("0x{}", alloy::hex::encode(signer.to_bytes()));
    let sealed = secrets_key
        .seal(key_hex.as_bytes(), &sealed_context(tenant_id))
        .map_err(|_| ApiError::internal())?;
    drop(key_hex);
    let row = DepositAddressRow {
        tenant_id: tenant_id.clone(),
        method: METHOD.to_owned(),
        address: signer.address().to_checksum(None),
        sealed,
        created_at: state.now_ms(),
    };
    let (stored, inserted) = state.store.ensure_deposit_address(&row).await?;
    let status = if inserted {
        tracing::info!(tenant = %tenant_id, address = %stored.address, "deposit address created");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(address_json(&stored.address, &settings))))
}

async fn get_address(
    auth: TenantAuth,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Value>> {
    let settings = evm_settings(&state).await?.ok_or_else(deposits_disabled)?;
    let row = state
        .store
        .deposit_address(&auth.tenant.id, METHOD)
        .await?
        .ok_or_else(|| ApiError::not_found("deposit address"))?;
    Ok(axum::Json(address_json(&row.address, &settings)))
}

/// The JSON form of a credited deposit.
fn deposit_json(d: &DepositRow) -> Value {
    json!({
        "method": d.method,
        "chainId": d.chain_id,
        "txHash": d.tx_hash,
        "logIndex": d.log_index,
        "blockNumber": d.block_number,
        "token": d.token,
        "from": d.sender,
        "address": d.address,
        "currency": d.currency,
        "amount": d.amount,
        "transferId": d.transfer_id,
        "creditedAt": rfc3339(d.credited_at),
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

/// `GET /v1/deposits?limit=`: the tenant's credited deposits, newest first.
async fn list(
    auth: TenantAuth,
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<axum::Json<Value>> {
    let Query(q) = query.map_err(|_| ApiError::invalid("`limit` must be a whole number"))?;
    let rows = state
        .store
        .deposits(&auth.tenant.id, q.limit.unwrap_or(100))
        .await?;
    Ok(axum::Json(
        json!({"data": rows.iter().map(deposit_json).collect::<Vec<_>>()}),
    ))
}
