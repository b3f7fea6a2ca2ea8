//! `turnpike approvals ...`: payments held for an owner's approval (`/v1/approvals...`).

use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::render::{fields, items, table, text};
use super::{Api, ApiArgs, checked_id};

/// `turnpike approvals ...`.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List approvals, newest first.
    List(ListArgs),
    /// Approve a pending payment: the agent may then pay exactly that challenge, once.
    Approve(DecideArgs),
    /// Reject a pending payment.
    Reject(DecideArgs),
}

/// An approval's state (`Approval.state`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum State {
    /// Waiting for the owner.
    Pending,
    /// Approved, not yet used.
    Approved,
    /// Rejected by the owner.
    Rejected,
    /// Not decided or not used in time.
    Expired,
    /// Approved and paid.
    Used,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Used => "used",
        }
    }
}

/// Options of `turnpike approvals list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only approvals in this state.
    #[arg(long, value_enum)]
    pub state: Option<State>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Options of `turnpike approvals approve` and `reject`.
#[derive(Debug, Clone, clap::Args)]
pub struct DecideArgs {
    /// The approval (`apr_...`).
    pub approval_id: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Run one `turnpike approvals` command.
pub async fn run(command: ApprovalsCommand) -> anyhow::Result<()> {
    match command {
        ApprovalsCommand::List(args) => list(args).await,
        ApprovalsCommand::Approve(args) => decide(args, "approve").await,
        ApprovalsCommand::Reject(args) => decide(args, "reject").await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let query: Vec<(&str, &str)> = args
        .state
        .map(|s| ("state", s.as_str()))
        .into_iter()
        .collect();
    let answer = api.get(&["v1", "approvals"], &query).await?;
    api.print(&answer, approvals_text)
}

/// `verb`: `approve` or `reject` (the last path segment).
async fn decide(args: DecideArgs, verb: &str) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let approval_id = checked_id(&args.approval_id, "APPROVAL_ID")?;
    let answer = api
        .post(&["v1", "approvals", approval_id, verb], &json!({}))
        .await?;
    api.print(&answer, approval_text)
}

/// Who is paid: the realm when the server sent it, else the merchant's tenant id.
fn merchant(v: &Value) -> String {
    match v.get("merchantRealm").filter(|r| !r.is_null()) {
        Some(_) => text(v, "merchantRealm"),
        None => text(v, "merchant"),
    }
}

fn approval_text(v: &Value) -> String {
    fields(&[
        ("approval", text(v, "id")),
        ("state", text(v, "state")),
        ("agent", text(v, "agentId")),
        (
            "amount",
            format!("{} {}", text(v, "amount"), text(v, "currency")),
        ),
        ("merchant", merchant(v)),
        ("challenge", text(v, "challengeId")),
        ("expires", text(v, "expiresAt")),
        ("decided", text(v, "decidedAt")),
    ])
}

fn approvals_text(v: &Value) -> String {
    let approvals = items(&v["data"]);
    if approvals.is_empty() {
        return "no approvals\n".to_owned();
    }
    let rows: Vec<Vec<String>> = approvals
        .iter()
        .map(|a| {
            vec![
                text(a, "id"),
                text(a, "state"),
                text(a, "agentId"),
                format!("{} {}", text(a, "amount"), text(a, "currency")),
                merchant(a),
                text(a, "createdAt"),
                text(a, "expiresAt"),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATE", "AGENT", "AMOUNT", "MERCHANT", "CREATED", "EXPIRES",
        ],
        &rows,
    )
}
