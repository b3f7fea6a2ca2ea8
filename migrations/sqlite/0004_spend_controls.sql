-- Agent spend controls: versioned policies, token lineage and limits, spends (the budget side of
-- each reservation), the audit log and approvals. Times are unix ms. The same text serves SQLite
-- (migrations/postgres/0004_spend_controls.sql): keep them equal.

-- The agent's current policy version (0: none yet, which allows what its tokens allow).
ALTER TABLE agents ADD COLUMN policy_version BIGINT NOT NULL DEFAULT 0;

CREATE TABLE agent_policies (
    agent_id    TEXT NOT NULL REFERENCES agents (id),
    version     BIGINT NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    policy      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (agent_id, version)
);

-- A child token names its parent; `lineage` is the chain of token ids from the root to this
-- token, joined by '/'; `limits` is its TokenLimits JSON (NULL: none of its own).
ALTER TABLE agent_tokens ADD COLUMN parent_id TEXT;
ALTER TABLE agent_tokens ADD COLUMN lineage TEXT;
ALTER TABLE agent_tokens ADD COLUMN limits TEXT;

-- One row per reservation an agent was allowed (id = the reservation's ledger transfer id).
-- The amount is also split into three 40-bit limbs so both databases sum it exactly in SQL.
-- `released_at` is set when the reservation is voided or expires: it then no longer counts.
CREATE TABLE agent_spends (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    agent_id       TEXT NOT NULL,
    token_id       TEXT NOT NULL,
    lineage        TEXT NOT NULL,
    challenge_id   TEXT NOT NULL,
    merchant_id    TEXT NOT NULL,
    method         TEXT NOT NULL,
    amount         TEXT NOT NULL,
    amount_l0      BIGINT NOT NULL,
    amount_l1      BIGINT NOT NULL,
    amount_l2      BIGINT NOT NULL,
    currency       TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    released_at    BIGINT
);
CREATE INDEX agent_spends_window ON agent_spends (agent_id, currency, created_at);

-- Every /v1/agent/pay decision.
CREATE TABLE audit_log (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    agent_id        TEXT NOT NULL,
    token_id        TEXT,
    challenge_id    TEXT,
    merchant_id     TEXT,
    merchant_realm  TEXT,
    amount          TEXT,
    currency        TEXT,
    method          TEXT,
    policy_version  BIGINT,
    outcome         TEXT NOT NULL,
    reason          TEXT,
    detail          TEXT,
    approval_id     TEXT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, created_at);
CREATE INDEX audit_log_agent ON audit_log (agent_id, created_at);

CREATE TABLE approvals (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    agent_id        TEXT NOT NULL REFERENCES agents (id),
    token_id        TEXT NOT NULL,
    challenge_id    TEXT NOT NULL,
    merchant_id     TEXT NOT NULL,
    merchant_realm  TEXT NOT NULL,
    amount          TEXT NOT NULL,
    currency        TEXT NOT NULL,
    method          TEXT NOT NULL,
    state           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    decided_at      BIGINT,
    used_at         BIGINT
);
CREATE INDEX approvals_tenant ON approvals (tenant_id, created_at);
