-- Refunds owed on chain: a payment settled on an outside rail (evm, tempo) whose gateway
-- upstream failed is reversed in the ledger and moves to state `refund_due`, naming the address
-- that paid; the merchant returns the tokens itself and records the refund's transaction
-- (state `refunded`). The same text serves both databases: keep them equal.

-- The paying address (EIP-55), when the rail knows it.
ALTER TABLE payments ADD COLUMN payer_address TEXT;
-- The merchant's refund transaction (hash), once recorded.
ALTER TABLE payments ADD COLUMN refund_reference TEXT;
-- The merchant's work list (`GET /v1/payments?state=refund_due`). `payments_unsettled` stays
-- on claimed and pending rows only: the resolver never sees these.
CREATE INDEX payments_refund_due ON payments (tenant_id, created_at) WHERE state = 'refund_due';
