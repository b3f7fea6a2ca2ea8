//! Black-box tests of the agent owner's CLI (`turnpike agent|policy|approvals|audit`): the real
//! binary as a separate process against the real `turnpike serve` over real HTTP, on SQLite and
//! PostgreSQL. What the CLI claims is checked against the server itself: tokens it mints pay,
//! tokens it revokes are refused, policies it sets are enforced, and bad input changes nothing.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Output, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};
use support::{DeadPort, Reply, Server, TP_PROBLEMS, Tenant, decision_header, describe};
use tokio::io::AsyncWriteExt;
use turnpike_store::on_both_databases;
use turnpike_store::testing::TestDb;

on_both_databases!(
    an_owner_creates_an_agent_sets_its_policy_mints_a_token_and_revokes_it_from_the_cli,
    revoking_a_token_revokes_its_children_and_revoke_all_revokes_the_rest,
    a_dry_run_lists_the_decisions_a_proposed_policy_would_change_and_writes_nothing,
    held_payments_are_listed_approved_and_rejected_from_the_cli_and_audited,
    bad_input_exits_1_with_one_error_line_and_changes_nothing,
);

/// A usd price of the merchant's `GET /item/{n}`.
const ITEM_PRICE: u128 = 10;
/// A usd price of the merchant's `GET /big/{n}`.
const BIG_PRICE: u128 = 50;

/// A server, a merchant (`shop`) selling items and big items, and an owner organisation
/// (`owner`, credited) whose agents pay for them.
struct Scene {
    server: Server,
    merchant: Tenant,
    owner: Tenant,
    dir: tempfile::TempDir,
}

/// A `turnpike` command with none of the settings the tests choose inherited.
fn turnpike() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnpike"));
    for var in [
        "TURNPIKE_API",
        "TURNPIKE_API_KEY",
        "TURNPIKE_AGENT_TOKEN",
        "TURNPIKE_ADMIN_TOKEN",
        "DATABASE_URL",
        "TURNPIKE_DATA_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn").kill_on_drop(true);
    cmd
}

/// `turnpike ARGS` against `api` as `key` (given by TURNPIKE_API and TURNPIKE_API_KEY), with
/// `stdin` written to its standard input.
async fn cli(api: &str, key: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = turnpike();
    cmd.args(args)
        .env("TURNPIKE_API", api)
        .env("TURNPIKE_API_KEY", key)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run the turnpike binary");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
        drop(pipe);
    }
    child.wait_with_output().await.unwrap()
}

/// Stdout of a run that must exit 0.
#[track_caller]
fn succeeded(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", describe(out));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The one stderr line of a run that must exit 1 having printed nothing on stdout; `secrets`
/// must not appear in it.
#[track_caller]
fn failed(out: &Output, secrets: &[&str]) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", describe(out));
    assert!(out.stdout.is_empty(), "{}", describe(out));
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    let line = stderr.strip_suffix('\n').unwrap_or(&stderr);
    assert!(
        line.starts_with("error: ") && !line.contains('\n'),
        "not one `error:` line: {}",
        describe(out)
    );
    for secret in secrets {
        assert!(!line.contains(secret), "a secret in the error: {line}");
    }
    line.to_owned()
}

/// The value of the `label  value` line of human output.
#[track_caller]
fn field(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(label)
                .filter(|rest| rest.starts_with("  "))
                .map(|rest| rest.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{text}"))
}

impl Scene {
    async fn start(db: &TestDb) -> Self {
        let server = Server::start(db).await;
        let merchant = server.create_tenant("shop").await;
        server
            .price(&merchant, "GET", "/item/{n}", ITEM_PRICE, None)
            .await;
        server
            .price(&merchant, "GET", "/big/{n}", BIG_PRICE, None)
            .await;
        let owner = server.create_tenant("owner").await;
        server.credit(&owner, 100_000).await;
        Self {
            server,
            merchant,
            owner,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `turnpike ARGS` as the owner.
    async fn run(&self, args: &[&str]) -> Output {
        cli(&self.server.url, &self.owner.key, args, None).await
    }

    /// Stdout of `turnpike ARGS`, which must succeed.
    async fn ok(&self, args: &[&str]) -> String {
        succeeded(&self.run(args).await)
    }

    /// `turnpike ARGS --json`, which must succeed: the JSON it printed.
    async fn ok_json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
        let out = self.ok(&args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// The error line of `turnpike ARGS`, which must fail without showing the owner's key.
    async fn err(&self, args: &[&str]) -> String {
        failed(&self.run(args).await, &[&self.owner.key])
    }

    /// A file in the scene's directory holding `text`; its path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// `turnpike agent create`: the new agent's id, read from the human output.
    async fn create_agent(&self, name: &str) -> String {
        let out = self.ok(&["agent", "create", "--name", name]).await;
        assert_eq!(field(&out, "name"), name, "{out}");
        assert_eq!(field(&out, "policy"), "none", "{out}");
        let id = field(&out, "agent");
        assert!(id.starts_with("agt_"), "{out}");
        id
    }

    /// `turnpike agent token AGENT --json EXTRA...`: (token id, token).
    async fn mint(&self, agent_id: &str, extra: &[&str]) -> (String, String) {
        let args: Vec<&str> = ["agent", "token", agent_id]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let token = self.ok_json(&args).await;
        (
            token["id"].as_str().unwrap().to_owned(),
            token["token"].as_str().unwrap().to_owned(),
        )
    }

    /// The `WWW-Authenticate` values of a fresh challenge for `GET path`.
    async fn challenge(&self, path: &str) -> Vec<String> {
        let decision = self.server.challenge(&self.merchant, "GET", path).await;
        decision_header(&decision, "www-authenticate")
    }

    /// Challenge `GET path` and pay it with `token` over HTTP.
    async fn pay(&self, token: &str, path: &str) -> Reply {
        let www = self.challenge(path).await;
        self.server.pay(token, &www).await
    }

    /// The agent's current policy as the server reports it.
    async fn policy(&self, agent_id: &str) -> Value {
        self.server
            .get(&format!("/v1/agents/{agent_id}/policy"), &self.owner.key)
            .await
            .expect_status(200)
            .json()
    }

    /// How many decisions the audit log holds for the agent.
    async fn audit_len(&self, agent_id: &str) -> usize {
        self.server
            .get(
                &format!("/v1/audit?agentId={agent_id}&limit=1000"),
                &self.owner.key,
            )
            .await
            .expect_status(200)
            .json()["data"]
            .as_array()
            .unwrap()
            .len()
    }
}

/// A refusal of `/v1/agent/pay` by the policy, with this reason.
#[track_caller]
fn assert_policy_denied(reply: &Reply, reason: &str) {
    let problem = reply.expect_problem(403, &format!("{TP_PROBLEMS}policy-denied"));
    assert_eq!(problem["reason"], reason, "{reply:?}");
}

/// The claims of an agent token (a JWS), decoded without verifying.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn an_owner_creates_an_agent_sets_its_policy_mints_a_token_and_revokes_it_from_the_cli(
    db: &TestDb,
) {
    let scene = Scene::start(db).await;
    let agent_id = scene.create_agent("research bot").await;

    let list = scene.ok(&["agent", "list"]).await;
    let row = list.lines().find(|l| l.starts_with(&agent_id)).unwrap();
    assert!(
        row.contains("research bot") && row.contains("none"),
        "{list}"
    );
    let list = scene.ok_json(&["agent", "list"]).await;
    assert_eq!(list["data"][0]["id"], agent_id.as_str(), "{list}");
    assert_eq!(list["data"][0]["policyVersion"], 0, "{list}");

    // The policy from a file round-trips.
    let policy = json!({
        "timeZone": "Europe/Berlin",
        "maxPerPayment": [{"amount": "100", "currency": "usd"}],
        "budgets": [{"amount": "1000", "currency": "usd", "period": "day"}],
        "merchants": {"allow": [scene.merchant.realm]},
        "methods": ["turnpike"],
        "currencies": ["usd"],
        "velocity": {"maxPayments": 50, "windowSeconds": 60},
        "approvalAbove": [{"amount": "500", "currency": "usd"}]
    });
    let path = scene.file(
        "policy.json",
        &serde_json::to_string_pretty(&policy).unwrap(),
    );
    let out = scene
        .ok(&["policy", "set", &agent_id, "--file", &path])
        .await;
    assert_eq!(out, format!("agent {agent_id}: policy version 1 set\n"));
    let shown = scene.ok_json(&["policy", "show", &agent_id]).await;
    assert_eq!(shown["version"], 1, "{shown}");
    assert_eq!(shown["agentId"], agent_id.as_str(), "{shown}");
    assert_eq!(shown["policy"], policy, "{shown}");
    assert_eq!(shown, scene.policy(&agent_id).await);
    let human = scene.ok(&["policy", "show", &agent_id]).await;
    assert_eq!(field(&human, "version"), "1", "{human}");
    assert_eq!(field(&human, "time zone"), "Europe/Berlin", "{human}");
    assert_eq!(field(&human, "max per payment"), "100 usd", "{human}");
    assert_eq!(field(&human, "budget"), "1000 usd per day", "{human}");
    assert_eq!(field(&human, "merchants allowed"), "shop", "{human}");
    assert_eq!(
        field(&human, "velocity"),
        "at most 50 payments per 60 s",
        "{human}"
    );
    assert_eq!(field(&human, "approval above"), "500 usd", "{human}");
    let shown = scene.ok(&["agent", "show", &agent_id]).await;
    assert_eq!(field(&shown, "policy"), "version 1", "{shown}");

    // A token with limits from a file plus a cap, over explicit --api and --key.
    let limits = scene.file(
        "limits.json",
        r#"{"budgets": [{"amount": "60", "currency": "usd", "period": "day"}]}"#,
    );
    let out = cli(
        "http://127.0.0.1:9",
        "tp_sk_not-the-one-used",
        &[
            "agent",
            "token",
            &agent_id,
            "--limits-file",
            &limits,
            "--max-per-payment",
            "20:usd",
            "--ttl-s",
            "3600",
            "--api",
            &scene.server.url,
            "--key",
            &scene.owner.key,
        ],
        None,
    )
    .await;
    let human = succeeded(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "the token is shown once: store it now\n"
    );
    let token_id = field(&human, "token id");
    let token = field(&human, "token");
    assert!(token_id.starts_with("tok_"), "{human}");
    assert_eq!(field(&human, "agent"), agent_id, "{human}");
    assert_eq!(field(&human, "max per payment"), "20 usd", "{human}");
    assert_eq!(field(&human, "budget"), "60 usd per day", "{human}");
    let claims = claims(&token);
    assert_eq!(claims["jti"], token_id.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    let tokens = scene.ok_json(&["agent", "tokens", &agent_id]).await;
    assert_eq!(
        tokens["data"][0]["limits"],
        json!({
            "maxPerPayment": [{"amount": "20", "currency": "usd"}],
            "budgets": [{"amount": "60", "currency": "usd", "period": "day"}]
        }),
        "{tokens}"
    );

    // The token pays, within its own limits.
    scene.pay(&token, "/item/1").await.expect_status(200);
    assert_policy_denied(&scene.pay(&token, "/big/1").await, "over_max_per_payment");

    // Revoked from the CLI, it is refused at once.
    let out = scene
        .ok(&["agent", "revoke", &agent_id, "--token", &token_id])
        .await;
    assert!(
        out.starts_with(&format!(
            "revoked token {token_id} and every token minted under it (revoked at "
        )),
        "{out}"
    );
    scene
        .pay(&token, "/item/2")
        .await
        .expect_problem(401, &format!("{TP_PROBLEMS}unauthorized"));
    let tokens = scene.ok(&["agent", "tokens", &agent_id]).await;
    let row = tokens.lines().find(|l| l.starts_with(&token_id)).unwrap();
    assert_eq!(
        row.split_whitespace().nth(4).map(|r| r.len()),
        Some(24),
        "{tokens}"
    );
    scene.server.assert_ledger_consistent().await;
}

async fn revoking_a_token_revokes_its_children_and_revoke_all_revokes_the_rest(db: &TestDb) {
    let scene = Scene::start(db).await;
    let agent_id = scene.create_agent("fleet").await;
    let (parent_id, parent) = scene.mint(&agent_id, &[]).await;
    let (_, sibling) = scene
        .mint(&agent_id, &["--max-per-payment", "30:usd"])
        .await;
    let child = scene
        .server
        .post("/v1/agent/tokens", &parent, json!({}))
        .await
        .expect_status(201)
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for (n, token) in [&parent, &sibling, &child].into_iter().enumerate() {
        scene
            .pay(token, &format!("/item/{n}"))
            .await
            .expect_status(200);
    }

    // Usage error: neither --token nor --all.
    let out = scene.run(&["agent", "revoke", &agent_id]).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    scene
        .ok(&["agent", "revoke", &agent_id, "--token", &parent_id])
        .await;
    for token in [&parent, &child] {
        scene
            .pay(token, "/item/10")
            .await
            .expect_problem(401, &format!("{TP_PROBLEMS}unauthorized"));
    }
    scene.pay(&sibling, "/item/11").await.expect_status(200);

    let out = scene.ok(&["agent", "revoke", &agent_id, "--all"]).await;
    assert_eq!(out, format!("revoked 1 live token of agent {agent_id}\n"));
    scene
        .pay(&sibling, "/item/12")
        .await
        .expect_problem(401, &format!("{TP_PROBLEMS}unauthorized"));
    let again = scene
        .ok_json(&["agent", "revoke", &agent_id, "--all"])
        .await;
    assert_eq!(again, json!({"revoked": 0}));
    let tokens = scene.ok_json(&["agent", "tokens", &agent_id]).await;
    let tokens = tokens["data"].as_array().unwrap();
    assert_eq!(tokens.len(), 3);
    assert!(
        tokens.iter().all(|t| t["revokedAt"].is_string()),
        "{tokens:?}"
    );
    scene.server.assert_ledger_consistent().await;
}

async fn a_dry_run_lists_the_decisions_a_proposed_policy_would_change_and_writes_nothing(
    db: &TestDb,
) {
    let scene = Scene::start(db).await;
    let agent_id = scene.create_agent("shopper").await;
    let (_, token) = scene.mint(&agent_id, &[]).await;
    // Four payments with no policy, then one refused under a 30 usd cap (version 1).
    for path in ["/item/1", "/big/1", "/item/2", "/big/2"] {
        scene.pay(&token, path).await.expect_status(200);
    }
    scene
        .ok(&[
            "policy",
            "set",
            &agent_id,
            "--policy",
            r#"{"maxPerPayment":[{"amount":"30","currency":"usd"}]}"#,
        ])
        .await;
    assert_policy_denied(&scene.pay(&token, "/big/3").await, "over_max_per_payment");
    let audited = scene.audit_len(&agent_id).await;
    assert_eq!(audited, 5);

    // Stricter: the two big payments that went through would have been refused.
    let stricter = scene.file(
        "stricter.json",
        r#"{"maxPerPayment":[{"amount":"20","currency":"usd"}]}"#,
    );
    let out = scene
        .ok(&["policy", "dry-run", &agent_id, "--file", &stricter])
        .await;
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("replayed 5 recorded decisions under the proposed policy: 2 would change"),
        "{out}"
    );
    assert!(lines.next().unwrap().starts_with("AT "), "{out}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{out}");
    for row in rows {
        assert!(row.contains(" 50 usd "), "{out}");
        assert!(row.contains(&scene.merchant.id), "{out}");
        assert!(
            row.contains(" allow → deny (over_max_per_payment) "),
            "{out}"
        );
    }
    let report = scene
        .ok_json(&["policy", "dry-run", &agent_id, "--file", &stricter])
        .await;
    assert_eq!(report["replayed"], 5, "{report}");
    let changed = report["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 2, "{report}");
    for change in changed {
        assert_eq!(change["amount"], "50");
        assert_eq!(change["was"], json!({"outcome": "allow", "reason": null}));
        assert_eq!(
            change["now"],
            json!({"outcome": "deny", "reason": "over_max_per_payment"})
        );
    }

    // Only the latest decisions with --last; the policy may come on stdin.
    let report = succeeded(
        &cli(
            &scene.server.url,
            &scene.owner.key,
            &[
                "policy", "dry-run", &agent_id, "--file", "-", "--last", "2", "--json",
            ],
            Some(r#"{"maxPerPayment":[{"amount":"20","currency":"usd"}]}"#),
        )
        .await,
    );
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["replayed"], 2, "{report}");
    assert_eq!(report["changed"].as_array().unwrap().len(), 1, "{report}");

    // Looser: the refused one would have gone through.
    let out = scene
        .ok(&["policy", "dry-run", &agent_id, "--policy", "{}"])
        .await;
    assert!(
        out.starts_with(
            "replayed 5 recorded decisions under the proposed policy: 1 would change\n"
        ),
        "{out}"
    );
    assert!(
        out.contains(" deny (over_max_per_payment) → allow "),
        "{out}"
    );
    // The refusal under the current policy stays a refusal under it.
    let out = scene
        .ok(&[
            "policy",
            "dry-run",
            &agent_id,
            "--last",
            "1",
            "--policy",
            r#"{"maxPerPayment":[{"amount":"30","currency":"usd"}]}"#,
        ])
        .await;
    assert_eq!(
        out,
        "replayed 1 recorded decision under the proposed policy: none would change\n"
    );

    // A dry run writes nothing.
    assert_eq!(scene.policy(&agent_id).await["version"], 1);
    assert_eq!(scene.audit_len(&agent_id).await, audited);
    scene.server.assert_ledger_consistent().await;
}

async fn held_payments_are_listed_approved_and_rejected_from_the_cli_and_audited(db: &TestDb) {
    let scene = Scene::start(db).await;
    let agent_id = scene.create_agent("careful").await;
    scene
        .ok(&[
            "policy",
            "set",
            &agent_id,
            "--policy",
            r#"{"approvalAbove":[{"amount":"30","currency":"usd"}]}"#,
        ])
        .await;
    let (_, token) = scene.mint(&agent_id, &[]).await;
    let mut held = Vec::new();
    for path in ["/big/1", "/big/2"] {
        let www = scene.challenge(path).await;
        let problem = scene
            .server
            .pay(&token, &www)
            .await
            .expect_problem(202, &format!("{TP_PROBLEMS}approval-required"));
        held.push((problem["approvalId"].as_str().unwrap().to_owned(), www));
    }
    let (first, first_www) = &held[0];
    let (second, _) = &held[1];

    let out = scene.ok(&["approvals", "list", "--state", "pending"]).await;
    for (id, _) in &held {
        let row = out.lines().find(|l| l.starts_with(id.as_str())).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &cells[1..6],
            &["pending", &agent_id, "50", "usd", "shop"],
            "{out}"
        );
    }

    let out = scene.ok(&["approvals", "approve", first]).await;
    assert_eq!(field(&out, "approval"), *first, "{out}");
    assert_eq!(field(&out, "state"), "approved", "{out}");
    assert_eq!(field(&out, "amount"), "50 usd", "{out}");
    scene
        .server
        .post(
            "/v1/agent/pay",
            &token,
            json!({"challenges": first_www, "approvalId": first}),
        )
        .await
        .expect_status(200);

    let rejected = scene.ok_json(&["approvals", "reject", second]).await;
    assert_eq!(rejected["state"], "rejected", "{rejected}");
    let line = scene.err(&["approvals", "approve", second]).await;
    assert_eq!(
        line,
        "error: the approval is rejected, not pending (409 approval-not-pending)"
    );
    let used = scene
        .ok_json(&["approvals", "list", "--state", "used"])
        .await;
    let used = used["data"].as_array().unwrap();
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0]["id"], first.as_str());
    assert_eq!(
        scene.ok(&["approvals", "list", "--state", "expired"]).await,
        "no approvals\n"
    );
    let out = scene.run(&["approvals", "list", "--state", "bogus"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // The audit log, filtered.
    let out = scene
        .ok(&["audit", "--agent", &agent_id, "--outcome", "needs_approval"])
        .await;
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows.iter()
            .all(|r| r.contains(" needs_approval (approval_required) ") && r.contains(" 50 usd ")),
        "{out}"
    );
    let all = scene
        .ok_json(&["audit", "--agent", &agent_id, "--limit", "10"])
        .await;
    let all = all["data"].as_array().unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0]["outcome"], "allow");
    assert_eq!(all[0]["approvalId"], first.as_str());
    let one = scene
        .ok_json(&["audit", "--agent", &agent_id, "--limit", "1"])
        .await;
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        scene.ok(&["audit", "--outcome", "deny"]).await,
        "no decisions\n"
    );
    scene.server.assert_ledger_consistent().await;
}

async fn bad_input_exits_1_with_one_error_line_and_changes_nothing(db: &TestDb) {
    let scene = Scene::start(db).await;
    let agent_id = scene.create_agent("steady").await;
    let policy = json!({"maxPerPayment": [{"amount": "100", "currency": "usd"}]});
    scene
        .ok(&["policy", "set", &agent_id, "--policy", &policy.to_string()])
        .await;
    let unknown = "agt_aaaaaaaaaaaaaaaaaaaa";

    // Not JSON: refused before any request.
    let line = scene
        .err(&["policy", "set", &agent_id, "--policy", "{\"budgets\": ["])
        .await;
    assert!(
        line.starts_with("error: the policy on the command line is not valid JSON: "),
        "{line}"
    );
    let path = scene.file("list.json", "[1, 2]");
    let line = scene
        .err(&["policy", "set", &agent_id, "--file", &path])
        .await;
    assert_eq!(
        line,
        format!("error: the policy on {path} must be a JSON object")
    );
    let missing = scene.dir.path().join("missing.json");
    let line = scene
        .err(&[
            "policy",
            "set",
            &agent_id,
            "--file",
            &missing.display().to_string(),
        ])
        .await;
    assert!(
        line.starts_with(&format!(
            "error: reading the policy from {}: ",
            missing.display()
        )),
        "{line}"
    );

    // JSON the server refuses: its detail, naming the field.
    let path = scene.file(
        "bad.json",
        r#"{"budgets":[{"amount":"10","currency":"usd","period":"fortnight"}]}"#,
    );
    let line = scene
        .err(&["policy", "set", &agent_id, "--file", &path])
        .await;
    assert!(
        line.starts_with("error: policy.budgets[0].period: ") && line.contains("fortnight"),
        "{line}"
    );
    assert!(line.ends_with(" (400 invalid-request)"), "{line}");
    let line = scene
        .err(&[
            "policy",
            "set",
            &agent_id,
            "--policy",
            r#"{"maxPerPaymnet":[]}"#,
        ])
        .await;
    assert!(line.contains("maxPerPaymnet"), "{line}");
    let line = scene
        .err(&[
            "policy",
            "dry-run",
            &agent_id,
            "--policy",
            r#"{"velocity":{}}"#,
        ])
        .await;
    assert!(line.ends_with(" (400 invalid-request)"), "{line}");

    // Unknown agents and tokens.
    let not_found = "error: no such agent (404 not-found)";
    for args in [
        &["policy", "set", unknown, "--policy", "{}"][..],
        &["policy", "show", unknown],
        &["policy", "dry-run", unknown, "--policy", "{}"],
        &["agent", "show", unknown],
        &["agent", "token", unknown],
        &["agent", "tokens", unknown],
        &["agent", "revoke", unknown, "--all"],
    ] {
        assert_eq!(scene.err(args).await, not_found, "{args:?}");
    }
    assert_eq!(
        scene
            .err(&[
                "agent",
                "revoke",
                &agent_id,
                "--token",
                "tok_aaaaaaaaaaaaaaaaaaaa"
            ])
            .await,
        "error: no such agent token (404 not-found)"
    );
    assert_eq!(
        scene
            .err(&["approvals", "approve", "apr_aaaaaaaaaaaaaaaaaaaa"])
            .await,
        "error: no such approval (404 not-found)"
    );

    // Bad token options.
    let line = scene
        .err(&["agent", "token", &agent_id, "--max-per-payment", "5.00:usd"])
        .await;
    assert!(line.contains("expected AMOUNT:CURRENCY"), "{line}");
    let line = scene
        .err(&[
            "agent",
            "token",
            &agent_id,
            "--limits",
            r#"{"expiresAtS": 1}"#,
        ])
        .await;
    assert!(
        line.contains("ttlS") && line.ends_with(" (400 invalid-request)"),
        "{line}"
    );
    let line = scene
        .err(&[
            "agent",
            "token",
            &agent_id,
            "--limits",
            r#"{"maxPerPayment":[{"amount":"1","currency":"usd"}]}"#,
            "--max-per-payment",
            "5:usd",
        ])
        .await;
    assert_eq!(
        line,
        "error: --max-per-payment: the limits already cap usd payments"
    );
    let out = scene
        .run(&["agent", "token", &agent_id, "--ttl-s", "0"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // An agent token where an id or the key belongs is refused without being shown.
    let (_, token) = scene.mint(&agent_id, &[]).await;
    let line = scene.err(&["policy", "show", &token]).await;
    assert!(!line.contains(&token), "{line}");
    let out = cli(&scene.server.url, &token, &["agent", "list"], None).await;
    let line = failed(&out, &[&token]);
    assert_eq!(
        line,
        "error: --key (or TURNPIKE_API_KEY) must be a tenant secret API key (tp_sk_...)"
    );
    let wrong = "tp_sk_thisKeyWasNeverIssuedByTheServer0000000";
    let out = cli(&scene.server.url, wrong, &["agent", "list"], None).await;
    assert_eq!(
        failed(&out, &[wrong]),
        "error: unknown or revoked API key (401 unauthorized)"
    );
    // Nothing to look at: the key is required.
    let mut cmd = turnpike();
    let out = cmd
        .args(["agent", "list", "--api", &scene.server.url])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // Nothing changed: the first policy, one agent, and only the token minted above.
    let current = scene.policy(&agent_id).await;
    assert_eq!(
        (current["version"].clone(), current["policy"].clone()),
        (json!(1), policy)
    );
    let agents = scene.ok_json(&["agent", "list"]).await;
    assert_eq!(agents["data"].as_array().unwrap().len(), 1, "{agents}");
    let tokens = scene.ok_json(&["agent", "tokens", &agent_id]).await;
    assert_eq!(tokens["data"].as_array().unwrap().len(), 1, "{tokens}");
}

#[tokio::test]
async fn an_unreachable_server_is_one_error_line_without_the_key() {
    let dead = DeadPort::reserve();
    let key = "tp_sk_secretSecretSecretSecretSecretSecret00000";
    for args in [
        &["agent", "list"][..],
        &["policy", "set", "agt_x", "--policy", "{}"],
        &["audit", "--limit", "5"],
    ] {
        let out = cli(&dead.url, key, args, None).await;
        let line = failed(&out, &[key]);
        assert!(
            line.starts_with(&format!(
                "error: no answer from the Turnpike API at {}: ",
                dead.url
            )),
            "{line}"
        );
    }
    let out = cli("ftp://example.com", key, &["agent", "list"], None).await;
    assert_eq!(
        failed(&out, &[key]),
        "error: invalid --api URL \"ftp://example.com\": only http and https are supported"
    );
}
