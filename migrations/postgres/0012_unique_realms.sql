-- Realms are unique across tenants (issue 14, item 7): an agent's policy that allow-lists a
-- merchant by realm must name one tenant, not whoever else claimed the same realm. And since the
-- policy's merchant lists hold realms and tenant ids side by side, no realm may be another
-- tenant's id.
--
-- A database from before this migration may hold tenants that share a realm (or a realm equal to
-- another tenant's id). The migration does not pick a winner or rename anyone behind the
-- operator's back (either would silently change whom agents' allow-lists pay): it stops with
-- the error below, nothing applied, and the server does not start. Find them with
--   SELECT realm, id, slug, created_at FROM tenants WHERE realm IN
--     (SELECT realm FROM tenants GROUP BY realm HAVING COUNT(*) > 1)
--     OR realm IN (SELECT id FROM tenants) ORDER BY realm, created_at;
-- give every tenant but the rightful one another realm
--   (UPDATE tenants SET realm = '...' WHERE id = '...'),
-- and start the server (or `turnpike migrate`) again. Challenges already issued under a changed
-- realm stop being payable; the tenant's new ones carry the new realm.
DO $$
DECLARE
    shared BIGINT;
BEGIN
    SELECT COUNT(*) INTO shared FROM tenants t
    WHERE EXISTS (SELECT 1 FROM tenants o WHERE o.id <> t.id AND (o.realm = t.realm OR o.id = t.realm));
    IF shared > 0 THEN
        RAISE EXCEPTION 'migration 0012: % tenants share a realm (or use another tenant''s id as their realm); give each a distinct realm first (see migrations/postgres/0012_unique_realms.sql)', shared;
    END IF;
END
$$;

CREATE UNIQUE INDEX tenants_realm_key ON tenants (realm);
