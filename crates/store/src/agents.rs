//! The payer side's rows: agents, their tokens (with lineage and limits), versioned spend
//! policies, the audit log of every pay decision, approvals, and the spends a dry run replays.
//!
//! One SQL text serves both databases (`$n` placeholders); every query that reads a tenant's
//! object takes the tenant id.

use crate::error::StoreError;
use crate::merchant::LIST_LIMIT_MAX;
use crate::{Db, Store};

/// An agent of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    /// `agt_...`
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// Label.
    pub name: String,
    /// Current policy version (0: none).
    pub policy_version: i64,
    /// Unix ms.
    pub created_at: i64,
}

/// An agent token's stored form (the token itself is a signed JWT, never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTokenRow {
    /// `tok_...`
    pub id: String,
    /// Agent.
    pub agent_id: String,
    /// Owner.
    pub tenant_id: String,
    /// The token it was minted under, if any.
    pub parent_id: Option<String>,
    /// Token ids from the root to this one, joined by `/`.
    pub lineage: String,
    /// Its own `TokenLimits` JSON, if any.
    pub limits: Option<String>,
    /// Unix ms.
    pub expires_at: i64,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms, once revoked.
    pub revoked_at: Option<i64>,
}

impl AgentTokenRow {
    /// The token ids from the root to this one.
    pub fn lineage_ids(&self) -> Vec<&str> {
        self.lineage.split('/').collect()
    }
}

/// One version of an agent's spend policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    /// The agent.
    pub agent_id: String,
    /// 1, 2, ...
    pub version: i64,
    /// The `Policy` JSON.
    pub policy: String,
    /// Unix ms.
    pub created_at: i64,
}

/// One recorded `/v1/agent/pay` decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// `aud_...`
    pub id: String,
    /// The paying tenant.
    pub tenant_id: String,
    /// The agent.
    pub agent_id: String,
    /// The token used.
    pub token_id: Option<String>,
    /// The challenge it was asked to pay.
    pub challenge_id: Option<String>,
    /// The merchant's tenant id.
    pub merchant_id: Option<String>,
    /// The merchant's realm.
    pub merchant_realm: Option<String>,
    /// Minor units.
    pub amount: Option<String>,
    /// Currency.
    pub currency: Option<String>,
    /// Payment method.
    pub method: Option<String>,
    /// The policy version evaluated.
    pub policy_version: Option<i64>,
    /// `allow`, `deny` or `needs_approval`.
    pub outcome: String,
    /// Reason code (deny, needs_approval).
    pub reason: Option<String>,
    /// For people.
    pub detail: Option<String>,
    /// The approval involved.
    pub approval_id: Option<String>,
    /// Unix ms.
    pub created_at: i64,
}

/// Which audit rows to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this agent's.
    pub agent_id: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Only this reason.
    pub reason: Option<String>,
    /// At or after (unix ms).
    pub since_ms: Option<i64>,
    /// Before (unix ms).
    pub until_ms: Option<i64>,
    /// At most this many (capped at [`LIST_LIMIT_MAX`]).
    pub limit: i64,
}

/// A payment held for its owner's approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow {
    /// `apr_...`
    pub id: String,
    /// The paying tenant.
    pub tenant_id: String,
    /// The agent.
    pub agent_id: String,
    /// The token that asked.
    pub token_id: String,
    /// The challenge it pays.
    pub challenge_id: String,
    /// The merchant's tenant id.
    pub merchant_id: String,
    /// The merchant's realm.
    pub merchant_realm: String,
    /// Minor units.
    pub amount: String,
    /// Currency.
    pub currency: String,
    /// Payment method.
    pub method: String,
    /// `pending`, `approved`, `rejected` or `used` as stored (a pending one past its expiry is
    /// reported as `expired` by [`ApprovalRow::state_at`]).
    pub state: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub expires_at: i64,
    /// Unix ms.
    pub decided_at: Option<i64>,
    /// Unix ms.
    pub used_at: Option<i64>,
}

impl ApprovalRow {
    /// The state as of `now_ms`: pending and approved approvals past their expiry are `expired`.
    pub fn state_at(&self, now_ms: i64) -> &str {
        match self.state.as_str() {
            "pending" | "approved" if now_ms >= self.expires_at => "expired",
            other => other,
        }
    }
}

/// A spend an agent was allowed (for dry runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRow {
    /// The reservation's transfer id.
    pub id: String,
    /// The agent.
    pub agent_id: String,
    /// Token lineage.
    pub lineage: String,
    /// Minor units.
    pub amount: String,
    /// Currency.
    pub currency: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms, once released.
    pub released_at: Option<i64>,
}

type AgentTuple = (String, String, String, i64, i64);
type SpendTuple = (String, String, String, String, String, i64, Option<i64>);
type TokenTuple = (
    String,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    i64,
    i64,
    Option<i64>,
);
type AuditTuple = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);
type ApprovalTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
);

const AGENT_COLUMNS: &str = "id, tenant_id, name, policy_version, created_at";
const TOKEN_COLUMNS: &str = "id, agent_id, tenant_id, parent_id, COALESCE(lineage, id), limits, \
     expires_at, created_at, revoked_at";
const AUDIT_COLUMNS: &str = "id, tenant_id, agent_id, token_id, challenge_id, merchant_id, \
     merchant_realm, amount, currency, method, policy_version, outcome, reason, detail, \
     approval_id, created_at";
const APPROVAL_COLUMNS: &str = "id, tenant_id, agent_id, token_id, challenge_id, merchant_id, \
     merchant_realm, amount, currency, method, state, created_at, expires_at, decided_at, used_at";

fn agent(t: AgentTuple) -> AgentRow {
    AgentRow {
        id: t.0,
        tenant_id: t.1,
        name: t.2,
        policy_version: t.3,
        created_at: t.4,
    }
}

fn token(t: TokenTuple) -> AgentTokenRow {
    AgentTokenRow {
        id: t.0,
        agent_id: t.1,
        tenant_id: t.2,
        parent_id: t.3,
        lineage: t.4,
        limits: t.5,
        expires_at: t.6,
        created_at: t.7,
        revoked_at: t.8,
    }
}

fn audit(t: AuditTuple) -> AuditRow {
    AuditRow {
        id: t.0,
        tenant_id: t.1,
        agent_id: t.2,
        token_id: t.3,
        challenge_id: t.4,
        merchant_id: t.5,
        merchant_realm: t.6,
        amount: t.7,
        currency: t.8,
        method: t.9,
        policy_version: t.10,
        outcome: t.11,
        reason: t.12,
        detail: t.13,
        approval_id: t.14,
        created_at: t.15,
    }
}

fn approval(t: ApprovalTuple) -> ApprovalRow {
    ApprovalRow {
        id: t.0,
        tenant_id: t.1,
        agent_id: t.2,
        token_id: t.3,
        challenge_id: t.4,
        merchant_id: t.5,
        merchant_realm: t.6,
        amount: t.7,
        currency: t.8,
        method: t.9,
        state: t.10,
        created_at: t.11,
        expires_at: t.12,
        decided_at: t.13,
        used_at: t.14,
    }
}

/// What deciding an approval found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// Decided now.
    Done(ApprovalRow),
    /// It was not pending (already decided, used or expired): as it is.
    NotPending(ApprovalRow),
    /// No such approval for this tenant.
    NotFound,
}

impl Store {
    // ---- agents -------------------------------------------------------------------------

    /// Create an agent.
    pub async fn insert_agent(&self, row: &AgentRow) -> Result<(), StoreError> {
        on_pool!(self, pool => { sqlx::query(
            "INSERT INTO agents (id, tenant_id, name, policy_version, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&row.id).bind(&row.tenant_id).bind(&row.name).bind(row.policy_version)
            .bind(row.created_at).execute(pool).await?; });
        Ok(())
    }

    /// A tenant's agents, oldest first.
    pub async fn agents(&self, tenant_id: &str) -> Result<Vec<AgentRow>, StoreError> {
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 ORDER BY created_at, id LIMIT {LIST_LIMIT_MAX}"
        );
        let rows: Vec<AgentTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant_id).fetch_all(pool).await?);
        Ok(rows.into_iter().map(agent).collect())
    }

    /// One of a tenant's agents.
    pub async fn agent(&self, tenant_id: &str, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 AND id = $2");
        let row: Option<AgentTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant_id).bind(id).fetch_optional(pool).await?);
        Ok(row.map(agent))
    }

    // ---- tokens -------------------------------------------------------------------------

    /// Record an issued agent token.
    pub async fn insert_agent_token(&self, row: &AgentTokenRow) -> Result<(), StoreError> {
        on_pool!(self, pool => { sqlx::query(
            "INSERT INTO agent_tokens (id, agent_id, tenant_id, parent_id, lineage, limits, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&row.id).bind(&row.agent_id).bind(&row.tenant_id).bind(&row.parent_id)
            .bind(&row.lineage).bind(&row.limits).bind(row.expires_at).bind(row.created_at)
            .execute(pool).await?; });
        Ok(())
    }

    /// An agent token's row by id.
    pub async fn agent_token(&self, id: &str) -> Result<Option<AgentTokenRow>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM agent_tokens WHERE id = $1");
        let row: Option<TokenTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(pool).await?);
        Ok(row.map(token))
    }

    /// An agent's tokens, newest first.
    pub async fn agent_tokens(
        &self,
        tenant_id: &str,
        agent_id: &str,
    ) -> Result<Vec<AgentTokenRow>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM agent_tokens WHERE tenant_id = $1 AND agent_id = $2 ORDER BY created_at DESC, id DESC LIMIT {LIST_LIMIT_MAX}"
        );
        let rows: Vec<TokenTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant_id).bind(agent_id).fetch_all(pool).await?);
        Ok(rows.into_iter().map(token).collect())
    }

    /// Revoke one of an agent's tokens and every token minted under it (idempotent); `None`
    /// when there is no such token.
    pub async fn revoke_agent_token(
        &self,
        tenant_id: &str,
        agent_id: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<Option<AgentTokenRow>, StoreError> {
        let Some(row) = self
            .agent_token(id)
            .await?
            .filter(|r| r.tenant_id == tenant_id && r.agent_id == agent_id)
        else {
            return Ok(None);
        };
        // Descendants: their lineage starts with this token's lineage and a '/'.
        let prefix = format!("{}/", row.lineage);
        on_pool!(self, pool => { sqlx::query(
            "UPDATE agent_tokens SET revoked_at = $4 WHERE tenant_id = $1 AND agent_id = $2 AND revoked_at IS NULL AND (id = $3 OR substr(lineage, 1, length($5)) = $5)")
            .bind(tenant_id).bind(agent_id).bind(id).bind(now_ms).bind(&prefix)
            .execute(pool).await?; });
        self.agent_token(id).await
    }

    /// Revoke every token of an agent; how many were still live.
    pub async fn revoke_agent_tokens(
        &self,
        tenant_id: &str,
        agent_id: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE agent_tokens SET revoked_at = $3 WHERE tenant_id = $1 AND agent_id = $2 AND revoked_at IS NULL")
            .bind(tenant_id).bind(agent_id).bind(now_ms).execute(pool).await?.rows_affected());
        Ok(done)
    }

    // ---- policies -----------------------------------------------------------------------

    /// Store `policy` as the agent's next version and make it current; `None` when the tenant
    /// has no such agent.
    pub async fn put_policy(
        &self,
        tenant_id: &str,
        agent_id: &str,
        policy: &str,
        now_ms: i64,
    ) -> Result<Option<PolicyRow>, StoreError> {
        let version: Option<i64> = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version: Option<(i64,)> = sqlx::query_as(
                "UPDATE agents SET policy_version = policy_version + 1 WHERE tenant_id = $1 AND id = $2 RETURNING policy_version")
                .bind(tenant_id).bind(agent_id).fetch_optional(&mut *tx).await?;
            if let Some((version,)) = version {
                sqlx::query(
                    "INSERT INTO agent_policies (agent_id, version, tenant_id, policy, created_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(agent_id).bind(version).bind(tenant_id).bind(policy).bind(now_ms)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            version.map(|(v,)| v)
        });
        Ok(version.map(|version| PolicyRow {
            agent_id: agent_id.to_owned(),
            version,
            policy: policy.to_owned(),
            created_at: now_ms,
        }))
    }

    /// One version of an agent's policy.
    pub async fn policy(
        &self,
        tenant_id: &str,
        agent_id: &str,
        version: i64,
    ) -> Result<Option<PolicyRow>, StoreError> {
        let row: Option<(String, i64, String, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT agent_id, version, policy, created_at FROM agent_policies WHERE tenant_id = $1 AND agent_id = $2 AND version = $3")
            .bind(tenant_id).bind(agent_id).bind(version).fetch_optional(pool).await?);
        Ok(row.map(|r| PolicyRow {
            agent_id: r.0,
            version: r.1,
            policy: r.2,
            created_at: r.3,
        }))
    }

    // ---- audit --------------------------------------------------------------------------

    /// Record a decision made outside a ledger batch.
    pub async fn insert_audit(&self, row: &AuditRow) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        on_pool!(self, pool => { sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&row.id).bind(&row.tenant_id).bind(&row.agent_id).bind(&row.token_id)
            .bind(&row.challenge_id).bind(&row.merchant_id).bind(&row.merchant_realm)
            .bind(&row.amount).bind(&row.currency).bind(&row.method).bind(row.policy_version)
            .bind(&row.outcome).bind(&row.reason).bind(&row.detail).bind(&row.approval_id)
            .bind(row.created_at).execute(pool).await?; });
        Ok(())
    }

    /// A tenant's recorded decisions, newest first.
    pub async fn audit(
        &self,
        tenant_id: &str,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE tenant_id = $1 \
             AND ($2 IS NULL OR agent_id = $2) AND ($3 IS NULL OR outcome = $3) \
             AND ($4 IS NULL OR reason = $4) AND ($5 IS NULL OR created_at >= $5) \
             AND ($6 IS NULL OR created_at < $6) \
             ORDER BY created_at DESC, id DESC LIMIT $7"
        );
        let limit = filter.limit.clamp(1, LIST_LIMIT_MAX);
        let rows: Vec<AuditTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(tenant_id).bind(&filter.agent_id).bind(&filter.outcome).bind(&filter.reason)
                .bind(filter.since_ms).bind(filter.until_ms).bind(limit)
                .fetch_all(pool).await?);
        Ok(rows.into_iter().map(audit).collect())
    }

    // ---- approvals ----------------------------------------------------------------------

    /// Record a payment held for approval.
    pub async fn insert_approval(&self, row: &ApprovalRow) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO approvals ({APPROVAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        );
        on_pool!(self, pool => { sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(&row.id).bind(&row.tenant_id).bind(&row.agent_id).bind(&row.token_id)
            .bind(&row.challenge_id).bind(&row.merchant_id).bind(&row.merchant_realm)
            .bind(&row.amount).bind(&row.currency).bind(&row.method).bind(&row.state)
            .bind(row.created_at).bind(row.expires_at).bind(row.decided_at).bind(row.used_at)
            .execute(pool).await?; });
        Ok(())
    }

    /// One of a tenant's approvals.
    pub async fn approval(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<ApprovalRow>, StoreError> {
        let sql =
            format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE tenant_id = $1 AND id = $2");
        let row: Option<ApprovalTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant_id).bind(id).fetch_optional(pool).await?);
        Ok(row.map(approval))
    }

    /// A tenant's approvals, newest first; with `state`, only those in that state as of
    /// `now_ms` (`expired`: pending or approved past their expiry).
    pub async fn approvals(
        &self,
        tenant_id: &str,
        state: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let condition = match state {
            None => "",
            Some("expired") => " AND state IN ('pending', 'approved') AND expires_at <= $3",
            Some("pending" | "approved") => " AND state = $2 AND expires_at > $3",
            Some(_) => " AND state = $2",
        };
        let sql = format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE tenant_id = $1 AND CAST($2 AS TEXT) IS NOT NULL AND CAST($3 AS BIGINT) IS NOT NULL{condition} ORDER BY created_at DESC, id DESC LIMIT {LIST_LIMIT_MAX}"
        );
        let state = state.unwrap_or_default();
        let rows: Vec<ApprovalTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(tenant_id).bind(state).bind(now_ms).fetch_all(pool).await?);
        Ok(rows.into_iter().map(approval).collect())
    }

    /// Approve or reject a pending, unexpired approval.
    pub async fn decide_approval(
        &self,
        tenant_id: &str,
        id: &str,
        approve: bool,
        now_ms: i64,
    ) -> Result<Decided, StoreError> {
        let state = if approve { "approved" } else { "rejected" };
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE approvals SET state = $3, decided_at = $4 WHERE tenant_id = $1 AND id = $2 AND state = 'pending' AND expires_at > $4")
            .bind(tenant_id).bind(id).bind(state).bind(now_ms).execute(pool).await?.rows_affected());
        Ok(match self.approval(tenant_id, id).await? {
            None => Decided::NotFound,
            Some(row) if done == 1 => Decided::Done(row),
            Some(row) => Decided::NotPending(row),
        })
    }

    // ---- spends -------------------------------------------------------------------------

    /// Stop counting a spend against its agent's budgets (its payment was refunded); false when
    /// there is no such spend or it was released already.
    pub async fn release_spend(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE agent_spends SET released_at = $2 WHERE id = $1 AND released_at IS NULL")
            .bind(id).bind(now_ms).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// An agent's spends created in `[from_ms, to_ms)`, oldest first (for dry runs).
    pub async fn spends(
        &self,
        agent_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<SpendRow>, StoreError> {
        let rows: Vec<SpendTuple> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id, agent_id, lineage, amount, currency, created_at, released_at FROM agent_spends WHERE agent_id = $1 AND created_at >= $2 AND created_at < $3 ORDER BY created_at, id")
            .bind(agent_id).bind(from_ms).bind(to_ms).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|r| SpendRow {
                id: r.0,
                agent_id: r.1,
                lineage: r.2,
                amount: r.3,
                currency: r.4,
                created_at: r.5,
                released_at: r.6,
            })
            .collect())
    }
}
