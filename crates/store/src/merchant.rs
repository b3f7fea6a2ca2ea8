//! The merchant core's rows: tenants, API keys, binding secrets, signing keys, prices and their
//! versions, payments (written by the payment guard, see `guard`), idempotency keys. Agents are in
//! `agents`.
//!
//! One SQL text serves both databases (`$n` placeholders, BIGINT/TEXT columns); the
//! [`on_pool!`] macro expands each query once per driver so that both are type-checked.
//! Every query that reads a tenant's object takes the tenant id: another tenant's row is
//! never returned.

use crate::error::StoreError;
use crate::{Db, Store};

/// A tenant: a merchant and/or a paying organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    /// `ten_...`
    pub id: String,
    /// Display name.
    pub name: String,
    /// Unique URL slug (gateway path).
    pub slug: String,
    /// MPP realm of its challenges.
    pub realm: String,
    /// Unix ms.
    pub created_at: i64,
}

/// A secret API key's stored form (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// `key_...`
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// Label.
    pub name: String,
    /// The first characters of the secret, for listings.
    pub prefix: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms, once revoked.
    pub revoked_at: Option<i64>,
}

/// One version of a tenant's challenge-binding secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BindingSecretRow {
    /// 1, 2, ...
    pub version: i64,
    /// The secret (base64url).
    pub secret: String,
    /// Unix ms.
    pub created_at: i64,
}

impl std::fmt::Debug for BindingSecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindingSecretRow")
            .field("version", &self.version)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A price's current state with its current definition (JSON, owned by the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceRow {
    /// `price_...`
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// Current version.
    pub version: i64,
    /// The current version's definition (JSON).
    pub definition: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

/// A payment: the claim of one challenge id and one proof, then its settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    /// `pay_...`
    pub id: String,
    /// The merchant.
    pub tenant_id: String,
    /// The challenge it pays.
    pub challenge_id: String,
    /// `method:proof`, unique across the platform.
    pub proof_key: String,
    /// `claimed`, `pending`, `settled`, `refund_due` (an outside-rail payment the merchant
    /// owes back on chain) or `refunded`.
    pub state: String,
    /// Payment method.
    pub method: String,
    /// Minor units.
    pub amount: String,
    /// Currency.
    pub currency: String,
    /// Price paid.
    pub price_id: String,
    /// Its version.
    pub price_version: i64,
    /// The paying tenant, for the `turnpike` method.
    pub payer_tenant_id: Option<String>,
    /// Rail reference (receipt `reference`).
    pub reference: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

/// What starting an idempotent request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotency {
    /// First use of the key: go ahead, then [`Store::idempotency_finish`].
    Started,
    /// The key is in use by a request still running.
    InProgress,
    /// The key was used for another request.
    Mismatch,
    /// The stored response of the first request.
    Done(String),
}

/// What revoking an API key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The key is revoked (now or before): its row.
    Revoked(ApiKeyRow),
    /// The tenant has no such key.
    NotFound,
    /// It is the tenant's last unrevoked key: nothing changed.
    LastKey,
}

/// Why a tenant could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantConflict {
    /// The slug is taken.
    Slug,
    /// The realm is another tenant's (realms are unique: migration 0012).
    Realm,
}

/// Which of the tenant's unique columns a unique violation met, if it was one of them:
/// PostgreSQL names the index (`tenants_slug_key`, `tenants_realm_key`), SQLite the column in
/// its message (`UNIQUE constraint failed: tenants.realm`).
fn tenant_conflict(err: &sqlx::Error) -> Option<TenantConflict> {
    let db = err.as_database_error()?;
    if !db.is_unique_violation() {
        return None;
    }
    let name = db.constraint().unwrap_or_else(|| db.message());
    if name.contains("tenants_realm_key") || name.contains("tenants.realm") {
        Some(TenantConflict::Realm)
    } else if name.contains("tenants_slug_key") || name.contains("tenants.slug") {
        Some(TenantConflict::Slug)
    } else {
        None
    }
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

type TenantTuple = (String, String, String, String, i64);
type ApiKeyTuple = (String, String, String, String, String, i64, Option<i64>);
type PriceTuple = (String, String, i64, String, i64, i64);
pub(crate) type PaymentTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    i64,
    i64,
);
fn tenant(t: TenantTuple) -> TenantRow {
    TenantRow {
        id: t.0,
        name: t.1,
        slug: t.2,
        realm: t.3,
        created_at: t.4,
    }
}

fn api_key(t: ApiKeyTuple) -> ApiKeyRow {
    ApiKeyRow {
        id: t.0,
        tenant_id: t.1,
        name: t.2,
        prefix: t.3,
        secret_hash: t.4,
        created_at: t.5,
        revoked_at: t.6,
    }
}

fn price(t: PriceTuple) -> PriceRow {
    PriceRow {
        id: t.0,
        tenant_id: t.1,
        version: t.2,
        definition: t.3,
        created_at: t.4,
        updated_at: t.5,
    }
}

pub(crate) fn payment(t: PaymentTuple) -> PaymentRow {
    PaymentRow {
        id: t.0,
        tenant_id: t.1,
        challenge_id: t.2,
        proof_key: t.3,
        state: t.4,
        method: t.5,
        amount: t.6,
        currency: t.7,
        price_id: t.8,
        price_version: t.9,
        payer_tenant_id: t.10,
        reference: t.11,
        created_at: t.12,
        updated_at: t.13,
    }
}

const TENANT_COLUMNS: &str = "id, name, slug, realm, created_at";
const API_KEY_COLUMNS: &str = "id, tenant_id, name, prefix, secret_hash, created_at, revoked_at";
pub(crate) const PAYMENT_COLUMNS: &str = "id, tenant_id, challenge_id, proof_key, state, method, amount, \
     currency, price_id, price_version, payer_tenant_id, reference, created_at, updated_at";

/// Most rows one listing returns.
pub const LIST_LIMIT_MAX: i64 = 1_000;

impl Store {
    /// True when the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => { sqlx::query("SELECT 1").execute(pool).await?; });
        Ok(())
    }

    /// The ids of an owner's ledger accounts in a book (at most [`LIST_LIMIT_MAX`]).
    pub async fn account_ids_of_owner(
        &self,
        book: &str,
        owner: &str,
    ) -> Result<Vec<turnpike_ledger::AccountId>, StoreError> {
        let rows: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id FROM ledger_accounts WHERE tenant = $1 AND owner = $2 ORDER BY id LIMIT 1000")
            .bind(book).bind(owner).fetch_all(pool).await?);
        rows.into_iter()
            .map(|(id,)| crate::rows::parse_account_id("ledger_accounts", &id))
            .collect()
    }

    // ---- tenants, keys, secrets -------------------------------------------------------

    /// Create a tenant with its first API key and binding secret, all or nothing.
    pub async fn create_tenant(
        &self,
        tenant: &TenantRow,
        key: &ApiKeyRow,
        binding: &BindingSecretRow,
    ) -> Result<Result<(), TenantConflict>, StoreError> {
        let result: Result<(), sqlx::Error> = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO tenants (id, name, slug, realm, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&tenant.id).bind(&tenant.name).bind(&tenant.slug).bind(&tenant.realm).bind(tenant.created_at)
                .execute(&mut *tx).await?;
            sqlx::query("INSERT INTO api_keys (id, tenant_id, name, prefix, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(&key.id).bind(&tenant.id).bind(&key.name).bind(&key.prefix).bind(&key.secret_hash).bind(key.created_at)
                .execute(&mut *tx).await?;
            sqlx::query("INSERT INTO binding_secrets (tenant_id, version, secret, created_at) VALUES ($1, $2, $3, $4)")
                .bind(&tenant.id).bind(binding.version).bind(&binding.secret).bind(binding.created_at)
                .execute(&mut *tx).await?;
            tx.commit().await
        }.await);
        match result {
            Ok(()) => Ok(Ok(())),
            Err(err) => match tenant_conflict(&err) {
                Some(conflict) => Ok(Err(conflict)),
                None => Err(err.into()),
            },
        }
    }

    /// A tenant by id.
    pub async fn tenant(&self, id: &str) -> Result<Option<TenantRow>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
        let row: Option<TenantTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(pool).await?);
        Ok(row.map(tenant))
    }

    /// A tenant by slug.
    pub async fn tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRow>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE slug = $1");
        let row: Option<TenantTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(slug).fetch_optional(pool).await?);
        Ok(row.map(tenant))
    }

    /// The unrevoked API key with this secret hash, and its tenant.
    pub async fn api_key_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<(ApiKeyRow, TenantRow)>, StoreError> {
        let sql = "SELECT k.id, k.tenant_id, k.name, k.prefix, k.secret_hash, k.created_at, \
                   k.revoked_at, t.id, t.name, t.slug, t.realm, t.created_at \
                   FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
                   WHERE k.secret_hash = $1 AND k.revoked_at IS NULL";
        type Row = (
            String,
            String,
            String,
            String,
            String,
            i64,
            Option<i64>,
            String,
            String,
            String,
            String,
            i64,
        );
        let row: Option<Row> = on_pool!(self, pool =>
            sqlx::query_as(sql).bind(secret_hash).fetch_optional(pool).await?);
        Ok(row.map(|r| {
            (
                api_key((r.0, r.1, r.2, r.3, r.4, r.5, r.6)),
                tenant((r.7, r.8, r.9, r.10, r.11)),
            )
        }))
    }

    /// Add an API key to a tenant.
    pub async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<(), StoreError> {
        on_pool!(self, pool => { sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&key.id).bind(&key.tenant_id).bind(&key.name).bind(&key.prefix).bind(&key.secret_hash).bind(key.created_at)
            .execute(pool).await?; });
        Ok(())
    }

    /// A tenant's API keys, oldest first.
    pub async fn api_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRow>, StoreError> {
        let sql = format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id LIMIT {LIST_LIMIT_MAX}"
        );
        let rows: Vec<ApiKeyTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant_id).fetch_all(pool).await?);
        Ok(rows.into_iter().map(api_key).collect())
    }

    /// Revoke a tenant's key (idempotent), unless it is the tenant's last unrevoked key: a
    /// tenant cannot lock itself out. One transaction that first locks the tenant's row, so
    /// concurrent revocations of a tenant's keys (on any number of replicas) run one after
    /// another and never leave it without a key.
    pub async fn revoke_api_key(
        &self,
        tenant_id: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<Revocation, StoreError> {
        let sql =
            format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id = $2");
        let outcome: Revocation = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            // The lock: PostgreSQL's row lock, SQLite's write lock (the first statement writes).
            sqlx::query("UPDATE tenants SET created_at = created_at WHERE id = $1")
                .bind(tenant_id).execute(&mut *tx).await?;
            let key: Option<ApiKeyTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(tenant_id).bind(id).fetch_optional(&mut *tx).await?;
            let Some(key) = key else {
                return Ok::<Revocation, sqlx::Error>(Revocation::NotFound);
            };
            if key.6.is_some() {
                return Ok(Revocation::Revoked(api_key(key)));
            }
            let (others,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM api_keys WHERE tenant_id = $1 AND id <> $2 AND revoked_at IS NULL")
                .bind(tenant_id).bind(id).fetch_one(&mut *tx).await?;
            if others == 0 {
                return Ok(Revocation::LastKey);
            }
            sqlx::query("UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL")
                .bind(tenant_id).bind(id).bind(now_ms).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Revocation::Revoked(ApiKeyRow { revoked_at: Some(now_ms), ..api_key(key) }))
        }.await)?;
        Ok(outcome)
    }

    /// A tenant's newest binding secrets, newest first (at most `limit`).
    pub async fn binding_secrets(
        &self,
        tenant_id: &str,
        limit: i64,
    ) -> Result<Vec<BindingSecretRow>, StoreError> {
        let rows: Vec<(i64, String, i64)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT version, secret, created_at FROM binding_secrets WHERE tenant_id = $1 ORDER BY version DESC LIMIT $2")
            .bind(tenant_id).bind(limit).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(version, secret, created_at)| BindingSecretRow {
                version,
                secret,
                created_at,
            })
            .collect())
    }

    /// Add a binding secret version; `false` when that version exists (a concurrent rotation).
    pub async fn insert_binding_secret(
        &self,
        tenant_id: &str,
        row: &BindingSecretRow,
    ) -> Result<bool, StoreError> {
        let result = on_pool!(self, pool => sqlx::query(
            "INSERT INTO binding_secrets (tenant_id, version, secret, created_at) VALUES ($1, $2, $3, $4)")
            .bind(tenant_id).bind(row.version).bind(&row.secret).bind(row.created_at)
            .execute(pool).await.map(|_| ()));
        match result {
            Ok(()) => Ok(true),
            Err(err) if is_unique_violation(&err) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// The platform's signing keys (kid, stored form: the PKCS#8 DER sealed by the server, or in
    /// clear as base64url), unretired, newest first.
    pub async fn signing_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT kid, pkcs8 FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, kid")
            .fetch_all(pool).await?))
    }

    /// Store a signing key (idempotent on kid).
    pub async fn insert_signing_key(
        &self,
        kid: &str,
        pkcs8: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let result = on_pool!(self, pool => sqlx::query(
            "INSERT INTO signing_keys (kid, pkcs8, created_at) VALUES ($1, $2, $3)")
            .bind(kid).bind(pkcs8).bind(now_ms).execute(pool).await.map(|_| ()));
        match result {
            Ok(()) => Ok(()),
            Err(err) if is_unique_violation(&err) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Replace a signing key's stored form `from` by `to` (sealing a key kept in clear); `false`
    /// when it no longer reads `from` (another replica sealed it first).
    pub async fn reseal_signing_key(
        &self,
        kid: &str,
        from: &str,
        to: &str,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE signing_keys SET pkcs8 = $3 WHERE kid = $1 AND pkcs8 = $2")
            .bind(kid).bind(from).bind(to).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    // ---- prices -------------------------------------------------------------------------

    /// Create a price at version 1.
    pub async fn insert_price(&self, row: &PriceRow) -> Result<(), StoreError> {
        on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO prices (id, tenant_id, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&row.id).bind(&row.tenant_id).bind(row.version).bind(row.created_at).bind(row.updated_at)
                .execute(&mut *tx).await?;
            sqlx::query("INSERT INTO price_versions (price_id, version, tenant_id, definition, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&row.id).bind(row.version).bind(&row.tenant_id).bind(&row.definition).bind(row.updated_at)
                .execute(&mut *tx).await?;
            tx.commit().await
        }.await)?;
        Ok(())
    }

    /// A tenant's live prices (current versions), oldest first.
    pub async fn prices(&self, tenant_id: &str) -> Result<Vec<PriceRow>, StoreError> {
        let sql = format!(
            "SELECT p.id, p.tenant_id, p.version, v.definition, p.created_at, p.updated_at \
             FROM prices p JOIN price_versions v ON v.price_id = p.id AND v.version = p.version \
             WHERE p.tenant_id = $1 AND p.deleted_at IS NULL ORDER BY p.created_at, p.id LIMIT {LIST_LIMIT_MAX}"
        );
        let rows: Vec<PriceTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant_id).fetch_all(pool).await?);
        Ok(rows.into_iter().map(price).collect())
    }

    /// One live price of a tenant.
    pub async fn price(&self, tenant_id: &str, id: &str) -> Result<Option<PriceRow>, StoreError> {
        let rows: Option<PriceTuple> = on_pool!(self, pool => sqlx::query_as(
            "SELECT p.id, p.tenant_id, p.version, v.definition, p.created_at, p.updated_at \
             FROM prices p JOIN price_versions v ON v.price_id = p.id AND v.version = p.version \
             WHERE p.tenant_id = $1 AND p.id = $2 AND p.deleted_at IS NULL")
            .bind(tenant_id).bind(id).fetch_optional(pool).await?);
        Ok(rows.map(price))
    }

    /// One version of a tenant's price (deleted or not): what a challenge was issued for.
    pub async fn price_version(
        &self,
        tenant_id: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT definition FROM price_versions WHERE tenant_id = $1 AND price_id = $2 AND version = $3")
            .bind(tenant_id).bind(id).bind(version).fetch_optional(pool).await?);
        Ok(row.map(|r| r.0))
    }

    /// Replace a price's definition if its version is still `from_version`; returns the new
    /// row, or `None` when the price is gone or changed meanwhile.
    pub async fn update_price(
        &self,
        tenant_id: &str,
        id: &str,
        from_version: i64,
        definition: &str,
        now_ms: i64,
    ) -> Result<Option<PriceRow>, StoreError> {
        let to_version = from_version + 1;
        let updated: bool = on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let done = sqlx::query("UPDATE prices SET version = $4, updated_at = $5 WHERE tenant_id = $1 AND id = $2 AND version = $3 AND deleted_at IS NULL")
                .bind(tenant_id).bind(id).bind(from_version).bind(to_version).bind(now_ms)
                .execute(&mut *tx).await?;
            if done.rows_affected() != 1 {
                return Ok::<bool, sqlx::Error>(false);
            }
            sqlx::query("INSERT INTO price_versions (price_id, version, tenant_id, definition, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(id).bind(to_version).bind(tenant_id).bind(definition).bind(now_ms)
                .execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        }.await)?;
        if !updated {
            return Ok(None);
        }
        self.price(tenant_id, id).await
    }

    /// Delete a price (its versions stay for challenges already issued); `false` when the
    /// tenant has no such live price.
    pub async fn delete_price(
        &self,
        tenant_id: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE prices SET deleted_at = $3, updated_at = $3 WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL")
            .bind(tenant_id).bind(id).bind(now_ms).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    // ---- payments and idempotency -------------------------------------------------------

    /// Move a settled payment to `refunded`.
    pub async fn refund_payment(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE payments SET state = 'refunded', updated_at = $2 WHERE id = $1 AND state = 'settled'")
            .bind(id).bind(now_ms).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// Every tenant's payments in id order, after `after` (an id) when given, at most `limit`
    /// (1 to [`LIST_LIMIT_MAX`]): for `ledger check`, which ties each to its transfers.
    pub async fn payments_by_id(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<PaymentRow>, StoreError> {
        let sql = format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments \
             WHERE CAST($1 AS TEXT) IS NULL OR id > CAST($1 AS TEXT) ORDER BY id LIMIT $2"
        );
        let rows: Vec<PaymentTuple> = on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(after).bind(limit.clamp(1, LIST_LIMIT_MAX)).fetch_all(pool).await?);
        Ok(rows.into_iter().map(payment).collect())
    }

    /// One of a tenant's payments.
    pub async fn payment(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<PaymentRow>, StoreError> {
        let sql =
            format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE tenant_id = $1 AND id = $2");
        let row: Option<PaymentTuple> = on_pool!(self, pool =>
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(tenant_id).bind(id).fetch_optional(pool).await?);
        Ok(row.map(payment))
    }

    /// A tenant's payments, newest first (by creation time, then id); only those in `state` when
    /// given; only those after `before` (the creation time and id of the last one of a previous
    /// page) in that order when given. At most `limit`, up to [`LIST_LIMIT_MAX`] + 1 (so that a
    /// caller can tell whether another page follows).
    pub async fn payments(
        &self,
        tenant_id: &str,
        state: Option<&str>,
        before: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<PaymentRow>, StoreError> {
        let sql = format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE tenant_id = $1 \
             AND (CAST($2 AS TEXT) IS NULL OR state = $2) \
             AND (CAST($4 AS BIGINT) IS NULL OR created_at < $4 \
                  OR (created_at = $4 AND id < CAST($5 AS TEXT))) \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        );
        let (before_at, before_id) = before.map_or((None, None), |(at, id)| (Some(at), Some(id)));
        let rows: Vec<PaymentTuple> = on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(tenant_id).bind(state).bind(limit.clamp(1, LIST_LIMIT_MAX + 1))
            .bind(before_at).bind(before_id).fetch_all(pool).await?);
        Ok(rows.into_iter().map(payment).collect())
    }

    /// Start a request under an idempotency key.
    pub async fn idempotency_start(
        &self,
        tenant_id: &str,
        key: &str,
        request_hash: &str,
        now_ms: i64,
    ) -> Result<Idempotency, StoreError> {
        let inserted = on_pool!(self, pool => sqlx::query(
            "INSERT INTO idempotency_keys (tenant_id, key, request_hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(tenant_id).bind(key).bind(request_hash).bind(now_ms).execute(pool).await.map(|_| ()));
        match inserted {
            Ok(()) => return Ok(Idempotency::Started),
            Err(err) if is_unique_violation(&err) => {}
            Err(err) => return Err(err.into()),
        }
        let row: Option<(String, Option<String>)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT request_hash, response FROM idempotency_keys WHERE tenant_id = $1 AND key = $2")
            .bind(tenant_id).bind(key).fetch_optional(pool).await?);
        Ok(match row {
            // Abandoned between the insert and this read: treat as still running.
            None => Idempotency::InProgress,
            Some((hash, _)) if hash != request_hash => Idempotency::Mismatch,
            Some((_, None)) => Idempotency::InProgress,
            Some((_, Some(response))) => Idempotency::Done(response),
        })
    }

    /// Record the response of a request started with [`Store::idempotency_start`].
    pub async fn idempotency_finish(
        &self,
        tenant_id: &str,
        key: &str,
        response: &str,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => { sqlx::query(
            "UPDATE idempotency_keys SET response = $3 WHERE tenant_id = $1 AND key = $2")
            .bind(tenant_id).bind(key).bind(response).execute(pool).await?; });
        Ok(())
    }

    /// Forget a started key whose request failed before deciding anything (it may be retried).
    pub async fn idempotency_abandon(&self, tenant_id: &str, key: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => { sqlx::query(
            "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND response IS NULL")
            .bind(tenant_id).bind(key).execute(pool).await?; });
        Ok(())
    }
}
