//! Agent spend controls on the server: an agent's current policy (compiled once per version,
//! cached per replica), a token's lineage of limits, and token limits as the API takes them.

use std::sync::{Arc, OnceLock};

use serde_json::Value;
use turnpike_policy::policy::{CompiledPolicy, CompiledTokenLimits, Policy, TokenLimits};
use turnpike_store::AgentTokenRow;

use crate::error::ApiError;
use crate::state::AppState;

/// An agent's policy at one version, ready to evaluate.
#[derive(Debug, Clone)]
pub struct AgentPolicy {
    /// The version (0: none set, which allows what the tokens allow).
    pub version: i64,
    /// The policy.
    pub compiled: Arc<CompiledPolicy>,
}

/// The policy `{}` (everything allowed), compiled once.
pub fn empty_policy() -> Arc<CompiledPolicy> {
    static EMPTY: OnceLock<Arc<CompiledPolicy>> = OnceLock::new();
    EMPTY
        .get_or_init(|| {
            Arc::new(
                Policy::default()
                    .compile()
                    .expect("the empty policy compiles"),
            )
        })
        .clone()
}

/// The agent's current policy (`None`: no such agent for this tenant). `fresh` skips the
/// replica's cache (after the ledger found a newer version).
pub async fn agent_policy(
    state: &AppState,
    tenant_id: &str,
    agent_id: &str,
    fresh: bool,
) -> Result<Option<AgentPolicy>, ApiError> {
    if !fresh && let Some(policy) = state.caches.policies.get(&agent_id.to_owned()) {
        return Ok(Some(policy));
    }
    let Some(agent) = state.store.agent(tenant_id, agent_id).await? else {
        return Ok(None);
    };
    let compiled = if agent.policy_version == 0 {
        empty_policy()
    } else {
        let row = state
            .store
            .policy(tenant_id, agent_id, agent.policy_version)
            .await?
            .ok_or_else(|| {
                tracing::error!(agent = %agent_id, "the agent's current policy version is missing");
                ApiError::internal()
            })?;
        let policy: Policy = serde_json::from_str(&row.policy).map_err(|_| {
            tracing::error!(agent = %agent_id, "a stored policy does not parse");
            ApiError::internal()
        })?;
        Arc::new(policy.compile().map_err(|err| {
            tracing::error!(agent = %agent_id, error = %err, "a stored policy does not compile");
            ApiError::internal()
        })?)
    };
    let policy = AgentPolicy {
        version: agent.policy_version,
        compiled,
    };
    state
        .caches
        .policies
        .insert(agent_id.to_owned(), policy.clone());
    Ok(Some(policy))
}

/// A token row's own limits, compiled (`None`: it has none of its own).
fn compiled_limits(row: &AgentTokenRow) -> Result<Option<Arc<CompiledTokenLimits>>, ApiError> {
    let Some(json) = &row.limits else {
        return Ok(None);
    };
    let limits: TokenLimits = serde_json::from_str(json).map_err(|_| {
        tracing::error!(token = %row.id, "stored token limits do not parse");
        ApiError::internal()
    })?;
    Ok(Some(Arc::new(limits.compile().map_err(|err| {
        tracing::error!(token = %row.id, error = %err, "stored token limits do not compile");
        ApiError::internal()
    })?)))
}

/// The limits of each token of `row`'s lineage, root first (token limits never change, so they
/// are cached by token id).
pub async fn token_chain(
    state: &AppState,
    row: &AgentTokenRow,
) -> Result<Vec<Option<Arc<CompiledTokenLimits>>>, ApiError> {
    let ids = row.lineage_ids();
    let mut chain = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(limits) = state.caches.token_limits.get(&id.to_owned()) {
            chain.push(limits);
            continue;
        }
        let ancestor = if id == row.id {
            row.clone()
        } else {
            state
                .store
                .agent_token(id)
                .await?
                .filter(|a| a.tenant_id == row.tenant_id && a.agent_id == row.agent_id)
                .ok_or_else(|| ApiError::unauthorized("agent token: unknown parent token"))?
        };
        let limits = compiled_limits(&ancestor)?;
        state
            .caches
            .token_limits
            .insert(id.to_owned(), limits.clone());
        chain.push(limits);
    }
    Ok(chain)
}

/// Token limits as the API takes them (`TokenLimits` without `expiresAtS`, which comes from
/// the token's lifetime), validated, with that expiry set.
pub fn limits_input(input: Option<&Value>, expires_at_s: i64) -> Result<TokenLimits, ApiError> {
    let mut object = match input {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err(ApiError::invalid("`limits` must be an object")),
    };
    if object.contains_key("expiresAtS") {
        return Err(ApiError::invalid(
            "`limits.expiresAtS` is not accepted: a token's expiry comes from `ttlS`",
        ));
    }
    object.insert("expiresAtS".into(), Value::from(expires_at_s));
    let limits: TokenLimits = serde_path_to_error::deserialize(Value::Object(object))
        .map_err(|err| ApiError::invalid(format!("limits.{}: {}", err.path(), err.inner())))?;
    limits
        .validate()
        .map_err(|err| ApiError::invalid(format!("limits.{err}")))?;
    Ok(limits)
}
