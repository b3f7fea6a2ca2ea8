//! A tenant's own settings: API keys, the binding secret, its profile and balances.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use turnpike_ledger::Account;
use turnpike_store::{ApiKeyRow, BindingSecretRow, Revocation};

use super::rfc3339;
use crate::auth::TenantAuth;
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::state::{AppState, LEDGER_BOOK};

/// `/v1/api-keys`, `/v1/binding-secrets/rotate`, `/v1/tenant`, `/v1/balances`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/api-keys", post(create_key).get(list_keys))
        .route("/v1/api-keys/{id}", delete(revoke_key))
        .route("/v1/binding-secrets/rotate", post(rotate))
        .route("/v1/tenant", get(me))
        .route("/v1/balances", get(balances))
}

fn key_json(k: &ApiKeyRow) -> Value {
    json!({
        "id": k.id, "name": k.name, "prefix": k.prefix,
        "createdAt": rfc3339(k.created_at),
        "revokedAt": k.revoked_at.map(rfc3339),
    })
}

/// The JSON form of a ledger account (amounts as strings).
pub fn account_json(a: &Account) -> Value {
    let available = signed_available(a);
    json!({
        "id": a.id.to_string(),
        "kind": a.kind.as_str(),
        "currency": a.currency,
        "debitsPosted": a.debits_posted.to_string(),
        "creditsPosted": a.credits_posted.to_string(),
        "debitsPending": a.debits_pending.to_string(),
        "creditsPending": a.credits_pending.to_string(),
        "available": available,
    })
}

/// Posted credits less posted and pending debits, as a signed decimal: an account below zero
/// (a merchant's revenue reversed beyond what it holds) reads negative, never `0`. `null` only
/// for totals the ledger cannot hold (their debits overflow, which it refuses).
fn signed_available(a: &Account) -> Value {
    let Some(debits) = a.debits_posted.checked_add(a.debits_pending) else {
        tracing::error!(account = %a.id, "an account's debits overflow");
        return Value::Null;
    };
    Value::String(match a.credits_posted.checked_sub(debits) {
        Some(available) => available.to_string(),
        None => format!("-{}", debits - a.credits_posted),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    #[serde(default)]
    name: Option<String>,
}

async fn create_key(
    auth: TenantAuth,
    State(state): State<AppState>,
    super::Body(body): super::Body,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let input: NewKey = super::optional_json(&body)?;
    let name = input.name.unwrap_or_else(|| "unnamed".to_owned());
    if name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "`name` must be at most 200 characters without control characters",
        ));
    }
    let secret = ids::new_api_key();
    let key = ApiKeyRow {
        id: ids::new_id("key"),
        tenant_id: auth.tenant.id.clone(),
        name,
        prefix: secret[..10].to_owned(),
        secret_hash: ids::hash_secret(&secret),
        created_at: state.now_ms(),
        revoked_at: None,
    };
    state.store.insert_api_key(&key).await?;
    let mut body = key_json(&key);
    body["secret"] = Value::String(secret);
    Ok((StatusCode::CREATED, axum::Json(body)))
}

async fn list_keys(
    auth: TenantAuth,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Value>> {
    let keys = state.store.api_keys(&auth.tenant.id).await?;
    Ok(axum::Json(
        json!({"data": keys.iter().map(key_json).collect::<Vec<_>>()}),
    ))
}

async fn revoke_key(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let key = match state
        .store
        .revoke_api_key(&auth.tenant.id, &id, state.now_ms())
        .await?
    {
        Revocation::Revoked(key) => key,
        Revocation::NotFound => return Err(ApiError::not_found("API key")),
        Revocation::LastKey => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "last-api-key",
                "this is the tenant's last unrevoked API key: create another before revoking it",
            ));
        }
    };
    state.caches.api_keys.remove_where(|(_, id)| *id == key.id);
    Ok(axum::Json(key_json(&key)))
}

/// Most rotation attempts when replicas rotate at once.
const ROTATE_ATTEMPTS_MAX: usize = 4;

async fn rotate(auth: TenantAuth, State(state): State<AppState>) -> ApiResult<axum::Json<Value>> {
    for _ in 0..ROTATE_ATTEMPTS_MAX {
        let latest = state.store.binding_secrets(&auth.tenant.id, 1).await?;
        let version = latest.first().map_or(1, |s| s.version + 1);
        let row = BindingSecretRow {
            version,
            secret: ids::new_binding_secret(),
            created_at: state.now_ms(),
        };
        if state
            .store
            .insert_binding_secret(&auth.tenant.id, &row)
            .await?
        {
            return Ok(axum::Json(
                json!({"version": version, "rotatedAt": rfc3339(row.created_at)}),
            ));
        }
    }
    Err(ApiError::conflict("another rotation is running; retry"))
}

async fn me(auth: TenantAuth) -> axum::Json<Value> {
    axum::Json(super::admin::tenant_json(&auth.tenant))
}

async fn balances(auth: TenantAuth, State(state): State<AppState>) -> ApiResult<axum::Json<Value>> {
    let ids = state
        .store
        .account_ids_of_owner(LEDGER_BOOK, &auth.tenant.id)
        .await?;
    let accounts = state.store.accounts(&ids).await?;
    Ok(axum::Json(
        json!({"data": accounts.iter().map(account_json).collect::<Vec<_>>()}),
    ))
}
