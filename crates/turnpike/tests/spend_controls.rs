//! Agent spend controls, black-box: the real `turnpike serve` over real HTTP, on SQLite and on
//! PostgreSQL. Child tokens that may only narrow their parent, revocation and expiry, calendar
//! budgets in the owner's time zone, velocity, merchant/method/currency lists and caps,
//! approvals, the dry run, the audit log and refused policies (docs/api.md, "Agents" to
//! "Audit"). Time-dependent tests run the server on a test clock set to fixed instants in 2031.
//! Every test ends with `turnpike ledger check` on the same database.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Options, Payer, Reply, Server, TP_PROBLEMS, Tenant, decision_header};
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    a_child_token_that_widens_its_parent_is_refused_and_a_narrower_one_is_issued,
    a_childs_spend_counts_against_its_parents_budget_and_the_policys_budget,
    revoking_a_token_its_parent_or_all_tokens_refuses_the_next_payment,
    a_token_is_refused_from_its_expiry_on_the_test_clock,
    a_day_budget_resets_at_midnight_in_the_policys_time_zone_not_utc,
    a_day_budget_follows_new_york_across_the_dst_change,
    a_reservation_that_expires_unused_gives_its_budget_back_and_a_settled_one_does_not,
    velocity_denies_until_the_oldest_payment_leaves_the_window,
    merchant_method_currency_lists_and_caps_deny_with_their_reason_and_reserve_nothing,
    a_payment_above_the_approval_threshold_pays_only_once_approved,
    a_dry_run_reports_what_a_stricter_and_a_looser_policy_would_flip,
    audit_filters_by_agent_outcome_and_reason,
    a_new_policy_version_applies_to_the_next_payment,
    an_invalid_policy_is_a_400_naming_the_field_and_changes_nothing,
    a_policy_body_that_is_not_an_object_is_refused_and_changes_nothing,
);

/// What the scene's payer is credited with (usd minor units): only policies stop payments.
const CREDIT: u128 = 1_000_000;

/// 2031-03-10T18:20:00Z: 23:50 in Asia/Kolkata (+05:30).
const KOLKATA_23_50_MS: i64 = 1_930_933_200_000;
/// 2031-03-10T18:30:00Z: midnight starting 2031-03-11 in Asia/Kolkata.
const KOLKATA_MIDNIGHT_MS: i64 = 1_930_933_800_000;
/// 2031-03-11T00:00:00Z: midnight in UTC after [`KOLKATA_23_50_MS`].
const UTC_MIDNIGHT_MS: i64 = 1_930_953_600_000;
/// 2031-03-09T04:50:00Z: 23:50 EST on Saturday 2031-03-08 in America/New_York.
const NEW_YORK_23_50_MS: i64 = 1_930_798_200_000;
/// 2031-03-09T05:00:00Z: midnight (EST) starting Sunday 2031-03-09, the day DST starts.
const NEW_YORK_MIDNIGHT_EST_MS: i64 = 1_930_798_800_000;
/// 2031-03-10T04:00:00Z: midnight (EDT) starting 2031-03-10, 23 hours later.
const NEW_YORK_MIDNIGHT_EDT_MS: i64 = 1_930_881_600_000;
/// 2031-06-01T12:00:00Z.
const JUNE_NOON_MS: i64 = 1_938_081_600_000;
/// 2031-07-01T09:00:00Z.
const JULY_MORNING_MS: i64 = 1_940_662_800_000;
/// 2031-08-01T12:00:00Z.
const AUGUST_NOON_MS: i64 = 1_943_352_000_000;

/// Longest an approval stays open (docs/api.md, "Approvals").
const APPROVAL_TTL_MS: i64 = 15 * 60 * 1000;
/// A price's challenge lifetime when it sets none (docs/api.md, "Price").
const CHALLENGE_TTL_MS: i64 = 300 * 1000;

fn tp(code: &str) -> String {
    format!("{TP_PROBLEMS}{code}")
}

fn usd(amount: u128) -> Value {
    json!({"amount": amount.to_string(), "currency": "usd"})
}

/// A server (on a test clock set to `clock_ms` when given) with a merchant `shop` and a payer
/// `buyer` credited with [`CREDIT`], its agent and an unlimited token.
struct Scene {
    server: Server,
    shop: Tenant,
    payer: Payer,
}

async fn scene(db: &TestDb, clock_ms: Option<i64>) -> Scene {
    let options = Options {
        test_clock: clock_ms.is_some(),
        ..Options::default()
    };
    let server = Server::start_with(db, options).await;
    if let Some(at) = clock_ms {
        // Before anything is created: tokens and challenges live on this clock.
        server.set_clock(at).await;
    }
    let shop = server.create_tenant("shop").await;
    let payer = server.payer("buyer", CREDIT).await;
    Scene {
        server,
        shop,
        payer,
    }
}

/// An agent token as `POST .../tokens` answered it.
struct Token {
    id: String,
    token: String,
    body: Value,
}

impl Token {
    fn from_reply(reply: Reply) -> Self {
        let body = reply.expect_status(201).json();
        Self {
            id: body["id"].as_str().expect("token id").to_owned(),
            token: body["token"].as_str().expect("token").to_owned(),
            body,
        }
    }

    fn expires_at_ms(&self) -> i64 {
        instant_ms(self.body["expiresAt"].as_str().expect("expiresAt"))
    }
}

/// A root token of `agent_id` minted with the tenant key (`{"limits"?, "ttlS"?}`).
async fn root_token(server: &Server, tenant: &Tenant, agent_id: &str, body: Value) -> Token {
    Token::from_reply(
        server
            .post(&format!("/v1/agents/{agent_id}/tokens"), &tenant.key, body)
            .await,
    )
}

/// `POST /v1/agent/tokens` with the parent's token.
async fn mint_child(server: &Server, parent: &str, body: Value) -> Reply {
    server.post("/v1/agent/tokens", parent, body).await
}

/// A child token that must be issued.
async fn child_token(server: &Server, parent: &Token, body: Value) -> Token {
    let token = Token::from_reply(mint_child(server, &parent.token, body).await);
    assert_eq!(token.body["parentId"], parent.id.as_str(), "{}", token.body);
    token
}

async fn tokens_of(server: &Server, tenant: &Tenant, agent_id: &str) -> Vec<Value> {
    server
        .get(&format!("/v1/agents/{agent_id}/tokens"), &tenant.key)
        .await
        .expect_status(200)
        .json()["data"]
        .as_array()
        .expect("data")
        .clone()
}

async fn revoke(server: &Server, tenant: &Tenant, agent_id: &str, token_id: &str) -> Value {
    server
        .call(
            Method::DELETE,
            &format!("/v1/agents/{agent_id}/tokens/{token_id}"),
            Some(&tenant.key),
            None,
        )
        .await
        .expect_status(200)
        .json()
}

async fn put_policy(server: &Server, tenant: &Tenant, agent_id: &str, policy: Value) -> Reply {
    server
        .call(
            Method::PUT,
            &format!("/v1/agents/{agent_id}/policy"),
            Some(&tenant.key),
            Some(policy),
        )
        .await
}

/// Put a valid policy: its version.
async fn set_policy(server: &Server, tenant: &Tenant, agent_id: &str, policy: Value) -> i64 {
    let body = put_policy(server, tenant, agent_id, policy.clone())
        .await
        .expect_status(200)
        .json();
    assert_eq!(body["agentId"], agent_id, "{body}");
    assert_eq!(body["policy"], policy, "{body}");
    body["version"].as_i64().expect("version")
}

async fn current_policy(server: &Server, tenant: &Tenant, agent_id: &str) -> Value {
    server
        .get(&format!("/v1/agents/{agent_id}/policy"), &tenant.key)
        .await
        .expect_status(200)
        .json()
}

/// One 402's challenges for `GET path` at `merchant`.
struct Offer {
    path: String,
    www: Vec<String>,
    challenge_id: String,
}

async fn offer(server: &Server, merchant: &Tenant, path: &str) -> Offer {
    let decision = server.challenge(merchant, "GET", path).await;
    Offer {
        path: path.to_owned(),
        www: decision_header(&decision, "www-authenticate"),
        challenge_id: decision["challengeIds"][0]
            .as_str()
            .expect("challengeIds")
            .to_owned(),
    }
}

async fn pay_offer(
    server: &Server,
    token: &str,
    offer: &Offer,
    approval_id: Option<&str>,
) -> Reply {
    let mut body = json!({"challenges": offer.www});
    if let Some(id) = approval_id {
        body["approvalId"] = json!(id);
    }
    server.post("/v1/agent/pay", token, body).await
}

/// A fresh challenge for `GET path` at `merchant`, paid with `token`.
async fn pay_at(server: &Server, token: &str, merchant: &Tenant, path: &str) -> Reply {
    let offer = offer(server, merchant, path).await;
    pay_offer(server, token, &offer, None).await
}

/// The merchant verifies the credential of a successful pay: the payment is settled.
async fn settle(server: &Server, merchant: &Tenant, offer: &Offer, paid: Reply) -> Value {
    let paid = paid.expect_status(200).json();
    assert_eq!(paid["challengeId"], offer.challenge_id.as_str(), "{paid}");
    let reply = server
        .verify(
            merchant,
            paid["authorization"].clone(),
            "GET",
            &offer.path,
            None,
        )
        .await
        .expect_status(200);
    let decision = reply.json();
    assert_eq!(decision["decision"], "paid", "{decision}");
    let payment_id = decision["paymentId"].as_str().expect("paymentId");
    server.payment(merchant, payment_id).await
}

/// Pay a fresh challenge and settle it.
async fn pay_and_settle(server: &Server, token: &str, merchant: &Tenant, path: &str) -> Value {
    let offer = offer(server, merchant, path).await;
    let paid = pay_offer(server, token, &offer, None).await;
    settle(server, merchant, &offer, paid).await
}

/// A `403 policy-denied` with this reason: the problem.
#[track_caller]
fn expect_denied(reply: &Reply, reason: &str) -> Value {
    let problem = reply.expect_problem(403, &tp("policy-denied"));
    assert_eq!(problem["reason"], reason, "{reply:?}");
    problem
}

/// A denial whose failing check has no known end: no `retryAt`, no `Retry-After`.
#[track_caller]
fn expect_denied_for_good(reply: &Reply, reason: &str) {
    let problem = expect_denied(reply, reason);
    assert!(
        problem.get("retryAt").is_none_or(Value::is_null),
        "{reply:?}"
    );
    assert_eq!(reply.header("retry-after"), None, "{reply:?}");
}

/// A denial that passes again at `retry_at_ms`, `retry_after_s` seconds from now.
#[track_caller]
fn expect_denied_until(reply: &Reply, reason: &str, retry_at_ms: i64, retry_after_s: u64) {
    let problem = expect_denied(reply, reason);
    let at = problem["retryAt"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(instant_ms(at), retry_at_ms, "retryAt {at}: {reply:?}");
    assert_eq!(
        reply.header("retry-after"),
        Some(retry_after_s.to_string()),
        "{reply:?}"
    );
}

#[track_caller]
fn expect_unauthorized(reply: &Reply) {
    reply.expect_problem(401, &tp("unauthorized"));
}

/// The payer's usd `debitsPending`: what is reserved and not yet settled or released.
async fn reserved(server: &Server, payer: &Tenant) -> u128 {
    server.balance(payer, "payer_balance").await.debits_pending
}

/// `GET /v1/audit?{query}` (tenant key): the entries.
async fn audit(server: &Server, tenant: &Tenant, query: &str) -> Vec<Value> {
    server
        .get(&format!("/v1/audit?{query}"), &tenant.key)
        .await
        .expect_status(200)
        .json()["data"]
        .as_array()
        .expect("data")
        .clone()
}

/// `GET /v1/approvals?state=...`: the approvals.
async fn approvals(server: &Server, tenant: &Tenant, state: &str) -> Vec<Value> {
    server
        .get(&format!("/v1/approvals?state={state}"), &tenant.key)
        .await
        .expect_status(200)
        .json()["data"]
        .as_array()
        .expect("data")
        .clone()
}

async fn decide_approval(server: &Server, tenant: &Tenant, id: &str, verb: &str) -> Reply {
    server
        .post(
            &format!("/v1/approvals/{id}/{verb}"),
            &tenant.key,
            json!({}),
        )
        .await
}

/// Unix ms of an RFC 3339 time (`2031-03-10T18:30:00.000Z`, `...+05:30`).
fn instant_ms(text: &str) -> i64 {
    let (date, time) = text
        .split_once(['T', 't'])
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {text}"));
    let ymd: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (clock, offset_s) = match time.strip_suffix(['Z', 'z']) {
        Some(clock) => (clock, 0),
        None => {
            let at = time
                .rfind(['+', '-'])
                .unwrap_or_else(|| panic!("not an RFC 3339 time: {text}"));
            let (clock, offset) = time.split_at(at);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let hm: Vec<i64> = offset[1..].split(':').map(|p| p.parse().unwrap()).collect();
            (clock, sign * (hm[0] * 3600 + hm[1] * 60))
        }
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let hms: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().unwrap();
    let seconds =
        days_from_civil(ymd[0], ymd[1], ymd[2]) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
            - offset_s;
    seconds * 1000 + millis
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[test]
fn instant_ms_reads_rfc3339() {
    assert_eq!(instant_ms("2031-03-10T18:30:00.000Z"), KOLKATA_MIDNIGHT_MS);
    assert_eq!(instant_ms("2031-03-11T00:00:00+05:30"), KOLKATA_MIDNIGHT_MS);
    assert_eq!(
        instant_ms("2031-03-10T00:00:00-04:00"),
        NEW_YORK_MIDNIGHT_EDT_MS
    );
    assert_eq!(instant_ms("2031-03-11T00:00:00Z"), UTC_MIDNIGHT_MS);
    assert_eq!(instant_ms("1970-01-01T00:00:01.5Z"), 1_500);
}

// ---- child tokens ----------------------------------------------------------------------------

async fn a_child_token_that_widens_its_parent_is_refused_and_a_narrower_one_is_issued(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, None).await;
    let other = server.create_tenant("other").await;
    server.price(&shop, "GET", "/cheap", 50, None).await;
    server.price(&shop, "GET", "/dear", 150, None).await;
    server.price(&other, "GET", "/x", 50, None).await;
    let parent_limits = json!({
        "maxPerPayment": [usd(500)],
        "budgets": [{"amount": "1000", "currency": "usd", "period": "day"}],
        "merchantsAllow": [shop.realm],
        "methods": ["turnpike"],
        "currencies": ["usd"],
    });
    let parent = root_token(
        &server,
        &payer.tenant,
        &payer.agent_id,
        json!({"limits": parent_limits, "ttlS": 3600}),
    )
    .await;
    assert_eq!(parent.body["limits"], parent_limits, "{}", parent.body);

    // The parent's limits with one member replaced (or removed, for null).
    let with = |member: &str, value: Value| {
        let mut limits = parent_limits.clone();
        let object = limits.as_object_mut().unwrap();
        if value.is_null() {
            object.remove(member);
        } else {
            object.insert(member.to_owned(), value);
        }
        json!({"limits": limits, "ttlS": 60})
    };
    let widenings = [
        ("maxPerPayment", with("maxPerPayment", json!([usd(501)]))),
        ("maxPerPayment", with("maxPerPayment", Value::Null)),
        (
            "budgets",
            with(
                "budgets",
                json!([{"amount": "1001", "currency": "usd", "period": "day"}]),
            ),
        ),
        ("budgets", with("budgets", Value::Null)),
        (
            "merchantsAllow",
            with("merchantsAllow", json!([shop.realm, other.realm])),
        ),
        ("merchantsAllow", with("merchantsAllow", json!([other.id]))),
        ("merchantsAllow", with("merchantsAllow", Value::Null)),
        ("methods", with("methods", json!(["turnpike", "tempo"]))),
        ("currencies", with("currencies", json!(["usd", "eur"]))),
        // Later expiry, with the parent's limits inherited or given.
        ("expir", json!({"ttlS": 7200})),
        ("expir", json!({"limits": parent_limits, "ttlS": 7200})),
    ];
    for (field, body) in widenings {
        let reply = mint_child(&server, &parent.token, body.clone()).await;
        let problem = reply.expect_problem(422, &tp("token-widens-parent"));
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(field),
            "the refusal of {body} does not name `{field}`: {detail}"
        );
    }
    // Nothing was issued: the payer's first token and the parent only.
    assert_eq!(
        tokens_of(&server, &payer.tenant, &payer.agent_id)
            .await
            .len(),
        2
    );

    // A narrower child (lower cap, the parent's budget plus a rolling one, earlier expiry).
    let narrow = child_token(
        &server,
        &parent,
        json!({"limits": {
            "maxPerPayment": [usd(100)],
            "budgets": [
                {"amount": "1000", "currency": "usd", "period": "day"},
                {"amount": "300", "currency": "usd", "period": "rolling", "windowSeconds": 3600},
            ],
            "merchantsAllow": [shop.realm],
            "methods": ["turnpike"],
            "currencies": ["usd"],
        }, "ttlS": 600}),
    )
    .await;
    assert!(narrow.expires_at_ms() < parent.expires_at_ms());
    pay_at(&server, &narrow.token, &shop, "/cheap")
        .await
        .expect_status(200);
    let reply = pay_at(&server, &narrow.token, &shop, "/dear").await;
    expect_denied_for_good(&reply, "over_max_per_payment");
    let reply = pay_at(&server, &narrow.token, &other, "/x").await;
    expect_denied_for_good(&reply, "merchant_not_allowed");

    // Without `limits` a child inherits its parent's, and its expiry.
    let inheriting = child_token(&server, &parent, json!({})).await;
    assert_eq!(
        inheriting.body["limits"], parent_limits,
        "{}",
        inheriting.body
    );
    assert_eq!(inheriting.body["expiresAt"], parent.body["expiresAt"]);
    pay_at(&server, &inheriting.token, &shop, "/dear")
        .await
        .expect_status(200);
    let reply = pay_at(&server, &inheriting.token, &other, "/x").await;
    expect_denied_for_good(&reply, "merchant_not_allowed");

    // A grandchild is held to its own parent (cap 100), not to the root's 500.
    let mut wider_than_narrow = narrow.body["limits"].clone();
    wider_than_narrow["maxPerPayment"] = json!([usd(200)]);
    mint_child(
        &server,
        &narrow.token,
        json!({"limits": wider_than_narrow, "ttlS": 60}),
    )
    .await
    .expect_problem(422, &tp("token-widens-parent"));
    let grandchild = child_token(&server, &narrow, json!({"ttlS": 60})).await;
    assert_eq!(grandchild.body["limits"], narrow.body["limits"]);
    let reply = pay_at(&server, &grandchild.token, &shop, "/dear").await;
    expect_denied_for_good(&reply, "over_max_per_payment");

    let listed = tokens_of(&server, &payer.tenant, &payer.agent_id).await;
    assert_eq!(listed.len(), 5, "{listed:?}");
    let parent_of = |id: &str| {
        listed
            .iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {listed:?}"))["parentId"]
            .clone()
    };
    assert_eq!(parent_of(&parent.id), Value::Null);
    assert_eq!(parent_of(&narrow.id), parent.id.as_str());
    assert_eq!(parent_of(&inheriting.id), parent.id.as_str());
    assert_eq!(parent_of(&grandchild.id), narrow.id.as_str());
    // Two payments were allowed: 50 + 150.
    assert_eq!(reserved(&server, &payer.tenant).await, 200);
    server.assert_ledger_consistent().await;
}

async fn a_childs_spend_counts_against_its_parents_budget_and_the_policys_budget(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, Some(JUNE_NOON_MS)).await;
    server.price(&shop, "GET", "/item/{n}", 25, None).await;
    let item = |n: usize| format!("/item/{n}");

    // A token budget of 100 covers the token's whole tree.
    let parent = root_token(
        &server,
        &payer.tenant,
        &payer.agent_id,
        json!({"limits": {"budgets": [{"amount": "100", "currency": "usd", "period": "day"}]}}),
    )
    .await;
    let kid = child_token(&server, &parent, json!({})).await;
    let sibling = child_token(&server, &parent, json!({})).await;
    for n in 0..3 {
        pay_at(&server, &kid.token, &shop, &item(n))
            .await
            .expect_status(200);
    }
    // 75 spent by the child: the parent may still spend exactly the rest.
    pay_at(&server, &parent.token, &shop, &item(3))
        .await
        .expect_status(200);
    assert_eq!(reserved(&server, &payer.tenant).await, 100);
    for (n, token) in [&parent, &kid, &sibling].into_iter().enumerate() {
        let reply = pay_at(&server, &token.token, &shop, &item(10 + n)).await;
        let problem = expect_denied(&reply, "budget_exhausted");
        assert!(problem["retryAt"].is_string(), "{reply:?}");
        assert!(reply.header("retry-after").is_some(), "{reply:?}");
    }
    assert_eq!(reserved(&server, &payer.tenant).await, 100);
    // Another root token of the agent is another tree (and the agent has no policy).
    pay_at(&server, &payer.token, &shop, &item(20))
        .await
        .expect_status(200);

    // A policy budget of 100 covers every token of the agent.
    let agent = server.create_agent(&payer.tenant, "second").await;
    set_policy(
        &server,
        &payer.tenant,
        &agent,
        json!({"budgets": [{"amount": "100", "currency": "usd", "period": "day"}]}),
    )
    .await;
    let root = root_token(&server, &payer.tenant, &agent, json!({})).await;
    let kid = child_token(&server, &root, json!({})).await;
    let unrelated = root_token(&server, &payer.tenant, &agent, json!({})).await;
    for n in 30..34 {
        pay_at(&server, &kid.token, &shop, &item(n))
            .await
            .expect_status(200);
    }
    let before = reserved(&server, &payer.tenant).await;
    for (n, token) in [&root, &kid, &unrelated].into_iter().enumerate() {
        let reply = pay_at(&server, &token.token, &shop, &item(40 + n)).await;
        expect_denied(&reply, "budget_exhausted");
    }
    assert_eq!(reserved(&server, &payer.tenant).await, before);
    // The first agent's tokens are not under the second agent's policy.
    pay_at(&server, &payer.token, &shop, &item(50))
        .await
        .expect_status(200);
    server.assert_ledger_consistent().await;
}

// ---- revocation and expiry -------------------------------------------------------------------

async fn revoking_a_token_its_parent_or_all_tokens_refuses_the_next_payment(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, None).await;
    server.price(&shop, "GET", "/item/{n}", 10, None).await;
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("/item/{n}")
    };

    // One token.
    pay_at(&server, &payer.token, &shop, &next())
        .await
        .expect_status(200);
    let revoked = revoke(&server, &payer.tenant, &payer.agent_id, &payer.token_id).await;
    assert_eq!(revoked["id"], payer.token_id.as_str(), "{revoked}");
    assert!(revoked["revokedAt"].is_string(), "{revoked}");
    let before = reserved(&server, &payer.tenant).await;
    expect_unauthorized(&pay_at(&server, &payer.token, &shop, &next()).await);
    assert_eq!(reserved(&server, &payer.tenant).await, before);
    // The refusal is a decision like any other: it is in the audit log, naming the token.
    let refused = audit(&server, &payer.tenant, "reason=token_revoked").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["tokenId"], payer.token_id.as_str());
    assert_eq!(refused[0]["outcome"], "deny");

    // A parent: its children and grandchildren go with it, its siblings' trees stay.
    let parent = root_token(&server, &payer.tenant, &payer.agent_id, json!({})).await;
    let kid = child_token(&server, &parent, json!({})).await;
    let grandchild = child_token(&server, &kid, json!({})).await;
    let other = root_token(&server, &payer.tenant, &payer.agent_id, json!({})).await;
    let other_kid = child_token(&server, &other, json!({})).await;
    let other_grandchild = child_token(&server, &other_kid, json!({})).await;
    for token in [
        &parent,
        &kid,
        &grandchild,
        &other,
        &other_kid,
        &other_grandchild,
    ] {
        pay_at(&server, &token.token, &shop, &next())
            .await
            .expect_status(200);
    }
    revoke(&server, &payer.tenant, &payer.agent_id, &parent.id).await;
    // Revoking the middle of the other tree leaves its root working.
    revoke(&server, &payer.tenant, &payer.agent_id, &other_kid.id).await;
    let before = reserved(&server, &payer.tenant).await;
    for token in [&parent, &kid, &grandchild, &other_kid, &other_grandchild] {
        expect_unauthorized(&pay_at(&server, &token.token, &shop, &next()).await);
        expect_unauthorized(&mint_child(&server, &token.token, json!({})).await);
    }
    assert_eq!(reserved(&server, &payer.tenant).await, before);
    pay_at(&server, &other.token, &shop, &next())
        .await
        .expect_status(200);
    let listed = tokens_of(&server, &payer.tenant, &payer.agent_id).await;
    for token in [&parent, &kid, &grandchild, &other_kid, &other_grandchild] {
        let row = listed
            .iter()
            .find(|t| t["id"] == token.id.as_str())
            .unwrap();
        assert!(row["revokedAt"].is_string(), "{row}");
    }
    let row = listed
        .iter()
        .find(|t| t["id"] == other.id.as_str())
        .unwrap();
    assert!(row["revokedAt"].is_null(), "{row}");

    // Every token of one agent; another agent's tokens stay.
    let agent = server.create_agent(&payer.tenant, "second").await;
    let first = root_token(&server, &payer.tenant, &agent, json!({})).await;
    let second = root_token(&server, &payer.tenant, &agent, json!({})).await;
    let first_kid = child_token(&server, &first, json!({})).await;
    for token in [&first, &second, &first_kid] {
        pay_at(&server, &token.token, &shop, &next())
            .await
            .expect_status(200);
    }
    let all = server
        .call(
            Method::DELETE,
            &format!("/v1/agents/{agent}/tokens"),
            Some(&payer.tenant.key),
            None,
        )
        .await
        .expect_status(200)
        .json();
    assert_eq!(all["revoked"], 3, "{all}");
    let before = reserved(&server, &payer.tenant).await;
    for token in [&first, &second, &first_kid] {
        expect_unauthorized(&pay_at(&server, &token.token, &shop, &next()).await);
    }
    assert_eq!(reserved(&server, &payer.tenant).await, before);
    pay_at(&server, &other.token, &shop, &next())
        .await
        .expect_status(200);

    // Another tenant cannot revoke the payer's tokens.
    let stranger = server.create_tenant("stranger").await;
    server
        .call(
            Method::DELETE,
            &format!("/v1/agents/{}/tokens/{}", payer.agent_id, other.id),
            Some(&stranger.key),
            None,
        )
        .await
        .expect_problem(404, &tp("not-found"));
    pay_at(&server, &other.token, &shop, &next())
        .await
        .expect_status(200);
    server.assert_ledger_consistent().await;
}

async fn a_token_is_refused_from_its_expiry_on_the_test_clock(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, Some(JUNE_NOON_MS)).await;
    server.price(&shop, "GET", "/item/{n}", 10, None).await;
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("/item/{n}")
    };
    let parent = root_token(&server, &payer.tenant, &payer.agent_id, json!({"ttlS": 60})).await;
    assert_eq!(parent.expires_at_ms(), JUNE_NOON_MS + 60_000);
    let short = child_token(&server, &parent, json!({"ttlS": 30})).await;
    assert_eq!(short.expires_at_ms(), JUNE_NOON_MS + 30_000);
    let inheriting = child_token(&server, &parent, json!({})).await;
    assert_eq!(inheriting.expires_at_ms(), parent.expires_at_ms());
    for token in [&parent, &short, &inheriting] {
        pay_at(&server, &token.token, &shop, &next())
            .await
            .expect_status(200);
    }

    server.set_clock(short.expires_at_ms() - 1).await;
    pay_at(&server, &short.token, &shop, &next())
        .await
        .expect_status(200);
    server.set_clock(short.expires_at_ms()).await;
    let before = reserved(&server, &payer.tenant).await;
    expect_unauthorized(&pay_at(&server, &short.token, &shop, &next()).await);
    assert_eq!(reserved(&server, &payer.tenant).await, before);
    for token in [&parent, &inheriting] {
        pay_at(&server, &token.token, &shop, &next())
            .await
            .expect_status(200);
    }

    server.set_clock(parent.expires_at_ms() - 1).await;
    pay_at(&server, &parent.token, &shop, &next())
        .await
        .expect_status(200);
    server.set_clock(parent.expires_at_ms()).await;
    let before = reserved(&server, &payer.tenant).await;
    for token in [&parent, &inheriting] {
        expect_unauthorized(&pay_at(&server, &token.token, &shop, &next()).await);
    }
    expect_unauthorized(&mint_child(&server, &parent.token, json!({})).await);
    assert_eq!(reserved(&server, &payer.tenant).await, before);
    // The payer's day-long token still pays.
    pay_at(&server, &payer.token, &shop, &next())
        .await
        .expect_status(200);
    server.assert_ledger_consistent().await;
}

// ---- calendar budgets and velocity -----------------------------------------------------------

async fn a_day_budget_resets_at_midnight_in_the_policys_time_zone_not_utc(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, Some(KOLKATA_23_50_MS)).await;
    server.price(&shop, "GET", "/item/{n}", 50, None).await;
    let day_budget = json!([{"amount": "100", "currency": "usd", "period": "day"}]);
    set_policy(
        &server,
        &payer.tenant,
        &payer.agent_id,
        json!({"timeZone": "Asia/Kolkata", "budgets": day_budget}),
    )
    .await;
    // A second agent with the same budget in UTC (no timeZone).
    let utc_agent = server.create_agent(&payer.tenant, "utc").await;
    set_policy(
        &server,
        &payer.tenant,
        &utc_agent,
        json!({"budgets": day_budget}),
    )
    .await;
    let utc = root_token(&server, &payer.tenant, &utc_agent, json!({})).await;

    // Both spend their 100 (settled, so nothing is released when reservations expire).
    for (token, first) in [(&payer.token, 0), (&utc.token, 10)] {
        for n in first..first + 2 {
            pay_and_settle(&server, token, &shop, &format!("/item/{n}")).await;
        }
    }
    let reply = pay_at(&server, &payer.token, &shop, "/item/100").await;
    expect_denied_until(&reply, "budget_exhausted", KOLKATA_MIDNIGHT_MS, 600);
    let reply = pay_at(&server, &utc.token, &shop, "/item/101").await;
    expect_denied_until(&reply, "budget_exhausted", UTC_MIDNIGHT_MS, 20_400);

    // Just before midnight in Kolkata: still exhausted.
    server.set_clock(KOLKATA_MIDNIGHT_MS - 1).await;
    let reply = pay_at(&server, &payer.token, &shop, "/item/102").await;
    expect_denied_until(&reply, "budget_exhausted", KOLKATA_MIDNIGHT_MS, 1);

    // Midnight in Kolkata (18:30 UTC): a new day for the Kolkata agent only.
    server.set_clock(KOLKATA_MIDNIGHT_MS).await;
    for n in 200..202 {
        pay_and_settle(&server, &payer.token, &shop, &format!("/item/{n}")).await;
    }
    let reply = pay_at(&server, &payer.token, &shop, "/item/202").await;
    expect_denied_until(
        &reply,
        "budget_exhausted",
        KOLKATA_MIDNIGHT_MS + 86_400_000,
        86_400,
    );
    let reply = pay_at(&server, &utc.token, &shop, "/item/203").await;
    expect_denied_until(&reply, "budget_exhausted", UTC_MIDNIGHT_MS, 19_800);

    // Midnight in UTC: the UTC agent's new day.
    server.set_clock(UTC_MIDNIGHT_MS).await;
    pay_and_settle(&server, &utc.token, &shop, "/item/300").await;
    assert_eq!(reserved(&server, &payer.tenant).await, 0);
    server.assert_ledger_consistent().await;
}

async fn a_day_budget_follows_new_york_across_the_dst_change(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, Some(NEW_YORK_23_50_MS)).await;
    server.price(&shop, "GET", "/item/{n}", 50, None).await;
    set_policy(
        &server,
        &payer.tenant,
        &payer.agent_id,
        json!({
            "timeZone": "America/New_York",
            "budgets": [{"amount": "100", "currency": "usd", "period": "day"}],
        }),
    )
    .await;
    // A token that outlives the test's two days.
    let token = root_token(
        &server,
        &payer.tenant,
        &payer.agent_id,
        json!({"ttlS": 7 * 86_400}),
    )
    .await
    .token;

    for n in 0..2 {
        pay_and_settle(&server, &token, &shop, &format!("/item/{n}")).await;
    }
    let reply = pay_at(&server, &token, &shop, "/item/2").await;
    expect_denied_until(&reply, "budget_exhausted", NEW_YORK_MIDNIGHT_EST_MS, 600);

    // Sunday 2031-03-09 starts at 05:00 UTC and, DST starting at 02:00, lasts 23 hours.
    server.set_clock(NEW_YORK_MIDNIGHT_EST_MS).await;
    for n in 10..12 {
        pay_and_settle(&server, &token, &shop, &format!("/item/{n}")).await;
    }
    let reply = pay_at(&server, &token, &shop, "/item/12").await;
    expect_denied_until(
        &reply,
        "budget_exhausted",
        NEW_YORK_MIDNIGHT_EDT_MS,
        23 * 3600,
    );
    server.set_clock(NEW_YORK_MIDNIGHT_EDT_MS - 1).await;
    let reply = pay_at(&server, &token, &shop, "/item/13").await;
    expect_denied_until(&reply, "budget_exhausted", NEW_YORK_MIDNIGHT_EDT_MS, 1);
    server.set_clock(NEW_YORK_MIDNIGHT_EDT_MS).await;
    pay_and_settle(&server, &token, &shop, "/item/20").await;
    server.assert_ledger_consistent().await;
}

async fn a_reservation_that_expires_unused_gives_its_budget_back_and_a_settled_one_does_not(
    db: &TestDb,
) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, Some(JUNE_NOON_MS)).await;
    server
        .create_price(
            &shop,
            json!({
                "route": {"method": "GET", "path": "/item/{n}"}, "amount": "50",
                "currency": "usd", "challengeTtlS": 60,
            }),
        )
        .await;
    let tenant = &payer.tenant;
    set_policy(
        &server,
        tenant,
        &payer.agent_id,
        json!({"budgets": [{"amount": "100", "currency": "usd", "period": "day"}]}),
    )
    .await;
    let token = payer.token.as_str();
    pay_and_settle(&server, token, &shop, "/item/1").await;
    let unused = offer(&server, &shop, "/item/2").await;
    let unused_paid = pay_offer(&server, token, &unused, None)
        .await
        .expect_status(200)
        .json();
    assert_eq!(reserved(&server, tenant).await, 50);
    let reply = pay_at(&server, token, &shop, "/item/3").await;
    expect_denied(&reply, "budget_exhausted");

    // Past the challenge's expiry and the reservation's grace the unused reservation expires.
    let expires_at_ms = instant_ms(unused_paid["expiresAt"].as_str().unwrap());
    server.set_clock(expires_at_ms + 1000).await;
    // The sweeper releases it shortly (it runs every 500 ms of real time).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reserved(&server, tenant).await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired reservation was not released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let refused = server
        .verify(
            &shop,
            unused_paid["authorization"].clone(),
            "GET",
            &unused.path,
            None,
        )
        .await
        .expect_status(200)
        .json();
    assert_ne!(refused["decision"], "paid", "{refused}");

    // Its 50 is free again; the settled 50 still counts.
    pay_and_settle(&server, token, &shop, "/item/4").await;
    let reply = pay_at(&server, token, &shop, "/item/5").await;
    expect_denied(&reply, "budget_exhausted");
    server.assert_ledger_consistent().await;
}

async fn velocity_denies_until_the_oldest_payment_leaves_the_window(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, Some(JUNE_NOON_MS)).await;
    server.price(&shop, "GET", "/item/{n}", 10, None).await;
    set_policy(
        &server,
        &payer.tenant,
        &payer.agent_id,
        json!({"velocity": {"maxPayments": 2, "windowSeconds": 60}}),
    )
    .await;
    let second = root_token(&server, &payer.tenant, &payer.agent_id, json!({})).await;
    let t0 = JUNE_NOON_MS;

    pay_at(&server, &payer.token, &shop, "/item/1")
        .await
        .expect_status(200);
    server.set_clock(t0 + 10_000).await;
    pay_at(&server, &payer.token, &shop, "/item/2")
        .await
        .expect_status(200);
    server.set_clock(t0 + 20_000).await;
    let before = reserved(&server, &payer.tenant).await;
    let reply = pay_at(&server, &payer.token, &shop, "/item/3").await;
    expect_denied_until(&reply, "velocity_exceeded", t0 + 60_000, 40);
    // The window is the agent's: another token is held too.
    let reply = pay_at(&server, &second.token, &shop, "/item/4").await;
    expect_denied_until(&reply, "velocity_exceeded", t0 + 60_000, 40);
    assert_eq!(reserved(&server, &payer.tenant).await, before);

    // Denied attempts do not count: at t0 + 60 s only the payment of t0 + 10 s is inside.
    server.set_clock(t0 + 60_000 - 1).await;
    let reply = pay_at(&server, &payer.token, &shop, "/item/5").await;
    expect_denied_until(&reply, "velocity_exceeded", t0 + 60_000, 1);
    server.set_clock(t0 + 60_000).await;
    pay_at(&server, &second.token, &shop, "/item/6")
        .await
        .expect_status(200);
    let reply = pay_at(&server, &payer.token, &shop, "/item/7").await;
    expect_denied_until(&reply, "velocity_exceeded", t0 + 70_000, 10);
    server.set_clock(t0 + 70_000).await;
    pay_at(&server, &payer.token, &shop, "/item/8")
        .await
        .expect_status(200);
    server.assert_ledger_consistent().await;
}

// ---- lists and caps --------------------------------------------------------------------------

async fn merchant_method_currency_lists_and_caps_deny_with_their_reason_and_reserve_nothing(
    db: &TestDb,
) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, None).await;
    let other = server.create_tenant("other").await;
    server.price(&shop, "GET", "/a", 50, None).await;
    server
        .create_price(
            &shop,
            json!({"route": {"method": "GET", "path": "/eur"}, "amount": "50", "currency": "eur"}),
        )
        .await;
    server.price(&other, "GET", "/x", 50, None).await;
    let agent = payer.agent_id.as_str();
    let token = payer.token.as_str();
    let tenant = &payer.tenant;
    let mut expected_reserved = 0;

    // (policy, merchant, path, denial reason or None for allowed)
    let cases: Vec<(Value, &Tenant, &str, Option<&str>)> = vec![
        (
            json!({"merchants": {"deny": [shop.realm]}}),
            &shop,
            "/a",
            Some("merchant_not_allowed"),
        ),
        (
            json!({"merchants": {"deny": [shop.realm]}}),
            &other,
            "/x",
            None,
        ),
        (
            json!({"merchants": {"deny": [shop.id]}}),
            &shop,
            "/a",
            Some("merchant_not_allowed"),
        ),
        (
            json!({"merchants": {"allow": [other.realm]}}),
            &shop,
            "/a",
            Some("merchant_not_allowed"),
        ),
        (
            json!({"merchants": {"allow": [other.realm]}}),
            &other,
            "/x",
            None,
        ),
        (
            json!({"merchants": {"allow": [shop.id]}}),
            &shop,
            "/a",
            None,
        ),
        // Deny wins over allow.
        (
            json!({"merchants": {"allow": [shop.realm, other.realm], "deny": [shop.realm]}}),
            &shop,
            "/a",
            Some("merchant_not_allowed"),
        ),
        (
            json!({"methods": ["tempo"]}),
            &shop,
            "/a",
            Some("method_not_allowed"),
        ),
        (json!({"methods": ["tempo", "turnpike"]}), &shop, "/a", None),
        (
            json!({"currencies": ["usd"]}),
            &shop,
            "/eur",
            Some("currency_not_allowed"),
        ),
        (
            json!({"currencies": ["eur"]}),
            &shop,
            "/a",
            Some("currency_not_allowed"),
        ),
        (json!({"currencies": ["usd"]}), &shop, "/a", None),
        (
            json!({"maxPerPayment": [usd(49)]}),
            &shop,
            "/a",
            Some("over_max_per_payment"),
        ),
        // The cap is the largest payment allowed.
        (json!({"maxPerPayment": [usd(50)]}), &shop, "/a", None),
        // A cap in another currency does not cap usd.
        (
            json!({"maxPerPayment": [{"amount": "1", "currency": "eur"}]}),
            &shop,
            "/a",
            None,
        ),
    ];
    for (policy, merchant, path, reason) in cases {
        set_policy(&server, tenant, agent, policy.clone()).await;
        let before = server.balance(tenant, "payer_balance").await;
        let reply = pay_at(&server, token, merchant, path).await;
        match reason {
            Some(reason) => {
                expect_denied_for_good(&reply, reason);
                let after = server.balance(tenant, "payer_balance").await;
                assert_eq!(after, before, "{policy} reserved something: {reply:?}");
            }
            None => {
                assert_eq!(reply.status, 200, "{policy} {path}: {reply:?}");
                expected_reserved += 50;
            }
        }
        assert_eq!(
            reserved(&server, tenant).await,
            expected_reserved,
            "{policy}"
        );
    }

    // The same checks as token limits, under an empty policy.
    set_policy(&server, tenant, agent, json!({})).await;
    let token_cases = [
        (
            json!({"merchantsAllow": [other.realm]}),
            "/a",
            "merchant_not_allowed",
        ),
        (json!({"methods": ["tempo"]}), "/a", "method_not_allowed"),
        (
            json!({"currencies": ["usd"]}),
            "/eur",
            "currency_not_allowed",
        ),
        (
            json!({"maxPerPayment": [usd(49)]}),
            "/a",
            "over_max_per_payment",
        ),
    ];
    for (limits, path, reason) in token_cases {
        let limited = root_token(&server, tenant, agent, json!({"limits": limits})).await;
        let before = server.balance(tenant, "payer_balance").await;
        let reply = pay_at(&server, &limited.token, &shop, path).await;
        expect_denied_for_good(&reply, reason);
        assert_eq!(
            server.balance(tenant, "payer_balance").await,
            before,
            "{limits}"
        );
    }
    server.assert_ledger_consistent().await;
}

// ---- approvals -------------------------------------------------------------------------------

async fn a_payment_above_the_approval_threshold_pays_only_once_approved(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, Some(JULY_MORNING_MS)).await;
    server.price(&shop, "GET", "/small", 50, None).await;
    server.price(&shop, "GET", "/big/{n}", 150, None).await;
    server
        .create_price(
            &shop,
            json!({
                "route": {"method": "GET", "path": "/long/{n}"}, "amount": "150",
                "currency": "usd", "challengeTtlS": 3600,
            }),
        )
        .await;
    let tenant = &payer.tenant;
    set_policy(
        &server,
        tenant,
        &payer.agent_id,
        json!({"approvalAbove": [usd(100)]}),
    )
    .await;
    let token = payer.token.as_str();

    // At or below the threshold: paid at once.
    pay_and_settle(&server, token, &shop, "/small").await;
    assert_eq!(reserved(&server, tenant).await, 0);

    // Above it: 202 with an approval, nothing reserved.
    let big = offer(&server, &shop, "/big/1").await;
    let reply = pay_offer(&server, token, &big, None).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let held = reply.json();
    assert_eq!(held["type"], tp("approval-required"), "{held}");
    let approval_id = held["approvalId"].as_str().expect("approvalId").to_owned();
    assert!(approval_id.starts_with("apr_"), "{held}");
    // The challenge's expiry (five minutes) comes before the approval's fifteen.
    let expires_at = held["expiresAt"].as_str().expect("expiresAt");
    assert_eq!(instant_ms(expires_at), JULY_MORNING_MS + CHALLENGE_TTL_MS);
    assert_eq!(reserved(&server, tenant).await, 0);

    let pending = approvals(&server, tenant, "pending").await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    let listed = &pending[0];
    assert_eq!(listed["id"], approval_id.as_str());
    assert_eq!(listed["agentId"], payer.agent_id.as_str());
    assert_eq!(listed["tokenId"], payer.token_id.as_str());
    assert_eq!(listed["challengeId"], big.challenge_id.as_str());
    assert_eq!(listed["merchant"], shop.id.as_str());
    assert_eq!(listed["amount"], "150");
    assert_eq!(listed["currency"], "usd");
    assert_eq!(listed["method"], "turnpike");
    assert_eq!(listed["state"], "pending");
    assert_eq!(listed["expiresAt"], expires_at);
    assert!(listed["decidedAt"].is_null(), "{listed}");

    // Not before the owner approves.
    let reply = pay_offer(&server, token, &big, Some(&approval_id)).await;
    reply.expect_problem(409, &tp("approval-invalid"));
    assert_eq!(reserved(&server, tenant).await, 0);

    let approved = decide_approval(&server, tenant, &approval_id, "approve")
        .await
        .expect_status(200)
        .json();
    assert_eq!(approved["state"], "approved", "{approved}");
    assert!(approved["decidedAt"].is_string(), "{approved}");
    for verb in ["approve", "reject"] {
        decide_approval(&server, tenant, &approval_id, verb)
            .await
            .expect_problem(409, &tp("approval-not-pending"));
    }
    assert!(approvals(&server, tenant, "pending").await.is_empty());

    // Approved: the retry pays, and the credential settles.
    let paid = pay_offer(&server, token, &big, Some(&approval_id)).await;
    let payment = settle(&server, &shop, &big, paid).await;
    assert_eq!(payment["amount"], "150", "{payment}");
    assert_eq!(
        payment["challengeId"],
        big.challenge_id.as_str(),
        "{payment}"
    );
    let used = approvals(&server, tenant, "used").await;
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0]["id"], approval_id.as_str());

    // The approval pays that challenge only.
    let again = offer(&server, &shop, "/big/2").await;
    let reply = pay_offer(&server, token, &again, Some(&approval_id)).await;
    reply.expect_problem(409, &tp("approval-invalid"));
    assert_eq!(reserved(&server, tenant).await, 0);

    // Rejected: the retry is refused.
    let reply = pay_offer(&server, token, &again, None).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let rejected_id = reply.json()["approvalId"].as_str().unwrap().to_owned();
    assert_ne!(rejected_id, approval_id);
    let rejected = decide_approval(&server, tenant, &rejected_id, "reject")
        .await
        .expect_status(200)
        .json();
    assert_eq!(rejected["state"], "rejected", "{rejected}");
    decide_approval(&server, tenant, &rejected_id, "approve")
        .await
        .expect_problem(409, &tp("approval-not-pending"));
    let reply = pay_offer(&server, token, &again, Some(&rejected_id)).await;
    reply.expect_problem(409, &tp("approval-invalid"));
    assert_eq!(reserved(&server, tenant).await, 0);
    let listed = approvals(&server, tenant, "rejected").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], rejected_id.as_str());

    // An approval lifts the threshold only: every other check still applies when it is used,
    // and a denial does not use it up.
    let blocked = offer(&server, &shop, "/big/3").await;
    let reply = pay_offer(&server, token, &blocked, None).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let blocked_id = reply.json()["approvalId"].as_str().unwrap().to_owned();
    decide_approval(&server, tenant, &blocked_id, "approve")
        .await
        .expect_status(200);
    let agent = payer.agent_id.as_str();
    let deny_shop = json!({"approvalAbove": [usd(100)], "merchants": {"deny": [shop.realm]}});
    set_policy(&server, tenant, agent, deny_shop).await;
    let reply = pay_offer(&server, token, &blocked, Some(&blocked_id)).await;
    expect_denied_for_good(&reply, "merchant_not_allowed");
    assert_eq!(reserved(&server, tenant).await, 0);
    let still = approvals(&server, tenant, "approved").await;
    assert!(
        still.iter().any(|a| a["id"] == blocked_id.as_str()),
        "{still:?}"
    );
    set_policy(&server, tenant, agent, json!({"approvalAbove": [usd(100)]})).await;
    let paid = pay_offer(&server, token, &blocked, Some(&blocked_id)).await;
    settle(&server, &shop, &blocked, paid).await;

    // Unanswered, an approval expires after fifteen minutes (the challenge lives an hour);
    // approved but unused, likewise.
    let unanswered = offer(&server, &shop, "/long/1").await;
    let reply = pay_offer(&server, token, &unanswered, None).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let held = reply.json();
    let unanswered_id = held["approvalId"].as_str().unwrap().to_owned();
    let expires_at_ms = instant_ms(held["expiresAt"].as_str().unwrap());
    assert_eq!(expires_at_ms, JULY_MORNING_MS + APPROVAL_TTL_MS);
    let unused = offer(&server, &shop, "/long/2").await;
    let reply = pay_offer(&server, token, &unused, None).await;
    assert_eq!(reply.status, 202, "{reply:?}");
    let unused_id = reply.json()["approvalId"].as_str().unwrap().to_owned();
    decide_approval(&server, tenant, &unused_id, "approve")
        .await
        .expect_status(200);

    server.set_clock(expires_at_ms + 1000).await;
    let expired = approvals(&server, tenant, "expired").await;
    let mut expired_ids: Vec<&str> = expired.iter().map(|a| a["id"].as_str().unwrap()).collect();
    expired_ids.sort_unstable();
    let mut wanted = vec![unanswered_id.as_str(), unused_id.as_str()];
    wanted.sort_unstable();
    assert_eq!(expired_ids, wanted, "{expired:?}");
    assert!(approvals(&server, tenant, "pending").await.is_empty());
    decide_approval(&server, tenant, &unanswered_id, "approve")
        .await
        .expect_problem(409, &tp("approval-not-pending"));
    for (challenge, id) in [(&unanswered, &unanswered_id), (&unused, &unused_id)] {
        let reply = pay_offer(&server, token, challenge, Some(id)).await;
        reply.expect_problem(409, &tp("approval-invalid"));
    }
    assert_eq!(reserved(&server, tenant).await, 0);

    // The audit log holds the held payments and the approved one.
    let held = audit(&server, tenant, "outcome=needs_approval").await;
    assert_eq!(held.len(), 5, "{held:?}");
    assert!(
        held.iter().all(|a| a["reason"] == "approval_required"),
        "{held:?}"
    );
    let allowed = audit(&server, tenant, "outcome=allow").await;
    assert!(
        allowed
            .iter()
            .any(|a| a["approvalId"] == approval_id.as_str()
                && a["challengeId"] == big.challenge_id.as_str()),
        "{allowed:?}"
    );
    server.assert_ledger_consistent().await;
}

// ---- dry run, audit, policy versions ---------------------------------------------------------

/// The dry run's `changed` entry for `offer`'s challenge: (was, now) as (outcome, reason).
fn flip(changed: &[Value], offer: &Offer) -> (Value, Value) {
    let entry = changed
        .iter()
        .find(|c| c["challengeId"] == offer.challenge_id.as_str())
        .unwrap_or_else(|| panic!("{} did not change: {changed:?}", offer.path));
    (entry["was"].clone(), entry["now"].clone())
}

fn outcome(outcome: &str, reason: Option<&str>) -> Value {
    json!({"outcome": outcome, "reason": reason})
}

async fn dry_run(
    server: &Server,
    tenant: &Tenant,
    agent_id: &str,
    body: Value,
) -> (i64, Vec<Value>) {
    let body = server
        .post(
            &format!("/v1/policies/{agent_id}/dry-run"),
            &tenant.key,
            body,
        )
        .await
        .expect_status(200)
        .json();
    (
        body["replayed"].as_i64().expect("replayed"),
        body["changed"].as_array().expect("changed").clone(),
    )
}

async fn a_dry_run_reports_what_a_stricter_and_a_looser_policy_would_flip(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, Some(AUGUST_NOON_MS)).await;
    let other = server.create_tenant("other").await;
    server.price(&shop, "GET", "/a", 50, None).await;
    server.price(&shop, "GET", "/b", 80, None).await;
    server.price(&shop, "GET", "/c", 150, None).await;
    server.price(&other, "GET", "/x", 30, None).await;
    let tenant = &payer.tenant;
    let agent = payer.agent_id.as_str();
    let current = json!({"maxPerPayment": [usd(100)], "merchants": {"deny": [other.realm]}});
    set_policy(&server, tenant, agent, current.clone()).await;

    // Recorded, a second apart: a and b allowed, c over the cap, x at a denied merchant.
    let mut offers = Vec::new();
    for (merchant, path) in [(&shop, "/a"), (&shop, "/b"), (&shop, "/c"), (&other, "/x")] {
        server.advance_clock(1000).await;
        let offer = offer(&server, merchant, path).await;
        let reply = pay_offer(&server, &payer.token, &offer, None).await;
        match path {
            "/a" | "/b" => assert_eq!(reply.status, 200, "{reply:?}"),
            "/c" => expect_denied_for_good(&reply, "over_max_per_payment"),
            _ => expect_denied_for_good(&reply, "merchant_not_allowed"),
        }
        offers.push(offer);
    }
    let [a, b, c, x] = <[Offer; 4]>::try_from(offers).ok().unwrap();
    let audited = audit(&server, tenant, "limit=1000").await.len();

    // The current policy changes nothing.
    let (replayed, changed) = dry_run(&server, tenant, agent, json!({"policy": current})).await;
    assert_eq!((replayed, changed.len()), (4, 0), "{changed:?}");

    // Stricter cap: b flips to a denial.
    let stricter = json!({"maxPerPayment": [usd(60)], "merchants": {"deny": [other.realm]}});
    let (replayed, changed) = dry_run(&server, tenant, agent, json!({"policy": stricter})).await;
    assert_eq!((replayed, changed.len()), (4, 1), "{changed:?}");
    assert_eq!(
        flip(&changed, &b),
        (
            outcome("allow", None),
            outcome("deny", Some("over_max_per_payment"))
        )
    );
    let entry = &changed[0];
    assert_eq!(entry["amount"], "80", "{entry}");
    assert_eq!(entry["currency"], "usd", "{entry}");
    assert_eq!(entry["merchant"], shop.id.as_str(), "{entry}");

    // A day budget of 100: a's 50 was spent before b, so b flips to budget_exhausted.
    let budgeted = json!({
        "maxPerPayment": [usd(100)], "merchants": {"deny": [other.realm]},
        "budgets": [{"amount": "100", "currency": "usd", "period": "day"}],
    });
    let (replayed, changed) = dry_run(&server, tenant, agent, json!({"policy": budgeted})).await;
    assert_eq!((replayed, changed.len()), (4, 1), "{changed:?}");
    assert_eq!(
        flip(&changed, &b),
        (
            outcome("allow", None),
            outcome("deny", Some("budget_exhausted"))
        )
    );

    // Looser: both denials flip to allowed.
    let (replayed, changed) = dry_run(&server, tenant, agent, json!({"policy": {}})).await;
    assert_eq!((replayed, changed.len()), (4, 2), "{changed:?}");
    assert_eq!(
        flip(&changed, &c),
        (
            outcome("deny", Some("over_max_per_payment")),
            outcome("allow", None)
        )
    );
    assert_eq!(
        flip(&changed, &x),
        (
            outcome("deny", Some("merchant_not_allowed")),
            outcome("allow", None)
        )
    );

    // `last` replays the newest N only.
    let (replayed, changed) =
        dry_run(&server, tenant, agent, json!({"policy": {}, "last": 1})).await;
    assert_eq!((replayed, changed.len()), (1, 1), "{changed:?}");
    assert_eq!(flip(&changed, &x).1, outcome("allow", None));
    // Stricter over the newest two (c, x): nothing allowed there to flip.
    let (replayed, changed) = dry_run(
        &server,
        tenant,
        agent,
        json!({"policy": stricter, "last": 2}),
    )
    .await;
    assert_eq!((replayed, changed.len()), (2, 0), "{changed:?}");
    assert!(
        changed
            .iter()
            .all(|e| e["challengeId"] != a.challenge_id.as_str())
    );

    // A dry run changes nothing and records nothing.
    let policy = current_policy(&server, tenant, agent).await;
    assert_eq!(policy["version"], 1, "{policy}");
    assert_eq!(policy["policy"], current, "{policy}");
    assert_eq!(audit(&server, tenant, "limit=1000").await.len(), audited);
    assert_eq!(reserved(&server, tenant).await, 130);
    server.assert_ledger_consistent().await;
}

async fn audit_filters_by_agent_outcome_and_reason(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, None).await;
    let other = server.create_tenant("other").await;
    server.price(&shop, "GET", "/a/{n}", 50, None).await;
    server.price(&shop, "GET", "/b", 80, None).await;
    server.price(&shop, "GET", "/c", 150, None).await;
    server.price(&other, "GET", "/x", 30, None).await;
    let tenant = &payer.tenant;
    let first = payer.agent_id.as_str();
    let second = server.create_agent(tenant, "second").await;
    let second_token = root_token(&server, tenant, &second, json!({})).await;
    set_policy(
        &server,
        tenant,
        first,
        json!({"merchants": {"deny": [other.realm]}}),
    )
    .await;
    set_policy(
        &server,
        tenant,
        &second,
        json!({"maxPerPayment": [usd(100)], "approvalAbove": [usd(60)]}),
    )
    .await;

    // First agent: two allowed, one denied merchant. Second: one allowed, one over the cap,
    // one held for approval.
    let denied_merchant = offer(&server, &other, "/x").await;
    let over_cap = offer(&server, &shop, "/c").await;
    let t = payer.token.as_str();
    pay_at(&server, t, &shop, "/a/1").await.expect_status(200);
    pay_at(&server, t, &shop, "/a/2").await.expect_status(200);
    let reply = pay_offer(&server, t, &denied_merchant, None).await;
    expect_denied_for_good(&reply, "merchant_not_allowed");
    let t = second_token.token.as_str();
    pay_at(&server, t, &shop, "/a/3").await.expect_status(200);
    let reply = pay_offer(&server, t, &over_cap, None).await;
    expect_denied_for_good(&reply, "over_max_per_payment");
    assert_eq!(pay_at(&server, t, &shop, "/b").await.status, 202);

    let count = |query: &'static str| {
        let (server, tenant) = (&server, tenant);
        async move { audit(server, tenant, query).await }
    };
    let all = count("limit=1000").await;
    assert_eq!(all.len(), 6, "{all:?}");
    // Newest first.
    let times: Vec<i64> = all
        .iter()
        .map(|e| instant_ms(e["at"].as_str().unwrap()))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    for entry in &all {
        assert_eq!(entry["currency"], "usd", "{entry}");
        assert_eq!(entry["method"], "turnpike", "{entry}");
        assert_eq!(entry["policyVersion"], 1, "{entry}");
        assert!(entry["tokenId"].is_string(), "{entry}");
        assert!(entry["challengeId"].is_string(), "{entry}");
    }

    let by_first = audit(&server, tenant, &format!("agentId={first}")).await;
    assert_eq!(by_first.len(), 3, "{by_first:?}");
    assert!(
        by_first
            .iter()
            .all(|e| e["agentId"] == first && e["tokenId"] == payer.token_id.as_str())
    );
    let by_second = audit(&server, tenant, &format!("agentId={second}")).await;
    assert_eq!(by_second.len(), 3, "{by_second:?}");
    assert!(
        by_second
            .iter()
            .all(|e| e["tokenId"] == second_token.id.as_str())
    );

    assert_eq!(count("outcome=allow").await.len(), 3);
    let denials = count("outcome=deny").await;
    assert_eq!(denials.len(), 2, "{denials:?}");
    let held = count("outcome=needs_approval").await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["reason"], "approval_required");
    assert_eq!(held[0]["agentId"], second.as_str());

    let merchant = count("reason=merchant_not_allowed").await;
    assert_eq!(merchant.len(), 1, "{merchant:?}");
    assert_eq!(merchant[0]["agentId"], first);
    assert_eq!(merchant[0]["merchant"], other.id.as_str());
    assert_eq!(
        merchant[0]["challengeId"],
        denied_merchant.challenge_id.as_str()
    );
    assert_eq!(merchant[0]["amount"], "30");
    let cap = count("reason=over_max_per_payment").await;
    assert_eq!(cap.len(), 1, "{cap:?}");
    assert_eq!(cap[0]["agentId"], second.as_str());
    assert_eq!(cap[0]["challengeId"], over_cap.challenge_id.as_str());

    let combined = audit(&server, tenant, &format!("agentId={first}&outcome=deny")).await;
    assert_eq!(combined.len(), 1, "{combined:?}");
    let none = audit(
        &server,
        tenant,
        &format!("agentId={second}&reason=merchant_not_allowed"),
    )
    .await;
    assert!(none.is_empty(), "{none:?}");
    let allowed_first = audit(&server, tenant, &format!("agentId={first}&outcome=allow")).await;
    assert_eq!(allowed_first.len(), 2, "{allowed_first:?}");
    assert_eq!(count("limit=2").await.len(), 2);

    // Another tenant sees none of it.
    assert!(audit(&server, &shop, "limit=1000").await.is_empty());
    assert!(
        audit(&server, &shop, &format!("agentId={first}"))
            .await
            .is_empty()
    );
    server
        .get("/v1/audit?outcome=maybe", &tenant.key)
        .await
        .expect_problem(400, &tp("invalid-request"));
    server.assert_ledger_consistent().await;
}

async fn a_new_policy_version_applies_to_the_next_payment(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, None).await;
    server.price(&shop, "GET", "/item/{n}", 150, None).await;
    let tenant = &payer.tenant;
    let agent = payer.agent_id.as_str();
    let none = current_policy(&server, tenant, agent).await;
    assert_eq!(none["version"], 0, "{none}");
    assert_eq!(none["policy"], json!({}), "{none}");

    let v1 = json!({"maxPerPayment": [usd(100)]});
    assert_eq!(set_policy(&server, tenant, agent, v1.clone()).await, 1);
    let reply = pay_at(&server, &payer.token, &shop, "/item/1").await;
    expect_denied_for_good(&reply, "over_max_per_payment");

    let v2 = json!({"maxPerPayment": [usd(200)]});
    assert_eq!(set_policy(&server, tenant, agent, v2.clone()).await, 2);
    pay_at(&server, &payer.token, &shop, "/item/2")
        .await
        .expect_status(200);
    let current = current_policy(&server, tenant, agent).await;
    assert_eq!(current["version"], 2, "{current}");
    assert_eq!(current["policy"], v2, "{current}");
    let agent_row = server
        .get(&format!("/v1/agents/{agent}"), &tenant.key)
        .await
        .expect_status(200)
        .json();
    assert_eq!(agent_row["policyVersion"], 2, "{agent_row}");

    // And back: the stricter v3 holds for the very next payment.
    assert_eq!(set_policy(&server, tenant, agent, v1).await, 3);
    let reply = pay_at(&server, &payer.token, &shop, "/item/3").await;
    expect_denied_for_good(&reply, "over_max_per_payment");

    let versions: Vec<(Value, Value)> = audit(&server, tenant, "limit=10")
        .await
        .iter()
        .map(|e| (e["policyVersion"].clone(), e["outcome"].clone()))
        .collect();
    assert_eq!(
        versions,
        [
            (json!(3), json!("deny")),
            (json!(2), json!("allow")),
            (json!(1), json!("deny"))
        ]
    );
    // Another tenant can neither read nor set the policy.
    let stranger = server.create_tenant("stranger").await;
    server
        .get(&format!("/v1/agents/{agent}/policy"), &stranger.key)
        .await
        .expect_problem(404, &tp("not-found"));
    put_policy(&server, &stranger, agent, json!({}))
        .await
        .expect_problem(404, &tp("not-found"));
    assert_eq!(current_policy(&server, tenant, agent).await["version"], 3);
    server.assert_ledger_consistent().await;
}

async fn an_invalid_policy_is_a_400_naming_the_field_and_changes_nothing(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, None).await;
    server.price(&shop, "GET", "/item/{n}", 150, None).await;
    let tenant = &payer.tenant;
    let agent = payer.agent_id.as_str();
    let valid = json!({"maxPerPayment": [usd(100)], "timeZone": "Europe/Berlin"});
    set_policy(&server, tenant, agent, valid.clone()).await;
    let day = |amount: Value| json!({"budgets": [{"amount": amount, "currency": "usd", "period": "day"}]});

    // (policy, a word the detail must hold)
    let invalid = [
        (json!({"maxPerPaymnt": [usd(100)]}), "maxPerPaymnt"),
        (
            json!({"maxPerPayment": [{"amount": "12.5", "currency": "usd"}]}),
            "maxPerPayment",
        ),
        (
            json!({"maxPerPayment": [{"amount": "-1", "currency": "usd"}]}),
            "maxPerPayment",
        ),
        (
            json!({"maxPerPayment": [{"amount": 100, "currency": "usd"}]}),
            "maxPerPayment",
        ),
        (day(json!("ten")), "budgets"),
        (day(json!("0100")), "budgets"),
        (json!({"timeZone": "Mars/Olympus_Mons"}), "timeZone"),
        (json!({"timeZone": "asia/kolkata"}), "timeZone"),
        (
            json!({"budgets": [{"amount": "1", "currency": "usd", "period": "rolling"}]}),
            "windowSeconds",
        ),
        (
            json!({"budgets": [{"amount": "1", "currency": "usd", "period": "fortnight"}]}),
            "period",
        ),
        (json!({"velocity": {"maxPayments": 0}}), "maxPayments"),
        (json!({"currencies": ["USD"]}), "currencies"),
        (
            json!({"merchants": {"deny": ["shop"], "block": ["x"]}}),
            "block",
        ),
    ];
    // Every refusal that does not name its field, reported together.
    let mut unnamed = Vec::new();
    for (policy, field) in invalid {
        let reply = put_policy(&server, tenant, agent, policy.clone()).await;
        let problem = reply.expect_problem(400, &tp("invalid-request"));
        let detail = problem["detail"].as_str().unwrap();
        if !detail.contains(field) {
            unnamed.push(format!("{policy} -> {detail:?} (no `{field}`)"));
        }
        // The dry run refuses it the same way.
        let reply = server
            .post(
                &format!("/v1/policies/{agent}/dry-run"),
                &tenant.key,
                json!({"policy": policy}),
            )
            .await;
        reply.expect_problem(400, &tp("invalid-request"));
    }

    let current = current_policy(&server, tenant, agent).await;
    assert_eq!(current["version"], 1, "{current}");
    assert_eq!(current["policy"], valid, "{current}");
    let agent_row = server
        .get(&format!("/v1/agents/{agent}"), &tenant.key)
        .await
        .expect_status(200)
        .json();
    assert_eq!(agent_row["policyVersion"], 1, "{agent_row}");
    // Version 1 still decides.
    let reply = pay_at(&server, &payer.token, &shop, "/item/1").await;
    expect_denied_for_good(&reply, "over_max_per_payment");
    let entry = &audit(&server, tenant, "limit=1").await[0];
    assert_eq!(entry["policyVersion"], 1, "{entry}");

    // Invalid token limits issue no token.
    let before = tokens_of(&server, tenant, agent).await.len();
    for limits in [
        json!({"maxPerPayment": [{"amount": "1.5", "currency": "usd"}]}),
        json!({"methods": []}),
        json!({"merchantsAllow": []}),
        json!({"budgt": []}),
    ] {
        server
            .post(
                &format!("/v1/agents/{agent}/tokens"),
                &tenant.key,
                json!({"limits": limits}),
            )
            .await
            .expect_problem(400, &tp("invalid-request"));
        mint_child(&server, &payer.token, json!({"limits": limits}))
            .await
            .expect_problem(400, &tp("invalid-request"));
    }
    assert_eq!(tokens_of(&server, tenant, agent).await.len(), before);
    server.assert_ledger_consistent().await;
    // Last, so that a detail missing its field does not hide whether anything changed.
    assert!(
        unnamed.is_empty(),
        "refusals that do not name the field:\n{}",
        unnamed.join("\n")
    );
}

async fn a_policy_body_that_is_not_an_object_is_refused_and_changes_nothing(db: &TestDb) {
    let Scene {
        server,
        shop,
        payer,
    } = scene(db, None).await;
    server.price(&shop, "GET", "/item/{n}", 150, None).await;
    let tenant = &payer.tenant;
    let agent = payer.agent_id.as_str();
    let valid = json!({"maxPerPayment": [usd(100)]});
    set_policy(&server, tenant, agent, valid.clone()).await;

    // A policy is an object: an array, a string, a number or null is no policy (serde would
    // read `[]` as a struct with every member absent, that is `{}`: allow everything).
    let mut accepted = Vec::new();
    for body in [
        json!([]),
        json!([[]]),
        json!("policy"),
        json!(7),
        json!(null),
    ] {
        let reply = put_policy(&server, tenant, agent, body.clone()).await;
        if reply.status != 400 {
            accepted.push(format!("PUT {body} -> {reply:?}"));
        } else {
            reply.expect_problem(400, &tp("invalid-request"));
        }
        let reply = server
            .post(
                &format!("/v1/policies/{agent}/dry-run"),
                &tenant.key,
                json!({"policy": body}),
            )
            .await;
        if reply.status != 400 {
            accepted.push(format!("dry-run {body} -> {reply:?}"));
        }
    }
    let current = current_policy(&server, tenant, agent).await;
    let reply = pay_at(&server, &payer.token, &shop, "/item/1").await;
    assert!(
        accepted.is_empty(),
        "bodies that are not a policy were accepted:\n{}",
        accepted.join("\n")
    );
    assert_eq!(current["version"], 1, "{current}");
    assert_eq!(current["policy"], valid, "{current}");
    expect_denied_for_good(&reply, "over_max_per_payment");
    server.assert_ledger_consistent().await;
}
