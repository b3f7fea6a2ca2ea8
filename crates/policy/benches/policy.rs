//! Spend-policy evaluation and token signatures on the payment path: a realistic policy (4 budgets, a 50-entry
//! merchant allow list, a deny list, velocity, approval threshold) plus token limits.
//!
//! Every benchmark processes one element per iteration (`Throughput::Elements(1)`), so
//! criterion's `thrpt` line reads directly as operations per second on one core.
//!
//! `cargo bench -p turnpike-policy --bench policy`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use turnpike_policy::policy::{
    CompiledPolicy, CompiledTokenLimits, Policy, SpendRequest, TokenLimits, Usage, evaluate,
    usage_windows,
};

/// 2025-10-09T12:00:00Z.
const NOW_MS: i64 = 1_760_011_200_000;

fn merchants(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            if i % 2 == 0 {
                format!("api{i}.merchant.example")
            } else {
                format!("ten_{i:020}")
            }
        })
        .collect()
}

fn policy() -> CompiledPolicy {
    let policy: Policy = serde_json::from_value(json!({
        "timeZone": "Europe/Berlin",
        "maxPerPayment": [{"amount": "500", "currency": "usd"}, {"amount": "450", "currency": "eur"}],
        "budgets": [
            {"amount": "10000", "currency": "usd", "period": "day"},
            {"amount": "50000", "currency": "usd", "period": "week"},
            {"amount": "150000", "currency": "usd", "period": "month"},
            {"amount": "2000", "currency": "usd", "period": "rolling", "windowSeconds": 3600}
        ],
        "merchants": {"allow": merchants(50), "deny": ["evil.example", "ten_00000000000000000bad"]},
        "methods": ["turnpike", "tempo"],
        "currencies": ["usd", "eur"],
        "velocity": {"maxPayments": 10, "windowSeconds": 60},
        "approvalAbove": [{"amount": "1000", "currency": "usd"}]
    }))
    .expect("the bench policy parses");
    policy.compile().expect("the bench policy is valid")
}

fn token_limits() -> TokenLimits {
    serde_json::from_value(json!({
        "maxPerPayment": [{"amount": "400", "currency": "usd"}],
        "budgets": [
            {"amount": "5000", "currency": "usd", "period": "day"},
            {"amount": "1000", "currency": "usd", "period": "rolling", "windowSeconds": 600}
        ],
        "merchantsAllow": merchants(10),
        "methods": ["turnpike"],
        "currencies": ["usd"],
        "expiresAtS": NOW_MS / 1000 + 86_400
    }))
    .expect("the bench token limits parse")
}

fn token() -> CompiledTokenLimits {
    token_limits()
        .compile()
        .expect("the bench token limits are valid")
}

/// A payment every check lets through: the full path, approval threshold included.
fn request() -> SpendRequest<'static> {
    SpendRequest {
        amount_minor: 250,
        currency: "usd",
        method: "turnpike",
        merchant_realm: "api8.merchant.example",
        merchant_tenant: "ten_00000000000000000008",
    }
}

fn usage(budget_sums: usize) -> Usage {
    Usage {
        budget_spent_minor: vec![700; budget_sums],
        velocity_payments: 3,
        velocity_oldest_at_ms: Some(NOW_MS - 20_000),
    }
}

fn bench_evaluate(c: &mut Criterion) {
    let policy = policy();
    let token = token();
    let request = request();
    let allow_usage = usage(6);
    let mut exhausted_usage = usage(6);
    exhausted_usage.budget_spent_minor[0] = 9_900;

    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    group.bench_function("evaluate_allow", |b| {
        b.iter(|| {
            evaluate(
                black_box(&policy),
                black_box(Some(&token)),
                black_box(&request),
                black_box(&allow_usage),
                black_box(NOW_MS),
            )
        })
    });
    group.bench_function("evaluate_deny_budget", |b| {
        b.iter(|| {
            evaluate(
                black_box(&policy),
                black_box(Some(&token)),
                black_box(&request),
                black_box(&exhausted_usage),
                black_box(NOW_MS),
            )
        })
    });
    group.bench_function("usage_windows", |b| {
        b.iter(|| {
            usage_windows(
                black_box(&policy),
                black_box(Some(&token)),
                black_box(NOW_MS),
            )
        })
    });
    let limits = token_limits();
    group.bench_function("compile_token_limits", |b| {
        b.iter(|| black_box(&limits).compile())
    });
    group.finish();
}

/// The payment path's signatures: a grant is signed on every `/v1/agent/pay` and verified on
/// every `/v1/verify`; an agent token is verified once per token and minute (server cache).
fn bench_tokens(c: &mut Criterion) {
    let ring = turnpike_policy::KeyRing::new(turnpike_policy::SigningKey::generate(), Vec::new());
    let grant = turnpike_policy::GrantClaims {
        iss: "https://turnpike.example".into(),
        jti: "0123456789abcdef0123456789abcdef".into(),
        chal: "x3Zk9bQm2Lr7Yt5Wc8Nv4Hp6Jd1Sg0Fa".into(),
        amt: "250".into(),
        cur: "usd".into(),
        rcp: "ten_merchant".into(),
        pyr: "ten_payer".into(),
        agt: "agt_01".into(),
        iat: NOW_MS / 1000,
        exp: NOW_MS / 1000 + 300,
    };
    let agent = turnpike_policy::AgentTokenClaims {
        iss: "https://turnpike.example".into(),
        sub: "agt_01".into(),
        tid: "ten_payer".into(),
        jti: "tok_01".into(),
        iat: NOW_MS / 1000,
        exp: NOW_MS / 1000 + 3_600,
        pv: 1,
        par: None,
        lim: None,
    };
    let signed_grant = ring.sign_grant(&grant);
    let signed_agent = ring.sign_agent_token(&agent);
    let mut group = c.benchmark_group("tokens");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign_grant", |b| {
        b.iter(|| ring.sign_grant(black_box(&grant)))
    });
    group.bench_function("verify_grant", |b| {
        b.iter(|| ring.verify_grant(black_box(&signed_grant), NOW_MS / 1000))
    });
    group.bench_function("sign_agent_token", |b| {
        b.iter(|| ring.sign_agent_token(black_box(&agent)))
    });
    group.bench_function("verify_agent_token", |b| {
        b.iter(|| ring.verify_agent_token(black_box(&signed_agent), NOW_MS / 1000))
    });
    group.finish();
}

criterion_group!(benches, bench_evaluate, bench_tokens);
criterion_main!(benches);
