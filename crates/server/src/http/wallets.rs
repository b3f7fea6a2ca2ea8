//! Payer wallets: `PUT/GET/DELETE /v1/wallets/evm` (tenant key). An organisation imports a key
//! (`privateKey`) or has one generated (`generate: true`), and lists the tokens it pays with.
//! The key is sealed at rest and never returned: answers show the wallet's address.

use alloy::signers::local::PrivateKeySigner;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use serde_json::{Map, Value, json};
use turnpike_rails::evm::validate_tokens;
use turnpike_store::PayerWalletRow;

use super::rfc3339;
use crate::auth::TenantAuth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::wallets::{EVM, EvmWalletSettings, evm_wallet, key_text, parse_key, sealed_context};

/// `/v1/wallets/{method}`.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/wallets/{method}", put(upsert).get(read).delete(remove))
}

fn known(method: &str) -> ApiResult<()> {
    if method == EVM {
        Ok(())
    } else {
        Err(ApiError::not_found("wallet"))
    }
}

fn wallet_json(row: &PayerWalletRow) -> ApiResult<Value> {
    let mut body: Value = serde_json::from_str(&row.settings).map_err(|_| ApiError::internal())?;
    body["method"] = json!(row.method);
    body["address"] = json!(row.address);
    body["version"] = json!(row.version);
    body["createdAt"] = json!(rfc3339(row.created_at));
    body["updatedAt"] = json!(rfc3339(row.updated_at));
    Ok(body)
}

/// Which key a `PUT` asks for: the body's `privateKey` and `generate`, read before anything
/// else so that no error message can quote the key.
fn requested_key(object: &mut Map<String, Value>) -> ApiResult<Option<PrivateKeySigner>> {
    let import = match object.remove("privateKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(parse_key(&text).ok_or_else(|| {
            ApiError::invalid("`privateKey` must be 0x and 64 hex digits (a secp256k1 key)")
        })?),
        Some(_) => return Err(ApiError::invalid("`privateKey` must be a string")),
    };
    let generate = match object.remove("generate") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(ApiError::invalid("`generate` must be a boolean")),
    };
    match (import, generate) {
        (Some(_), true) => Err(ApiError::invalid(
            "give `privateKey` or `generate: true`, not both",
        )),
        (Some(signer), false) => Ok(Some(signer)),
        (None, true) => Ok(Some(PrivateKeySigner::random())),
        (None, false) => Ok(None),
    }
}

async fn upsert(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(method): Path<String>,
    super::Body(body): super::Body,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    known(&method)?;
    let mut object: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(ApiError::invalid("the body must be a JSON object")),
        Err(err) => return Err(ApiError::invalid(format!("invalid JSON body: {err}"))),
    };
    if object.remove("address").is_some() {
        return Err(ApiError::invalid(
            "`address` is read only: it is derived from the key",
        ));
    }
    let key = requested_key(&mut object)?;
    let settings: EvmWalletSettings = serde_path_to_error::deserialize(Value::Object(object))
        .map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if path == "." {
                ApiError::invalid(format!("invalid wallet: {inner}"))
            } else {
                ApiError::invalid(format!("invalid wallet at `{path}`: {inner}"))
            }
        })?;
    validate_tokens(&settings.tokens).map_err(|err| ApiError::invalid(err.to_string()))?;
    let tenant_id = auth.tenant.id.clone();
    let secrets_key = state.config.secrets_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "secrets-key-missing",
            "this server has no TURNPIKE_SECRETS_KEY, so it cannot keep a wallet key; ask the \
             operator to set one",
        )
    })?;
    // No key given: keep the current one (only the tokens change).
    let signer = match key {
        Some(signer) => signer,
        None => match evm_wallet(&state, &tenant_id).await? {
            Some(wallet) => wallet.signer,
            None => {
                return Err(ApiError::invalid(
                    "a new wallet needs `privateKey` (import) or `generate: true`",
                ));
            }
        },
    };
    let sealed = secrets_key
        .seal(key_text(&signer).as_bytes(), &sealed_context(&tenant_id))
        .map_err(|_| ApiError::internal())?;
    let now_ms = state.now_ms();
    let row = PayerWalletRow {
        tenant_id,
        method: EVM.to_owned(),
        address: signer.address().to_checksum(None),
        settings: serde_json::to_string(&settings).map_err(|_| ApiError::internal())?,
        sealed,
        version: 1,
        created_at: now_ms,
        updated_at: now_ms,
    };
    let stored = state.store.put_payer_wallet(&row).await?;
    tracing::info!(tenant = %stored.tenant_id, address = %stored.address, "evm wallet set");
    let status = if stored.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(wallet_json(&stored)?)))
}

async fn read(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(method): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    known(&method)?;
    let row = state
        .store
        .payer_wallet(&auth.tenant.id, &method)
        .await?
        .ok_or_else(|| ApiError::not_found("wallet"))?;
    Ok(axum::Json(wallet_json(&row)?))
}

async fn remove(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(method): Path<String>,
) -> ApiResult<StatusCode> {
    known(&method)?;
    if !state
        .store
        .delete_payer_wallet(&auth.tenant.id, &method)
        .await?
    {
        return Err(ApiError::not_found("wallet"));
    }
    Ok(StatusCode::NO_CONTENT)
}
