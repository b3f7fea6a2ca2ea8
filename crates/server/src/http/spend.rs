//! Agent owners' spend controls: policies (versioned, with a dry run over recorded traffic),
//! approvals of held payments, and the audit log of every pay decision.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use turnpike_policy::policy::{
    CompiledPolicy, CompiledTokenLimits, Decision, LimitSource, Policy, SpendRequest, TokenLimits,
    Usage, evaluate, usage_windows,
};
use turnpike_protocol::charge::parse_amount_minor;
use turnpike_store::{AuditFilter, AuditRow, Decided, PolicyRow, SpendRow, lineage_within};

use super::{Json, rfc3339};
use crate::auth::TenantAuth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Most decisions one dry run replays.
pub const DRY_RUN_LAST_MAX: i64 = 1_000;
/// Decisions a dry run replays when not told.
pub const DRY_RUN_LAST_DEFAULT: i64 = 100;
/// How far before the oldest replayed decision a dry run reads spends (the longest window).
const DRY_RUN_LOOKBACK_MS: i64 = 366 * 86_400_000;

/// `/v1/agents/{id}/policy`, `/v1/policies/{id}/dry-run`, `/v1/approvals...`, `/v1/audit`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agents/{id}/policy", get(read_policy).put(put_policy))
        .route("/v1/policies/{id}/dry-run", post(dry_run))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/reject", post(reject))
        .route("/v1/audit", get(audit))
}

fn policy_json(row: &PolicyRow) -> Value {
    let policy: Value = serde_json::from_str(&row.policy).unwrap_or(Value::Null);
    json!({
        "agentId": row.agent_id, "version": row.version, "policy": policy,
        "createdAt": rfc3339(row.created_at),
    })
}

/// Parse and validate a policy, with one line naming the field on failure.
fn parse_policy(value: Value) -> ApiResult<(Policy, CompiledPolicy)> {
    if !value.is_object() {
        // serde would read an array as a struct whose fields all have defaults: `[]` as `{}`.
        return Err(ApiError::invalid("policy: must be a JSON object"));
    }
    let policy: Policy = serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        if path == "." {
            ApiError::invalid(format!("policy: {}", err.inner()))
        } else {
            ApiError::invalid(format!("policy.{path}: {}", err.inner()))
        }
    })?;
    let compiled = policy
        .compile()
        .map_err(|err| ApiError::invalid(format!("policy: {err}")))?;
    Ok((policy, compiled))
}

async fn put_policy(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    Json(input): Json<Value>,
) -> ApiResult<axum::Json<Value>> {
    state
        .store
        .agent(&auth.tenant.id, &agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    let (policy, _) = parse_policy(input)?;
    let text = serde_json::to_string(&policy).map_err(|_| ApiError::internal())?;
    let row = state
        .store
        .put_policy(&auth.tenant.id, &agent_id, &text, state.now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    state.caches.policies.remove(&agent_id);
    Ok(axum::Json(policy_json(&row)))
}

async fn read_policy(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let agent = state
        .store
        .agent(&auth.tenant.id, &agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    if agent.policy_version == 0 {
        return Ok(axum::Json(json!({
            "agentId": agent.id, "version": 0, "policy": {}, "createdAt": null,
        })));
    }
    let row = state
        .store
        .policy(&auth.tenant.id, &agent_id, agent.policy_version)
        .await?
        .ok_or_else(ApiError::internal)?;
    Ok(axum::Json(policy_json(&row)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DryRunInput {
    policy: Value,
    #[serde(default)]
    last: Option<i64>,
}

/// What a recorded decision comes to for comparison: outcome and reason.
fn recorded(row: &AuditRow) -> Option<(String, Option<String>)> {
    // Only the policy's own decisions replay: an approved payment, a revoked token or a spent
    // approval say nothing about a policy.
    if row.approval_id.is_some() {
        return None;
    }
    match (row.outcome.as_str(), row.reason.as_deref()) {
        ("allow", _) | ("deny", Some("insufficient_balance" | "ledger_refused")) => {
            Some(("allow".into(), None))
        }
        ("deny", Some("token_revoked" | "approval_invalid")) => None,
        (outcome, reason) => Some((outcome.to_owned(), reason.map(str::to_owned))),
    }
}

fn decision_parts(decision: &Decision) -> (String, Option<String>) {
    match decision {
        Decision::Allow => ("allow".into(), None),
        Decision::Deny { reason, .. } => ("deny".into(), Some(reason.as_str().to_owned())),
        Decision::NeedsApproval { reason, .. } => {
            ("needs_approval".into(), Some(reason.as_str().to_owned()))
        }
    }
}

/// The usage a decision at `at_ms` saw: spends created before it and not released by then.
fn usage_at(
    policy: &CompiledPolicy,
    token: Option<&CompiledTokenLimits>,
    lineage: &str,
    spends: &[SpendRow],
    at_ms: i64,
) -> Usage {
    let live = |s: &&SpendRow| s.created_at < at_ms && s.released_at.is_none_or(|r| r > at_ms);
    let windows = usage_windows(policy, token, at_ms);
    let budget_spent_minor = windows
        .budgets
        .iter()
        .map(|w| {
            spends
                .iter()
                .filter(live)
                .filter(|s| {
                    s.currency == w.currency
                        && s.created_at >= w.window.start_ms
                        && s.created_at < w.window.end_ms
                        && (w.source == LimitSource::Policy || lineage_within(&s.lineage, lineage))
                })
                .filter_map(|s| parse_amount_minor(&s.amount))
                .fold(0u128, u128::saturating_add)
        })
        .collect();
    let (velocity_payments, velocity_oldest_at_ms) = windows.velocity.map_or((0, None), |w| {
        let inside: Vec<&SpendRow> = spends
            .iter()
            .filter(live)
            .filter(|s| s.created_at >= w.start_ms && s.created_at < w.end_ms)
            .collect();
        (
            u32::try_from(inside.len()).unwrap_or(u32::MAX),
            inside.iter().map(|s| s.created_at).min(),
        )
    });
    Usage {
        budget_spent_minor,
        velocity_payments,
        velocity_oldest_at_ms,
    }
}

/// `POST /v1/policies/{agentId}/dry-run`: the agent's last N decisions under a proposed policy.
async fn dry_run(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    Json(input): Json<DryRunInput>,
) -> ApiResult<axum::Json<Value>> {
    let last = input.last.unwrap_or(DRY_RUN_LAST_DEFAULT);
    if !(1..=DRY_RUN_LAST_MAX).contains(&last) {
        return Err(ApiError::invalid(format!(
            "`last` must be between 1 and {DRY_RUN_LAST_MAX}"
        )));
    }
    state
        .store
        .agent(&auth.tenant.id, &agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    let (_, proposed) = parse_policy(input.policy)?;
    let rows = state
        .store
        .audit(
            &auth.tenant.id,
            &AuditFilter {
                agent_id: Some(agent_id.clone()),
                limit: last,
                ..AuditFilter::default()
            },
        )
        .await?;
    let (Some(oldest), Some(newest)) = (
        rows.iter().map(|r| r.created_at).min(),
        rows.iter().map(|r| r.created_at).max(),
    ) else {
        return Ok(axum::Json(
            json!({"replayed": 0, "skipped": 0, "changed": []}),
        ));
    };
    let spends = state
        .store
        .spends(&agent_id, oldest - DRY_RUN_LOOKBACK_MS, newest + 1)
        .await?;
    let mut tokens: HashMap<String, Option<(String, Option<CompiledTokenLimits>)>> = HashMap::new();
    let mut replayed = 0;
    let mut skipped = 0;
    let mut changed = Vec::new();
    // Oldest first, as they happened.
    for row in rows.iter().rev() {
        let Some(was) = recorded(row) else {
            skipped += 1;
            continue;
        };
        let (Some(amount), Some(currency), Some(method), Some(realm), Some(merchant)) = (
            row.amount.as_deref().and_then(parse_amount_minor),
            row.currency.as_deref(),
            row.method.as_deref(),
            row.merchant_realm.as_deref(),
            row.merchant_id.as_deref(),
        ) else {
            skipped += 1;
            continue;
        };
        let token_id = row.token_id.clone().unwrap_or_default();
        if !tokens.contains_key(&token_id) {
            let found = match state.store.agent_token(&token_id).await? {
                Some(t) if t.tenant_id == auth.tenant.id => {
                    let limits = t
                        .limits
                        .as_deref()
                        .and_then(|l| serde_json::from_str::<TokenLimits>(l).ok())
                        .and_then(|l| l.compile().ok());
                    Some((t.lineage.clone(), limits))
                }
                _ => None,
            };
            tokens.insert(token_id.clone(), found);
        }
        let (lineage, limits) = match tokens.get(&token_id).and_then(Option::as_ref) {
            Some((lineage, limits)) => (lineage.as_str(), limits.as_ref()),
            None => (token_id.as_str(), None),
        };
        let usage = usage_at(&proposed, limits, lineage, &spends, row.created_at);
        let request = SpendRequest {
            amount_minor: amount,
            currency,
            method,
            merchant_realm: realm,
            merchant_tenant: merchant,
        };
        // Token expiry is the token's, not the policy's: replay at the decision's time.
        let now = decision_parts(&evaluate(
            &proposed,
            limits,
            &request,
            &usage,
            row.created_at,
        ));
        replayed += 1;
        if now != was {
            changed.push(json!({
                "auditId": row.id, "at": rfc3339(row.created_at), "challengeId": row.challenge_id,
                "amount": row.amount, "currency": row.currency, "merchant": row.merchant_id,
                "merchantRealm": row.merchant_realm,
                "was": {"outcome": was.0, "reason": was.1},
                "now": {"outcome": now.0, "reason": now.1},
            }));
        }
    }
    Ok(axum::Json(
        json!({"replayed": replayed, "skipped": skipped, "changed": changed}),
    ))
}

fn approval_json(state: &AppState, a: &turnpike_store::ApprovalRow) -> Value {
    json!({
        "id": a.id, "agentId": a.agent_id, "tokenId": a.token_id, "challengeId": a.challenge_id,
        "merchant": a.merchant_id, "merchantRealm": a.merchant_realm, "amount": a.amount,
        "currency": a.currency, "method": a.method, "state": a.state_at(state.now_ms()),
        "createdAt": rfc3339(a.created_at), "expiresAt": rfc3339(a.expires_at),
        "decidedAt": a.decided_at.map(rfc3339),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalQuery {
    #[serde(default)]
    state: Option<String>,
}

async fn list_approvals(
    auth: TenantAuth,
    State(state): State<AppState>,
    Query(query): Query<ApprovalQuery>,
) -> ApiResult<axum::Json<Value>> {
    if let Some(wanted) = &query.state
        && !["pending", "approved", "rejected", "expired", "used"].contains(&wanted.as_str())
    {
        return Err(ApiError::invalid(
            "`state` is one of pending, approved, rejected, expired, used",
        ));
    }
    let rows = state
        .store
        .approvals(&auth.tenant.id, query.state.as_deref(), state.now_ms())
        .await?;
    let data: Vec<Value> = rows.iter().map(|a| approval_json(&state, a)).collect();
    Ok(axum::Json(json!({"data": data})))
}

async fn decide(
    auth: TenantAuth,
    state: AppState,
    id: String,
    approve: bool,
) -> ApiResult<axum::Json<Value>> {
    match state
        .store
        .decide_approval(&auth.tenant.id, &id, approve, state.now_ms())
        .await?
    {
        Decided::Done(row) => Ok(axum::Json(approval_json(&state, &row))),
        Decided::NotPending(row) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "approval-not-pending",
            format!(
                "the approval is {}, not pending",
                row.state_at(state.now_ms())
            ),
        )),
        Decided::NotFound => Err(ApiError::not_found("approval")),
    }
}

async fn approve(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    decide(auth, state, id, true).await
}

async fn reject(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    decide(auth, state, id, false).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

fn instant(name: &str, value: Option<&str>) -> ApiResult<Option<i64>> {
    value
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.timestamp_millis())
                .map_err(|_| ApiError::invalid(format!("`{name}` must be an RFC 3339 time")))
        })
        .transpose()
}

async fn audit(
    auth: TenantAuth,
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> ApiResult<axum::Json<Value>> {
    if let Some(outcome) = &query.outcome
        && !["allow", "deny", "needs_approval"].contains(&outcome.as_str())
    {
        return Err(ApiError::invalid(
            "`outcome` is one of allow, deny, needs_approval",
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=turnpike_store::LIST_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "`limit` must be between 1 and {}",
            turnpike_store::LIST_LIMIT_MAX
        )));
    }
    let filter = AuditFilter {
        agent_id: query.agent_id,
        outcome: query.outcome,
        reason: query.reason,
        since_ms: instant("since", query.since.as_deref())?,
        until_ms: instant("until", query.until.as_deref())?,
        limit,
    };
    let rows = state.store.audit(&auth.tenant.id, &filter).await?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id, "at": rfc3339(r.created_at), "agentId": r.agent_id,
                "tokenId": r.token_id, "challengeId": r.challenge_id, "merchant": r.merchant_id,
                "merchantRealm": r.merchant_realm, "amount": r.amount, "currency": r.currency,
                "method": r.method, "policyVersion": r.policy_version, "outcome": r.outcome,
                "reason": r.reason, "detail": r.detail, "approvalId": r.approval_id,
            })
        })
        .collect();
    Ok(axum::Json(json!({"data": data})))
}
