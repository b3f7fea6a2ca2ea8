-- Settlement rails (issue 6): each tenant's configuration of a rail, and what a payment settled
-- on an outside rail submitted (so a resolver can finish it after a restart).
CREATE TABLE rail_configs (
    tenant_id   TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    method      TEXT COLLATE "C" NOT NULL,
    -- The public settings (JSON), as the API returns them.
    settings    TEXT NOT NULL,
    -- The secrets (JSON), sealed with the key from TURNPIKE_SECRETS_KEY (never returned).
    sealed      TEXT,
    version     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, method)
);

-- The rail's record of a submission (e.g. the signed transaction and its hash).
ALTER TABLE payments ADD COLUMN settlement TEXT;
-- The resolver's work list.
CREATE INDEX payments_unsettled ON payments (updated_at) WHERE state IN ('claimed', 'pending');
