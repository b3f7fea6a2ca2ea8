//! Spend policies: what an agent may pay, and the pure evaluation of one payment against them.
//!
//! An agent owner attaches a versioned [`Policy`] (camelCase JSON, every member optional, `{}`
//! allows everything) to an agent; a token may carry narrower [`TokenLimits`]. Both are
//! validated once into [`CompiledPolicy`] / [`CompiledTokenLimits`], which [`evaluate`] reads.
//! Evaluation does no I/O and reads no clock: `now_ms` is an argument.
//!
//! The caller, per payment, inside the database transaction that locks the agent:
//!
//! 1. [`usage_windows`]`(policy, token, now_ms)` lists one window per budget (the policy's,
//!    then the token's) and, with a velocity limit, the velocity window. Every window is
//!    half-open, `start_ms <= at_ms < end_ms`.
//! 2. For each budget window whose currency is the request's, sum the amounts of that currency
//!    spent or reserved in it (payments not voided or refunded), excluding the request itself:
//!    over the agent for [`LimitSource::Policy`], over the token's tree for
//!    [`LimitSource::Token`] (summing only the token's own spends would let sibling tokens each
//!    spend the parent's budget). Other currencies' entries may be 0. Count the agent's
//!    payments in the velocity window and find the oldest one's time.
//! 3. [`evaluate`] with the same `now_ms`; act on the [`Decision`] and write it to the audit log.
//!
//! Calendar budgets (day, ISO week, month) are read in the policy's `timeZone`, token budgets
//! too; see [`WindowRule::window`] for DST. A [`Decision::NeedsApproval`] means every other
//! check passed: after an owner approves that exact request, evaluate again and treat a
//! `NeedsApproval` as allowed (budgets may have moved meanwhile).

mod evaluate;
mod model;
mod narrow;
mod window;

pub use chrono_tz::Tz;
pub use evaluate::{
    Decision, LimitSource, Reason, SpendRequest, Usage, UsageWindow, UsageWindows, evaluate,
    usage_windows,
};
pub use model::{
    AMOUNT_DIGITS_MAX, BUDGETS_LEN_MAX, Budget, CAPS_LEN_MAX, CURRENCIES_LEN_MAX, CURRENCY_LEN_MAX,
    CompiledPolicy, CompiledTokenLimits, MERCHANT_LEN_MAX, MERCHANTS_LEN_MAX, METHOD_LEN_MAX,
    METHODS_LEN_MAX, MerchantLists, Period, Policy, PolicyError, TIME_ZONE_DEFAULT, TokenLimits,
    VELOCITY_PAYMENTS_MAX, VELOCITY_WINDOW_SECONDS_DEFAULT, Velocity, WINDOW_SECONDS_MAX,
    is_currency_code,
};
pub use narrow::NarrowError;
pub use window::{NOW_MS_MAX, NOW_MS_MIN, Window, WindowRule};
