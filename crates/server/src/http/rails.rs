//! Rail configuration: `PUT/GET/DELETE /v1/rails/{method}` (tenant key), for `evm` and `tempo`
//! through the same code ([`ServerRail`]). The secret in the body (`hotWalletKey`,
//! `feePayerKey`) is sealed at rest and never returned; the response shows its address instead.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use serde_json::{Map, Value, json};
use turnpike_rails::{EvmRail, TempoRail};

use super::rfc3339;
use crate::auth::TenantAuth;
use crate::error::{ApiError, ApiResult};
use crate::rails::{ServerRail, open_config, seal_secret};
use crate::state::AppState;

/// `/v1/rails/{method}`.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/rails/{method}", put(upsert).get(read).delete(remove))
}

/// The rails a tenant can configure.
pub const CONFIGURABLE_RAILS: &[&str] = &["evm", "tempo"];

fn known(method: &str) -> ApiResult<()> {
    if CONFIGURABLE_RAILS.contains(&method) {
        Ok(())
    } else {
        Err(ApiError::not_found("rail"))
    }
}

fn rail_json(settings: &str, version: i64, updated_at: i64, method: &str) -> ApiResult<Value> {
    let mut body: Value = serde_json::from_str(settings).map_err(|_| ApiError::internal())?;
    body["method"] = json!(method);
    body["version"] = json!(version);
    body["updatedAt"] = json!(rfc3339(updated_at));
    Ok(body)
}

async fn upsert(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(method): Path<String>,
    super::Body(body): super::Body,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    known(&method)?;
    let object: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(ApiError::invalid("the body must be a JSON object")),
        Err(err) => return Err(ApiError::invalid(format!("invalid JSON body: {err}"))),
    };
    match method.as_str() {
        "evm" => upsert_rail::<EvmRail>(auth, state, object).await,
        _ => upsert_rail::<TempoRail>(auth, state, object).await,
    }
}

async fn upsert_rail<R: ServerRail>(
    auth: TenantAuth,
    state: AppState,
    mut object: Map<String, Value>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let method = R::METHOD;
    if object.remove(R::DERIVED_FIELD).is_some() {
        return Err(ApiError::invalid(format!(
            "`{}` is read only: set `{}` instead",
            R::DERIVED_FIELD,
            R::SECRET_FIELD
        )));
    }
    let tenant_id = auth.tenant.id.clone();
    let existing = state.store.rail_config(&tenant_id, method).await?;
    // The secret: a new key; `null` removes it; omitted keeps the current one.
    let key = match object.remove(R::SECRET_FIELD) {
        Some(Value::String(key)) => Some(key),
        Some(Value::Null) => None,
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "`{}` must be a string",
                R::SECRET_FIELD
            )));
        }
        None => match existing.as_ref() {
            Some(row) => R::secret(&open_config::<R>(&state, row)?),
            None => None,
        },
    };
    let settings: R::Settings =
        serde_path_to_error::deserialize(Value::Object(object)).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if path == "." {
                ApiError::invalid(format!("invalid rail configuration: {inner}"))
            } else {
                ApiError::invalid(format!("invalid rail configuration at `{path}`: {inner}"))
            }
        })?;
    let config =
        R::open(settings, key.as_deref()).map_err(|err| ApiError::invalid(err.to_string()))?;
    state.check_outbound("rpcUrl", R::rpc_url(&config)).await?;
    let sealed = match &key {
        None => None,
        Some(key) => Some(seal_secret::<R>(&state, &tenant_id, key)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "secrets-key-missing",
                format!(
                    "this server has no TURNPIKE_SECRETS_KEY, so it cannot keep `{}`; \
                     ask the operator to set one",
                    R::SECRET_FIELD
                ),
            )
        })?),
    };
    let settings_text =
        serde_json::to_string(R::settings(&config)).map_err(|_| ApiError::internal())?;
    let now_ms = state.now_ms();
    let version = state
        .store
        .put_rail_config(
            &tenant_id,
            method,
            &settings_text,
            sealed.as_deref(),
            now_ms,
        )
        .await?;
    R::cache(&state).remove(&tenant_id);
    state.caches.prices.remove(&tenant_id);
    // Read the new hot wallet's gas or fee payer's balance now, so a dry one is not offered
    // until the next pass.
    R::watch(&state, &tenant_id, &config).await;
    let status = if version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(rail_json(&settings_text, version, now_ms, method)?),
    ))
}

async fn read(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(method): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    known(&method)?;
    let row = state
        .store
        .rail_config(&auth.tenant.id, &method)
        .await?
        .ok_or_else(|| ApiError::not_found("rail configuration"))?;
    Ok(axum::Json(rail_json(
        &row.settings,
        row.version,
        row.updated_at,
        &method,
    )?))
}

async fn remove(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(method): Path<String>,
) -> ApiResult<StatusCode> {
    known(&method)?;
    if !state
        .store
        .delete_rail_config(&auth.tenant.id, &method)
        .await?
    {
        return Err(ApiError::not_found("rail configuration"));
    }
    state.caches.evm_configs.remove(&auth.tenant.id);
    state.caches.tempo_configs.remove(&auth.tenant.id);
    state.caches.prices.remove(&auth.tenant.id);
    Ok(StatusCode::NO_CONTENT)
}
