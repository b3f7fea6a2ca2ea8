//! Token narrowing: a child token's limits may only be as strict as its parent's or stricter.

use std::collections::HashSet;

use super::model::{CompiledTokenLimits, Limits, PolicyError, TokenLimits};

/// Why a child token's limits do not narrow its parent's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarrowError {
    /// The child's limits are invalid.
    #[error("invalid token limits: {0}")]
    Invalid(PolicyError),
    /// The parent's limits are invalid.
    #[error("invalid parent token limits: {0}")]
    InvalidParent(PolicyError),
    /// The child allows something the parent does not, e.g.
    /// `maxPerPayment usd 900 exceeds the parent's 500`.
    #[error("{field} {detail}")]
    Widens {
        /// The JSON member that widens: `maxPerPayment`, `budgets`, `merchantsAllow`,
        /// `methods`, `currencies` or `expiresAtS`.
        field: &'static str,
        /// How it widens.
        detail: String,
    },
}

impl NarrowError {
    fn widens(field: &'static str, detail: String) -> Self {
        Self::Widens { field, detail }
    }
}

impl TokenLimits {
    /// `Ok` when these (child) limits allow nothing that `parent` refuses: every currency the
    /// parent caps is capped no higher; every parent budget is present with the same currency
    /// and window and an amount no higher; the merchant, method and currency lists are subsets
    /// of the parent's (required when the parent has one); the expiry is no later.
    pub fn narrows(&self, parent: &TokenLimits) -> Result<(), NarrowError> {
        let child = self.compile().map_err(NarrowError::Invalid)?;
        let parent = parent.compile().map_err(NarrowError::InvalidParent)?;
        narrows(&child, &parent)
    }
}

fn narrows(child: &CompiledTokenLimits, parent: &CompiledTokenLimits) -> Result<(), NarrowError> {
    narrows_caps(&child.limits, &parent.limits)?;
    narrows_budgets(&child.limits, &parent.limits)?;
    narrows_merchants(&child.limits, &parent.limits)?;
    let (child_methods, parent_methods) = (&child.limits.methods, &parent.limits.methods);
    narrows_list(
        "methods",
        child_methods.as_deref(),
        parent_methods.as_deref(),
    )?;
    let (child_currencies, parent_currencies) =
        (&child.limits.currencies, &parent.limits.currencies);
    narrows_list(
        "currencies",
        child_currencies.as_deref(),
        parent_currencies.as_deref(),
    )?;
    if child.expires_at_s > parent.expires_at_s {
        return Err(NarrowError::widens(
            "expiresAtS",
            format!(
                "{} is after the parent's {}",
                child.expires_at_s, parent.expires_at_s
            ),
        ));
    }
    Ok(())
}

fn narrows_caps(child: &Limits, parent: &Limits) -> Result<(), NarrowError> {
    for cap in &parent.max_per_payment {
        let child_cap = child
            .max_per_payment
            .iter()
            .find(|c| c.currency == cap.currency);
        match child_cap {
            None => {
                return Err(NarrowError::widens(
                    "maxPerPayment",
                    format!(
                        "{} is uncapped but the parent caps it at {}",
                        cap.currency, cap.amount_minor
                    ),
                ));
            }
            Some(c) if c.amount_minor > cap.amount_minor => {
                return Err(NarrowError::widens(
                    "maxPerPayment",
                    format!(
                        "{} {} exceeds the parent's {}",
                        cap.currency, c.amount_minor, cap.amount_minor
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn narrows_budgets(child: &Limits, parent: &Limits) -> Result<(), NarrowError> {
    for budget in &parent.budgets {
        let child_budget = child
            .budgets
            .iter()
            .find(|b| b.currency == budget.currency && b.rule == budget.rule);
        match child_budget {
            None => {
                return Err(NarrowError::widens(
                    "budgets",
                    format!(
                        "{} {} is missing (the parent's is {})",
                        budget.currency, budget.rule, budget.amount_minor
                    ),
                ));
            }
            Some(b) if b.amount_minor > budget.amount_minor => {
                return Err(NarrowError::widens(
                    "budgets",
                    format!(
                        "{} {} {} exceeds the parent's {}",
                        budget.currency, budget.rule, b.amount_minor, budget.amount_minor
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn narrows_merchants(child: &Limits, parent: &Limits) -> Result<(), NarrowError> {
    let Some(parent_allow) = &parent.merchants_allow else {
        return Ok(());
    };
    let Some(child_allow) = &child.merchants_allow else {
        return Err(NarrowError::widens(
            "merchantsAllow",
            "is absent (any merchant) but the parent has an allow list".into(),
        ));
    };
    not_in_parent("merchantsAllow", child_allow.iter(), |m| {
        parent_allow.contains(m)
    })
}

fn narrows_list(
    field: &'static str,
    child: Option<&[String]>,
    parent: Option<&[String]>,
) -> Result<(), NarrowError> {
    let Some(parent) = parent else {
        return Ok(());
    };
    let Some(child) = child else {
        return Err(NarrowError::widens(
            field,
            "is absent (any) but the parent has a list".into(),
        ));
    };
    let parent: HashSet<&str> = parent.iter().map(String::as_str).collect();
    not_in_parent(field, child.iter(), |entry| parent.contains(entry))
}

/// Refuses the first (smallest, for a stable message) child entry the parent lacks.
fn not_in_parent<'a>(
    field: &'static str,
    child: impl Iterator<Item = &'a String>,
    in_parent: impl Fn(&str) -> bool,
) -> Result<(), NarrowError> {
    let extra = child.filter(|entry| !in_parent(entry)).min();
    match extra {
        Some(entry) => Err(NarrowError::widens(
            field,
            format!("{entry} is not in the parent's list"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parent() -> Value {
        json!({
            "maxPerPayment": [{"amount": "500", "currency": "usd"}],
            "budgets": [
                {"amount": "10000", "currency": "usd", "period": "day"},
                {"amount": "2000", "currency": "usd", "period": "rolling", "windowSeconds": 3600}
            ],
            "merchantsAllow": ["api.example.com", "ten_abc"],
            "methods": ["turnpike", "tempo"],
            "currencies": ["usd", "eur"],
            "expiresAtS": 2_000
        })
    }

    fn limits(value: Value) -> TokenLimits {
        serde_json::from_value(value).unwrap()
    }

    /// The parent's limits with `member` replaced (or removed, for `null`).
    fn child_with(member: &str, value: Value) -> TokenLimits {
        let mut child = parent();
        let object = child.as_object_mut().unwrap();
        if value.is_null() {
            object.remove(member);
        } else {
            object.insert(member.to_owned(), value);
        }
        limits(child)
    }

    fn refusal(child: &TokenLimits) -> String {
        child.narrows(&limits(parent())).unwrap_err().to_string()
    }

    #[test]
    fn equal_or_stricter_limits_narrow() {
        let parent = limits(parent());
        assert_eq!(parent.narrows(&parent), Ok(()));
        let stricter = limits(json!({
            "maxPerPayment": [{"amount": "400", "currency": "usd"}, {"amount": "1", "currency": "eur"}],
            "budgets": [
                {"amount": "2000", "currency": "usd", "period": "rolling", "windowSeconds": 3600},
                {"amount": "9000", "currency": "usd", "period": "day"},
                {"amount": "100", "currency": "usd", "period": "week"}
            ],
            "merchantsAllow": ["ten_abc"],
            "methods": ["turnpike"],
            "currencies": ["usd"],
            "expiresAtS": 1_999
        }));
        assert_eq!(stricter.narrows(&parent), Ok(()));
        // A parent without lists lets the child add any.
        let open = limits(json!({"expiresAtS": 2_000}));
        assert_eq!(stricter.narrows(&open), Ok(()));
        assert_eq!(open.narrows(&open), Ok(()));
    }

    #[test]
    fn wider_max_per_payment_is_refused() {
        let higher = child_with(
            "maxPerPayment",
            json!([{"amount": "900", "currency": "usd"}]),
        );
        assert_eq!(
            refusal(&higher),
            "maxPerPayment usd 900 exceeds the parent's 500"
        );
        let other = child_with("maxPerPayment", json!([{"amount": "1", "currency": "eur"}]));
        assert_eq!(
            refusal(&other),
            "maxPerPayment usd is uncapped but the parent caps it at 500"
        );
        let absent = child_with("maxPerPayment", Value::Null);
        assert_eq!(
            refusal(&absent),
            "maxPerPayment usd is uncapped but the parent caps it at 500"
        );
        let extra = child_with(
            "maxPerPayment",
            json!([{"amount": "500", "currency": "usd"}, {"amount": "9", "currency": "eur"}]),
        );
        assert_eq!(extra.narrows(&limits(parent())), Ok(()));
    }

    #[test]
    fn missing_or_larger_budgets_are_refused() {
        let day = json!({"amount": "10000", "currency": "usd", "period": "day"});
        let rolling = |amount: &str, seconds: u64| json!({"amount": amount, "currency": "usd", "period": "rolling", "windowSeconds": seconds});
        let missing = child_with("budgets", json!([rolling("2000", 3600)]));
        assert_eq!(
            refusal(&missing),
            "budgets usd day is missing (the parent's is 10000)"
        );
        let other_window = child_with("budgets", json!([day, rolling("100", 600)]));
        assert_eq!(
            refusal(&other_window),
            "budgets usd rolling 3600 s is missing (the parent's is 2000)"
        );
        let larger = child_with("budgets", json!([day, rolling("2001", 3600)]));
        assert_eq!(
            refusal(&larger),
            "budgets usd rolling 3600 s 2001 exceeds the parent's 2000"
        );
        let eur = json!({"amount": "1", "currency": "eur", "period": "day"});
        let other_currency = child_with("budgets", json!([eur, rolling("2000", 3600)]));
        assert_eq!(
            refusal(&other_currency),
            "budgets usd day is missing (the parent's is 10000)"
        );
    }

    #[test]
    fn wider_lists_are_refused() {
        let cases = [
            (
                "merchantsAllow",
                json!(["ten_abc", "evil.example"]),
                "merchantsAllow evil.example is not in the parent's list",
            ),
            (
                "merchantsAllow",
                Value::Null,
                "merchantsAllow is absent (any merchant) but the parent has an allow list",
            ),
            (
                "methods",
                json!(["turnpike", "stripe"]),
                "methods stripe is not in the parent's list",
            ),
            (
                "methods",
                Value::Null,
                "methods is absent (any) but the parent has a list",
            ),
            (
                "currencies",
                json!(["usd", "gbp"]),
                "currencies gbp is not in the parent's list",
            ),
            (
                "currencies",
                Value::Null,
                "currencies is absent (any) but the parent has a list",
            ),
        ];
        for (member, value, expected) in cases {
            assert_eq!(refusal(&child_with(member, value)), expected);
        }
        for (member, subset) in [
            ("merchantsAllow", json!(["api.example.com"])),
            ("methods", json!(["tempo"])),
            ("currencies", json!(["eur"])),
        ] {
            assert_eq!(
                child_with(member, subset).narrows(&limits(parent())),
                Ok(())
            );
        }
    }

    #[test]
    fn later_expiry_is_refused() {
        let later = child_with("expiresAtS", json!(2_001));
        assert_eq!(
            refusal(&later),
            "expiresAtS 2001 is after the parent's 2000"
        );
        assert_eq!(
            child_with("expiresAtS", json!(2_000)).narrows(&limits(parent())),
            Ok(())
        );
    }

    #[test]
    fn invalid_limits_cannot_narrow() {
        let empty_methods = child_with("methods", json!([]));
        assert!(matches!(
            empty_methods.narrows(&limits(parent())),
            Err(NarrowError::Invalid(_))
        ));
        assert_eq!(
            limits(parent())
                .narrows(&empty_methods)
                .unwrap_err()
                .to_string(),
            "invalid parent token limits: methods must not be empty (omit it to allow any method)"
        );
    }
}
