//! The operator API: tenants and credits (enabled by `TURNPIKE_ADMIN_TOKEN`).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use turnpike_ledger::{AccountKind, TransferId, TransferRequest};
use turnpike_protocol::charge::parse_amount_minor;
use turnpike_store::{ApiKeyRow, BindingSecretRow, Store, TenantConflict, TenantRow};

use super::{Json, rfc3339};
use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::method_turnpike::codes;
use crate::state::{AppState, PLATFORM_OWNER};

/// `/v1/admin/...`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/tenants", post(create))
        .route("/v1/admin/tenants/{id}/credit", post(credit))
        .route("/v1/admin/clock", post(clock))
        .route("/v1/admin/balances", get(platform_balances))
}

/// `GET /v1/admin/balances`: the platform's own accounts (fees, rail clearing), signed like a
/// tenant's.
async fn platform_balances(
    _: Admin,
    State(state): State<AppState>,
) -> ApiResult<axum::Json<Value>> {
    let ids = state
        .store
        .account_ids_of_owner(crate::state::LEDGER_BOOK, PLATFORM_OWNER)
        .await?;
    let accounts = state.store.accounts(&ids).await?;
    Ok(axum::Json(
        json!({"data": accounts.iter().map(super::tenant::account_json).collect::<Vec<_>>()}),
    ))
}

/// A tenant to create.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Display name.
    pub name: String,
    /// URL slug.
    pub slug: String,
    /// MPP realm (defaults to the slug).
    #[serde(default)]
    pub realm: Option<String>,
}

/// The JSON form of a tenant.
pub fn tenant_json(t: &TenantRow) -> Value {
    json!({"id": t.id, "name": t.name, "slug": t.slug, "realm": t.realm, "createdAt": rfc3339(t.created_at)})
}

/// Longest realm, in bytes.
pub const REALM_LEN_MAX: usize = 200;
/// The prefix of tenant ids, which no realm may start with: a policy's merchant lists hold realms
/// and tenant ids side by side, so a realm `ten_...` could pass for another tenant.
const TENANT_ID_PREFIX: &str = "ten_";

fn validate_realm(realm: &str) -> ApiResult<()> {
    if realm.is_empty()
        || realm.len() > REALM_LEN_MAX
        || !realm.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::invalid(format!(
            "`realm` must be 1 to {REALM_LEN_MAX} printable ASCII characters without spaces"
        ))
        .with("field", "realm".into()));
    }
    if realm.starts_with(TENANT_ID_PREFIX) {
        return Err(ApiError::invalid(format!(
            "`realm` must not start with `{TENANT_ID_PREFIX}` (tenant ids do)"
        ))
        .with("field", "realm".into()));
    }
    Ok(())
}

/// Create a tenant with its first API key; returns the tenant and the key's secret. Slugs and
/// realms are unique: a taken slug is `409 conflict`, a realm another tenant has (the default,
/// the slug, included) `409 realm-taken`.
pub async fn create_tenant(
    store: &Store,
    now_ms: i64,
    input: NewTenant,
) -> ApiResult<(TenantRow, ApiKeyRow, String)> {
    let name = input.name.trim();
    if !super::is_display_name(name) {
        return Err(ApiError::invalid(
            "`name` must be 1 to 200 characters without control characters",
        ));
    }
    let slug_ok = !input.slug.is_empty()
        && input.slug.len() <= 63
        && input
            .slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !input.slug.starts_with('-');
    if !slug_ok {
        return Err(ApiError::invalid(
            "`slug` must be 1 to 63 of a-z, 0-9 and `-`, not starting with `-`",
        ));
    }
    let realm = input.realm.unwrap_or_else(|| input.slug.clone());
    validate_realm(&realm)?;
    let tenant = TenantRow {
        id: ids::new_id("ten"),
        name: name.to_owned(),
        slug: input.slug,
        realm,
        created_at: now_ms,
    };
    let secret = ids::new_api_key();
    let key = ApiKeyRow {
        id: ids::new_id("key"),
        tenant_id: tenant.id.clone(),
        name: "default".to_owned(),
        prefix: secret[..10].to_owned(),
        secret_hash: ids::hash_secret(&secret),
        created_at: now_ms,
        revoked_at: None,
    };
    let binding = BindingSecretRow {
        version: 1,
        secret: ids::new_binding_secret(),
        created_at: now_ms,
    };
    match store.create_tenant(&tenant, &key, &binding).await? {
        Ok(()) => Ok((tenant, key, secret)),
        Err(TenantConflict::Slug) => Err(ApiError::conflict(format!(
            "slug `{}` is already taken",
            tenant.slug
        ))),
        Err(TenantConflict::Realm) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "realm-taken",
            format!(
                "realm `{}` is another tenant's; choose another `realm`",
                tenant.realm
            ),
        )
        .with("field", "realm".into())),
    }
}

async fn create(
    _: Admin,
    State(state): State<AppState>,
    Json(input): Json<NewTenant>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let (tenant, key, secret) = create_tenant(&state.store, state.now_ms(), input).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "tenant": tenant_json(&tenant),
            "apiKey": {"id": key.id, "name": key.name, "secret": secret, "createdAt": rfc3339(key.created_at)},
        })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Credit {
    amount: String,
    currency: String,
}

async fn credit(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(input): Json<Credit>,
) -> ApiResult<axum::Json<Value>> {
    let tenant = state
        .store
        .tenant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let amount = parse_amount_minor(&input.amount)
        .filter(|a| *a > 0 && *a <= crate::catalog::AMOUNT_MINOR_MAX)
        .ok_or_else(|| {
            ApiError::invalid(
                "`amount` must be a string of minor units greater than zero and at most 10^30",
            )
        })?;
    if !crate::catalog::is_currency_code(&input.currency) {
        return Err(crate::catalog::unsupported_currency("currency"));
    }
    let transfer_id = match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(key)) if !key.is_empty() && key.len() <= 255 => {
            ids::derived_u128(&["credit", &tenant.id, key])
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "`Idempotency-Key` must be 1 to 255 visible characters",
            ));
        }
        None => ids::random_u128(),
    };
    let external = state
        .account(PLATFORM_OWNER, AccountKind::External, &input.currency)
        .await?;
    let balance = state
        .account(&tenant.id, AccountKind::PayerBalance, &input.currency)
        .await?;
    let result = state
        .engine
        .transfer(TransferRequest::Transfer {
            id: TransferId(transfer_id),
            debit_account_id: external,
            credit_account_id: balance,
            amount,
            currency: input.currency.clone(),
            timeout_ms: None,
            code: codes::CREDIT,
            user_data: Some(format!("credit:{}", tenant.id)),
        })
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "ledger failed while crediting");
            ApiError::unavailable("the ledger failed; nothing was credited")
        })?;
    match result {
        Ok(_) => {}
        Err(turnpike_ledger::TransferError::ExistsWithDifferentFields) => {
            return Err(ApiError::conflict(
                "this Idempotency-Key was used for a different credit",
            ));
        }
        Err(err) => return Err(ApiError::invalid(format!("credit refused: {err}"))),
    }
    let account = state
        .store
        .account(None, balance)
        .await?
        .ok_or_else(ApiError::internal)?;
    Ok(axum::Json(
        json!({"account": super::tenant::account_json(&account)}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClockInput {
    #[serde(default)]
    now_ms: Option<i64>,
    #[serde(default)]
    advance_ms: Option<i64>,
}

/// `POST /v1/admin/clock` `{"nowMs"}` or `{"advanceMs"}`: move a test clock (only on a server
/// started with `--test-clock`; 404 otherwise). Time never moves backwards.
async fn clock(
    _admin: Admin,
    State(state): State<AppState>,
    Json(input): Json<ClockInput>,
) -> ApiResult<axum::Json<Value>> {
    let clock = state
        .test_clock
        .clone()
        .ok_or_else(|| ApiError::not_found("test clock (the server runs on real time)"))?;
    let now = state.now_ms();
    let target = match (input.now_ms, input.advance_ms) {
        (Some(at), None) => at,
        (None, Some(by)) if by >= 0 => now.saturating_add(by),
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of `nowMs` and `advanceMs` (not negative)",
            ));
        }
    };
    if target < now {
        return Err(ApiError::invalid("the clock never moves backwards"));
    }
    clock.set(target);
    Ok(axum::Json(json!({"nowMs": target, "now": rfc3339(target)})))
}
