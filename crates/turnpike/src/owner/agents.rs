//! `turnpike agent ...`: agents and their tokens (`/v1/agents...`).

use std::path::PathBuf;

use anyhow::bail;
use clap::{ArgGroup, Subcommand};
use serde_json::{Map, Value, json};
use turnpike_server::http::agents::TOKEN_TTL_S_MAX;

use super::render::{fields, items, rules, show, table, text};
use super::{Api, ApiArgs, checked_id, json_input};

/// `turnpike agent ...`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create an agent and print it.
    Create(CreateArgs),
    /// List the organisation's agents.
    List(ApiOnlyArgs),
    /// Show one agent.
    Show(AgentArgs),
    /// Mint a token for an agent and print it (the token is shown once).
    Token(TokenArgs),
    /// List an agent's tokens (ids, limits, expiry, revocation).
    Tokens(AgentArgs),
    /// Revoke one token (and every token minted under it) or all of an agent's tokens.
    Revoke(RevokeArgs),
}

/// Options of `turnpike agent create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Display name (1 to 200 characters).
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Options of a command that names nothing but the API.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiOnlyArgs {
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Options of a command about one agent.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The agent (`agt_...`).
    pub agent_id: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Options of `turnpike agent token`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("limits_source").args(["limits", "limits_file"])))]
pub struct TokenArgs {
    /// The agent (`agt_...`).
    pub agent_id: String,
    /// Lifetime in seconds (default: one day).
    #[arg(
        long,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(i64).range(1..=TOKEN_TTL_S_MAX)
    )]
    pub ttl_s: Option<i64>,
    /// Token limits as JSON: `{"maxPerPayment":[...],"budgets":[...],"merchantsAllow":[...],
    /// "methods":[...],"currencies":[...]}` (amounts in minor units).
    #[arg(long, value_name = "JSON")]
    pub limits: Option<String>,
    /// Token limits from a JSON file (`-`: stdin).
    #[arg(long, value_name = "PATH")]
    pub limits_file: Option<PathBuf>,
    /// Largest single payment, `AMOUNT:CURRENCY` in minor units (e.g. `500:usd`), added to the
    /// limits; repeat for other currencies.
    #[arg(long, value_name = "AMOUNT:CURRENCY")]
    pub max_per_payment: Vec<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Options of `turnpike agent revoke`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("which").required(true).args(["token", "all"])))]
pub struct RevokeArgs {
    /// The agent (`agt_...`).
    pub agent_id: String,
    /// The token to revoke (`tok_...`); tokens minted under it are revoked too.
    #[arg(long, value_name = "TOKEN_ID")]
    pub token: Option<String>,
    /// Revoke every token of the agent.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Run one `turnpike agent` command.
pub async fn run(command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::Create(args) => create(args).await,
        AgentCommand::List(args) => list(args).await,
        AgentCommand::Show(args) => show_agent(args).await,
        AgentCommand::Token(args) => token(args).await,
        AgentCommand::Tokens(args) => tokens(args).await,
        AgentCommand::Revoke(args) => revoke(args).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let answer = api
        .post(&["v1", "agents"], &json!({ "name": args.name }))
        .await?;
    api.print(&answer, agent_text)
}

async fn list(args: ApiOnlyArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let answer = api.get(&["v1", "agents"], &[]).await?;
    api.print(&answer, agents_text)
}

async fn show_agent(args: AgentArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let agent_id = checked_id(&args.agent_id, "AGENT_ID")?;
    let answer = api.get(&["v1", "agents", agent_id], &[]).await?;
    api.print(&answer, agent_text)
}

async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let agent_id = checked_id(&args.agent_id, "AGENT_ID")?;
    let body = token_body(&args)?;
    let answer = api
        .post(&["v1", "agents", agent_id, "tokens"], &body)
        .await?;
    api.print(&answer, token_text)?;
    eprintln!("the token is shown once: store it now");
    Ok(())
}

async fn tokens(args: AgentArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let agent_id = checked_id(&args.agent_id, "AGENT_ID")?;
    let answer = api.get(&["v1", "agents", agent_id, "tokens"], &[]).await?;
    api.print(&answer, tokens_text)
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.api)?;
    let agent_id = checked_id(&args.agent_id, "AGENT_ID")?;
    match (&args.token, args.all) {
        (Some(token_id), false) => {
            let token_id = checked_id(token_id, "--token")?;
            let answer = api
                .delete(&["v1", "agents", agent_id, "tokens", token_id])
                .await?;
            api.print(&answer, |v| {
                format!(
                    "revoked token {} and every token minted under it (revoked at {})\n",
                    text(v, "id"),
                    text(v, "revokedAt")
                )
            })
        }
        (None, true) => {
            let answer = api.delete(&["v1", "agents", agent_id, "tokens"]).await?;
            api.print(&answer, |v| {
                let count = v.get("revoked").and_then(Value::as_u64).unwrap_or(0);
                let noun = if count == 1 { "token" } else { "tokens" };
                format!("revoked {count} live {noun} of agent {agent_id}\n")
            })
        }
        // clap's `which` group makes exactly one of them present.
        _ => bail!("give --token TOKEN_ID or --all"),
    }
}

/// The body of `POST /v1/agents/{id}/tokens`.
fn token_body(args: &TokenArgs) -> anyhow::Result<Value> {
    let mut limits = match (&args.limits_file, &args.limits) {
        (None, None) => None,
        (path, inline) => Some(json_input(
            path.as_deref(),
            inline.as_deref(),
            "token limits",
        )?),
    };
    if !args.max_per_payment.is_empty() {
        let caps = args
            .max_per_payment
            .iter()
            .map(|raw| money_arg(raw))
            .collect::<anyhow::Result<Vec<Value>>>()?;
        let object = limits
            .get_or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| anyhow::anyhow!("the token limits must be a JSON object"))?;
        let existing = object
            .entry("maxPerPayment")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(existing) = existing.as_array_mut() else {
            bail!("the token limits' maxPerPayment must be an array");
        };
        for cap in caps {
            if existing
                .iter()
                .any(|e| e.get("currency") == cap.get("currency"))
            {
                bail!(
                    "--max-per-payment: the limits already cap {} payments",
                    show(&cap["currency"])
                );
            }
            existing.push(cap);
        }
    }
    let mut body = Map::new();
    if let Some(limits) = limits {
        body.insert("limits".into(), limits);
    }
    if let Some(ttl_s) = args.ttl_s {
        body.insert("ttlS".into(), ttl_s.into());
    }
    Ok(Value::Object(body))
}

/// `AMOUNT:CURRENCY` (minor units) as `{"amount","currency"}`.
fn money_arg(raw: &str) -> anyhow::Result<Value> {
    let parsed = raw.split_once(':').and_then(|(amount, currency)| {
        let (amount, currency) = (amount.trim(), currency.trim());
        let valid = !amount.is_empty()
            && amount.bytes().all(|b| b.is_ascii_digit())
            && !currency.is_empty()
            && currency.bytes().all(|b| b.is_ascii_alphanumeric());
        valid.then(|| json!({"amount": amount, "currency": currency.to_ascii_lowercase()}))
    });
    parsed.ok_or_else(|| {
        anyhow::anyhow!(
            "--max-per-payment {raw:?}: expected AMOUNT:CURRENCY in integer minor units, e.g. \
             500:usd"
        )
    })
}

fn policy_version(v: &Value) -> String {
    match v.get("policyVersion").and_then(Value::as_i64) {
        Some(0) => "none".to_owned(),
        Some(n) => format!("version {n}"),
        None => text(v, "policyVersion"),
    }
}

fn agent_text(v: &Value) -> String {
    fields(&[
        ("agent", text(v, "id")),
        ("name", text(v, "name")),
        ("policy", policy_version(v)),
        ("created", text(v, "createdAt")),
    ])
}

fn agents_text(v: &Value) -> String {
    let agents = items(&v["data"]);
    if agents.is_empty() {
        return "no agents\n".to_owned();
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                text(a, "id"),
                text(a, "name"),
                policy_version(a),
                text(a, "createdAt"),
            ]
        })
        .collect();
    table(&["ID", "NAME", "POLICY", "CREATED"], &rows)
}

/// Token limits on one line, `-` for none.
fn limits_line(limits: &Value) -> String {
    let rules = rules(limits);
    if rules.is_empty() {
        return "-".to_owned();
    }
    rules
        .iter()
        .map(|(label, value)| format!("{label} {value}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn token_text(v: &Value) -> String {
    let mut rows = vec![("token id", text(v, "id")), ("agent", text(v, "agentId"))];
    if v.get("parentId").is_some_and(|p| !p.is_null()) {
        rows.push(("parent", text(v, "parentId")));
    }
    rows.push(("expires", text(v, "expiresAt")));
    let limits = rules(v.get("limits").unwrap_or(&Value::Null));
    if limits.is_empty() {
        rows.push(("limits", "none beyond the agent's policy".to_owned()));
    }
    rows.extend(limits);
    rows.push(("token", text(v, "token")));
    fields(&rows)
}

fn tokens_text(v: &Value) -> String {
    let tokens = items(&v["data"]);
    if tokens.is_empty() {
        return "no tokens\n".to_owned();
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                text(t, "id"),
                text(t, "parentId"),
                text(t, "createdAt"),
                text(t, "expiresAt"),
                text(t, "revokedAt"),
                limits_line(t.get("limits").unwrap_or(&Value::Null)),
            ]
        })
        .collect();
    table(
        &["ID", "PARENT", "CREATED", "EXPIRES", "REVOKED", "LIMITS"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_args(limits: Option<&str>, caps: &[&str]) -> TokenArgs {
        TokenArgs {
            agent_id: "agt_1".into(),
            ttl_s: Some(600),
            limits: limits.map(str::to_owned),
            limits_file: None,
            max_per_payment: caps.iter().map(|c| (*c).to_owned()).collect(),
            api: ApiArgs {
                api: "http://127.0.0.1:8402".into(),
                key: "tp_sk_x".into(),
                json: false,
            },
        }
    }

    #[test]
    fn max_per_payment_is_added_to_the_limits() {
        let body = token_body(&token_args(
            Some(r#"{"currencies":["usd","eur"]}"#),
            &["500:usd", "70:EUR"],
        ))
        .unwrap();
        assert_eq!(
            body,
            json!({"limits": {"currencies": ["usd", "eur"], "maxPerPayment": [
                {"amount": "500", "currency": "usd"}, {"amount": "70", "currency": "eur"}
            ]}, "ttlS": 600})
        );
        let body = token_body(&token_args(None, &[])).unwrap();
        assert_eq!(body, json!({"ttlS": 600}));
    }

    #[test]
    fn a_currency_capped_twice_or_a_malformed_cap_is_refused() {
        let twice = token_body(&token_args(
            Some(r#"{"maxPerPayment":[{"amount":"1","currency":"usd"}]}"#),
            &["500:usd"],
        ));
        assert!(twice.unwrap_err().to_string().contains("already cap usd"));
        for bad in ["500", "usd:500", ":usd", "5.00:usd", "500:"] {
            assert!(money_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_prints_its_limits_and_the_token_last() {
        let v = json!({"id": "tok_1", "agentId": "agt_1", "token": "eyJ.x.y", "parentId": null,
            "limits": {"maxPerPayment": [{"amount": "500", "currency": "usd"}]},
            "expiresAt": "2030-01-01T00:00:00.000Z"});
        assert_eq!(
            token_text(&v),
            "token id         tok_1\n\
             agent            agt_1\n\
             expires          2030-01-01T00:00:00.000Z\n\
             max per payment  500 usd\n\
             token            eyJ.x.y\n"
        );
    }
}
