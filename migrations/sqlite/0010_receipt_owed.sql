-- A payment whose client was answered `202 pending` (issue 6): its receipt is still owed. The
-- first retry of the same credential after the payment settles gets it (once); later ones are
-- replays (403).
ALTER TABLE payments ADD COLUMN receipt_owed INTEGER NOT NULL DEFAULT 0;
