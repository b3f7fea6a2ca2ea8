//! The spend policy and token limits as stored and sent (camelCase JSON), their validation, and
//! the compiled forms evaluation reads (amounts parsed, time zone resolved, merchants hashed).

use std::collections::HashSet;

use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize};
use turnpike_protocol::challenge::is_valid_method;
use turnpike_protocol::charge::parse_amount_minor;

use super::window::{Window, WindowRule};
use crate::tokens::Money;

/// Most budgets one policy (or one token) may have.
pub const BUDGETS_LEN_MAX: usize = 32;
/// Most merchant entries one policy may list, `allow` and `deny` together (and one token).
pub const MERCHANTS_LEN_MAX: usize = 1_000;
/// Longest merchant entry (a realm or a tenant id), in bytes: the server's realm limit.
pub const MERCHANT_LEN_MAX: usize = 200;
/// Most entries of `maxPerPayment` and of `approvalAbove` (one per currency).
pub const CAPS_LEN_MAX: usize = 32;
/// Most entries of `methods`.
pub const METHODS_LEN_MAX: usize = 32;
/// Longest method name, in bytes.
pub const METHOD_LEN_MAX: usize = 32;
/// Most entries of `currencies`.
pub const CURRENCIES_LEN_MAX: usize = 32;
/// Longest currency code, in bytes: the ledger's `CURRENCY_LEN_MAX`.
pub const CURRENCY_LEN_MAX: usize = 64;
/// Most decimal digits of an amount (fits `NUMERIC(38,0)`; two of them never overflow u128).
pub const AMOUNT_DIGITS_MAX: usize = 38;
/// Longest rolling budget or velocity window: 365 days, in seconds.
pub const WINDOW_SECONDS_MAX: u64 = 31_536_000;
/// Velocity window when `velocity.windowSeconds` is absent, in seconds.
pub const VELOCITY_WINDOW_SECONDS_DEFAULT: u64 = 60;
/// Largest `velocity.maxPayments`.
pub const VELOCITY_PAYMENTS_MAX: u32 = 1_000_000;
/// Time zone of calendar budgets when `timeZone` is absent.
pub const TIME_ZONE_DEFAULT: &str = "UTC";
/// Longest `timeZone`, in bytes (IANA names are at most 30).
const TIME_ZONE_LEN_MAX: usize = 64;

/// An agent's spend policy (`PUT /v1/agents/{id}/policy`). Every member is optional; `{}` allows
/// everything. Validate with [`Policy::compile`] and evaluate the [`CompiledPolicy`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// IANA time zone of calendar budgets (`timeZone`), e.g. `Europe/Berlin`; default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Largest single payment per currency (`maxPerPayment`); other currencies are uncapped.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "strict_money_list"
    )]
    pub max_per_payment: Vec<Money>,
    /// Spend limits per currency and window (`budgets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
    /// Merchant allow and deny lists (`merchants`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchants: Option<MerchantLists>,
    /// Payment methods allowed (`methods`); absent = any. Never empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Currencies allowed (`currencies`); absent = any. Never empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currencies: Option<Vec<String>>,
    /// At most N payments per window (`velocity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velocity: Option<Velocity>,
    /// Payments strictly above these amounts need an owner's approval (`approvalAbove`).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "strict_money_list"
    )]
    pub approval_above: Vec<Money>,
}

/// One spend limit (`budgets[i]`): at most `amount` of `currency` per window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    /// Integer minor units as a decimal string (`amount`).
    pub amount: String,
    /// Lowercase currency the budget counts; spends in other currencies never touch it.
    pub currency: String,
    /// The window kind (`period`).
    pub period: Period,
    /// Length of a `rolling` window in seconds (`windowSeconds`); only with `period: rolling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
}

/// A budget's window kind (`budgets[i].period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Calendar day in the policy's time zone.
    Day,
    /// ISO week (Monday 00:00 local) in the policy's time zone.
    Week,
    /// Calendar month (the 1st 00:00 local) in the policy's time zone.
    Month,
    /// The last `windowSeconds` seconds.
    Rolling,
}

/// Merchant lists (`merchants`): entries are realms (`api.example.com`) or tenant ids
/// (`ten_...`), matched exactly. Deny wins over allow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MerchantLists {
    /// Only these merchants (`allow`); absent or empty = any merchant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Never these merchants (`deny`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// At most `max_payments` payments per `window_seconds` (`velocity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Velocity {
    /// Payments allowed per window (`maxPayments`), at least 1.
    pub max_payments: u32,
    /// Window length in seconds (`windowSeconds`), default 60.
    #[serde(default = "default_velocity_window_seconds")]
    pub window_seconds: u64,
}

fn default_velocity_window_seconds() -> u64 {
    VELOCITY_WINDOW_SECONDS_DEFAULT
}

/// Narrower limits a token carries on top of its agent's policy; a child token's limits may
/// only narrow its parent's ([`TokenLimits::narrows`]). Same shapes as the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenLimits {
    /// Largest single payment per currency (`maxPerPayment`).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "strict_money_list"
    )]
    pub max_per_payment: Vec<Money>,
    /// Spend limits per currency and window (`budgets`), windows in the policy's time zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
    /// Only these merchants (`merchantsAllow`); absent = any. Never empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchants_allow: Option<Vec<String>>,
    /// Payment methods allowed (`methods`); absent = any. Never empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Currencies allowed (`currencies`); absent = any. Never empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currencies: Option<Vec<String>>,
    /// The limits (and so the token) are refused from this instant, unix seconds (`expiresAtS`).
    pub expires_at_s: i64,
}

/// Why a policy or token limits are invalid: one line naming the JSON field, e.g.
/// `budgets[1].windowSeconds must be between 1 and 31536000`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct PolicyError {
    /// JSON path of the offending member, e.g. `budgets[1].windowSeconds`.
    field: String,
    /// What is wrong with it.
    problem: String,
}

impl PolicyError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// JSON path of the offending member, e.g. `budgets[1].windowSeconds`.
    pub fn field(&self) -> &str {
        &self.field
    }
}

/// A per-currency amount (`maxPerPayment`, `approvalAbove`), parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cap {
    pub(crate) currency: String,
    pub(crate) amount_minor: u128,
}

/// A budget, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BudgetLimit {
    pub(crate) currency: String,
    pub(crate) amount_minor: u128,
    pub(crate) rule: WindowRule,
}

/// Velocity, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VelocityLimit {
    pub(crate) max_payments: u32,
    pub(crate) window_seconds: u32,
}

impl VelocityLimit {
    pub(crate) fn window_ms(self) -> i64 {
        i64::from(self.window_seconds) * 1000
    }
}

/// What a policy and a token both limit, parsed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Limits {
    pub(crate) max_per_payment: Vec<Cap>,
    pub(crate) budgets: Vec<BudgetLimit>,
    /// `None` = any merchant.
    pub(crate) merchants_allow: Option<HashSet<String>>,
    /// `None` = any method.
    pub(crate) methods: Option<Vec<String>>,
    /// `None` = any currency.
    pub(crate) currencies: Option<Vec<String>>,
}

/// A validated policy, ready to evaluate: build once per policy version and cache it.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub(crate) time_zone: Tz,
    pub(crate) limits: Limits,
    pub(crate) merchants_deny: HashSet<String>,
    pub(crate) velocity: Option<VelocityLimit>,
    pub(crate) approval_above: Vec<Cap>,
}

impl CompiledPolicy {
    /// The time zone calendar budgets (the policy's and the token's) are read in.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// How many budgets the policy has (the first entries of [`super::UsageWindows::budgets`]).
    pub fn budget_count(&self) -> usize {
        self.limits.budgets.len()
    }
}

/// Validated token limits, ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledTokenLimits {
    pub(crate) limits: Limits,
    pub(crate) expires_at_s: i64,
}

impl CompiledTokenLimits {
    /// How many budgets the token has.
    pub fn budget_count(&self) -> usize {
        self.limits.budgets.len()
    }

    /// When the limits expire, unix seconds.
    pub fn expires_at_s(&self) -> i64 {
        self.expires_at_s
    }
}

impl Policy {
    /// Checks every member; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.compile().map(drop)
    }

    /// Validates the policy and builds the form [`super::evaluate`] reads.
    pub fn compile(&self) -> Result<CompiledPolicy, PolicyError> {
        let time_zone = compile_time_zone(self.time_zone.as_deref())?;
        let max_per_payment = compile_caps("maxPerPayment", &self.max_per_payment)?;
        let budgets = compile_budgets(&self.budgets)?;
        let (merchants_allow, merchants_deny) = compile_merchant_lists(self.merchants.as_ref())?;
        let methods = compile_names("methods", self.methods.as_deref(), NameKind::Method)?;
        let currencies =
            compile_names("currencies", self.currencies.as_deref(), NameKind::Currency)?;
        let velocity = self.velocity.as_ref().map(compile_velocity).transpose()?;
        let approval_above = compile_caps("approvalAbove", &self.approval_above)?;
        Ok(CompiledPolicy {
            time_zone,
            limits: Limits {
                max_per_payment,
                budgets,
                merchants_allow,
                methods,
                currencies,
            },
            merchants_deny,
            velocity,
            approval_above,
        })
    }
}

impl TokenLimits {
    /// Checks every member; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.compile().map(drop)
    }

    /// Validates the limits and builds the form [`super::evaluate`] reads.
    pub fn compile(&self) -> Result<CompiledTokenLimits, PolicyError> {
        let max_per_payment = compile_caps("maxPerPayment", &self.max_per_payment)?;
        let budgets = compile_budgets(&self.budgets)?;
        let merchants_allow = match &self.merchants_allow {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(PolicyError::new(
                    "merchantsAllow",
                    "must not be empty (omit it to allow any merchant)",
                ));
            }
            Some(list) => Some(compile_merchants("merchantsAllow", list)?),
        };
        let methods = compile_names("methods", self.methods.as_deref(), NameKind::Method)?;
        let currencies =
            compile_names("currencies", self.currencies.as_deref(), NameKind::Currency)?;
        Ok(CompiledTokenLimits {
            limits: Limits {
                max_per_payment,
                budgets,
                merchants_allow,
                methods,
                currencies,
            },
            expires_at_s: self.expires_at_s,
        })
    }
}

impl Budget {
    /// The window this budget sums over at `now_ms`, calendar periods read in `time_zone` (the
    /// policy's). Refused only when `period` and `windowSeconds` disagree.
    pub fn window(&self, time_zone: Tz, now_ms: i64) -> Result<Window, PolicyError> {
        let rule = self
            .window_rule()
            .map_err(|problem| PolicyError::new("windowSeconds", problem))?;
        Ok(rule.window(time_zone, now_ms))
    }

    /// The window rule of a valid budget (`period` with `windowSeconds`), or what is wrong.
    fn window_rule(&self) -> Result<WindowRule, String> {
        let rule = match (self.period, self.window_seconds) {
            (Period::Day, None) => WindowRule::Day,
            (Period::Week, None) => WindowRule::Week,
            (Period::Month, None) => WindowRule::Month,
            (Period::Rolling, Some(seconds)) => WindowRule::Rolling {
                window_seconds: window_seconds(seconds)?,
            },
            (Period::Rolling, None) => return Err("is required when period is rolling".into()),
            (_, Some(_)) => return Err("is only allowed when period is rolling".into()),
        };
        Ok(rule)
    }
}

/// `seconds` as a window length, or the one-line problem.
fn window_seconds(seconds: u64) -> Result<u32, String> {
    let range = 1..=WINDOW_SECONDS_MAX;
    match u32::try_from(seconds) {
        Ok(seconds) if range.contains(&u64::from(seconds)) => Ok(seconds),
        _ => Err(format!("must be between 1 and {WINDOW_SECONDS_MAX}")),
    }
}

/// A currency as Turnpike takes it: a valid ledger currency (1 to 64 printable ASCII
/// characters, no spaces), lowercase. The same rule as the server catalog's `is_currency_code`.
pub fn is_currency_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= CURRENCY_LEN_MAX
        && code
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase())
}

/// A merchant entry: 1 to 200 printable ASCII characters without spaces, like a realm.
fn is_merchant_entry(entry: &str) -> bool {
    !entry.is_empty()
        && entry.len() <= MERCHANT_LEN_MAX
        && entry.bytes().all(|b| b.is_ascii_graphic())
}

/// An amount: `0` or digits without a leading zero, at most [`AMOUNT_DIGITS_MAX`] of them.
fn parse_amount(field: impl FnOnce() -> String, amount: &str) -> Result<u128, PolicyError> {
    match parse_amount_minor(amount) {
        Some(minor) if amount.len() <= AMOUNT_DIGITS_MAX => Ok(minor),
        _ => Err(PolicyError::new(
            field(),
            format!(
                "must be integer minor units: 1 to {AMOUNT_DIGITS_MAX} decimal digits without leading zeros"
            ),
        )),
    }
}

fn check_currency(field: impl FnOnce() -> String, currency: &str) -> Result<(), PolicyError> {
    if is_currency_code(currency) {
        return Ok(());
    }
    Err(PolicyError::new(
        field(),
        format!(
            "must be a lowercase currency code: 1 to {CURRENCY_LEN_MAX} printable ASCII characters without spaces"
        ),
    ))
}

fn compile_time_zone(name: Option<&str>) -> Result<Tz, PolicyError> {
    let name = name.unwrap_or(TIME_ZONE_DEFAULT);
    let parsed = if name.len() <= TIME_ZONE_LEN_MAX {
        name.parse::<Tz>().ok()
    } else {
        None
    };
    parsed.ok_or_else(|| {
        PolicyError::new(
            "timeZone",
            "must be an IANA time zone name such as Europe/Berlin (case-sensitive)",
        )
    })
}

fn compile_caps(field: &str, caps: &[Money]) -> Result<Vec<Cap>, PolicyError> {
    if caps.len() > CAPS_LEN_MAX {
        return Err(PolicyError::new(
            field,
            format!("must have at most {CAPS_LEN_MAX} entries"),
        ));
    }
    let mut compiled: Vec<Cap> = Vec::with_capacity(caps.len());
    for (i, cap) in caps.iter().enumerate() {
        let amount_minor = parse_amount(|| format!("{field}[{i}].amount"), &cap.amount)?;
        check_currency(|| format!("{field}[{i}].currency"), &cap.currency)?;
        if let Some(j) = compiled.iter().position(|c| c.currency == cap.currency) {
            return Err(PolicyError::new(
                format!("{field}[{i}].currency"),
                format!("repeats {field}[{j}]: one entry per currency"),
            ));
        }
        compiled.push(Cap {
            currency: cap.currency.clone(),
            amount_minor,
        });
    }
    Ok(compiled)
}

fn compile_budgets(budgets: &[Budget]) -> Result<Vec<BudgetLimit>, PolicyError> {
    if budgets.len() > BUDGETS_LEN_MAX {
        return Err(PolicyError::new(
            "budgets",
            format!("must have at most {BUDGETS_LEN_MAX} entries"),
        ));
    }
    let mut compiled: Vec<BudgetLimit> = Vec::with_capacity(budgets.len());
    for (i, budget) in budgets.iter().enumerate() {
        let amount_minor = parse_amount(|| format!("budgets[{i}].amount"), &budget.amount)?;
        check_currency(|| format!("budgets[{i}].currency"), &budget.currency)?;
        let rule = budget
            .window_rule()
            .map_err(|problem| PolicyError::new(format!("budgets[{i}].windowSeconds"), problem))?;
        let same = |b: &BudgetLimit| b.currency == budget.currency && b.rule == rule;
        if let Some(j) = compiled.iter().position(same) {
            return Err(PolicyError::new(
                format!("budgets[{i}]"),
                format!(
                    "repeats the {} {rule} budget of budgets[{j}]",
                    budget.currency
                ),
            ));
        }
        compiled.push(BudgetLimit {
            currency: budget.currency.clone(),
            amount_minor,
            rule,
        });
    }
    Ok(compiled)
}

/// The policy's (allow, deny) sets; an empty allow list means any merchant (`None`).
fn compile_merchant_lists(
    lists: Option<&MerchantLists>,
) -> Result<(Option<HashSet<String>>, HashSet<String>), PolicyError> {
    let Some(lists) = lists else {
        return Ok((None, HashSet::new()));
    };
    if lists.allow.len() + lists.deny.len() > MERCHANTS_LEN_MAX {
        return Err(PolicyError::new(
            "merchants",
            format!("must have at most {MERCHANTS_LEN_MAX} entries in allow and deny together"),
        ));
    }
    let allow = compile_merchants("merchants.allow", &lists.allow)?;
    let deny = compile_merchants("merchants.deny", &lists.deny)?;
    Ok(((!allow.is_empty()).then_some(allow), deny))
}

fn compile_merchants(field: &str, entries: &[String]) -> Result<HashSet<String>, PolicyError> {
    if entries.len() > MERCHANTS_LEN_MAX {
        return Err(PolicyError::new(
            field,
            format!("must have at most {MERCHANTS_LEN_MAX} entries"),
        ));
    }
    let mut set = HashSet::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        if !is_merchant_entry(entry) {
            return Err(PolicyError::new(
                format!("{field}[{i}]"),
                format!(
                    "must be a realm or tenant id: 1 to {MERCHANT_LEN_MAX} printable ASCII characters without spaces"
                ),
            ));
        }
        set.insert(entry.clone());
    }
    Ok(set)
}

/// What a list of names holds.
#[derive(Debug, Clone, Copy)]
enum NameKind {
    Method,
    Currency,
}

impl NameKind {
    fn len_max(self) -> usize {
        match self {
            Self::Method => METHODS_LEN_MAX,
            Self::Currency => CURRENCIES_LEN_MAX,
        }
    }

    fn is_valid(self, name: &str) -> bool {
        match self {
            Self::Method => name.len() <= METHOD_LEN_MAX && is_valid_method(name),
            Self::Currency => is_currency_code(name),
        }
    }

    fn rule(self) -> String {
        match self {
            Self::Method => {
                format!("must be a method name: 1 to {METHOD_LEN_MAX} lowercase ASCII letters")
            }
            Self::Currency => format!(
                "must be a lowercase currency code: 1 to {CURRENCY_LEN_MAX} printable ASCII characters without spaces"
            ),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Currency => "currency",
        }
    }
}

/// A `methods` or `currencies` list: absent = any (`None`); present must be non-empty.
fn compile_names(
    field: &str,
    names: Option<&[String]>,
    kind: NameKind,
) -> Result<Option<Vec<String>>, PolicyError> {
    let Some(names) = names else {
        return Ok(None);
    };
    if names.is_empty() {
        return Err(PolicyError::new(
            field,
            format!("must not be empty (omit it to allow any {})", kind.noun()),
        ));
    }
    if names.len() > kind.len_max() {
        return Err(PolicyError::new(
            field,
            format!("must have at most {} entries", kind.len_max()),
        ));
    }
    if let Some(i) = names.iter().position(|n| !kind.is_valid(n)) {
        return Err(PolicyError::new(format!("{field}[{i}]"), kind.rule()));
    }
    Ok(Some(names.to_vec()))
}

fn compile_velocity(velocity: &Velocity) -> Result<VelocityLimit, PolicyError> {
    if !(1..=VELOCITY_PAYMENTS_MAX).contains(&velocity.max_payments) {
        return Err(PolicyError::new(
            "velocity.maxPayments",
            format!("must be between 1 and {VELOCITY_PAYMENTS_MAX}"),
        ));
    }
    let window_seconds = window_seconds(velocity.window_seconds)
        .map_err(|problem| PolicyError::new("velocity.windowSeconds", problem))?;
    Ok(VelocityLimit {
        max_payments: velocity.max_payments,
        window_seconds,
    })
}

/// `[Money]` refusing unknown members (the shared `Money` type itself tolerates them).
fn strict_money_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Money>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StrictMoney {
        amount: String,
        currency: String,
    }
    let list = Vec::<StrictMoney>::deserialize(deserializer)?;
    let money = list.into_iter().map(|m| Money {
        amount: m.amount,
        currency: m.currency,
    });
    Ok(money.collect())
}

#[cfg(test)]
mod tests;
