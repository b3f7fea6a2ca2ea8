//! `turnpike audit`: every recorded `/v1/agent/pay` decision (`/v1/audit`).

use clap::ValueEnum;
use serde_json::Value;

use super::render::{items, table, text};
use super::{Api, ApiArgs, checked_id};

/// A decision's outcome (`outcome`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Outcome {
    /// Paid (reserved).
    Allow,
    /// Refused.
    Deny,
    /// Held for the owner's approval.
    #[value(name = "needs_approval", alias = "needs-approval")]
    NeedsApproval,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::NeedsApproval => "needs_approval",
        }
    }
}

/// Options of `turnpike audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Only this agent's decisions (`agt_...`).
    #[arg(long, value_name = "AGENT_ID")]
    pub agent: Option<String>,
    /// Only decisions with this outcome.
    #[arg(long, value_enum)]
    pub outcome: Option<Outcome>,
    /// Only decisions with this reason (e.g. `budget_exhausted`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only decisions at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only decisions before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Most decisions listed, newest first (server default: 100).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(i64).range(1..=turnpike_store::LIST_LIMIT_MAX)
    )]
    pub limit: Option<i64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `turnpike audit`.
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let limit = args.limit.map(|n| n.to_string());
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(agent) = &args.agent {
        query.push(("agentId", checked_id(agent, "--agent")?));
    }
    if let Some(outcome) = args.outcome {
        query.push(("outcome", outcome.as_str()));
    }
    for (name, value) in [
        ("reason", &args.reason),
        ("since", &args.since),
        ("until", &args.until),
        ("limit", &limit),
    ] {
        if let Some(value) = value {
            query.push((name, value.as_str()));
        }
    }
    let answer = api.get(&["v1", "audit"], &query).await?;
    api.print(&answer, audit_text)
}

/// `deny (budget_exhausted)`, or the outcome alone.
fn outcome(v: &Value) -> String {
    match v.get("reason").filter(|r| !r.is_null()) {
        Some(_) => format!("{} ({})", text(v, "outcome"), text(v, "reason")),
        None => text(v, "outcome"),
    }
}

fn audit_text(v: &Value) -> String {
    let decisions = items(&v["data"]);
    if decisions.is_empty() {
        return "no decisions\n".to_owned();
    }
    let rows: Vec<Vec<String>> = decisions
        .iter()
        .map(|d| {
            let merchant = match d.get("merchantRealm").filter(|r| !r.is_null()) {
                Some(_) => text(d, "merchantRealm"),
                None => text(d, "merchant"),
            };
            vec![
                text(d, "at"),
                text(d, "agentId"),
                format!("{} {}", text(d, "amount"), text(d, "currency")),
                merchant,
                outcome(d),
                text(d, "policyVersion"),
                text(d, "id"),
            ]
        })
        .collect();
    table(
        &[
            "AT", "AGENT", "AMOUNT", "MERCHANT", "OUTCOME", "POLICY", "ID",
        ],
        &rows,
    )
}
