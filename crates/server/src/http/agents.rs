//! The payer side: agents, their tokens, and `/v1/agent/pay` (a 402's challenges in, an
//! `Authorization: Payment` value out, the amount reserved in the ledger).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use turnpike_ledger::{AccountKind, TransferError, TransferId, TransferRequest, TransferResult};
use turnpike_policy::policy::TokenLimits;
use turnpike_policy::{AgentTokenClaims, GrantClaims, Money};
use turnpike_protocol::charge::parse_amount_minor;
use turnpike_protocol::{Challenge, Credential, parse_challenges_from_lines};
use turnpike_store::{AgentRow, AgentTokenRow, ApprovalRow, GuardRefusal, LedgerGuard, SpendGuard};

use super::{Json, rfc3339};
use crate::auth::{AgentAuth, PayingAgent, TenantAuth};
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::method_turnpike::{RESERVATION_GRACE_MS, codes, reservation_id};
use crate::spend::{self, limits_input};
use crate::state::AppState;
use crate::wallets::{EvmWallet, evm_wallet};

mod evm;

/// Longest agent token lifetime (one year).
pub const TOKEN_TTL_S_MAX: i64 = 366 * 86_400;
/// Token lifetime when none is asked for (one day).
pub const TOKEN_TTL_S_DEFAULT: i64 = 86_400;
/// Most challenge header values one pay call reads.
pub const CHALLENGE_VALUES_MAX: usize = 16;

/// `/v1/agents...`, `/v1/agent/tokens`, `/v1/agent/pay`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agents", post(create).get(list))
        .route("/v1/agents/{id}", get(read))
        .route(
            "/v1/agents/{id}/tokens",
            post(create_token).get(list_tokens).delete(revoke_all),
        )
        .route("/v1/agents/{id}/tokens/{token_id}", delete(revoke_token))
        .route("/v1/agent/tokens", post(create_child_token))
        .route("/v1/agent/pay", post(pay))
}

fn agent_json(a: &AgentRow) -> Value {
    json!({
        "id": a.id, "name": a.name, "policyVersion": a.policy_version,
        "createdAt": rfc3339(a.created_at),
    })
}

fn token_json(t: &AgentTokenRow) -> Value {
    let limits = t
        .limits
        .as_deref()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .map(|mut l| {
            if let Some(map) = l.as_object_mut() {
                map.remove("expiresAtS");
            }
            l
        });
    json!({
        "id": t.id, "agentId": t.agent_id, "parentId": t.parent_id, "limits": limits,
        "expiresAt": rfc3339(t.expires_at), "revokedAt": t.revoked_at.map(rfc3339),
        "createdAt": rfc3339(t.created_at),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAgent {
    name: String,
}

async fn create(
    auth: TenantAuth,
    State(state): State<AppState>,
    Json(input): Json<NewAgent>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let name = input.name.trim();
    if !super::is_display_name(name) {
        return Err(ApiError::invalid(
            "`name` must be 1 to 200 characters without control characters",
        ));
    }
    let row = AgentRow {
        id: ids::new_id("agt"),
        tenant_id: auth.tenant.id.clone(),
        name: name.to_owned(),
        policy_version: 0,
        created_at: state.now_ms(),
    };
    state.store.insert_agent(&row).await?;
    Ok((StatusCode::CREATED, axum::Json(agent_json(&row))))
}

async fn list(auth: TenantAuth, State(state): State<AppState>) -> ApiResult<axum::Json<Value>> {
    let rows = state.store.agents(&auth.tenant.id).await?;
    Ok(axum::Json(
        json!({"data": rows.iter().map(agent_json).collect::<Vec<_>>()}),
    ))
}

async fn read(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let agent = state
        .store
        .agent(&auth.tenant.id, &agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    Ok(axum::Json(agent_json(&agent)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewToken {
    #[serde(default)]
    limits: Option<Value>,
    /// Shorthand for `limits.maxPerPayment` with one entry.
    #[serde(default)]
    max_per_payment: Option<Money>,
    #[serde(default)]
    ttl_s: Option<i64>,
}

fn ttl_of(input: &NewToken) -> ApiResult<i64> {
    let ttl_s = input.ttl_s.unwrap_or(TOKEN_TTL_S_DEFAULT);
    if !(1..=TOKEN_TTL_S_MAX).contains(&ttl_s) {
        return Err(ApiError::invalid(format!(
            "`ttlS` must be between 1 and {TOKEN_TTL_S_MAX}"
        )));
    }
    Ok(ttl_s)
}

/// The limits a new token asks for, with its expiry (`None`: no `limits` given).
fn requested_limits(input: &NewToken, expires_at_s: i64) -> ApiResult<Option<TokenLimits>> {
    match (&input.limits, &input.max_per_payment) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "give `limits` or its shorthand `maxPerPayment`, not both",
        )),
        (Some(limits), None) => limits_input(Some(limits), expires_at_s).map(Some),
        (None, Some(max)) => {
            limits_input(Some(&json!({"maxPerPayment": [max]})), expires_at_s).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// Store a token row and sign its JWT.
async fn issue(
    state: &AppState,
    agent_id: &str,
    tenant_id: &str,
    parent: Option<&AgentTokenRow>,
    limits: Option<TokenLimits>,
    ttl_s: i64,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let now_ms = state.now_ms();
    let now_s = now_ms.div_euclid(1000);
    let id = ids::new_id("tok");
    let limits_json = limits
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|_| ApiError::internal())?;
    let row = AgentTokenRow {
        id: id.clone(),
        agent_id: agent_id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        parent_id: parent.map(|p| p.id.clone()),
        lineage: match parent {
            Some(p) => format!("{}/{id}", p.lineage),
            None => id.clone(),
        },
        limits: limits_json,
        expires_at: (now_s + ttl_s) * 1000,
        created_at: now_ms,
        revoked_at: None,
    };
    state.store.insert_agent_token(&row).await?;
    let policy_version = state
        .store
        .agent(tenant_id, agent_id)
        .await?
        .map_or(0, |a| a.policy_version);
    let claims = AgentTokenClaims {
        iss: state.config.public_url.clone(),
        sub: agent_id.to_owned(),
        tid: tenant_id.to_owned(),
        jti: row.id.clone(),
        iat: now_s,
        exp: now_s + ttl_s,
        pv: policy_version,
        par: row.parent_id.clone(),
        lim: limits,
    };
    let token = state.keys().sign_agent_token(&claims);
    let mut body = token_json(&row);
    if let Some(map) = body.as_object_mut() {
        map.insert("token".into(), Value::String(token));
        map.remove("revokedAt");
    }
    Ok((StatusCode::CREATED, axum::Json(body)))
}

async fn create_token(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    super::Body(body): super::Body,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let input: NewToken = super::optional_json(&body)?;
    let agent = state
        .store
        .agent(&auth.tenant.id, &agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    let ttl_s = ttl_of(&input)?;
    let expires_at_s = state.now_ms().div_euclid(1000) + ttl_s;
    let limits = requested_limits(&input, expires_at_s)?;
    issue(&state, &agent.id, &auth.tenant.id, None, limits, ttl_s).await
}

/// `POST /v1/agent/tokens`: a token mints a child for a sub-agent, narrower or equal.
async fn create_child_token(
    agent: AgentAuth,
    State(state): State<AppState>,
    super::Body(body): super::Body,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let input: NewToken = super::optional_json(&body)?;
    let parent = &agent.token;
    let now_s = state.now_ms().div_euclid(1000);
    let parent_expires_s = parent.expires_at.div_euclid(1000);
    let ttl_s = match input.ttl_s {
        Some(_) => ttl_of(&input)?,
        // By default a child lives as long as its parent.
        None => (parent_expires_s - now_s).max(1),
    };
    let expires_at_s = now_s + ttl_s;
    let parent_limits = match &parent.limits {
        Some(json) => {
            let mut limits: TokenLimits =
                serde_json::from_str(json).map_err(|_| ApiError::internal())?;
            limits.expires_at_s = parent_expires_s;
            limits
        }
        None => limits_input(None, parent_expires_s)?,
    };
    let limits = match requested_limits(&input, expires_at_s)? {
        Some(limits) => limits,
        // No limits given: the parent's, with the child's expiry.
        None => TokenLimits {
            expires_at_s,
            ..parent_limits.clone()
        },
    };
    if let Err(err) = limits.narrows(&parent_limits) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "token-widens-parent",
            format!("a child token may only narrow its parent: {err}"),
        ));
    }
    issue(
        &state,
        &agent.claims.sub,
        &agent.claims.tid,
        Some(parent),
        Some(limits),
        ttl_s,
    )
    .await
}

async fn list_tokens(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    state
        .store
        .agent(&auth.tenant.id, &agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    let rows = state.store.agent_tokens(&auth.tenant.id, &agent_id).await?;
    Ok(axum::Json(
        json!({"data": rows.iter().map(token_json).collect::<Vec<_>>()}),
    ))
}

async fn revoke_token(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path((agent_id, token_id)): Path<(String, String)>,
) -> ApiResult<axum::Json<Value>> {
    let row = state
        .store
        .revoke_agent_token(&auth.tenant.id, &agent_id, &token_id, state.now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("agent token"))?;
    Ok(axum::Json(
        json!({"id": row.id, "revokedAt": row.revoked_at.map(rfc3339)}),
    ))
}

async fn revoke_all(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    state
        .store
        .agent(&auth.tenant.id, &agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    let revoked = state
        .store
        .revoke_agent_tokens(&auth.tenant.id, &agent_id, state.now_ms())
        .await?;
    Ok(axum::Json(json!({"revoked": revoked})))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PayInput {
    challenges: Vec<String>,
    /// An approval the owner granted for this payment (after a `202 approval-required`).
    #[serde(default)]
    approval_id: Option<String>,
}

/// A challenge this agent can pay: a `turnpike` charge this platform issued, or an `evm` charge
/// the organisation's wallet can sign.
struct Payable {
    challenge: Challenge,
    /// Minor units (for `evm`: token base units).
    amount: u128,
    /// The ledger currency the agent's policy sees.
    currency: String,
    /// Who is paid: a tenant id (`turnpike`) or an EIP-55 address (`evm`).
    recipient: String,
    /// The merchant as the policy's lists and the spend records name it: the tenant id
    /// (`turnpike`) or the CAIP-10 account `eip155:<chainId>:<recipient>` (`evm`).
    merchant_id: String,
    expires_at_ms: i64,
    /// What an `evm` authorization must sign.
    evm: Option<evm::EvmPayable>,
}

async fn payable(state: &AppState, challenge: Challenge) -> Result<Payable, String> {
    if challenge.method != "turnpike" || challenge.intent != "charge" {
        return Err(format!(
            "{}/{} is not a turnpike charge",
            challenge.method, challenge.intent
        ));
    }
    let request = challenge.request_json();
    let field = |name: &str| request.get(name).and_then(Value::as_str).map(str::to_owned);
    let (Some(amount), Some(currency), Some(recipient)) =
        (field("amount"), field("currency"), field("recipient"))
    else {
        return Err("the turnpike challenge lacks amount, currency or recipient".into());
    };
    let amount = parse_amount_minor(&amount)
        .filter(|a| *a > 0)
        .ok_or("the challenge amount is invalid")?;
    let issuer = request
        .get("methodDetails")
        .and_then(|d| d.get("issuer"))
        .and_then(Value::as_str);
    if issuer != Some(state.config.public_url.as_str()) {
        return Err("the challenge names another Turnpike platform".into());
    }
    let expires_at_ms = challenge
        .expires_at()
        .map(|t| t.timestamp_millis())
        .ok_or("the challenge has no expiry")?;
    if expires_at_ms <= state.now_ms() {
        return Err("the challenge has expired".into());
    }
    let tenant = state
        .tenant(&recipient)
        .await
        .map_err(|_| "the database failed".to_owned())?
        .ok_or("the recipient is not a merchant on this platform")?;
    if challenge.realm != tenant.realm {
        return Err("the challenge's realm is not the recipient's".into());
    }
    let input = challenge.binding_input();
    let mut bound = false;
    for fresh in [false, true] {
        let secrets = crate::pipeline::secrets(state, &tenant.id, fresh)
            .await
            .map_err(|_| "the database failed".to_owned())?;
        bound = secrets.verify(&input, &challenge.id);
        if bound {
            break;
        }
    }
    if !bound {
        return Err("the challenge was not issued by the recipient (binding check failed)".into());
    }
    Ok(Payable {
        challenge,
        amount,
        currency,
        merchant_id: recipient.clone(),
        recipient,
        expires_at_ms,
        evm: None,
    })
}

async fn pay(
    PayingAgent(agent): PayingAgent,
    State(state): State<AppState>,
    Json(input): Json<PayInput>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    if input.challenges.is_empty() || input.challenges.len() > CHALLENGE_VALUES_MAX {
        return Err(ApiError::invalid(format!(
            "`challenges` holds 1 to {CHALLENGE_VALUES_MAX} WWW-Authenticate values"
        )));
    }
    let parsed = parse_challenges_from_lines(input.challenges.iter().map(String::as_str))
        .map_err(|err| ApiError::invalid(format!("`challenges`: {err}")))?;
    let payer = agent.claims.tid.clone();
    let mut reasons = Vec::new();
    let mut chosen = None;
    // The organisation's evm wallet, read once and only when an evm challenge is offered.
    let mut wallet: Option<Option<EvmWallet>> = None;
    // The merchant's order is its preference: the first payable challenge wins.
    for challenge in parsed {
        let result = if challenge.method == turnpike_rails::evm::METHOD {
            if wallet.is_none() {
                wallet = Some(evm_wallet(&state, &payer).await?);
            }
            evm::payable(&state, wallet.as_ref().and_then(Option::as_ref), challenge)
        } else {
            payable(&state, challenge).await
        };
        match result {
            Ok(p) => {
                chosen = Some(p);
                break;
            }
            Err(reason) => reasons.push(reason),
        }
    }
    let Some(payable) = chosen else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-supported-challenge",
            format!(
                "no payable turnpike or evm charge challenge: {}",
                reasons.join("; ")
            ),
        ));
    };
    if let Some(terms) = payable.evm.clone() {
        // An evm challenge is payable only with the wallet read above.
        let Some(Some(wallet)) = &wallet else {
            return Err(ApiError::internal());
        };
        return evm::authorize(&state, &agent, payable, terms, wallet, input.approval_id)
            .await
            .map(|(status, body)| (status, axum::Json(body)));
    }
    if payable.recipient == payer {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-supported-challenge",
            "an organisation cannot pay itself",
        ));
    }
    reserve_and_grant(&state, &agent, payable, input.approval_id)
        .await
        .map(|(status, body)| (status, axum::Json(body)))
}

/// Most evaluations of one payment when the agent's policy changes meanwhile.
const POLICY_ATTEMPTS_MAX: u32 = 3;

/// Evaluate `p` against the agent's policy and record its spend `spend_id`, in the ledger
/// transaction that applies `transfers` (built per attempt: the policy may change meanwhile).
/// Without transfers (a payment from the organisation's own wallet, outside the ledger) the
/// guard alone runs, in the same posting engine. A held payment answers `202
/// approval-required`, a refused one its problem; otherwise the transfers' results.
async fn guard_spend(
    state: &AppState,
    agent: &AgentAuth,
    p: &Payable,
    spend_id: TransferId,
    approval_id: Option<&String>,
    transfers: impl Fn() -> Vec<TransferRequest>,
) -> ApiResult<Vec<TransferResult>> {
    let payer = agent.claims.tid.clone();
    let chain = spend::token_chain(state, &agent.token).await?;
    // The approval's id if this payment is held, known up front so its audit row names it.
    let hold_id = ids::new_id("apr");
    let mut fresh = false;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let policy = spend::agent_policy(state, &payer, &agent.claims.sub, fresh)
            .await?
            .ok_or_else(|| ApiError::unauthorized("agent token: the agent no longer exists"))?;
        let guard = LedgerGuard::Spend(Box::new(SpendGuard {
            spend_id,
            audit_id: ids::new_id("aud"),
            tenant_id: payer.clone(),
            agent_id: agent.claims.sub.clone(),
            token_id: agent.token.id.clone(),
            lineage: agent.token.lineage.clone(),
            chain: chain.clone(),
            policy_version: policy.version,
            policy: policy.compiled,
            challenge_id: p.challenge.id.clone(),
            merchant_id: p.merchant_id.clone(),
            merchant_realm: p.challenge.realm.clone(),
            method: p.challenge.method.clone(),
            amount: p.amount,
            currency: p.currency.clone(),
            approval_id: approval_id.cloned(),
            hold_id: hold_id.clone(),
        }));
        let requests = transfers();
        let outcome = if requests.is_empty() {
            state
                .engine
                .guard(guard)
                .await
                .map(|decided| decided.map(|()| Vec::new()))
        } else {
            state.engine.guarded(guard, requests).await
        };
        let outcome = outcome.map_err(|err| {
            tracing::error!(error = %err, "ledger failed while reserving");
            ApiError::unavailable("the ledger failed; nothing was reserved")
        })?;
        match outcome {
            Ok(results) => return Ok(results),
            Err(GuardRefusal::PolicyChanged) if attempt < POLICY_ATTEMPTS_MAX => fresh = true,
            Err(GuardRefusal::NeedsApproval(detail)) => {
                return Err(hold_for_approval(state, agent, p, hold_id, detail).await);
            }
            Err(refusal) => return Err(denial(state, refusal)),
        }
    }
}

async fn reserve_and_grant(
    state: &AppState,
    agent: &AgentAuth,
    p: Payable,
    approval_id: Option<String>,
) -> ApiResult<(StatusCode, Value)> {
    let payer = agent.claims.tid.clone();
    let balance = state
        .account(&payer, AccountKind::PayerBalance, &p.currency)
        .await?;
    let revenue = state
        .account(&p.recipient, AccountKind::MerchantRevenue, &p.currency)
        .await?;
    // One reservation per (payer, challenge): asking again returns the same grant.
    let reservation = reservation_id(&payer, &p.challenge.id);
    let grant_expires_ms = p.expires_at_ms.saturating_add(RESERVATION_GRACE_MS);
    if let Some(id) = &approval_id {
        check_approval(state, agent, &p, id).await?;
    }
    let reserve = || {
        let timeout_ms = u64::try_from(grant_expires_ms - state.now_ms())
            .unwrap_or(1)
            .max(1);
        vec![TransferRequest::Transfer {
            id: reservation,
            debit_account_id: balance,
            credit_account_id: revenue,
            amount: p.amount,
            currency: p.currency.clone(),
            timeout_ms: Some(timeout_ms),
            code: codes::RESERVE,
            user_data: Some(p.challenge.id.chars().take(200).collect()),
        }]
    };
    let result = guard_spend(state, agent, &p, reservation, approval_id.as_ref(), reserve)
        .await?
        .pop()
        .unwrap_or(Err(TransferError::LinkedEventFailed));
    let (reserved, created) = match result {
        Ok(posted) => (posted.transfer, posted.created),
        Err(TransferError::ExceedsCredits) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient-balance",
                format!(
                    "the organisation's {} balance cannot cover {}",
                    p.currency, p.amount
                ),
            ));
        }
        // A retry for the same challenge: only the timeout (relative to now) differs.
        Err(TransferError::ExistsWithDifferentFields) => {
            match state.store.transfer(reservation).await? {
                Some(t)
                    if (t.debit_account_id, t.credit_account_id) == (balance, revenue)
                        && (t.amount, t.code) == (p.amount, codes::RESERVE)
                        && t.currency == p.currency =>
                {
                    (t, false)
                }
                _ => {
                    return Err(ApiError::conflict(
                        "this challenge was already paid with different terms",
                    ));
                }
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "reservation refused by the ledger");
            return Err(ApiError::conflict(format!(
                "the reservation was refused: {err}"
            )));
        }
    };
    // A retry after the reservation was spent or released must not hand out a dead grant.
    if !created
        && let Some(pending) = state.store.pending_state(reservation).await?
        && pending != turnpike_ledger::PendingState::Pending
    {
        return Err(ApiError::conflict(format!(
            "this challenge's reservation is already {}; ask the merchant for a new challenge",
            pending.as_str()
        )));
    }
    let now_s = state.now_ms().div_euclid(1000);
    let claims = GrantClaims {
        iss: state.config.public_url.clone(),
        jti: reservation.to_string(),
        chal: p.challenge.id.clone(),
        amt: p.amount.to_string(),
        cur: p.currency.clone(),
        rcp: p.recipient.clone(),
        pyr: payer.clone(),
        agt: agent.claims.sub.clone(),
        iat: now_s,
        exp: reserved
            .expires_at_ms
            .unwrap_or(grant_expires_ms)
            .div_euclid(1000),
    };
    let grant = state.keys().sign_grant(&claims);
    state.remember_grant(&grant, claims.exp);
    let c = &p.challenge;
    let credential = Credential {
        challenge: c.echo(),
        source: Some(Value::String(format!("turnpike:{payer}"))),
        payload: [("grant".to_owned(), Value::String(grant))]
            .into_iter()
            .collect(),
    };
    tracing::info!(agent = %agent.claims.sub, recipient = %p.recipient, "reserved a payment");
    Ok((
        StatusCode::OK,
        json!({
            "authorization": credential.to_header_value(),
            "challengeId": c.id,
            "amount": p.amount.to_string(),
            "currency": p.currency,
            "recipient": p.recipient,
            "method": c.method,
            "reservationId": reservation.to_string(),
            "expiresAt": rfc3339(reserved.expires_at_ms.unwrap_or(grant_expires_ms)),
        }),
    ))
}

/// A refused spend guard as the agent's error.
fn denial(state: &AppState, refusal: GuardRefusal) -> ApiError {
    match refusal {
        GuardRefusal::Denied(d) if d.reason == "token_revoked" => {
            ApiError::unauthorized(format!("agent token: {}", d.detail))
                .with("reason", Value::String(d.reason))
        }
        GuardRefusal::Denied(d) => {
            let mut err = ApiError::new(StatusCode::FORBIDDEN, "policy-denied", d.detail)
                .with("reason", Value::String(d.reason));
            if let Some(at) = d.retry_at_ms {
                let wait_ms = (at - state.now_ms()).max(0);
                err = err
                    .with("retryAt", Value::String(rfc3339(at)))
                    .retry_after(u64::try_from((wait_ms + 999) / 1000).unwrap_or(0));
            }
            err
        }
        GuardRefusal::ApprovalInvalid => ApiError::new(
            StatusCode::CONFLICT,
            "approval-invalid",
            "the approval is not granted for this payment, was used, or has expired",
        ),
        GuardRefusal::PolicyChanged => ApiError::unavailable(
            "the agent's policy kept changing while this payment was evaluated; retry",
        ),
        GuardRefusal::PaymentTaken
        | GuardRefusal::NeedsApproval(_)
        | GuardRefusal::DepositCredited => ApiError::internal(),
    }
}

/// Longest an approval stays open (it also ends with its challenge).
pub const APPROVAL_TTL_MS: i64 = 15 * 60 * 1000;

/// Record a held payment; the `202 approval-required` answer (or why it could not be held).
async fn hold_for_approval(
    state: &AppState,
    agent: &AgentAuth,
    p: &Payable,
    id: String,
    detail: String,
) -> ApiError {
    let now_ms = state.now_ms();
    let row = ApprovalRow {
        id,
        tenant_id: agent.claims.tid.clone(),
        agent_id: agent.claims.sub.clone(),
        token_id: agent.token.id.clone(),
        challenge_id: p.challenge.id.clone(),
        merchant_id: p.merchant_id.clone(),
        merchant_realm: p.challenge.realm.clone(),
        amount: p.amount.to_string(),
        currency: p.currency.clone(),
        method: p.challenge.method.clone(),
        state: "pending".into(),
        created_at: now_ms,
        expires_at: p.expires_at_ms.min(now_ms.saturating_add(APPROVAL_TTL_MS)),
        decided_at: None,
        used_at: None,
    };
    if let Err(err) = state.store.insert_approval(&row).await {
        return err.into();
    }
    // Not a failure, but a problem document all the same (RFC 9457 allows any status): the
    // agent must act on it.
    ApiError::new(StatusCode::ACCEPTED, "approval-required", detail)
        .with("approvalId", Value::String(row.id.clone()))
        .with("expiresAt", Value::String(rfc3339(row.expires_at)))
}

/// An approval the agent names must be this agent's, for this challenge and terms, approved
/// and unexpired (the ledger transaction checks it again and uses it up).
async fn check_approval(
    state: &AppState,
    agent: &AgentAuth,
    p: &Payable,
    id: &str,
) -> ApiResult<()> {
    let approval = state
        .store
        .approval(&agent.claims.tid, id)
        .await?
        .filter(|a| a.agent_id == agent.claims.sub)
        .ok_or_else(|| ApiError::not_found("approval"))?;
    let same = approval.challenge_id == p.challenge.id
        && approval.amount == p.amount.to_string()
        && approval.currency == p.currency
        && approval.merchant_id == p.merchant_id;
    if !same {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "approval-invalid",
            "the approval was given for another payment",
        ));
    }
    match approval.state_at(state.now_ms()) {
        "approved" => Ok(()),
        other => Err(ApiError::new(
            StatusCode::CONFLICT,
            "approval-invalid",
            format!("the approval is {other}"),
        )),
    }
}
