-- Payer wallets (issue 6): an organisation's own wallet on an outside rail, with which its agents
-- answer that rail's challenges (`PUT /v1/wallets/{method}`). The key is sealed at rest.
CREATE TABLE payer_wallets (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    method      TEXT NOT NULL,
    -- The wallet's public address (EIP-55 for evm).
    address     TEXT NOT NULL,
    -- The public settings (JSON: the tokens it pays with), as the API returns them.
    settings    TEXT NOT NULL,
    -- The private key, sealed with the key from TURNPIKE_SECRETS_KEY (never returned).
    sealed      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, method)
);
