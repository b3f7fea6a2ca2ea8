//! Tests of the policy and token limits' JSON shapes and validation.

use serde_json::{Value, json};

use super::*;

/// The policy of the design brief: every member used.
fn full_policy() -> Value {
    json!({
        "timeZone": "Europe/Berlin",
        "maxPerPayment": [{"amount": "500", "currency": "usd"}],
        "budgets": [
            {"amount": "10000", "currency": "usd", "period": "day"},
            {"amount": "50000", "currency": "usd", "period": "week"},
            {"amount": "150000", "currency": "usd", "period": "month"},
            {"amount": "2000", "currency": "usd", "period": "rolling", "windowSeconds": 3600}
        ],
        "merchants": {"allow": ["api.example.com", "ten_abc"], "deny": ["evil.example"]},
        "methods": ["turnpike"],
        "currencies": ["usd"],
        "velocity": {"maxPayments": 10, "windowSeconds": 60},
        "approvalAbove": [{"amount": "1000", "currency": "usd"}]
    })
}

fn policy_error(value: Value) -> String {
    let policy: Policy = serde_json::from_value(value).expect("well-formed JSON");
    policy.validate().expect_err("invalid").to_string()
}

#[test]
fn full_policy_round_trips_through_json_and_compiles() {
    let policy: Policy = serde_json::from_value(full_policy()).unwrap();
    assert_eq!(serde_json::to_value(&policy).unwrap(), full_policy());
    let compiled = policy.compile().unwrap();
    assert_eq!(compiled.time_zone(), chrono_tz::Europe::Berlin);
    assert_eq!(compiled.budget_count(), 4);
    assert_eq!(
        compiled.limits.budgets[3].rule,
        WindowRule::Rolling {
            window_seconds: 3600
        }
    );
    assert_eq!(compiled.limits.budgets[0].amount_minor, 10_000);
    assert!(compiled.merchants_deny.contains("evil.example"));
    assert_eq!(compiled.approval_above[0].amount_minor, 1_000);
}

#[test]
fn empty_policy_is_valid_utc_and_serializes_to_an_empty_object() {
    let policy: Policy = serde_json::from_value(json!({})).unwrap();
    assert_eq!(policy, Policy::default());
    assert_eq!(serde_json::to_value(&policy).unwrap(), json!({}));
    let compiled = policy.compile().unwrap();
    assert_eq!(compiled.time_zone(), chrono_tz::UTC);
    assert!(compiled.limits.merchants_allow.is_none() && compiled.velocity.is_none());
}

#[test]
fn empty_merchant_allow_list_means_any_merchant() {
    let policy: Policy =
        serde_json::from_value(json!({"merchants": {"allow": [], "deny": ["x.example"]}})).unwrap();
    assert!(policy.compile().unwrap().limits.merchants_allow.is_none());
}

#[test]
fn velocity_window_defaults_to_60_seconds() {
    let policy: Policy = serde_json::from_value(json!({"velocity": {"maxPayments": 3}})).unwrap();
    let velocity = policy.compile().unwrap().velocity.unwrap();
    assert_eq!((velocity.max_payments, velocity.window_seconds), (3, 60));
}

#[test]
fn unknown_members_are_refused_at_every_level() {
    let mut cases = Vec::new();
    for (pointer, member) in [
        ("", "timezone"),
        ("/budgets/0", "window"),
        ("/maxPerPayment/0", "period"),
        ("/approvalAbove/0", "note"),
        ("/merchants", "allowList"),
        ("/velocity", "perMinute"),
    ] {
        let mut value = full_policy();
        value.pointer_mut(pointer).unwrap()[member] = json!(1);
        cases.push((value, member));
    }
    for (value, member) in cases {
        let err = serde_json::from_value::<Policy>(value).unwrap_err();
        assert!(err.to_string().contains(member), "{err}");
    }
    let token =
        json!({"expiresAtS": 1, "maxPerPayment": [{"amount": "1", "currency": "usd", "x": 1}]});
    assert!(serde_json::from_value::<TokenLimits>(token).is_err());
    let token = json!({"expiresAtS": 1, "merchants": {"allow": ["a"]}});
    assert!(serde_json::from_value::<TokenLimits>(token).is_err());
}

#[test]
fn invalid_members_are_refused_with_the_field_named() {
    let amount_rule = "must be integer minor units: 1 to 38 decimal digits without leading zeros";
    let currency_rule =
        "must be a lowercase currency code: 1 to 64 printable ASCII characters without spaces";
    let cases = [
        (json!({"timeZone": "Europe/Berln"}), "timeZone must be an IANA time zone name such as Europe/Berlin (case-sensitive)".to_owned()),
        (json!({"timeZone": "europe/berlin"}), "timeZone must be an IANA time zone name such as Europe/Berlin (case-sensitive)".to_owned()),
        (json!({"maxPerPayment": [{"amount": "007", "currency": "usd"}]}), format!("maxPerPayment[0].amount {amount_rule}")),
        (json!({"maxPerPayment": [{"amount": "", "currency": "usd"}]}), format!("maxPerPayment[0].amount {amount_rule}")),
        (json!({"maxPerPayment": [{"amount": "-1", "currency": "usd"}]}), format!("maxPerPayment[0].amount {amount_rule}")),
        (json!({"maxPerPayment": [{"amount": "1.5", "currency": "usd"}]}), format!("maxPerPayment[0].amount {amount_rule}")),
        (json!({"maxPerPayment": [{"amount": "1".repeat(39), "currency": "usd"}]}), format!("maxPerPayment[0].amount {amount_rule}")),
        (json!({"maxPerPayment": [{"amount": "5", "currency": "USD"}]}), format!("maxPerPayment[0].currency {currency_rule}")),
        (json!({"maxPerPayment": [{"amount": "5", "currency": "usd"}, {"amount": "6", "currency": "usd"}]}), "maxPerPayment[1].currency repeats maxPerPayment[0]: one entry per currency".to_owned()),
        (json!({"approvalAbove": [{"amount": " 1", "currency": "usd"}]}), format!("approvalAbove[0].amount {amount_rule}")),
        (json!({"budgets": [{"amount": "1", "currency": "usd", "period": "day"}, {"amount": "1", "currency": "usd", "period": "rolling", "windowSeconds": 0}]}), "budgets[1].windowSeconds must be between 1 and 31536000".to_owned()),
        (json!({"budgets": [{"amount": "1", "currency": "usd", "period": "rolling", "windowSeconds": 31_536_001}]}), "budgets[0].windowSeconds must be between 1 and 31536000".to_owned()),
        (json!({"budgets": [{"amount": "1", "currency": "usd", "period": "rolling", "windowSeconds": u64::MAX}]}), "budgets[0].windowSeconds must be between 1 and 31536000".to_owned()),
        (json!({"budgets": [{"amount": "1", "currency": "usd", "period": "rolling"}]}), "budgets[0].windowSeconds is required when period is rolling".to_owned()),
        (json!({"budgets": [{"amount": "1", "currency": "usd", "period": "day", "windowSeconds": 60}]}), "budgets[0].windowSeconds is only allowed when period is rolling".to_owned()),
        (json!({"budgets": [{"amount": "01", "currency": "usd", "period": "day"}]}), format!("budgets[0].amount {amount_rule}")),
        (json!({"budgets": [{"amount": "1", "currency": "", "period": "day"}]}), format!("budgets[0].currency {currency_rule}")),
        (json!({"budgets": [
            {"amount": "1", "currency": "usd", "period": "day"},
            {"amount": "1", "currency": "eur", "period": "day"},
            {"amount": "2", "currency": "usd", "period": "day"}
        ]}), "budgets[2] repeats the usd day budget of budgets[0]".to_owned()),
        (json!({"budgets": [
            {"amount": "1", "currency": "usd", "period": "rolling", "windowSeconds": 60},
            {"amount": "2", "currency": "usd", "period": "rolling", "windowSeconds": 60}
        ]}), "budgets[1] repeats the usd rolling 60 s budget of budgets[0]".to_owned()),
        (json!({"merchants": {"allow": ["ok.example", ""]}}), "merchants.allow[1] must be a realm or tenant id: 1 to 200 printable ASCII characters without spaces".to_owned()),
        (json!({"merchants": {"deny": ["bad example"]}}), "merchants.deny[0] must be a realm or tenant id: 1 to 200 printable ASCII characters without spaces".to_owned()),
        (json!({"merchants": {"deny": ["x".repeat(201)]}}), "merchants.deny[0] must be a realm or tenant id: 1 to 200 printable ASCII characters without spaces".to_owned()),
        (json!({"methods": []}), "methods must not be empty (omit it to allow any method)".to_owned()),
        (json!({"methods": ["Turnpike"]}), "methods[0] must be a method name: 1 to 32 lowercase ASCII letters".to_owned()),
        (json!({"currencies": []}), "currencies must not be empty (omit it to allow any currency)".to_owned()),
        (json!({"currencies": ["usd", "us d"]}), format!("currencies[1] {currency_rule}")),
        (json!({"velocity": {"maxPayments": 0}}), "velocity.maxPayments must be between 1 and 1000000".to_owned()),
        (json!({"velocity": {"maxPayments": 1, "windowSeconds": 0}}), "velocity.windowSeconds must be between 1 and 31536000".to_owned()),
    ];
    for (value, expected) in cases {
        assert_eq!(policy_error(value.clone()), expected, "{value}");
    }
}

#[test]
fn error_names_the_field_separately() {
    let policy: Policy = serde_json::from_value(json!({"velocity": {"maxPayments": 0}})).unwrap();
    assert_eq!(
        policy.validate().unwrap_err().field(),
        "velocity.maxPayments"
    );
}

#[test]
fn largest_amount_is_38_digits() {
    let amount = "9".repeat(AMOUNT_DIGITS_MAX);
    let policy: Policy =
        serde_json::from_value(json!({"maxPerPayment": [{"amount": amount, "currency": "usd"}, {"amount": "0", "currency": "eur"}]}))
            .unwrap();
    let compiled = policy.compile().unwrap();
    assert_eq!(
        compiled.limits.max_per_payment[0].amount_minor,
        10u128.pow(38) - 1
    );
    assert_eq!(compiled.limits.max_per_payment[1].amount_minor, 0);
}

#[test]
fn list_lengths_are_limited() {
    let budget = |i: usize| json!({"amount": "1", "currency": "usd", "period": "rolling", "windowSeconds": i + 1});
    let budgets: Vec<Value> = (0..BUDGETS_LEN_MAX).map(budget).collect();
    assert!(policy_error_or_ok(json!({ "budgets": budgets })).is_ok());
    let budgets: Vec<Value> = (0..=BUDGETS_LEN_MAX).map(budget).collect();
    assert_eq!(
        policy_error(json!({ "budgets": budgets })),
        "budgets must have at most 32 entries"
    );

    let names = |n: usize| (0..n).map(|i| format!("m{i}.example")).collect::<Vec<_>>();
    let at_limit = json!({"merchants": {"allow": names(600), "deny": names(400)}});
    assert!(policy_error_or_ok(at_limit).is_ok());
    let over = json!({"merchants": {"allow": names(600), "deny": names(401)}});
    assert_eq!(
        policy_error(over),
        "merchants must have at most 1000 entries in allow and deny together"
    );

    let caps: Vec<Value> = (0..=CAPS_LEN_MAX)
        .map(|i| json!({"amount": "1", "currency": format!("c{i}")}))
        .collect();
    assert_eq!(
        policy_error(json!({ "approvalAbove": caps })),
        "approvalAbove must have at most 32 entries"
    );
    let methods = vec!["turnpike"; METHODS_LEN_MAX + 1];
    assert_eq!(
        policy_error(json!({ "methods": methods })),
        "methods must have at most 32 entries"
    );
}

fn policy_error_or_ok(value: Value) -> Result<(), PolicyError> {
    serde_json::from_value::<Policy>(value).unwrap().validate()
}

#[test]
fn currency_rule_is_the_ledgers_in_lowercase() {
    let samples = [
        "usd",
        "USD",
        "Usd",
        "",
        "a",
        "usdc",
        "eur",
        "us d",
        "us\td",
        "usd!",
        "é",
        "0x20c0000000000000000000000000000000000001",
        &"a".repeat(64),
        &"a".repeat(65),
    ];
    for sample in samples {
        let ledger = turnpike_ledger::model::is_valid_currency(sample)
            && !sample.bytes().any(|b| b.is_ascii_uppercase());
        assert_eq!(is_currency_code(sample), ledger, "{sample:?}");
    }
    assert_eq!(CURRENCY_LEN_MAX, turnpike_ledger::model::CURRENCY_LEN_MAX);
}

#[test]
fn token_limits_round_trip_and_validate() {
    let value = json!({
        "maxPerPayment": [{"amount": "400", "currency": "usd"}],
        "budgets": [{"amount": "5000", "currency": "usd", "period": "day"}],
        "merchantsAllow": ["api.example.com"],
        "methods": ["turnpike"],
        "currencies": ["usd"],
        "expiresAtS": 1_760_000_000
    });
    let limits: TokenLimits = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(serde_json::to_value(&limits).unwrap(), value);
    assert_eq!(limits.compile().unwrap().expires_at_s(), 1_760_000_000);

    let minimal: TokenLimits = serde_json::from_value(json!({"expiresAtS": 5})).unwrap();
    assert_eq!(
        serde_json::to_value(&minimal).unwrap(),
        json!({"expiresAtS": 5})
    );
    assert!(serde_json::from_value::<TokenLimits>(json!({})).is_err());

    let empty_allow = TokenLimits {
        merchants_allow: Some(vec![]),
        ..minimal.clone()
    };
    assert_eq!(
        empty_allow.validate().unwrap_err().to_string(),
        "merchantsAllow must not be empty (omit it to allow any merchant)"
    );
    let bad_budget = TokenLimits {
        budgets: vec![Budget {
            amount: "1".into(),
            currency: "usd".into(),
            period: Period::Week,
            window_seconds: Some(5),
        }],
        ..minimal
    };
    assert_eq!(
        bad_budget.validate().unwrap_err().to_string(),
        "budgets[0].windowSeconds is only allowed when period is rolling"
    );
}

#[test]
fn budget_window_follows_its_period() {
    let budget = |period, window_seconds| Budget {
        amount: "1".into(),
        currency: "usd".into(),
        period,
        window_seconds,
    };
    let now_ms = 1_760_011_200_000;
    let berlin = chrono_tz::Europe::Berlin;
    let day = budget(Period::Day, None).window(berlin, now_ms).unwrap();
    assert_eq!(day, WindowRule::Day.window(berlin, now_ms));
    let rolling = budget(Period::Rolling, Some(60))
        .window(berlin, now_ms)
        .unwrap();
    assert_eq!(rolling.end_ms - rolling.start_ms, 60_000);
    let err = budget(Period::Rolling, None)
        .window(berlin, now_ms)
        .unwrap_err();
    assert_eq!(err.field(), "windowSeconds");
}
