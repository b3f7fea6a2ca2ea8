//! Authentication extractors: the operator (admin token), a tenant (secret API key) and an
//! agent (signed agent token). A failure is a 401 problem that never echoes what was sent.
//! Failures are counted per client address ([`crate::limits`]): over the limit, every
//! authentication from that address is a 429 until its budget refills, before the credential
//! is looked at.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use turnpike_policy::AgentTokenClaims;
use turnpike_store::{AgentTokenRow, TenantRow};

use crate::error::ApiError;
use crate::ids;
use crate::state::AppState;

/// Longest bearer credential read.
pub const BEARER_LEN_MAX: usize = 4096;

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer ...`"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    if value.len() > BEARER_LEN_MAX {
        return Err(ApiError::unauthorized("Authorization header too long"));
    }
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("expected `Authorization: Bearer ...`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "expected `Authorization: Bearer ...`",
        ));
    }
    Ok(token.trim())
}

/// Run `authenticate` for a request from `parts`' client, unless that client is over its
/// authentication failure budget; count a 401 against the budget.
async fn limited<T>(
    parts: &Parts,
    state: &AppState,
    authenticate: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let client = state.limiters.client(&parts.headers, &parts.extensions);
    state.limiters.auth_gate(client)?;
    let result = authenticate.await;
    if let Err(err) = &result
        && err.status == StatusCode::UNAUTHORIZED
    {
        state.limiters.auth_failed(client);
    }
    result
}

/// The operator, authenticated by `TURNPIKE_ADMIN_TOKEN`.
#[derive(Debug)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.config.admin_token.as_deref() else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "admin-disabled",
                "the operator API is disabled: start the server with TURNPIKE_ADMIN_TOKEN set",
            ));
        };
        limited(parts, state, admin(parts, expected)).await
    }
}

async fn admin(parts: &Parts, expected: &str) -> Result<Admin, ApiError> {
    let token = bearer(parts)?;
    let ok: bool = ids::hash_secret(token)
        .as_bytes()
        .ct_eq(ids::hash_secret(expected).as_bytes())
        .into();
    if ok {
        Ok(Admin)
    } else {
        Err(ApiError::unauthorized("invalid admin token"))
    }
}

/// A reader of `/metrics` (which name tenants and wallet addresses), authenticated by
/// `TURNPIKE_METRICS_TOKEN` or the admin token. With neither configured, `/metrics` is off:
/// `404 metrics-disabled`.
#[derive(Debug)]
pub struct MetricsReader;

impl FromRequestParts<AppState> for MetricsReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let config = &state.config;
        let accepted: Vec<&str> = [
            config.metrics_token.as_deref(),
            config.admin_token.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        if accepted.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "metrics-disabled",
                "metrics are disabled: start the server with TURNPIKE_METRICS_TOKEN or \
                 TURNPIKE_ADMIN_TOKEN set",
            ));
        }
        limited(parts, state, metrics_reader(parts, &accepted)).await
    }
}

async fn metrics_reader(parts: &Parts, accepted: &[&str]) -> Result<MetricsReader, ApiError> {
    let token = ids::hash_secret(bearer(parts)?);
    // Every accepted token is compared (constant time each), whichever matches.
    let ok = accepted.iter().fold(false, |ok, expected| {
        let hit: bool = token
            .as_bytes()
            .ct_eq(ids::hash_secret(expected).as_bytes())
            .into();
        ok | hit
    });
    if ok {
        Ok(MetricsReader)
    } else {
        Err(ApiError::unauthorized("invalid metrics token"))
    }
}

/// A tenant, authenticated by one of its secret API keys.
#[derive(Debug, Clone)]
pub struct TenantAuth {
    /// The tenant.
    pub tenant: TenantRow,
    /// The key used.
    pub key_id: String,
}

impl FromRequestParts<AppState> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        limited(parts, state, tenant_auth(parts, state)).await
    }
}

async fn tenant_auth(parts: &Parts, state: &AppState) -> Result<TenantAuth, ApiError> {
    let token = bearer(parts)?;
    if !token.starts_with("tp_sk_") {
        return Err(ApiError::unauthorized(
            "expected a secret API key (tp_sk_...)",
        ));
    }
    let hash = ids::hash_secret(token);
    if let Some((tenant, key_id)) = state.caches.api_keys.get(&hash) {
        return Ok(TenantAuth { tenant, key_id });
    }
    match state.store.api_key_by_hash(&hash).await? {
        Some((key, tenant)) => {
            state
                .caches
                .api_keys
                .insert(hash, (tenant.clone(), key.id.clone()));
            Ok(TenantAuth {
                tenant,
                key_id: key.id,
            })
        }
        None => Err(ApiError::unauthorized("unknown or revoked API key")),
    }
}

/// An agent, authenticated by an unrevoked, unexpired agent token.
#[derive(Debug, Clone)]
pub struct AgentAuth {
    /// The token's verified claims.
    pub claims: AgentTokenClaims,
    /// The token's stored row.
    pub token: AgentTokenRow,
}

/// The token's verified claims (the signature checked once per token and minute).
async fn agent_claims(parts: &Parts, state: &AppState) -> Result<AgentTokenClaims, ApiError> {
    let token = bearer(parts)?;
    let now_s = state.now_ms().div_euclid(1000);
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    match state.caches.agent_tokens.get(&digest) {
        Some(claims) if now_s < claims.exp => Ok(claims),
        Some(_) => Err(ApiError::unauthorized("agent token: token expired")),
        None => {
            let mut result = state.keys().verify_agent_token(token, now_s);
            if result == Err(turnpike_policy::TokenError::UnknownKey) {
                // Another replica may have created a key since this one loaded them.
                result = state.reload_keys().await?.verify_agent_token(token, now_s);
            }
            let claims =
                result.map_err(|err| ApiError::unauthorized(format!("agent token: {err}")))?;
            state.caches.agent_tokens.insert(digest, claims.clone());
            Ok(claims)
        }
    }
}

/// The token's stored row, checked against its claims.
async fn agent_token_row(
    state: &AppState,
    claims: &AgentTokenClaims,
    cached: bool,
) -> Result<AgentTokenRow, ApiError> {
    if cached && let Some(row) = state.caches.token_rows.get(&claims.jti) {
        return Ok(row);
    }
    let row = state
        .store
        .agent_token(&claims.jti)
        .await?
        .filter(|row| row.tenant_id == claims.tid && row.agent_id == claims.sub)
        .ok_or_else(|| ApiError::unauthorized("agent token: unknown token"))?;
    if row.revoked_at.is_none() {
        state
            .caches
            .token_rows
            .insert(claims.jti.clone(), row.clone());
    }
    Ok(row)
}

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        limited(parts, state, agent_auth(parts, state, false)).await
    }
}

async fn agent_auth(parts: &Parts, state: &AppState, cached: bool) -> Result<AgentAuth, ApiError> {
    let claims = agent_claims(parts, state).await?;
    let row = agent_token_row(state, &claims, cached).await?;
    if row.revoked_at.is_some() {
        return Err(ApiError::unauthorized("agent token: revoked"));
    }
    Ok(AgentAuth { claims, token: row })
}

/// An agent about to pay: like [`AgentAuth`], but revocation is left to the payment's ledger
/// transaction, which reads it under the agent's lock (every token of the lineage) and records
/// the refusal in the audit log. The token row (immutable but for its revocation) comes from
/// the replica's cache.
#[derive(Debug, Clone)]
pub struct PayingAgent(pub AgentAuth);

impl FromRequestParts<AppState> for PayingAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        limited(parts, state, agent_auth(parts, state, true))
            .await
            .map(Self)
    }
}
