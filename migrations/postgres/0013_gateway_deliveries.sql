-- Gateway deliveries in flight: a paid gateway request's upstream call and, when it fails, its
-- refund. The row is written before the credential is verified and deleted once the request is
-- finished (served, or refunded); one left behind (a crash, a kill) is finished by a job: its
-- payment, if it settled, is refunded (or owed back on chain), since nobody can say whether the
-- upstream served it. The same text serves both databases: keep them equal.
CREATE TABLE gateway_deliveries (
    tenant_id    TEXT   NOT NULL,
    challenge_id TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, challenge_id)
);
CREATE INDEX gateway_deliveries_age ON gateway_deliveries (created_at);
