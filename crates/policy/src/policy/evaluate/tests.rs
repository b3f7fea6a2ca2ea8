//! Tests of [`super::evaluate`] and [`super::usage_windows`].

use serde_json::{Value, json};

use super::*;
use crate::policy::{Policy, TokenLimits};

/// 2025-10-09T12:00:00Z, 14:00 in Berlin.
const NOW_MS: i64 = 1_760_011_200_000;

fn policy(value: Value) -> CompiledPolicy {
    let policy: Policy = serde_json::from_value(value).unwrap();
    policy.compile().unwrap()
}

fn token(value: Value) -> CompiledTokenLimits {
    let limits: TokenLimits = serde_json::from_value(value).unwrap();
    limits.compile().unwrap()
}

fn request() -> SpendRequest<'static> {
    SpendRequest {
        amount_minor: 250,
        currency: "usd",
        method: "turnpike",
        merchant_realm: "api.example.com",
        merchant_tenant: "ten_abc",
    }
}

fn spent(budget_spent_minor: Vec<u128>) -> Usage {
    Usage {
        budget_spent_minor,
        ..Usage::default()
    }
}

fn ms(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

/// The reason and retry time of a denial; panics on anything else.
fn denied(decision: &Decision) -> (Reason, Option<i64>) {
    match decision {
        Decision::Deny {
            reason,
            retry_at_ms,
            ..
        } => (*reason, *retry_at_ms),
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn detail(decision: &Decision) -> &str {
    match decision {
        Decision::Deny { detail, .. } | Decision::NeedsApproval { detail, .. } => detail,
        Decision::Allow => panic!("allowed"),
    }
}

#[test]
fn empty_policy_allows_everything() {
    let policy = policy(json!({}));
    let windows = usage_windows(&policy, None, NOW_MS);
    assert!(windows.budgets.is_empty() && windows.velocity.is_none());
    let odd = SpendRequest {
        amount_minor: u128::MAX,
        currency: "0x20c0000000000000000000000000000000000001",
        method: "anything",
        merchant_realm: "",
        merchant_tenant: "",
    };
    for request in [request(), odd] {
        let decision = evaluate(&policy, None, &request, &Usage::default(), NOW_MS);
        assert_eq!(decision, Decision::Allow);
    }
}

#[test]
fn unnormalised_currency_is_refused_even_by_an_open_policy() {
    // A budget on usd must not be dodged by a challenge priced in USD.
    let capped = policy(json!({"budgets": [{"amount": "1", "currency": "usd", "period": "day"}]}));
    for policy in [policy(json!({})), capped] {
        let budgets = policy.budget_count();
        for currency in ["USD", "Usd", "", "us d"] {
            let request = SpendRequest {
                currency,
                ..request()
            };
            let decision = evaluate(&policy, None, &request, &spent(vec![0; budgets]), NOW_MS);
            assert_eq!(
                denied(&decision).0,
                Reason::CurrencyNotAllowed,
                "{currency:?}"
            );
        }
    }
    let decision = evaluate(
        &policy(json!({})),
        None,
        &SpendRequest {
            currency: "USD",
            ..request()
        },
        &Usage::default(),
        NOW_MS,
    );
    assert_eq!(
        detail(&decision),
        "currency USD is not a lowercase currency code"
    );
}

#[test]
fn every_reason_code_is_produced() {
    let base = || json!({"expiresAtS": NOW_MS / 1000 + 60});
    let with = |extra: Value| {
        let mut value = base();
        value
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        value
    };
    let cases = [
        (
            json!({}),
            json!({"expiresAtS": NOW_MS / 1000}),
            Reason::TokenExpired,
        ),
        (
            json!({"methods": ["tempo"]}),
            base(),
            Reason::MethodNotAllowed,
        ),
        (
            json!({}),
            with(json!({"methods": ["stripe"]})),
            Reason::MethodNotAllowed,
        ),
        (
            json!({"currencies": ["eur"]}),
            base(),
            Reason::CurrencyNotAllowed,
        ),
        (
            json!({}),
            with(json!({"currencies": ["eur"]})),
            Reason::CurrencyNotAllowed,
        ),
        (
            json!({"merchants": {"deny": ["api.example.com"]}}),
            base(),
            Reason::MerchantNotAllowed,
        ),
        (
            json!({"merchants": {"deny": ["ten_abc"]}}),
            base(),
            Reason::MerchantNotAllowed,
        ),
        (
            json!({"merchants": {"allow": ["other.example"]}}),
            base(),
            Reason::MerchantNotAllowed,
        ),
        (
            json!({}),
            with(json!({"merchantsAllow": ["ten_other"]})),
            Reason::MerchantNotAllowed,
        ),
        (
            json!({"maxPerPayment": [{"amount": "249", "currency": "usd"}]}),
            base(),
            Reason::OverMaxPerPayment,
        ),
        (
            json!({}),
            with(json!({"maxPerPayment": [{"amount": "100", "currency": "usd"}]})),
            Reason::OverMaxPerPayment,
        ),
        (
            json!({"velocity": {"maxPayments": 2}}),
            base(),
            Reason::VelocityExceeded,
        ),
        (
            json!({"budgets": [{"amount": "300", "currency": "usd", "period": "day"}]}),
            base(),
            Reason::BudgetExhausted,
        ),
        (
            json!({}),
            with(json!({"budgets": [{"amount": "300", "currency": "usd", "period": "week"}]})),
            Reason::BudgetExhausted,
        ),
        (
            json!({"approvalAbove": [{"amount": "100", "currency": "usd"}]}),
            base(),
            Reason::ApprovalRequired,
        ),
    ];
    for (policy_json, token_json, expected) in cases {
        let policy = policy(policy_json.clone());
        let token = token(token_json.clone());
        let budgets = usage_windows(&policy, Some(&token), NOW_MS).budgets.len();
        let usage = Usage {
            budget_spent_minor: vec![100; budgets],
            velocity_payments: 2,
            velocity_oldest_at_ms: Some(NOW_MS - 30_000),
        };
        let decision = evaluate(&policy, Some(&token), &request(), &usage, NOW_MS);
        assert_eq!(
            decision.reason(),
            Some(expected),
            "{policy_json} {token_json}"
        );
        // The same request passes without the limit.
        let open = evaluate(
            &self::policy(json!({})),
            None,
            &request(),
            &Usage::default(),
            NOW_MS,
        );
        assert_eq!(open, Decision::Allow);
    }
    let needs = evaluate(
        &policy(json!({"approvalAbove": [{"amount": "100", "currency": "usd"}]})),
        None,
        &request(),
        &Usage::default(),
        NOW_MS,
    );
    assert!(matches!(
        needs,
        Decision::NeedsApproval {
            reason: Reason::ApprovalRequired,
            ..
        }
    ));
}

#[test]
fn checks_run_in_order_and_the_first_failure_wins() {
    let policy = policy(json!({
        "methods": ["turnpike"],
        "currencies": ["usd"],
        "merchants": {"deny": ["evil.example"]},
        "maxPerPayment": [{"amount": "500", "currency": "usd"}],
        "velocity": {"maxPayments": 2},
        "budgets": [{"amount": "1000", "currency": "usd", "period": "day"}],
        "approvalAbove": [{"amount": "100", "currency": "usd"}]
    }));
    let token = token(json!({"expiresAtS": NOW_MS / 1000}));
    let mut request = SpendRequest {
        amount_minor: 600,
        currency: "eur",
        method: "stripe",
        merchant_realm: "evil.example",
        merchant_tenant: "ten_evil",
    };
    let mut usage = Usage {
        budget_spent_minor: vec![950],
        velocity_payments: 2,
        velocity_oldest_at_ms: Some(NOW_MS - 1_000),
    };
    let mut now_ms = NOW_MS;
    let mut reasons = Vec::new();
    for step in 0..9 {
        let decision = evaluate(&policy, Some(&token), &request, &usage, now_ms);
        reasons.push(decision.reason());
        match step {
            0 => now_ms -= 1,
            1 => request.method = "turnpike",
            2 => request.currency = "usd",
            3 => request.merchant_realm = "good.example",
            4 => request.amount_minor = 300,
            5 => usage.velocity_payments = 1,
            6 => usage.budget_spent_minor[0] = 0,
            7 => request.amount_minor = 100,
            _ => {}
        }
    }
    assert_eq!(
        reasons,
        [
            Some(Reason::TokenExpired),
            Some(Reason::MethodNotAllowed),
            Some(Reason::CurrencyNotAllowed),
            Some(Reason::MerchantNotAllowed),
            Some(Reason::OverMaxPerPayment),
            Some(Reason::VelocityExceeded),
            Some(Reason::BudgetExhausted),
            Some(Reason::ApprovalRequired),
            None,
        ]
    );
}

#[test]
fn policy_limits_are_checked_before_token_limits() {
    let policy = policy(json!({
        "merchants": {"deny": ["ten_abc"]},
        "maxPerPayment": [{"amount": "200", "currency": "usd"}],
        "budgets": [{"amount": "100", "currency": "usd", "period": "month"}]
    }));
    let token = token(json!({
        "merchantsAllow": ["elsewhere.example"],
        "maxPerPayment": [{"amount": "100", "currency": "usd"}],
        "budgets": [{"amount": "100", "currency": "usd", "period": "day"}],
        "expiresAtS": NOW_MS / 1000 + 60
    }));
    let decision = evaluate(
        &policy,
        Some(&token),
        &request(),
        &spent(vec![0, 0]),
        NOW_MS,
    );
    assert_eq!(
        detail(&decision),
        "merchant ten_abc is on the policy's deny list"
    );

    let policy = self::policy(json!({
        "maxPerPayment": [{"amount": "200", "currency": "usd"}],
        "budgets": [{"amount": "100", "currency": "usd", "period": "month"}]
    }));
    let token = self::token(json!({
        "maxPerPayment": [{"amount": "100", "currency": "usd"}],
        "budgets": [{"amount": "100", "currency": "usd", "period": "day"}],
        "expiresAtS": NOW_MS / 1000 + 60
    }));
    let decision = evaluate(
        &policy,
        Some(&token),
        &request(),
        &spent(vec![0, 0]),
        NOW_MS,
    );
    assert_eq!(
        detail(&decision),
        "payment of usd 250 is above the policy's maxPerPayment of usd 200"
    );
    let small = SpendRequest {
        amount_minor: 150,
        ..request()
    };
    let decision = evaluate(&policy, Some(&token), &small, &spent(vec![0, 0]), NOW_MS);
    assert_eq!(
        detail(&decision),
        "payment of usd 150 is above the token's maxPerPayment of usd 100"
    );
    let smaller = SpendRequest {
        amount_minor: 100,
        ..request()
    };
    let decision = evaluate(&policy, Some(&token), &smaller, &spent(vec![1, 1]), NOW_MS);
    assert_eq!(
        detail(&decision),
        "the policy's usd month budget of 100 has 1 spent; 100 more would exceed it"
    );
    let decision = evaluate(&policy, Some(&token), &smaller, &spent(vec![0, 1]), NOW_MS);
    assert_eq!(
        detail(&decision),
        "the token's usd day budget of 100 has 1 spent; 100 more would exceed it"
    );
}

#[test]
fn budget_exactly_at_the_limit_allows_and_one_minor_unit_over_denies() {
    let policy =
        policy(json!({"budgets": [{"amount": "10000", "currency": "usd", "period": "day"}]}));
    let token = token(json!({
        "budgets": [{"amount": "5000", "currency": "usd", "period": "rolling", "windowSeconds": 600}],
        "expiresAtS": NOW_MS / 1000 + 60
    }));
    let evaluate_with =
        |sums: Vec<u128>| evaluate(&policy, Some(&token), &request(), &spent(sums), NOW_MS);
    assert_eq!(evaluate_with(vec![9_750, 0]), Decision::Allow);
    assert_eq!(
        denied(&evaluate_with(vec![9_751, 0])).0,
        Reason::BudgetExhausted
    );
    assert_eq!(evaluate_with(vec![0, 4_750]), Decision::Allow);
    assert_eq!(
        denied(&evaluate_with(vec![0, 4_751])).0,
        Reason::BudgetExhausted
    );
    // Already over (e.g. the policy was lowered): still denied, zero amounts too.
    let zero = SpendRequest {
        amount_minor: 0,
        ..request()
    };
    let decision = evaluate(
        &policy,
        Some(&token),
        &zero,
        &spent(vec![10_001, 0]),
        NOW_MS,
    );
    assert_eq!(denied(&decision).0, Reason::BudgetExhausted);
    let decision = evaluate(
        &policy,
        Some(&token),
        &zero,
        &spent(vec![10_000, 0]),
        NOW_MS,
    );
    assert_eq!(decision, Decision::Allow);
}

#[test]
fn budgets_only_count_their_own_currency() {
    let policy = policy(json!({"budgets": [
        {"amount": "1000", "currency": "usd", "period": "day"},
        {"amount": "1000", "currency": "eur", "period": "day"}
    ]}));
    let eur = SpendRequest {
        currency: "eur",
        ..request()
    };
    // The usd budget is long gone; an eur payment only looks at the eur sum.
    let decision = evaluate(&policy, None, &eur, &spent(vec![u128::MAX, 750]), NOW_MS);
    assert_eq!(decision, Decision::Allow);
    let decision = evaluate(&policy, None, &eur, &spent(vec![0, 751]), NOW_MS);
    assert_eq!(denied(&decision).0, Reason::BudgetExhausted);
    let decision = evaluate(
        &policy,
        None,
        &request(),
        &spent(vec![750, u128::MAX]),
        NOW_MS,
    );
    assert_eq!(decision, Decision::Allow);
    // Caps and approval thresholds are per currency too.
    let capped = self::policy(json!({
        "maxPerPayment": [{"amount": "10", "currency": "eur"}],
        "approvalAbove": [{"amount": "10", "currency": "eur"}]
    }));
    let decision = evaluate(&capped, None, &request(), &Usage::default(), NOW_MS);
    assert_eq!(decision, Decision::Allow);
}

#[test]
fn overflowing_usage_is_denied_without_panicking() {
    let policy =
        policy(json!({"budgets": [{"amount": "1000", "currency": "usd", "period": "day"}]}));
    let huge = SpendRequest {
        amount_minor: u128::MAX,
        ..request()
    };
    let decision = evaluate(&policy, None, &huge, &spent(vec![1]), NOW_MS);
    assert_eq!(denied(&decision).0, Reason::BudgetExhausted);
    let decision = evaluate(&policy, None, &request(), &spent(vec![u128::MAX]), NOW_MS);
    assert_eq!(denied(&decision).0, Reason::BudgetExhausted);
}

#[test]
fn usage_that_does_not_match_the_budgets_is_refused() {
    let policy =
        policy(json!({"budgets": [{"amount": "1000", "currency": "eur", "period": "day"}]}));
    let token = token(json!({
        "budgets": [{"amount": "1000", "currency": "eur", "period": "week"}],
        "expiresAtS": NOW_MS / 1000 + 60
    }));
    for sums in [vec![], vec![0], vec![0, 0, 0]] {
        let decision = evaluate(&policy, Some(&token), &request(), &spent(sums), NOW_MS);
        assert_eq!(denied(&decision).0, Reason::BudgetExhausted);
        assert!(
            detail(&decision).starts_with("refused: usage has"),
            "{decision:?}"
        );
    }
    let decision = evaluate(
        &policy,
        Some(&token),
        &request(),
        &spent(vec![0, 0]),
        NOW_MS,
    );
    assert_eq!(decision, Decision::Allow);
}

#[test]
fn token_expiry_has_no_leeway() {
    let policy = policy(json!({}));
    let expires_at_s = NOW_MS / 1000;
    let token = token(json!({ "expiresAtS": expires_at_s }));
    let at = |now_ms| evaluate(&policy, Some(&token), &request(), &Usage::default(), now_ms);
    assert_eq!(at(expires_at_s * 1000 - 1), Decision::Allow);
    let decision = at(expires_at_s * 1000);
    assert_eq!(denied(&decision), (Reason::TokenExpired, None));
    assert_eq!(
        detail(&decision),
        "the token expired at 2025-10-09T12:00:00Z"
    );
    let far = self::token(json!({ "expiresAtS": i64::MAX }));
    let decision = evaluate(&policy, Some(&far), &request(), &Usage::default(), NOW_MS);
    assert_eq!(decision, Decision::Allow);
}

#[test]
fn calendar_budget_denial_retries_when_the_latest_exhausted_window_ends() {
    let policy = policy(json!({
        "timeZone": "Europe/Berlin",
        "budgets": [
            {"amount": "1000", "currency": "usd", "period": "day"},
            {"amount": "5000", "currency": "usd", "period": "month"},
            {"amount": "500", "currency": "usd", "period": "rolling", "windowSeconds": 3600}
        ]
    }));
    let retry =
        |sums: Vec<u128>| denied(&evaluate(&policy, None, &request(), &spent(sums), NOW_MS)).1;
    let day_end = ms("2025-10-10T00:00:00+02:00");
    let month_end = ms("2025-11-01T00:00:00+01:00");
    assert_eq!(retry(vec![900, 0, 0]), Some(day_end));
    assert_eq!(retry(vec![900, 4_900, 0]), Some(month_end));
    assert_eq!(retry(vec![0, 0, 300]), None);
    assert_eq!(retry(vec![900, 0, 300]), Some(day_end));
}

#[test]
fn velocity_denial_retries_when_the_oldest_payment_leaves_the_window() {
    let policy = policy(json!({"velocity": {"maxPayments": 3, "windowSeconds": 60}}));
    let usage = |velocity_payments, velocity_oldest_at_ms| Usage {
        budget_spent_minor: vec![],
        velocity_payments,
        velocity_oldest_at_ms,
    };
    let run = |usage: &Usage| evaluate(&policy, None, &request(), usage, NOW_MS);
    assert_eq!(run(&usage(2, Some(NOW_MS - 10_000))), Decision::Allow);
    let decision = run(&usage(3, Some(NOW_MS - 10_000)));
    assert_eq!(
        denied(&decision),
        (Reason::VelocityExceeded, Some(NOW_MS + 50_000))
    );
    assert_eq!(
        detail(&decision),
        "3 payments in the last 60 s reach the policy's velocity limit of 3"
    );
    assert_eq!(
        denied(&run(&usage(4, None))),
        (Reason::VelocityExceeded, None)
    );
    // A stale oldest time never yields a retry time in the past.
    assert_eq!(denied(&run(&usage(3, Some(0)))).1, Some(NOW_MS + 1));
}

#[test]
fn approval_is_needed_strictly_above_the_threshold() {
    let policy = policy(json!({"approvalAbove": [{"amount": "250", "currency": "usd"}]}));
    let at = |amount_minor| {
        let request = SpendRequest {
            amount_minor,
            ..request()
        };
        evaluate(&policy, None, &request, &Usage::default(), NOW_MS)
    };
    assert_eq!(at(250), Decision::Allow);
    assert_eq!(
        at(251),
        Decision::NeedsApproval {
            reason: Reason::ApprovalRequired,
            detail: "payment of usd 251 is above the policy's approvalAbove of usd 250".into(),
        }
    );
}

#[test]
fn merchant_allow_lists_match_realm_or_tenant_exactly() {
    let by_realm = policy(json!({"merchants": {"allow": ["api.example.com"]}}));
    let by_tenant = policy(json!({"merchants": {"allow": ["ten_abc"]}}));
    for policy in [&by_realm, &by_tenant] {
        let decision = evaluate(policy, None, &request(), &Usage::default(), NOW_MS);
        assert_eq!(decision, Decision::Allow);
    }
    let shouting = SpendRequest {
        merchant_realm: "API.example.com",
        ..request()
    };
    let decision = evaluate(&by_realm, None, &shouting, &Usage::default(), NOW_MS);
    assert_eq!(
        detail(&decision),
        "merchant API.example.com (tenant ten_abc) is not on the policy's allow list"
    );
    // Deny wins over allow.
    let both = policy(json!({"merchants": {"allow": ["api.example.com"], "deny": ["ten_abc"]}}));
    let decision = evaluate(&both, None, &request(), &Usage::default(), NOW_MS);
    assert_eq!(denied(&decision).0, Reason::MerchantNotAllowed);
}

#[test]
fn details_quote_request_strings_printable_and_clipped() {
    let policy = policy(json!({"merchants": {"allow": ["ten_abc"]}}));
    let realm = format!("evil\n\u{1b}[31m{}", "x".repeat(500));
    let request = SpendRequest {
        merchant_realm: &realm,
        merchant_tenant: "ten_other",
        ..request()
    };
    let decision = evaluate(&policy, None, &request, &Usage::default(), NOW_MS);
    let detail = detail(&decision);
    assert!(detail.len() < 160, "{detail}");
    assert!(
        detail.chars().all(|c| c.is_ascii_graphic() || c == ' '),
        "{detail}"
    );
    assert!(detail.starts_with("merchant evil??[31mxxx"), "{detail}");
}

#[test]
fn usage_windows_list_policy_budgets_then_token_budgets() {
    let policy = policy(json!({
        "timeZone": "Asia/Kolkata",
        "budgets": [
            {"amount": "1", "currency": "usd", "period": "day"},
            {"amount": "1", "currency": "eur", "period": "rolling", "windowSeconds": 60}
        ],
        "velocity": {"maxPayments": 5, "windowSeconds": 30}
    }));
    let token = token(json!({
        "budgets": [{"amount": "1", "currency": "usd", "period": "month"}],
        "expiresAtS": NOW_MS / 1000 + 60
    }));
    let windows = usage_windows(&policy, Some(&token), NOW_MS);
    let summary: Vec<(LimitSource, &str, WindowRule)> = windows
        .budgets
        .iter()
        .map(|w| (w.source, w.currency, w.rule))
        .collect();
    assert_eq!(
        summary,
        [
            (LimitSource::Policy, "usd", WindowRule::Day),
            (
                LimitSource::Policy,
                "eur",
                WindowRule::Rolling { window_seconds: 60 }
            ),
            (LimitSource::Token, "usd", WindowRule::Month),
        ]
    );
    // Calendar windows in the policy's zone, token budgets included.
    assert_eq!(
        windows.budgets[0].window.start_ms,
        ms("2025-10-09T00:00:00+05:30")
    );
    assert_eq!(
        windows.budgets[2].window.start_ms,
        ms("2025-10-01T00:00:00+05:30")
    );
    assert_eq!(
        windows.budgets[1].window,
        Window {
            start_ms: NOW_MS - 59_999,
            end_ms: NOW_MS + 1
        }
    );
    assert_eq!(
        windows.velocity,
        Some(Window {
            start_ms: NOW_MS - 29_999,
            end_ms: NOW_MS + 1
        })
    );
    assert_eq!(
        usage_windows(&policy, None, NOW_MS).budgets.len(),
        policy.budget_count()
    );
}

#[test]
fn decisions_serialize_for_the_audit_log() {
    let deny = Decision::Deny {
        reason: Reason::BudgetExhausted,
        retry_at_ms: Some(5),
        detail: "d".into(),
    };
    let value = serde_json::to_value(&deny).unwrap();
    assert_eq!(
        value,
        json!({"decision": "deny", "reason": "budget_exhausted", "retryAtMs": 5, "detail": "d"})
    );
    assert_eq!(serde_json::from_value::<Decision>(value).unwrap(), deny);
    assert_eq!(
        serde_json::to_value(Decision::Allow).unwrap(),
        json!({"decision": "allow"})
    );
    let held = Decision::NeedsApproval {
        reason: Reason::ApprovalRequired,
        detail: "d".into(),
    };
    assert_eq!(
        serde_json::to_value(&held).unwrap(),
        json!({"decision": "needs_approval", "reason": "approval_required", "detail": "d"})
    );
    for reason in Reason::ALL {
        assert_eq!(
            serde_json::to_value(reason).unwrap(),
            json!(reason.as_str())
        );
        assert_eq!(reason.to_string(), reason.as_str());
    }
}
