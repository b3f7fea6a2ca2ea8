-- Deposits (issue 6): stablecoins sent to an organisation's deposit address credit its balance.
-- The operator's configuration per method, each tenant's deposit address (its key sealed), the
-- chain watcher's cursor per chain, and every credited deposit (once per log).
CREATE TABLE deposit_configs (
    method      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    -- The settings (JSON), as the operator API returns them.
    settings    TEXT NOT NULL,
    version     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE deposit_addresses (
    tenant_id   TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    method      TEXT COLLATE "C" NOT NULL,
    -- EIP-55 checksummed.
    address     TEXT COLLATE "C" NOT NULL,
    -- The address's private key, sealed with the key from TURNPIKE_SECRETS_KEY (never returned).
    sealed      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, method),
    UNIQUE (method, address)
);

-- The next block the watcher scans on a chain.
CREATE TABLE deposit_cursors (
    method      TEXT COLLATE "C" NOT NULL,
    chain_id    BIGINT NOT NULL,
    next_block  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (method, chain_id)
);

-- One row per credited log, written in the ledger transaction that credits it.
CREATE TABLE deposits (
    chain_id     BIGINT NOT NULL,
    tx_hash      TEXT COLLATE "C" NOT NULL,
    log_index    BIGINT NOT NULL,
    tenant_id    TEXT COLLATE "C" NOT NULL REFERENCES tenants (id),
    method       TEXT NOT NULL,
    block_number BIGINT NOT NULL,
    token        TEXT NOT NULL,
    sender       TEXT NOT NULL,
    address      TEXT NOT NULL,
    currency     TEXT NOT NULL,
    -- Minor units (one per token base unit), canonical decimal.
    amount       TEXT NOT NULL,
    transfer_id  TEXT NOT NULL,
    credited_at  BIGINT NOT NULL,
    PRIMARY KEY (chain_id, tx_hash, log_index)
);
CREATE INDEX deposits_by_tenant ON deposits (tenant_id, credited_at);
