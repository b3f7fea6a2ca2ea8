-- Merchant core: tenants, keys, binding secrets, signing keys, prices, payments, idempotency,
-- agents. Times are unix milliseconds (BIGINT). Money is TEXT of integer minor units beside its
-- currency. The same text serves SQLite (migrations/sqlite/0002_merchant.sql): keep them equal.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    slug        TEXT NOT NULL UNIQUE,
    realm       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Secret API keys: only a SHA-256 of the 256-bit random secret is stored.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);

-- Challenge-binding secrets: the highest version binds new challenges, older ones verify
-- challenges issued under them until those expire.
CREATE TABLE binding_secrets (
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    version     BIGINT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

-- The platform's Ed25519 keys (PKCS#8, base64url) that sign agent tokens and grants.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    pkcs8       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT
);

CREATE TABLE prices (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    version     BIGINT NOT NULL,
    deleted_at  BIGINT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX prices_tenant ON prices (tenant_id, created_at);

-- Every version of every price, immutable: a challenge names (price, version) in its opaque.
CREATE TABLE price_versions (
    price_id    TEXT NOT NULL REFERENCES prices (id),
    version     BIGINT NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    definition  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (price_id, version)
);

-- One row per claimed challenge: the unique constraints make a challenge id and a proof
-- succeed at most once across replicas. A failed settlement deletes its claim.
CREATE TABLE payments (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id),
    challenge_id     TEXT NOT NULL,
    proof_key        TEXT NOT NULL UNIQUE,
    state            TEXT NOT NULL,
    method           TEXT NOT NULL,
    amount           TEXT NOT NULL,
    currency         TEXT NOT NULL,
    price_id         TEXT NOT NULL,
    price_version    BIGINT NOT NULL,
    payer_tenant_id  TEXT,
    reference        TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    UNIQUE (tenant_id, challenge_id)
);
CREATE INDEX payments_tenant ON payments (tenant_id, created_at);

-- Idempotency-Key per tenant: the first decision, replayed to retries.
CREATE TABLE idempotency_keys (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    response      TEXT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX agents_tenant ON agents (tenant_id, created_at);

CREATE TABLE agent_tokens (
    id            TEXT PRIMARY KEY,
    agent_id      TEXT NOT NULL REFERENCES agents (id),
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    max_amount    TEXT,
    max_currency  TEXT,
    expires_at    BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT
);
CREATE INDEX agent_tokens_agent ON agent_tokens (agent_id);
