-- Turnpike ledger schema, SQLite (STRICT tables).
--
-- Ids are 32 lowercase hex digits (u128, fixed width, so text order is numeric order).
-- Amounts are u128 minor units stored as canonical decimal TEXT (no sign, no leading zero, at
-- most 39 digits): SQLite has no 128-bit integer and its REAL would lose cents. Never floats.
-- Sums over amounts are computed in Rust, never in SQL.

CREATE TABLE ledger_accounts (
    id              TEXT    NOT NULL PRIMARY KEY
        CHECK (length(id) = 32 AND id NOT GLOB '*[^0-9a-f]*'
               AND id <> '00000000000000000000000000000000'),
    tenant          TEXT    NOT NULL,
    owner           TEXT    NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN (
        'merchant_revenue', 'payer_balance', 'platform_fees', 'rail_clearing', 'budget', 'external')),
    currency        TEXT    NOT NULL CHECK (length(currency) BETWEEN 1 AND 64),
    flags           INTEGER NOT NULL CHECK (flags BETWEEN 0 AND 3),
    debits_pending  TEXT    NOT NULL DEFAULT '0' CHECK (
        length(debits_pending) <= 39 AND (debits_pending = '0'
        OR (debits_pending GLOB '[1-9]*' AND debits_pending NOT GLOB '*[^0-9]*'))),
    debits_posted   TEXT    NOT NULL DEFAULT '0' CHECK (
        length(debits_posted) <= 39 AND (debits_posted = '0'
        OR (debits_posted GLOB '[1-9]*' AND debits_posted NOT GLOB '*[^0-9]*'))),
    credits_pending TEXT    NOT NULL DEFAULT '0' CHECK (
        length(credits_pending) <= 39 AND (credits_pending = '0'
        OR (credits_pending GLOB '[1-9]*' AND credits_pending NOT GLOB '*[^0-9]*'))),
    credits_posted  TEXT    NOT NULL DEFAULT '0' CHECK (
        length(credits_posted) <= 39 AND (credits_posted = '0'
        OR (credits_posted GLOB '[1-9]*' AND credits_posted NOT GLOB '*[^0-9]*'))),
    created_at_ms   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- No foreign keys to ledger_accounts (as on PostgreSQL): accounts are never deleted, a batch
-- refuses transfers on accounts it did not find, and `check()` reports any dangling account.
CREATE TABLE ledger_transfers (
    id                TEXT    NOT NULL PRIMARY KEY
        CHECK (length(id) = 32 AND id NOT GLOB '*[^0-9a-f]*'
               AND id <> '00000000000000000000000000000000'),
    debit_account_id  TEXT    NOT NULL,
    credit_account_id TEXT    NOT NULL,
    amount            TEXT    NOT NULL CHECK (
        length(amount) <= 39 AND amount GLOB '[1-9]*' AND amount NOT GLOB '*[^0-9]*'),
    currency          TEXT    NOT NULL CHECK (length(currency) BETWEEN 1 AND 64),
    kind              TEXT    NOT NULL
        CHECK (kind IN ('posted', 'pending', 'post_pending', 'void_pending')),
    pending_id        TEXT    REFERENCES ledger_transfers (id),
    expires_at_ms     INTEGER,
    -- u64 milliseconds, decimal TEXT (SQLite integers are i64).
    timeout_ms        TEXT    CHECK (
        length(timeout_ms) <= 20 AND timeout_ms GLOB '[1-9]*' AND timeout_ms NOT GLOB '*[^0-9]*'),
    code              INTEGER NOT NULL CHECK (code BETWEEN 0 AND 65535),
    user_data         BLOB    CHECK (length(user_data) <= 256),
    timestamp_ms      INTEGER NOT NULL,
    CHECK (debit_account_id <> credit_account_id),
    -- A pending transfer has an expiry and a timeout; a post or void names its pending transfer;
    -- nothing else carries either.
    CHECK ((kind = 'pending') = (expires_at_ms IS NOT NULL AND timeout_ms IS NOT NULL)),
    CHECK ((kind IN ('post_pending', 'void_pending')) = (pending_id IS NOT NULL))
) STRICT, WITHOUT ROWID;

-- A pending transfer is resolved (posted or voided) at most once.
CREATE UNIQUE INDEX ledger_transfers_pending_id_key ON ledger_transfers (pending_id);
-- Account history, newest first, keyset-paginated on (timestamp_ms, id).
CREATE INDEX ledger_transfers_debit_history
    ON ledger_transfers (debit_account_id, timestamp_ms, id);
CREATE INDEX ledger_transfers_credit_history
    ON ledger_transfers (credit_account_id, timestamp_ms, id);

CREATE TABLE ledger_pending (
    transfer_id   TEXT    NOT NULL PRIMARY KEY REFERENCES ledger_transfers (id),
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'posted', 'voided', 'expired')),
    expires_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- The expiry sweeper's scan: pending rows that are due.
CREATE INDEX ledger_pending_due ON ledger_pending (state, expires_at_ms);
