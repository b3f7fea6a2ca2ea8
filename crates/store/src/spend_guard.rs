//! The spend guard: an agent's payment is evaluated against its policy and token limits, and
//! its spend recorded, in the ledger transaction that reserves it (see [`crate::guard`]).
//!
//! In a batch, before the ledger applies anything:
//! 1. the batch's agents are locked (PostgreSQL `FOR UPDATE`, in id order; SQLite has one
//!    writer) and their current policy versions read: a guard built under another version is
//!    refused ([`GuardRefusal::PolicyChanged`]) so that the caller re-evaluates under the new one;
//! 2. revoked tokens in each guard's lineage are refused (`token_revoked`);
//! 3. a spend already recorded under the same id (a retry for the same challenge), or accepted
//!    earlier in the same batch, passes as is;
//! 4. usage is summed per window in one query (exact: amounts are stored as 40-bit limbs), the
//!    batch's earlier accepted spends are added in memory, and `turnpike_policy::evaluate` runs
//!    once per lineage level (the token and each of its ancestors, each with its subtree's
//!    usage); the first denial wins;
//! 5. accepted spends are inserted; an approval a guard carries is consumed.
//!
//! After the ledger: spends (and consumed approvals) of commands whose transfers failed are
//! undone, every decision is written to the audit log, and spends whose reservation was voided
//! or expired in this batch are released.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use turnpike_ledger::{
    BackendError, Command, CommandResult, PendingState, TransferError, TransferId,
};
use turnpike_policy::policy::{
    CompiledPolicy, CompiledTokenLimits, Decision, LimitSource, SpendRequest, Usage, usage_windows,
};

use crate::guard::{Conn, GuardRefusal, LedgerGuard, db_err, on_conn};

/// An agent's payment to evaluate and record with its reservation.
#[derive(Debug, Clone)]
pub struct SpendGuard {
    /// The reservation's ledger transfer id (also the spend's id).
    pub spend_id: TransferId,
    /// The audit row's id `aud_...`.
    pub audit_id: String,
    /// The paying tenant.
    pub tenant_id: String,
    /// The agent.
    pub agent_id: String,
    /// The token used (the last of `lineage`).
    pub token_id: String,
    /// Token ids from the root to the token used, joined by `/`.
    pub lineage: String,
    /// Each lineage level's own limits, root first (same length as the lineage).
    pub chain: Vec<Option<Arc<CompiledTokenLimits>>>,
    /// The policy version `policy` is.
    pub policy_version: i64,
    /// The agent's policy at that version.
    pub policy: Arc<CompiledPolicy>,
    /// The challenge paid.
    pub challenge_id: String,
    /// The merchant's tenant id.
    pub merchant_id: String,
    /// The merchant's realm.
    pub merchant_realm: String,
    /// Payment method.
    pub method: String,
    /// Minor units.
    pub amount: u128,
    /// Currency.
    pub currency: String,
    /// An approval the owner granted for this payment: a held payment then passes (every other
    /// check still applies), and the approval is used up.
    pub approval_id: Option<String>,
    /// The id the approval will have if the payment is held (recorded in its audit row).
    pub hold_id: String,
}

/// Why a spend guard was refused by the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendDenial {
    /// Reason code (`budget_exhausted`, `token_revoked`, ...).
    pub reason: String,
    /// For people.
    pub detail: String,
    /// Not before this instant (unix ms) can the same payment pass, when known.
    pub retry_at_ms: Option<i64>,
}

/// What the batch decided for one spend guard.
#[derive(Debug, Clone)]
enum Verdict {
    /// Allowed; `inserted`: its spend row was inserted by this batch (not a retry).
    Accepted { inserted: bool, retry: bool },
    /// Refused (the refusal the command gets).
    Refused(GuardRefusal),
}

/// The spend guards of a batch and what was decided for them.
#[derive(Debug, Default)]
pub(crate) struct SpendState<'a> {
    guards: Vec<(usize, &'a SpendGuard)>,
    verdicts: Vec<Verdict>,
}

impl SpendState<'_> {
    /// The refusals to merge into the batch's refusal slots.
    pub(crate) fn refusals(&self) -> impl Iterator<Item = (usize, GuardRefusal)> + '_ {
        self.guards
            .iter()
            .zip(&self.verdicts)
            .filter_map(|((i, _), v)| match v {
                Verdict::Refused(r) => Some((*i, r.clone())),
                Verdict::Accepted { .. } => None,
            })
    }
}

const LIMB_BITS: u32 = 40;
const LIMB_MASK: u128 = (1 << LIMB_BITS) - 1;

/// `amount` as three limbs of 40 bits (the last holds the top 48): each fits an i64, and sums
/// of up to 2^23 of them too.
fn limbs(amount: u128) -> [i64; 3] {
    let part = |shift: u32, mask: u128| {
        i64::try_from((amount >> shift) & mask).expect("a 48-bit limb fits an i64")
    };
    [
        part(0, LIMB_MASK),
        part(LIMB_BITS, LIMB_MASK),
        part(2 * LIMB_BITS, u128::MAX),
    ]
}

fn from_limb_sums(sums: [i64; 3]) -> u128 {
    let [a, b, c] = sums.map(|s| u128::try_from(s.max(0)).unwrap_or(0));
    a.saturating_add(b.saturating_mul(1 << LIMB_BITS))
        .saturating_add(c.saturating_mul(1 << (2 * LIMB_BITS)))
}

/// One window to sum: spends of `agent` in `currency` ("" = any) created in
/// `[start_ms, end_ms)` whose lineage is `prefix` or under it ("" = any), not released.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
struct WindowKey {
    a: String,
    c: String,
    s: i64,
    e: i64,
    p: String,
}

/// Sum, count and oldest time of one window.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    spent: u128,
    count: u32,
    oldest_ms: Option<i64>,
}

/// One lineage level to evaluate: its limits, its budget windows (indices) and velocity window.
struct Level<'g> {
    limits: Option<&'g CompiledTokenLimits>,
    budgets: Vec<(usize, &'g str, String)>,
    velocity: Option<usize>,
}

/// True when a spend made under the token `lineage` counts for a budget scoped to the token
/// `prefix` (that token or one minted under it; `""` = any token of the agent).
pub fn lineage_within(lineage: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || lineage == prefix
        || (lineage.len() > prefix.len()
            && lineage.starts_with(prefix)
            && lineage.as_bytes()[prefix.len()] == b'/')
}

/// Decide the batch's spend guards and record the accepted spends.
pub(crate) async fn before_ledger<'a>(
    conn: &mut Conn<'_>,
    commands: &'a [Command<LedgerGuard>],
    now_ms: i64,
) -> Result<SpendState<'a>, BackendError> {
    let guards: Vec<(usize, &SpendGuard)> = commands
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match c {
            Command::Guarded(LedgerGuard::Spend(g), _) => Some((i, &**g)),
            _ => None,
        })
        .collect();
    if guards.is_empty() {
        return Ok(SpendState::default());
    }
    let err = db_err(conn);

    // 1. Lock the agents, read their versions.
    let mut agent_ids: Vec<&str> = guards.iter().map(|(_, g)| g.agent_id.as_str()).collect();
    agent_ids.sort_unstable();
    agent_ids.dedup();
    let versions: HashMap<String, i64> = match conn {
        Conn::Pg(c) => sqlx::query_as::<_, (String, i64)>(
            "SELECT id, policy_version FROM agents WHERE id = ANY($1::TEXT[]) ORDER BY id FOR UPDATE",
        )
        .bind(&agent_ids)
        .fetch_all(&mut **c)
        .await
        .map_err(&err)?,
        Conn::Lite(c) => sqlx::query_as::<_, (String, i64)>(
            "SELECT id, policy_version FROM agents WHERE id IN (SELECT value FROM json_each($1))",
        )
        .bind(json(&agent_ids))
        .fetch_all(&mut **c)
        .await
        .map_err(&err)?,
    }
    .into_iter()
    .collect();

    // 2. Revoked tokens among every lineage.
    let mut token_ids: Vec<&str> = guards
        .iter()
        .flat_map(|(_, g)| g.lineage.split('/'))
        .collect();
    token_ids.sort_unstable();
    token_ids.dedup();
    let revoked: HashSet<String> = match conn {
        Conn::Pg(c) => sqlx::query_as::<_, (String,)>(
            "SELECT id FROM agent_tokens WHERE id = ANY($1::TEXT[]) AND revoked_at IS NOT NULL",
        )
        .bind(&token_ids)
        .fetch_all(&mut **c)
        .await
        .map_err(&err)?,
        Conn::Lite(c) => sqlx::query_as::<_, (String,)>(
            "SELECT id FROM agent_tokens WHERE id IN (SELECT value FROM json_each($1)) AND revoked_at IS NOT NULL",
        )
        .bind(json(&token_ids))
        .fetch_all(&mut **c)
        .await
        .map_err(&err)?,
    }
    .into_iter()
    .map(|(id,)| id)
    .collect();

    // 3. Spends already recorded (retries for the same challenge).
    let spend_ids: Vec<String> = guards.iter().map(|(_, g)| g.spend_id.to_string()).collect();
    let existing: HashSet<String> = match conn {
        Conn::Pg(c) => sqlx::query_as::<_, (String,)>(
            "SELECT id FROM agent_spends WHERE id = ANY($1::TEXT[]) AND released_at IS NULL",
        )
        .bind(&spend_ids)
        .fetch_all(&mut **c)
        .await
        .map_err(&err)?,
        Conn::Lite(c) => sqlx::query_as::<_, (String,)>(
            "SELECT id FROM agent_spends WHERE id IN (SELECT value FROM json_each($1)) AND released_at IS NULL",
        )
        .bind(json(&spend_ids))
        .fetch_all(&mut **c)
        .await
        .map_err(&err)?,
    }
    .into_iter()
    .map(|(id,)| id)
    .collect();

    // 4. The windows every guard needs, summed in one query.
    let mut keys: Vec<WindowKey> = Vec::new();
    let mut index: HashMap<WindowKey, usize> = HashMap::new();
    let mut key_of = |key: WindowKey| -> usize {
        *index.entry(key.clone()).or_insert_with(|| {
            keys.push(key);
            keys.len() - 1
        })
    };
    let mut levels: Vec<Vec<Level<'_>>> = Vec::with_capacity(guards.len());
    for (_, g) in &guards {
        let lineage: Vec<&str> = g.lineage.split('/').collect();
        let mut own = Vec::with_capacity(lineage.len());
        // The token used first, then its ancestors.
        for depth in (0..lineage.len()).rev() {
            let limits = g.chain.get(depth).and_then(|l| l.as_deref());
            let prefix = lineage[..=depth].join("/");
            let windows = usage_windows(&g.policy, limits, now_ms);
            let budgets = windows
                .budgets
                .iter()
                .map(|w| {
                    let p = match w.source {
                        LimitSource::Policy => String::new(),
                        LimitSource::Token => prefix.clone(),
                    };
                    let at = key_of(WindowKey {
                        a: g.agent_id.clone(),
                        c: w.currency.to_owned(),
                        s: w.window.start_ms,
                        e: w.window.end_ms,
                        p: p.clone(),
                    });
                    (at, w.currency, p)
                })
                .collect();
            let velocity = windows.velocity.map(|w| {
                key_of(WindowKey {
                    a: g.agent_id.clone(),
                    c: String::new(),
                    s: w.start_ms,
                    e: w.end_ms,
                    p: String::new(),
                })
            });
            own.push(Level {
                limits,
                budgets,
                velocity,
            });
        }
        levels.push(own);
    }
    let measured = measure(conn, &keys).await?;

    // Decide in batch order, adding the batch's accepted spends to later guards' usage.
    let mut accepted: Vec<&SpendGuard> = Vec::new();
    let mut verdicts = Vec::with_capacity(guards.len());
    for ((_, g), levels) in guards.iter().zip(&levels) {
        let verdict = if versions.get(&g.agent_id) != Some(&g.policy_version) {
            Verdict::Refused(GuardRefusal::PolicyChanged)
        } else if let Some(id) = g.lineage.split('/').find(|id| revoked.contains(*id)) {
            let own = id == g.token_id;
            Verdict::Refused(GuardRefusal::Denied(SpendDenial {
                reason: "token_revoked".into(),
                detail: if own {
                    "this token has been revoked".into()
                } else {
                    "a token this one was minted under has been revoked".into()
                },
                retry_at_ms: None,
            }))
        } else if existing.contains(&g.spend_id.to_string())
            || accepted.iter().any(|a| a.spend_id == g.spend_id)
        {
            // A retry for a spend already recorded, or accepted earlier in this batch (the same
            // payment asked for concurrently): it passes as is and counts once.
            Verdict::Accepted {
                inserted: false,
                retry: true,
            }
        } else {
            decide(g, levels, &keys, &measured, &accepted, now_ms)
        };
        if let Verdict::Accepted { retry: false, .. } = verdict {
            accepted.push(g);
        }
        verdicts.push(verdict);
    }

    // 5. Consume approvals, then record the accepted spends.
    for ((_, g), verdict) in guards.iter().zip(verdicts.iter_mut()) {
        let (Verdict::Accepted { retry: false, .. }, Some(approval)) = (&*verdict, &g.approval_id)
        else {
            continue;
        };
        let used = on_conn!(conn, c => sqlx::query(
            "UPDATE approvals SET state = 'used', used_at = $2 WHERE id = $1 AND state = 'approved' AND expires_at > $2 AND agent_id = $3 AND challenge_id = $4")
            .bind(approval).bind(now_ms).bind(&g.agent_id).bind(&g.challenge_id)
            .execute(&mut **c).await.map_err(&err)?.rows_affected());
        if used != 1 {
            *verdict = Verdict::Refused(GuardRefusal::ApprovalInvalid);
        }
    }
    let to_insert: Vec<&SpendGuard> = guards
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| matches!(v, Verdict::Accepted { retry: false, .. }))
        .map(|((_, g), _)| *g)
        .collect();
    // Only rows this batch inserted may be undone after the ledger: a released spend of an
    // earlier attempt at the same challenge keeps its row.
    let inserted = insert_spends(conn, &to_insert, now_ms).await?;
    for ((_, g), verdict) in guards.iter().zip(verdicts.iter_mut()) {
        if let Verdict::Accepted {
            inserted: mine,
            retry: false,
        } = verdict
        {
            *mine = inserted.contains(&g.spend_id.to_string());
        }
    }
    Ok(SpendState { guards, verdicts })
}

fn decide(
    g: &SpendGuard,
    levels: &[Level<'_>],
    keys: &[WindowKey],
    measured: &[Measured],
    accepted: &[&SpendGuard],
    now_ms: i64,
) -> Verdict {
    let request = SpendRequest {
        amount_minor: g.amount,
        currency: &g.currency,
        method: &g.method,
        merchant_realm: &g.merchant_realm,
        merchant_tenant: &g.merchant_id,
    };
    let mut held = None;
    for level in levels {
        let budget_spent_minor = level
            .budgets
            .iter()
            .map(|(at, currency, prefix)| {
                let in_batch: u128 = accepted
                    .iter()
                    .filter(|a| {
                        a.agent_id == g.agent_id
                            && a.currency == *currency
                            && lineage_within(&a.lineage, prefix)
                    })
                    .map(|a| a.amount)
                    .sum();
                measured[*at].spent.saturating_add(in_batch)
            })
            .collect();
        let (velocity_payments, velocity_oldest_at_ms) = match level.velocity {
            Some(at) => {
                let in_batch = accepted.iter().filter(|a| a.agent_id == g.agent_id).count();
                let m = measured[at];
                let count = m
                    .count
                    .saturating_add(u32::try_from(in_batch).unwrap_or(u32::MAX));
                let oldest = m
                    .oldest_ms
                    .or_else(|| (in_batch > 0).then_some(keys[at].e.min(now_ms)));
                (count, oldest)
            }
            None => (0, None),
        };
        let usage = Usage {
            budget_spent_minor,
            velocity_payments,
            velocity_oldest_at_ms,
        };
        match turnpike_policy::policy::evaluate(&g.policy, level.limits, &request, &usage, now_ms) {
            Decision::Allow => {}
            Decision::Deny {
                reason,
                retry_at_ms,
                detail,
            } => {
                return Verdict::Refused(GuardRefusal::Denied(SpendDenial {
                    reason: reason.as_str().to_owned(),
                    detail,
                    retry_at_ms,
                }));
            }
            Decision::NeedsApproval { detail, .. } => held = Some(detail),
        }
    }
    match held {
        Some(detail) if g.approval_id.is_none() => {
            Verdict::Refused(GuardRefusal::NeedsApproval(detail))
        }
        _ => Verdict::Accepted {
            inserted: false,
            retry: false,
        },
    }
}

/// Sum, count and oldest time per window, in `keys` order.
/// The lineage condition of a usage query (`$p` = the window's prefix, `''` = any).
macro_rules! lineage_matches {
    ($p:literal) => {
        concat!(
            "(",
            $p,
            " = '' OR s.lineage = ",
            $p,
            " OR substr(s.lineage, 1, length(",
            $p,
            ") + 1) = ",
            $p,
            " || '/')"
        )
    };
}

// Budget windows name a currency: the (agent, currency, created_at) index bounds the scan to
// the window. Velocity windows count every currency: the (agent, created_at) index does.
const MEASURE_PG_HEAD: &str = "SELECT w.i, COALESCE(SUM(s.amount_l0), 0)::BIGINT, \
     COALESCE(SUM(s.amount_l1), 0)::BIGINT, COALESCE(SUM(s.amount_l2), 0)::BIGINT, \
     COUNT(s.id)::BIGINT, MIN(s.created_at) \
     FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], $6::TEXT[]) \
     AS w(i, agent, currency, start_ms, end_ms, prefix) \
     LEFT JOIN agent_spends s ON s.agent_id = w.agent \
     AND s.created_at >= w.start_ms AND s.created_at < w.end_ms AND s.released_at IS NULL ";
const MEASURE_PG_BUDGETS: &str = concat!(
    "AND s.currency = w.currency AND ",
    lineage_matches!("w.prefix"),
    " GROUP BY w.i"
);
const MEASURE_PG_VELOCITY: &str = " GROUP BY w.i";
const MEASURE_SQLITE_HEAD: &str = "SELECT CAST(w.key AS INTEGER), COALESCE(SUM(s.amount_l0), 0), \
     COALESCE(SUM(s.amount_l1), 0), COALESCE(SUM(s.amount_l2), 0), COUNT(s.id), \
     MIN(s.created_at) \
     FROM json_each($1) AS w \
     LEFT JOIN agent_spends s ON s.agent_id = json_extract(w.value, '$.a') \
     AND s.created_at >= json_extract(w.value, '$.s') AND s.created_at < json_extract(w.value, '$.e') \
     AND s.released_at IS NULL ";
const MEASURE_SQLITE_BUDGETS: &str = concat!(
    "AND s.currency = json_extract(w.value, '$.c') AND ",
    lineage_matches!("json_extract(w.value, '$.p')"),
    " GROUP BY w.key"
);
const MEASURE_SQLITE_VELOCITY: &str = " GROUP BY w.key";

/// Sum, count and oldest time per window, in `keys` order.
async fn measure(conn: &mut Conn<'_>, keys: &[WindowKey]) -> Result<Vec<Measured>, BackendError> {
    let mut out = vec![Measured::default(); keys.len()];
    let (velocity, budgets): (Vec<usize>, Vec<usize>) =
        (0..keys.len()).partition(|&i| keys[i].c.is_empty());
    for (indices, any_currency) in [(budgets, false), (velocity, true)] {
        if indices.is_empty() {
            continue;
        }
        let subset: Vec<&WindowKey> = indices.iter().map(|&i| &keys[i]).collect();
        for (at, measured) in measure_some(conn, &subset, any_currency).await? {
            if let Some(slot) = indices.get(at).and_then(|&i| out.get_mut(i)) {
                *slot = measured;
            }
        }
    }
    Ok(out)
}

async fn measure_some(
    conn: &mut Conn<'_>,
    keys: &[&WindowKey],
    any_currency: bool,
) -> Result<Vec<(usize, Measured)>, BackendError> {
    let err = db_err(conn);
    type Row = (i64, i64, i64, i64, i64, Option<i64>);
    let rows: Vec<Row> = match conn {
        Conn::Pg(c) => {
            let tail = if any_currency {
                MEASURE_PG_VELOCITY
            } else {
                MEASURE_PG_BUDGETS
            };
            let sql = format!("{MEASURE_PG_HEAD}{tail}");
            let n = i64::try_from(keys.len()).unwrap_or(i64::MAX);
            sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql))
                .bind((0..n).collect::<Vec<i64>>())
                .bind(keys.iter().map(|k| k.a.as_str()).collect::<Vec<_>>())
                .bind(keys.iter().map(|k| k.c.as_str()).collect::<Vec<_>>())
                .bind(keys.iter().map(|k| k.s).collect::<Vec<_>>())
                .bind(keys.iter().map(|k| k.e).collect::<Vec<_>>())
                .bind(keys.iter().map(|k| k.p.as_str()).collect::<Vec<_>>())
                .fetch_all(&mut **c)
                .await
                .map_err(&err)?
        }
        Conn::Lite(c) => {
            let tail = if any_currency {
                MEASURE_SQLITE_VELOCITY
            } else {
                MEASURE_SQLITE_BUDGETS
            };
            let sql = format!("{MEASURE_SQLITE_HEAD}{tail}");
            sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql))
                .bind(json(keys))
                .fetch_all(&mut **c)
                .await
                .map_err(&err)?
        }
    };
    Ok(rows
        .into_iter()
        .filter_map(|(i, l0, l1, l2, count, oldest)| {
            let at = usize::try_from(i).ok()?;
            Some((
                at,
                Measured {
                    spent: from_limb_sums([l0, l1, l2]),
                    count: u32::try_from(count).unwrap_or(u32::MAX),
                    oldest_ms: oldest,
                },
            ))
        })
        .collect())
}

// SQLite: the rows as one JSON array, unpacked with `json_each` (`WHERE true` lets the upsert
// clause follow a SELECT).
const INSERT_SPENDS_SQLITE: &str = "INSERT INTO agent_spends (id, tenant_id, agent_id, \
     token_id, lineage, challenge_id, merchant_id, method, amount, amount_l0, amount_l1, \
     amount_l2, currency, created_at) \
     SELECT value->>'id', value->>'tenant_id', value->>'agent_id', value->>'token_id', \
     value->>'lineage', value->>'challenge_id', value->>'merchant_id', value->>'method', \
     value->>'amount', value->>'l0', value->>'l1', value->>'l2', value->>'currency', \
     value->>'created_at' \
     FROM json_each($1) WHERE true ON CONFLICT DO NOTHING RETURNING id";
const INSERT_SPENDS_PG: &str = "INSERT INTO agent_spends (id, tenant_id, agent_id, token_id, \
     lineage, challenge_id, merchant_id, method, amount, amount_l0, amount_l1, amount_l2, \
     currency, created_at) \
     SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], \
     $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::TEXT[], \
     $14::BIGINT[]) ON CONFLICT DO NOTHING RETURNING id";

async fn insert_spends(
    conn: &mut Conn<'_>,
    spends: &[&SpendGuard],
    now_ms: i64,
) -> Result<HashSet<String>, BackendError> {
    if spends.is_empty() {
        return Ok(HashSet::new());
    }
    let err = db_err(conn);
    match conn {
        Conn::Pg(c) => {
            let col =
                |f: fn(&SpendGuard) -> String| spends.iter().map(|g| f(g)).collect::<Vec<_>>();
            let limb = |k: usize| {
                spends
                    .iter()
                    .map(|g| limbs(g.amount)[k])
                    .collect::<Vec<_>>()
            };
            let rows: Vec<(String,)> = sqlx::query_as(INSERT_SPENDS_PG)
                .bind(col(|g| g.spend_id.to_string()))
                .bind(col(|g| g.tenant_id.clone()))
                .bind(col(|g| g.agent_id.clone()))
                .bind(col(|g| g.token_id.clone()))
                .bind(col(|g| g.lineage.clone()))
                .bind(col(|g| g.challenge_id.clone()))
                .bind(col(|g| g.merchant_id.clone()))
                .bind(col(|g| g.method.clone()))
                .bind(col(|g| g.amount.to_string()))
                .bind(limb(0))
                .bind(limb(1))
                .bind(limb(2))
                .bind(col(|g| g.currency.clone()))
                .bind(vec![now_ms; spends.len()])
                .fetch_all(&mut **c)
                .await
                .map_err(&err)?;
            Ok(rows.into_iter().map(|(id,)| id).collect())
        }
        Conn::Lite(c) => {
            let rows: Vec<serde_json::Value> = spends
                .iter()
                .map(|g| {
                    let [l0, l1, l2] = limbs(g.amount);
                    serde_json::json!({
                        "id": g.spend_id.to_string(), "tenant_id": g.tenant_id,
                        "agent_id": g.agent_id, "token_id": g.token_id, "lineage": g.lineage,
                        "challenge_id": g.challenge_id, "merchant_id": g.merchant_id,
                        "method": g.method, "amount": g.amount.to_string(),
                        "l0": l0, "l1": l1, "l2": l2, "currency": g.currency,
                        "created_at": now_ms,
                    })
                })
                .collect();
            let ids: Vec<(String,)> = sqlx::query_as(INSERT_SPENDS_SQLITE)
                .bind(json(&rows))
                .fetch_all(&mut **c)
                .await
                .map_err(&err)?;
            Ok(ids.into_iter().map(|(id,)| id).collect())
        }
    }
}

/// The audit row of one guard's outcome: (outcome, reason, detail).
fn outcome_of(
    verdict: &Verdict,
    result: &CommandResult<LedgerGuard>,
) -> Option<(&'static str, Option<String>, Option<String>)> {
    Some(match verdict {
        Verdict::Refused(GuardRefusal::PolicyChanged)
        | Verdict::Refused(GuardRefusal::PaymentTaken)
        | Verdict::Refused(GuardRefusal::DepositCredited) => {
            return None;
        }
        Verdict::Refused(GuardRefusal::Denied(d)) => {
            ("deny", Some(d.reason.clone()), Some(d.detail.clone()))
        }
        Verdict::Refused(GuardRefusal::NeedsApproval(detail)) => (
            "needs_approval",
            Some("approval_required".into()),
            Some(detail.clone()),
        ),
        Verdict::Refused(GuardRefusal::ApprovalInvalid) => (
            "deny",
            Some("approval_invalid".into()),
            Some("the approval is not granted for this payment, was used, or has expired".into()),
        ),
        Verdict::Accepted { retry: true, .. } => (
            "allow",
            None,
            Some("a retry for a challenge already reserved".into()),
        ),
        Verdict::Accepted { .. } if result.applied() => ("allow", None, None),
        Verdict::Accepted { .. } => {
            let error = match result {
                CommandResult::Linked(results) => results.iter().find_map(|r| r.as_ref().err()),
                _ => None,
            };
            match error {
                Some(TransferError::ExceedsCredits) => (
                    "deny",
                    Some("insufficient_balance".into()),
                    Some("the organisation's balance cannot cover the payment".into()),
                ),
                other => (
                    "deny",
                    Some("ledger_refused".into()),
                    Some(format!(
                        "the reservation was refused: {}",
                        other.map_or_else(|| "unknown".to_owned(), ToString::to_string)
                    )),
                ),
            }
        }
    })
}

const DELETE_SPEND: &str = "DELETE FROM agent_spends WHERE id = $1";
const RESTORE_APPROVAL: &str =
    "UPDATE approvals SET state = 'approved', used_at = NULL WHERE id = $1 AND state = 'used'";
const RELEASE_SPEND: &str =
    "UPDATE agent_spends SET released_at = $2 WHERE id = $1 AND released_at IS NULL";

/// Undo the spends whose transfers failed, write the audit rows, release voided and expired
/// reservations.
pub(crate) async fn after_ledger(
    conn: &mut Conn<'_>,
    state: &SpendState<'_>,
    results: &[CommandResult<LedgerGuard>],
    pending_updates: &[(TransferId, PendingState)],
    now_ms: i64,
) -> Result<(), BackendError> {
    let err = db_err(conn);
    let mut audit: Vec<AuditInsert<'_>> = Vec::new();
    for ((i, g), verdict) in state.guards.iter().zip(&state.verdicts) {
        let result = &results[*i];
        if let Verdict::Accepted { inserted: true, .. } = verdict
            && !result.applied()
        {
            on_conn!(conn, c => sqlx::query(DELETE_SPEND).bind(g.spend_id.to_string())
                .execute(&mut **c).await.map_err(&err)?.rows_affected());
            if let Some(approval) = &g.approval_id {
                on_conn!(conn, c => sqlx::query(RESTORE_APPROVAL).bind(approval)
                    .execute(&mut **c).await.map_err(&err)?.rows_affected());
            }
        }
        if let Some((outcome, reason, detail)) = outcome_of(verdict, result) {
            let approval = match verdict {
                Verdict::Refused(GuardRefusal::NeedsApproval(_)) => Some(g.hold_id.clone()),
                _ => g.approval_id.clone(),
            };
            audit.push(AuditInsert {
                g,
                approval,
                outcome,
                reason,
                detail,
            });
        }
    }
    insert_audit(conn, &audit, now_ms).await?;
    for (id, pending) in pending_updates {
        if matches!(pending, PendingState::Voided | PendingState::Expired) {
            on_conn!(conn, c => sqlx::query(RELEASE_SPEND).bind(id.to_string()).bind(now_ms)
                .execute(&mut **c).await.map_err(&err)?.rows_affected());
        }
    }
    Ok(())
}

struct AuditInsert<'g> {
    g: &'g SpendGuard,
    approval: Option<String>,
    outcome: &'static str,
    reason: Option<String>,
    detail: Option<String>,
}

const INSERT_AUDIT_SQLITE: &str = "INSERT INTO audit_log (id, tenant_id, agent_id, token_id, \
     challenge_id, merchant_id, merchant_realm, amount, currency, method, policy_version, \
     outcome, reason, detail, approval_id, created_at) \
     SELECT value->>'id', value->>'tenant_id', value->>'agent_id', value->>'token_id', \
     value->>'challenge_id', value->>'merchant_id', value->>'merchant_realm', \
     value->>'amount', value->>'currency', value->>'method', value->>'policy_version', \
     value->>'outcome', value->>'reason', value->>'detail', value->>'approval_id', \
     value->>'created_at' FROM json_each($1)";
const INSERT_AUDIT_PG: &str = "INSERT INTO audit_log (id, tenant_id, agent_id, token_id, \
     challenge_id, merchant_id, merchant_realm, amount, currency, method, policy_version, \
     outcome, reason, detail, approval_id, created_at) \
     SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
     $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::BIGINT[], $12::TEXT[], \
     $13::TEXT[], $14::TEXT[], $15::TEXT[], $16::BIGINT[])";

async fn insert_audit(
    conn: &mut Conn<'_>,
    rows: &[AuditInsert<'_>],
    now_ms: i64,
) -> Result<(), BackendError> {
    if rows.is_empty() {
        return Ok(());
    }
    let err = db_err(conn);
    match conn {
        Conn::Pg(c) => {
            let col =
                |f: fn(&AuditInsert<'_>) -> String| rows.iter().map(|r| f(r)).collect::<Vec<_>>();
            let opt = |f: fn(&AuditInsert<'_>) -> Option<String>| {
                rows.iter().map(|r| f(r)).collect::<Vec<_>>()
            };
            sqlx::query(INSERT_AUDIT_PG)
                .bind(col(|r| r.g.audit_id.clone()))
                .bind(col(|r| r.g.tenant_id.clone()))
                .bind(col(|r| r.g.agent_id.clone()))
                .bind(col(|r| r.g.token_id.clone()))
                .bind(col(|r| r.g.challenge_id.clone()))
                .bind(col(|r| r.g.merchant_id.clone()))
                .bind(col(|r| r.g.merchant_realm.clone()))
                .bind(col(|r| r.g.amount.to_string()))
                .bind(col(|r| r.g.currency.clone()))
                .bind(col(|r| r.g.method.clone()))
                .bind(rows.iter().map(|r| r.g.policy_version).collect::<Vec<_>>())
                .bind(col(|r| r.outcome.to_owned()))
                .bind(opt(|r| r.reason.clone()))
                .bind(opt(|r| r.detail.clone()))
                .bind(opt(|r| r.approval.clone()))
                .bind(vec![now_ms; rows.len()])
                .execute(&mut **c)
                .await
                .map_err(&err)?;
        }
        Conn::Lite(c) => {
            let json_rows: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "id": r.g.audit_id, "tenant_id": r.g.tenant_id, "agent_id": r.g.agent_id,
                        "token_id": r.g.token_id, "challenge_id": r.g.challenge_id,
                        "merchant_id": r.g.merchant_id, "merchant_realm": r.g.merchant_realm,
                        "amount": r.g.amount.to_string(), "currency": r.g.currency,
                        "method": r.g.method, "policy_version": r.g.policy_version,
                        "outcome": r.outcome, "reason": r.reason, "detail": r.detail,
                        "approval_id": r.approval, "created_at": now_ms,
                    })
                })
                .collect();
            let done = sqlx::query(INSERT_AUDIT_SQLITE)
                .bind(json(&json_rows))
                .execute(&mut **c)
                .await
                .map_err(&err)?;
            crate::error::expect_rows("audit_log insert", done.rows_affected(), rows.len())?;
        }
    }
    Ok(())
}

fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limbs_round_trip_exactly() {
        for amount in [
            0,
            1,
            LIMB_MASK,
            LIMB_MASK + 1,
            u128::from(u64::MAX),
            u128::MAX,
        ] {
            assert_eq!(from_limb_sums(limbs(amount)), amount);
        }
        let sum = limbs(u128::from(u64::MAX))
            .iter()
            .zip(limbs(LIMB_MASK + 7))
            .map(|(a, b)| a + b)
            .collect::<Vec<_>>();
        assert_eq!(
            from_limb_sums([sum[0], sum[1], sum[2]]),
            u128::from(u64::MAX) + LIMB_MASK + 7
        );
    }

    #[test]
    fn lineage_prefixes_match_whole_ids_only() {
        assert!(lineage_within("tok_a/tok_b", ""));
        assert!(lineage_within("tok_a/tok_b", "tok_a"));
        assert!(lineage_within("tok_a", "tok_a"));
        assert!(!lineage_within("tok_ab", "tok_a"));
        assert!(!lineage_within("tok_a", "tok_a/tok_b"));
    }
}
