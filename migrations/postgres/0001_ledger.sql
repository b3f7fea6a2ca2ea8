-- Turnpike ledger schema, PostgreSQL (kept to what CockroachDB and YugabyteDB accept: no
-- advisory locks, no LISTEN/NOTIFY, no triggers of our own).
--
-- Ids are 32 lowercase hex digits (u128, fixed width, so text order is numeric order).
-- Amounts are u128 minor units: NUMERIC(39,0), bound as text and cast, read back as text.
-- Never floats.

CREATE TABLE ledger_accounts (
    id              TEXT           NOT NULL,
    tenant          TEXT           NOT NULL,
    owner           TEXT           NOT NULL,
    kind            TEXT           NOT NULL,
    currency        TEXT           NOT NULL,
    flags           INTEGER        NOT NULL,
    debits_pending  NUMERIC(39, 0) NOT NULL DEFAULT 0,
    debits_posted   NUMERIC(39, 0) NOT NULL DEFAULT 0,
    credits_pending NUMERIC(39, 0) NOT NULL DEFAULT 0,
    credits_posted  NUMERIC(39, 0) NOT NULL DEFAULT 0,
    created_at_ms   BIGINT         NOT NULL,
    CONSTRAINT ledger_accounts_pkey PRIMARY KEY (id),
    CONSTRAINT ledger_accounts_id_hex
        CHECK (id ~ '^[0-9a-f]{32}$' AND id <> '00000000000000000000000000000000'),
    CONSTRAINT ledger_accounts_kind_known CHECK (kind IN (
        'merchant_revenue', 'payer_balance', 'platform_fees', 'rail_clearing', 'budget', 'external')),
    CONSTRAINT ledger_accounts_currency_len CHECK (char_length(currency) BETWEEN 1 AND 64),
    CONSTRAINT ledger_accounts_flags_known CHECK (flags BETWEEN 0 AND 3),
    CONSTRAINT ledger_accounts_totals_u128 CHECK (
        debits_pending BETWEEN 0 AND 340282366920938463463374607431768211455
        AND debits_posted BETWEEN 0 AND 340282366920938463463374607431768211455
        AND credits_pending BETWEEN 0 AND 340282366920938463463374607431768211455
        AND credits_posted BETWEEN 0 AND 340282366920938463463374607431768211455),
    -- The balance limits, enforced by the database as well as by the ledger rules.
    CONSTRAINT ledger_accounts_debits_within_credits
        CHECK ((flags & 1) = 0 OR debits_posted + debits_pending <= credits_posted),
    CONSTRAINT ledger_accounts_credits_within_debits
        CHECK ((flags & 2) = 0 OR credits_posted + credits_pending <= debits_posted)
);

CREATE TABLE ledger_transfers (
    id                TEXT           NOT NULL,
    debit_account_id  TEXT           NOT NULL,
    credit_account_id TEXT           NOT NULL,
    amount            NUMERIC(39, 0) NOT NULL,
    currency          TEXT           NOT NULL,
    kind              TEXT           NOT NULL,
    pending_id        TEXT,
    expires_at_ms     BIGINT,
    timeout_ms        NUMERIC(20, 0),
    code              INTEGER        NOT NULL,
    user_data         BYTEA,
    timestamp_ms      BIGINT         NOT NULL,
    CONSTRAINT ledger_transfers_pkey PRIMARY KEY (id),
    -- No foreign keys to ledger_accounts: on the hot path they cost a lookup and a row lock
    -- per transfer and account (about a quarter of the posting throughput), for nothing the
    -- ledger does not already guarantee: accounts are never deleted, a batch refuses transfers
    -- on accounts it did not find under its lock, and `check()` reports any dangling account.
    CONSTRAINT ledger_transfers_pending_fkey
        FOREIGN KEY (pending_id) REFERENCES ledger_transfers (id),
    CONSTRAINT ledger_transfers_id_hex
        CHECK (id ~ '^[0-9a-f]{32}$' AND id <> '00000000000000000000000000000000'),
    CONSTRAINT ledger_transfers_accounts_differ CHECK (debit_account_id <> credit_account_id),
    CONSTRAINT ledger_transfers_amount_u128
        CHECK (amount BETWEEN 1 AND 340282366920938463463374607431768211455),
    CONSTRAINT ledger_transfers_currency_len CHECK (char_length(currency) BETWEEN 1 AND 64),
    CONSTRAINT ledger_transfers_kind_known
        CHECK (kind IN ('posted', 'pending', 'post_pending', 'void_pending')),
    -- A pending transfer has an expiry and a timeout; a post or void names its pending transfer;
    -- nothing else carries either.
    CONSTRAINT ledger_transfers_pending_shape CHECK (
        (kind = 'pending') = (expires_at_ms IS NOT NULL AND timeout_ms IS NOT NULL)
        AND (kind IN ('post_pending', 'void_pending')) = (pending_id IS NOT NULL)),
    CONSTRAINT ledger_transfers_timeout_u64
        CHECK (timeout_ms BETWEEN 1 AND 18446744073709551615),
    CONSTRAINT ledger_transfers_code_u16 CHECK (code BETWEEN 0 AND 65535),
    CONSTRAINT ledger_transfers_user_data_len CHECK (octet_length(user_data) <= 256)
);

-- A pending transfer is resolved (posted or voided) at most once, even across replicas.
CREATE UNIQUE INDEX ledger_transfers_pending_id_key ON ledger_transfers (pending_id);
-- Account history, newest first, keyset-paginated on (timestamp_ms, id).
CREATE INDEX ledger_transfers_debit_history
    ON ledger_transfers (debit_account_id, timestamp_ms, id);
CREATE INDEX ledger_transfers_credit_history
    ON ledger_transfers (credit_account_id, timestamp_ms, id);

CREATE TABLE ledger_pending (
    transfer_id   TEXT   NOT NULL,
    state         TEXT   NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    CONSTRAINT ledger_pending_pkey PRIMARY KEY (transfer_id),
    CONSTRAINT ledger_pending_transfer_fkey
        FOREIGN KEY (transfer_id) REFERENCES ledger_transfers (id),
    CONSTRAINT ledger_pending_state_known
        CHECK (state IN ('pending', 'posted', 'voided', 'expired'))
);

-- The expiry sweeper's scan: pending rows that are due.
CREATE INDEX ledger_pending_due ON ledger_pending (state, expires_at_ms);
