-- Usage sums scan only the window: budgets by (agent, currency, time), velocity (every
-- currency) by (agent, time). The limbs, lineage and release ride along in the index.
DROP INDEX agent_spends_window;
CREATE INDEX agent_spends_window ON agent_spends (agent_id, currency, created_at)
    INCLUDE (amount_l0, amount_l1, amount_l2, lineage, released_at);
CREATE INDEX agent_spends_recent ON agent_spends (agent_id, created_at) INCLUDE (released_at);
