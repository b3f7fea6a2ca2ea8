//! `turnpike policy ...`: an agent's spend policy (`/v1/agents/{id}/policy`) and its dry run
//! over recorded decisions (`/v1/policies/{id}/dry-run`).

use std::path::PathBuf;

use clap::{ArgGroup, Subcommand};
use serde_json::{Value, json};
use turnpike_server::http::spend::DRY_RUN_LAST_MAX;

use super::render::{fields, items, rules, show, table, text};
use super::{Api, ApiArgs, checked_id, json_input};

/// `turnpike policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Replace an agent's policy (a new version) and print the version.
    Set(SetArgs),
    /// Show an agent's current policy.
    Show(ShowArgs),
    /// Replay the agent's last recorded decisions under a proposed policy and list those that
    /// would change; writes nothing.
    DryRun(DryRunArgs),
}

/// Where a policy document comes from (exactly one).
#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("source").required(true).args(["file", "policy"])))]
pub struct PolicySource {
    /// The policy as a JSON file (`-`: stdin).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// The policy as inline JSON, e.g. `{"maxPerPayment":[{"amount":"500","currency":"usd"}]}`.
    #[arg(long, value_name = "JSON")]
    pub policy: Option<String>,
}

impl PolicySource {
    fn read(&self) -> anyhow::Result<Value> {
        json_input(self.file.as_deref(), self.policy.as_deref(), "policy")
    }
}

/// Options of `turnpike policy set`.
#[derive(Debug, Clone, clap::Args)]
pub struct SetArgs {
    /// The agent (`agt_...`).
    pub agent_id: String,
    #[command(flatten)]
    pub source: PolicySource,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Options of `turnpike policy show`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// The agent (`agt_...`).
    pub agent_id: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Options of `turnpike policy dry-run`.
#[derive(Debug, Clone, clap::Args)]
pub struct DryRunArgs {
    /// The agent (`agt_...`).
    pub agent_id: String,
    #[command(flatten)]
    pub source: PolicySource,
    /// How many of the agent's latest decisions to replay (server default: 100).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(i64).range(1..=DRY_RUN_LAST_MAX)
    )]
    pub last: Option<i64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Run one `turnpike policy` command.
pub async fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Set(args) => set(args).await,
        PolicyCommand::Show(args) => show_policy(args).await,
        PolicyCommand::DryRun(args) => dry_run(args).await,
    }
}

async fn set(args: SetArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let agent_id = checked_id(&args.agent_id, "AGENT_ID")?;
    let policy = args.source.read()?;
    let answer = api
        .put(&["v1", "agents", agent_id, "policy"], &policy)
        .await?;
    api.print(&answer, |v| {
        format!(
            "agent {}: policy version {} set\n",
            text(v, "agentId"),
            text(v, "version")
        )
    })
}

async fn show_policy(args: ShowArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let agent_id = checked_id(&args.agent_id, "AGENT_ID")?;
    let answer = api.get(&["v1", "agents", agent_id, "policy"], &[]).await?;
    api.print(&answer, policy_text)
}

async fn dry_run(args: DryRunArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let agent_id = checked_id(&args.agent_id, "AGENT_ID")?;
    let mut body = json!({ "policy": args.source.read()? });
    if let Some(last) = args.last {
        body["last"] = last.into();
    }
    let answer = api
        .post(&["v1", "policies", agent_id, "dry-run"], &body)
        .await?;
    api.print(&answer, dry_run_text)
}

fn policy_text(v: &Value) -> String {
    let mut rows = vec![("agent", text(v, "agentId"))];
    if v.get("version").and_then(Value::as_i64) == Some(0) {
        rows.push((
            "policy",
            "none (version 0): the agent's tokens' own limits alone apply".to_owned(),
        ));
        return fields(&rows);
    }
    rows.push(("version", text(v, "version")));
    rows.push(("created", text(v, "createdAt")));
    let rules = rules(v.get("policy").unwrap_or(&Value::Null));
    if rules.is_empty() {
        rows.push(("rules", "none: everything the tokens allow".to_owned()));
    }
    rows.extend(rules);
    fields(&rows)
}

/// `allow` or `deny (budget_exhausted)`.
fn outcome(v: &Value) -> String {
    match v.get("reason").filter(|r| !r.is_null()) {
        Some(reason) => format!("{} ({})", text(v, "outcome"), show(reason)),
        None => text(v, "outcome"),
    }
}

fn dry_run_text(v: &Value) -> String {
    let replayed = v.get("replayed").and_then(Value::as_u64).unwrap_or(0);
    let changed = items(&v["changed"]);
    let noun = if replayed == 1 {
        "decision"
    } else {
        "decisions"
    };
    let mut out = format!("replayed {replayed} recorded {noun} under the proposed policy: ");
    if changed.is_empty() {
        out.push_str("none would change\n");
        return out;
    }
    out.push_str(&format!("{} would change\n", changed.len()));
    let rows: Vec<Vec<String>> = changed
        .iter()
        .map(|c| {
            vec![
                text(c, "at"),
                format!("{} {}", text(c, "amount"), text(c, "currency")),
                text(c, "merchant"),
                format!(
                    "{} → {}",
                    outcome(c.get("was").unwrap_or(&Value::Null)),
                    outcome(c.get("now").unwrap_or(&Value::Null))
                ),
                text(c, "auditId"),
            ]
        })
        .collect();
    out.push_str(&table(
        &["AT", "AMOUNT", "MERCHANT", "WAS → NOW", "AUDIT ID"],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_lists_each_changed_decision_as_was_to_now() {
        let v = json!({"replayed": 3, "changed": [{
            "auditId": "aud_1", "at": "2030-01-01T00:00:00.000Z", "challengeId": "ch",
            "amount": "50", "currency": "usd", "merchant": "ten_shop",
            "was": {"outcome": "allow", "reason": null},
            "now": {"outcome": "deny", "reason": "over_max_per_payment"}
        }]});
        assert_eq!(
            dry_run_text(&v),
            "replayed 3 recorded decisions under the proposed policy: 1 would change\n\
             AT                        AMOUNT  MERCHANT  WAS → NOW                            AUDIT ID\n\
             2030-01-01T00:00:00.000Z  50 usd  ten_shop  allow → deny (over_max_per_payment)  aud_1\n"
        );
        assert_eq!(
            dry_run_text(&json!({"replayed": 0, "changed": []})),
            "replayed 0 recorded decisions under the proposed policy: none would change\n"
        );
    }

    #[test]
    fn an_agent_without_a_policy_says_so() {
        let v = json!({"agentId": "agt_1", "version": 0, "policy": {}, "createdAt": null});
        assert_eq!(
            policy_text(&v),
            "agent   agt_1\npolicy  none (version 0): the agent's tokens' own limits alone apply\n"
        );
    }
}
