//! The payer side: agents, their tokens, and `/v1/agent/pay` (a 402's challenges in, an
//! `Authorization: Payment` value out, the amount reserved in the ledger).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use serde::Deserialize;
use serde_json::{Value, json};
use turnpike_ledger::{AccountKind, TransferError, TransferRequest};
use turnpike_policy::{AgentTokenClaims, GrantClaims, Money};
use turnpike_protocol::charge::parse_amount_minor;
use turnpike_protocol::{Challenge, ChallengeEcho, Credential, parse_challenges_from_lines};
use turnpike_store::{AgentRow, AgentTokenRow};

use super::{Json, rfc3339};
use crate::auth::{AgentAuth, TenantAuth};
use crate::error::{ApiError, ApiResult};
use crate::ids;
use crate::method_turnpike::{RESERVATION_GRACE_MS, codes, reservation_id};
use crate::state::AppState;

/// Longest agent token lifetime (one year).
pub const TOKEN_TTL_S_MAX: i64 = 366 * 86_400;
/// Token lifetime when none is asked for (one day).
pub const TOKEN_TTL_S_DEFAULT: i64 = 86_400;
/// Most challenge header values one pay call reads.
pub const CHALLENGE_VALUES_MAX: usize = 16;

/// `/v1/agents...`, `/v1/agent/pay`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agents", post(create).get(list))
        .route("/v1/agents/{id}/tokens", post(create_token))
        .route("/v1/agents/{id}/tokens/{token_id}", delete(revoke_token))
        .route("/v1/agent/pay", post(pay))
}

fn agent_json(a: &AgentRow) -> Value {
    json!({"id": a.id, "name": a.name, "createdAt": rfc3339(a.created_at)})
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

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewToken {
    #[serde(default)]
    max_per_payment: Option<Money>,
    #[serde(default)]
    ttl_s: Option<i64>,
}

async fn create_token(
    auth: TenantAuth,
    State(state): State<AppState>,
    Path(agent_id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    let input: NewToken = super::optional_json(&body)?;
    let agent = state
        .store
        .agent(&auth.tenant.id, &agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    let ttl_s = input.ttl_s.unwrap_or(TOKEN_TTL_S_DEFAULT);
    if !(1..=TOKEN_TTL_S_MAX).contains(&ttl_s) {
        return Err(ApiError::invalid(format!(
            "`ttlS` must be between 1 and {TOKEN_TTL_S_MAX}"
        )));
    }
    if let Some(max) = &input.max_per_payment {
        let amount_ok = parse_amount_minor(&max.amount).is_some();
        let currency_ok = crate::catalog::is_currency_code(&max.currency);
        if !amount_ok || !currency_ok {
            return Err(ApiError::invalid(
                "`maxPerPayment` must be {\"amount\": minor units as a string, \"currency\": lowercase code}",
            ));
        }
    }
    let now_ms = state.now_ms();
    let now_s = now_ms.div_euclid(1000);
    let row = AgentTokenRow {
        id: ids::new_id("tok"),
        agent_id: agent.id.clone(),
        tenant_id: auth.tenant.id.clone(),
        max_amount: input.max_per_payment.as_ref().map(|m| m.amount.clone()),
        max_currency: input.max_per_payment.as_ref().map(|m| m.currency.clone()),
        expires_at: (now_s + ttl_s) * 1000,
        created_at: now_ms,
        revoked_at: None,
    };
    state.store.insert_agent_token(&row).await?;
    let claims = AgentTokenClaims {
        iss: state.config.public_url.clone(),
        sub: agent.id.clone(),
        tid: auth.tenant.id.clone(),
        jti: row.id.clone(),
        iat: now_s,
        exp: now_s + ttl_s,
        max: input.max_per_payment.clone(),
    };
    let token = state.keys().sign_agent_token(&claims);
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "id": row.id, "agentId": agent.id, "token": token,
            "maxPerPayment": input.max_per_payment,
            "expiresAt": rfc3339(row.expires_at),
        })),
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayInput {
    challenges: Vec<String>,
}

/// A `turnpike` challenge this platform issued and can pay.
struct Payable {
    challenge: Challenge,
    amount: u128,
    currency: String,
    recipient: String,
    expires_at_ms: i64,
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
        recipient,
        expires_at_ms,
    })
}

async fn pay(
    agent: AgentAuth,
    State(state): State<AppState>,
    Json(input): Json<PayInput>,
) -> ApiResult<axum::Json<Value>> {
    if input.challenges.is_empty() || input.challenges.len() > CHALLENGE_VALUES_MAX {
        return Err(ApiError::invalid(format!(
            "`challenges` holds 1 to {CHALLENGE_VALUES_MAX} WWW-Authenticate values"
        )));
    }
    let parsed = parse_challenges_from_lines(input.challenges.iter().map(String::as_str))
        .map_err(|err| ApiError::invalid(format!("`challenges`: {err}")))?;
    let mut reasons = Vec::new();
    let mut chosen = None;
    for challenge in parsed {
        match payable(&state, challenge).await {
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
                "no payable turnpike charge challenge: {}",
                reasons.join("; ")
            ),
        ));
    };
    let payer = agent.claims.tid.clone();
    if payable.recipient == payer {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no-supported-challenge",
            "an organisation cannot pay itself",
        ));
    }
    check_max(&agent.claims, payable.amount, &payable.currency)?;
    reserve_and_grant(&state, &agent, payable)
        .await
        .map(axum::Json)
}

fn check_max(claims: &AgentTokenClaims, amount: u128, currency: &str) -> ApiResult<()> {
    let Some(max) = &claims.max else {
        return Ok(());
    };
    let max_amount = parse_amount_minor(&max.amount).unwrap_or(0);
    if max.currency != currency || amount > max_amount {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "over-max-per-payment",
            format!(
                "the payment ({amount} {currency}) is over this token's maximum per payment ({} {})",
                max.amount, max.currency
            ),
        ));
    }
    Ok(())
}

async fn reserve_and_grant(state: &AppState, agent: &AgentAuth, p: Payable) -> ApiResult<Value> {
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
    let timeout_ms = u64::try_from(grant_expires_ms - state.now_ms())
        .unwrap_or(1)
        .max(1);
    let result = state
        .engine
        .transfer(TransferRequest::Transfer {
            id: reservation,
            debit_account_id: balance,
            credit_account_id: revenue,
            amount: p.amount,
            currency: p.currency.clone(),
            timeout_ms: Some(timeout_ms),
            code: codes::RESERVE,
            user_data: Some(p.challenge.id.chars().take(200).collect()),
        })
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "ledger failed while reserving");
            ApiError::unavailable("the ledger failed; nothing was reserved")
        })?;
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
    let c = &p.challenge;
    let credential = Credential {
        challenge: ChallengeEcho {
            id: c.id.clone(),
            realm: c.realm.clone(),
            method: c.method.clone(),
            intent: c.intent.clone(),
            request: c.request.wire().to_owned(),
            description: c.description.clone(),
            digest: c.digest.clone(),
            expires: c.expires.clone(),
            opaque: c.opaque.clone(),
            header: c.header.clone(),
        },
        source: Some(Value::String(format!("turnpike:{payer}"))),
        payload: [("grant".to_owned(), Value::String(grant))]
            .into_iter()
            .collect(),
    };
    tracing::info!(agent = %agent.claims.sub, recipient = %p.recipient, "reserved a payment");
    Ok(json!({
        "authorization": credential.to_header_value(),
        "challengeId": c.id,
        "amount": p.amount.to_string(),
        "currency": p.currency,
        "recipient": p.recipient,
        "reservationId": reservation.to_string(),
        "expiresAt": rfc3339(reserved.expires_at_ms.unwrap_or(grant_expires_ms)),
    }))
}
