//! Evaluation: one spend request against a compiled policy (and token limits), given the usage
//! the caller summed over the windows [`usage_windows`] lists. Pure: no I/O, no clock reads.

use std::fmt;

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};

use super::model::{Cap, CompiledPolicy, CompiledTokenLimits, Limits, is_currency_code};
use super::window::{Window, WindowRule};

/// Longest piece of a request (realm, tenant, method, currency) quoted in a decision detail.
const DETAIL_QUOTE_LEN_MAX: usize = 64;

/// One payment an agent asks to make (from the MPP challenge it wants to pay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendRequest<'a> {
    /// Amount in minor units (the charge request's `amount`).
    pub amount_minor: u128,
    /// Lowercase currency (the charge request's `currency`).
    pub currency: &'a str,
    /// Payment method (the challenge's `method`), e.g. `turnpike`.
    pub method: &'a str,
    /// The merchant's realm (the challenge's `realm`).
    pub merchant_realm: &'a str,
    /// The merchant's tenant id `ten_...`.
    pub merchant_tenant: &'a str,
}

/// Whose limit a budget window or a denial comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSource {
    /// The agent's policy: its usage is every spend of the agent.
    Policy,
    /// The token's limits: its usage is every spend of the token's tree (the root token it was
    /// derived from and all tokens derived from that root), or, stricter, every spend of the agent.
    Token,
}

impl LimitSource {
    /// `policy` or `token`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::Token => "token",
        }
    }
}

/// One usage sum the caller computes: the amount of `currency` spent or reserved within
/// `window` (half-open) by the agent ([`LimitSource::Policy`]) or the token's tree
/// ([`LimitSource::Token`]), not counting the request being evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageWindow<'a> {
    /// Whose budget this is.
    pub source: LimitSource,
    /// The currency summed.
    pub currency: &'a str,
    /// The budget's window kind.
    pub rule: WindowRule,
    /// The instants summed: `window.start_ms <= at_ms < window.end_ms`.
    pub window: Window,
}

/// Everything the caller must sum or count before [`evaluate`], in the order [`Usage`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageWindows<'a> {
    /// One sum per budget: the policy's budgets in their order, then the token's.
    pub budgets: Vec<UsageWindow<'a>>,
    /// When the policy has a velocity limit: count the agent's payments in this window and
    /// note the oldest one's time.
    pub velocity: Option<Window>,
}

/// What the caller measured over [`UsageWindows`] at the same `now_ms`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Amount spent or reserved per [`UsageWindows::budgets`] entry, same order and length.
    /// Entries whose currency is not the request's are ignored (the caller may put 0 there).
    pub budget_spent_minor: Vec<u128>,
    /// Payments (reserved or settled, not denied attempts) in [`UsageWindows::velocity`].
    pub velocity_payments: u32,
    /// Time of the oldest of those payments, unix ms (for `retry_at_ms`).
    pub velocity_oldest_at_ms: Option<i64>,
}

/// Why a payment is denied or held (snake_case on the wire and in the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The token's limits expired.
    TokenExpired,
    /// The token was revoked (decided by the caller; [`evaluate`] never returns it).
    TokenRevoked,
    /// The method is not on the policy's or the token's list.
    MethodNotAllowed,
    /// The currency is not on the policy's or the token's list.
    CurrencyNotAllowed,
    /// The merchant is on the deny list, or not on an allow list.
    MerchantNotAllowed,
    /// The amount is above a `maxPerPayment`.
    OverMaxPerPayment,
    /// The velocity window already holds `maxPayments` payments.
    VelocityExceeded,
    /// The amount would take a budget over its limit.
    BudgetExhausted,
    /// The amount is above `approvalAbove`: an owner must approve it.
    ApprovalRequired,
}

impl Reason {
    /// Every reason, in check order.
    pub const ALL: [Self; 9] = [
        Self::TokenExpired,
        Self::TokenRevoked,
        Self::MethodNotAllowed,
        Self::CurrencyNotAllowed,
        Self::MerchantNotAllowed,
        Self::OverMaxPerPayment,
        Self::VelocityExceeded,
        Self::BudgetExhausted,
        Self::ApprovalRequired,
    ];

    /// The snake_case code, e.g. `budget_exhausted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenExpired => "token_expired",
            Self::TokenRevoked => "token_revoked",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::CurrencyNotAllowed => "currency_not_allowed",
            Self::MerchantNotAllowed => "merchant_not_allowed",
            Self::OverMaxPerPayment => "over_max_per_payment",
            Self::VelocityExceeded => "velocity_exceeded",
            Self::BudgetExhausted => "budget_exhausted",
            Self::ApprovalRequired => "approval_required",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`evaluate`]. `detail` is one human-readable line without token material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "decision",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Decision {
    /// Every check passed.
    Allow,
    /// A check failed.
    Deny {
        /// The first failing check.
        reason: Reason,
        /// Not before this instant (unix ms) can the same request pass the failing check, as
        /// far as known: a calendar budget's window end, or the oldest velocity payment plus
        /// the window. `None` when unknown (a rolling budget alone: usage has no per-spend times).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at_ms: Option<i64>,
        /// What failed, for people.
        detail: String,
    },
    /// Every check passed but the amount needs an owner's approval.
    NeedsApproval {
        /// Always [`Reason::ApprovalRequired`].
        reason: Reason,
        /// Which threshold, for people.
        detail: String,
    },
}

impl Decision {
    /// The reason, unless allowed.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Self::Allow => None,
            Self::Deny { reason, .. } | Self::NeedsApproval { reason, .. } => Some(*reason),
        }
    }
}

/// The windows the caller must sum (and the velocity window it must count) at `now_ms`, in the
/// order [`Usage::budget_spent_minor`] takes. Calendar windows are in the policy's time zone,
/// token budgets included.
pub fn usage_windows<'a>(
    policy: &'a CompiledPolicy,
    token: Option<&'a CompiledTokenLimits>,
    now_ms: i64,
) -> UsageWindows<'a> {
    let time_zone = policy.time_zone;
    let budgets = layers(policy, token)
        .flat_map(|(source, limits)| {
            limits.budgets.iter().map(move |budget| UsageWindow {
                source,
                currency: &budget.currency,
                rule: budget.rule,
                window: budget.rule.window(time_zone, now_ms),
            })
        })
        .collect();
    let velocity = policy
        .velocity
        .map(|velocity| Window::rolling(velocity.window_ms(), now_ms));
    UsageWindows { budgets, velocity }
}

/// Decides one spend request. Checks, first failure wins: token expiry, method, currency (a
/// lowercase code, then the lists), merchant (policy deny, policy allow, token allow), max per payment (policy, token),
/// velocity, budgets (policy, token); when all pass, the approval threshold.
///
/// `usage` must be measured over [`usage_windows`] of the same policy, token and `now_ms`;
/// if its length does not match the budgets, the request is denied (fail closed).
pub fn evaluate(
    policy: &CompiledPolicy,
    token: Option<&CompiledTokenLimits>,
    request: &SpendRequest<'_>,
    usage: &Usage,
    now_ms: i64,
) -> Decision {
    if let Err(denial) = check(policy, token, request, usage, now_ms) {
        return Decision::Deny {
            reason: denial.reason,
            retry_at_ms: denial.retry_at_ms,
            detail: denial.detail,
        };
    }
    match over_cap(&policy.approval_above, request) {
        Some(threshold) => Decision::NeedsApproval {
            reason: Reason::ApprovalRequired,
            detail: format!(
                "payment of {} {} is above the policy's approvalAbove of {} {}",
                quoted(request.currency),
                request.amount_minor,
                threshold.currency,
                threshold.amount_minor
            ),
        },
        None => Decision::Allow,
    }
}

/// A failed check.
#[derive(Debug)]
struct Denial {
    reason: Reason,
    retry_at_ms: Option<i64>,
    detail: String,
}

impl Denial {
    fn new(reason: Reason, detail: String) -> Self {
        Self {
            reason,
            retry_at_ms: None,
            detail,
        }
    }
}

/// The policy's limits, then the token's.
fn layers<'a>(
    policy: &'a CompiledPolicy,
    token: Option<&'a CompiledTokenLimits>,
) -> impl Iterator<Item = (LimitSource, &'a Limits)> + Clone {
    let policy = std::iter::once((LimitSource::Policy, &policy.limits));
    policy.chain(token.map(|token| (LimitSource::Token, &token.limits)))
}

/// Every check but approval, in order.
fn check(
    policy: &CompiledPolicy,
    token: Option<&CompiledTokenLimits>,
    request: &SpendRequest<'_>,
    usage: &Usage,
    now_ms: i64,
) -> Result<(), Denial> {
    if let Some(token) = token {
        check_expiry(token, now_ms)?;
    }
    for (source, limits) in layers(policy, token) {
        let allowed = limits.methods.as_deref();
        let reason = Reason::MethodNotAllowed;
        check_listed(source, allowed, "method", request.method, reason)?;
    }
    check_currency_code(request.currency)?;
    for (source, limits) in layers(policy, token) {
        let allowed = limits.currencies.as_deref();
        let reason = Reason::CurrencyNotAllowed;
        check_listed(source, allowed, "currency", request.currency, reason)?;
    }
    check_merchant_deny(policy, request)?;
    for (source, limits) in layers(policy, token) {
        check_merchant_allow(source, limits, request)?;
    }
    for (source, limits) in layers(policy, token) {
        check_max_per_payment(source, limits, request)?;
    }
    check_velocity(policy, usage, now_ms)?;
    check_budgets(policy, token, request, usage, now_ms)
}

fn check_expiry(token: &CompiledTokenLimits, now_ms: i64) -> Result<(), Denial> {
    if now_ms < token.expires_at_s.saturating_mul(1000) {
        return Ok(());
    }
    let expired_at = DateTime::from_timestamp(token.expires_at_s, 0).map_or_else(
        || format!("{} (unix seconds)", token.expires_at_s),
        |at| at.to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    let detail = format!("the token expired at {expired_at}");
    Err(Denial::new(Reason::TokenExpired, detail))
}

/// Refuses a currency that is not a lowercase code (`USD`): budgets and caps compare currencies
/// exactly, so an unnormalised one would slip past every limit.
fn check_currency_code(currency: &str) -> Result<(), Denial> {
    if is_currency_code(currency) {
        return Ok(());
    }
    let detail = format!(
        "currency {} is not a lowercase currency code",
        quoted(currency)
    );
    Err(Denial::new(Reason::CurrencyNotAllowed, detail))
}

fn check_listed(
    source: LimitSource,
    allowed: Option<&[String]>,
    noun: &str,
    value: &str,
    reason: Reason,
) -> Result<(), Denial> {
    match allowed {
        Some(allowed) if !allowed.iter().any(|a| a == value) => {
            let detail = format!(
                "the {} does not allow {noun} {}",
                source.as_str(),
                quoted(value)
            );
            Err(Denial::new(reason, detail))
        }
        _ => Ok(()),
    }
}

fn check_merchant_deny(policy: &CompiledPolicy, request: &SpendRequest<'_>) -> Result<(), Denial> {
    let deny = &policy.merchants_deny;
    let hit = [request.merchant_realm, request.merchant_tenant]
        .into_iter()
        .find(|merchant| deny.contains(*merchant));
    match hit {
        Some(merchant) => {
            let detail = format!("merchant {} is on the policy's deny list", quoted(merchant));
            Err(Denial::new(Reason::MerchantNotAllowed, detail))
        }
        None => Ok(()),
    }
}

fn check_merchant_allow(
    source: LimitSource,
    limits: &Limits,
    request: &SpendRequest<'_>,
) -> Result<(), Denial> {
    let Some(allow) = &limits.merchants_allow else {
        return Ok(());
    };
    if allow.contains(request.merchant_realm) || allow.contains(request.merchant_tenant) {
        return Ok(());
    }
    let detail = format!(
        "merchant {} (tenant {}) is not on the {}'s allow list",
        quoted(request.merchant_realm),
        quoted(request.merchant_tenant),
        source.as_str()
    );
    Err(Denial::new(Reason::MerchantNotAllowed, detail))
}

fn check_max_per_payment(
    source: LimitSource,
    limits: &Limits,
    request: &SpendRequest<'_>,
) -> Result<(), Denial> {
    let Some(cap) = over_cap(&limits.max_per_payment, request) else {
        return Ok(());
    };
    let detail = format!(
        "payment of {} {} is above the {}'s maxPerPayment of {} {}",
        cap.currency,
        request.amount_minor,
        source.as_str(),
        cap.currency,
        cap.amount_minor
    );
    Err(Denial::new(Reason::OverMaxPerPayment, detail))
}

/// The cap in the request's currency that the amount is strictly above, if any.
fn over_cap<'c>(caps: &'c [Cap], request: &SpendRequest<'_>) -> Option<&'c Cap> {
    caps.iter()
        .find(|cap| cap.currency == request.currency && request.amount_minor > cap.amount_minor)
}

fn check_velocity(policy: &CompiledPolicy, usage: &Usage, now_ms: i64) -> Result<(), Denial> {
    let Some(velocity) = policy.velocity else {
        return Ok(());
    };
    if usage.velocity_payments < velocity.max_payments {
        return Ok(());
    }
    // The oldest payment leaves the window `window` after it was made; never in the past.
    let retry_at_ms = usage.velocity_oldest_at_ms.map(|oldest_ms| {
        let leaves_ms = oldest_ms.saturating_add(velocity.window_ms());
        leaves_ms.max(now_ms.saturating_add(1))
    });
    Err(Denial {
        reason: Reason::VelocityExceeded,
        retry_at_ms,
        detail: format!(
            "{} payments in the last {} s reach the policy's velocity limit of {}",
            usage.velocity_payments, velocity.window_seconds, velocity.max_payments
        ),
    })
}

fn check_budgets(
    policy: &CompiledPolicy,
    token: Option<&CompiledTokenLimits>,
    request: &SpendRequest<'_>,
    usage: &Usage,
    now_ms: i64,
) -> Result<(), Denial> {
    let budgets = layers(policy, token)
        .flat_map(|(source, limits)| limits.budgets.iter().map(move |budget| (source, budget)));
    let expected = budgets.clone().count();
    if usage.budget_spent_minor.len() != expected {
        let detail = format!(
            "refused: usage has {} budget sums but the policy and token have {expected} budgets",
            usage.budget_spent_minor.len()
        );
        return Err(Denial::new(Reason::BudgetExhausted, detail));
    }
    let mut denial: Option<Denial> = None;
    for ((source, budget), &spent_minor) in budgets.zip(&usage.budget_spent_minor) {
        if budget.currency != request.currency {
            continue;
        }
        let total = spent_minor.checked_add(request.amount_minor);
        if total.is_some_and(|total| total <= budget.amount_minor) {
            continue;
        }
        // The request fits again no earlier than the latest reset among exhausted budgets;
        // a rolling budget's reset is unknown, so it adds no bound.
        let reset_ms = match budget.rule {
            WindowRule::Rolling { .. } => None,
            rule => Some(rule.window(policy.time_zone, now_ms).end_ms),
        };
        let denial = denial.get_or_insert_with(|| Denial {
            reason: Reason::BudgetExhausted,
            retry_at_ms: None,
            detail: format!(
                "the {}'s {} {} budget of {} has {} spent; {} more would exceed it",
                source.as_str(),
                budget.currency,
                budget.rule,
                budget.amount_minor,
                spent_minor,
                request.amount_minor
            ),
        });
        denial.retry_at_ms = denial.retry_at_ms.max(reset_ms);
    }
    denial.map_or(Ok(()), Err)
}

/// A request-supplied string as quoted in a detail: printable ASCII only, clipped.
fn quoted(value: &str) -> String {
    let mut shown: String = value
        .chars()
        .take(DETAIL_QUOTE_LEN_MAX)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if value.chars().count() > DETAIL_QUOTE_LEN_MAX {
        shown.push_str("...");
    }
    shown
}

#[cfg(test)]
mod tests;
