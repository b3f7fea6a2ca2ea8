-- Fewer index writes per payment (issue 4's speed): only post/void transfers name a pending
-- transfer, so only they need an entry in the unique index on `pending_id` (NULLs never
-- conflicted). Same uniqueness, about a third of the entries.
DROP INDEX ledger_transfers_pending_id_key;
CREATE UNIQUE INDEX ledger_transfers_pending_id_key ON ledger_transfers (pending_id)
    WHERE pending_id IS NOT NULL;
