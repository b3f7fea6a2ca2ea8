//! `turnpike bench verify`: the merchant core's speed over real HTTP between processes.
//!
//! The command starts `turnpike serve` as a child process on the chosen database, sets up a
//! merchant with a price, a funded payer organisation and an agent token through the API, then
//! starts a separate load-generating process (`turnpike bench verify-load`, hidden) that runs
//! `concurrency` clients for `duration_s` seconds. Each iteration is one full payment cycle:
//! `POST /v1/challenges` (the merchant asks for the 402), `POST /v1/agent/pay` (the agent turns
//! it into a credential, reserving the amount), `POST /v1/verify` (the merchant verifies and
//! settles). A second phase measures `POST /v1/challenges` alone. The server charges a platform
//! fee ([`VERIFY_FEE_BPS`]) on a price whose fee is not zero ([`BENCH_PRICE_MINOR`]). Finally the
//! books are read back (see [`books`]) and the ledger is checked: the run fails on any error of
//! the load, on a count of paid cycles other than the settled payments, on balances that differ
//! from the paid cycles' worth by a unit, and on a failed ledger check.

mod books;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::bench::{Backend, TempDir, rand_tag};

/// Options of `turnpike bench verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyBenchArgs {
    /// Database the server runs on.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// PostgreSQL URL (required with `--backend postgres`).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The server's platform fee in basis points (0 to 10000; 0 books no fee transfer, for
    /// comparisons with builds that priced without one).
    #[arg(long, default_value_t = VERIFY_FEE_BPS)]
    pub fee_bps: u32,
}

/// Options of `turnpike bench pay`.
#[derive(Debug, Clone, clap::Args)]
pub struct PayBenchArgs {
    /// Database the server runs on.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// PostgreSQL URL (required with `--backend postgres`).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Concurrent agents (one client, one agent and one token each).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of the load-generating process.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Turnpike's URL.
    #[arg(long)]
    pub api: String,
    /// What each iteration does.
    #[arg(long, value_enum)]
    pub mode: LoadMode,
    /// Concurrent clients.
    #[arg(long)]
    pub concurrency: u32,
    /// Seconds to run.
    #[arg(long)]
    pub duration_s: u64,
    /// Request path the price matches.
    #[arg(long, default_value = "/bench/item")]
    pub path: String,
    /// File of agent tokens, one per line; client `i` uses line `i mod n`.
    #[arg(long)]
    pub tokens_file: std::path::PathBuf,
}

/// What the load generator repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMode {
    /// challenge, agent pay, verify.
    Cycle,
    /// challenge only.
    Challenges,
    /// challenge, agent pay (each client its own agent).
    Pay,
}

/// Most concurrent clients.
pub const CONCURRENCY_MAX: u32 = 1_024;
/// Longest phase.
pub const DURATION_S_MAX: u64 = 3_600;
/// The connection cap of a benchmarked server: every client of the largest concurrency, and
/// the set-up's own.
const BENCH_CONNECTIONS_MAX: u32 = 2 * CONCURRENCY_MAX;
/// How long the server may take to start.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// The platform fee `bench verify` charges (2.5%).
pub(crate) const VERIFY_FEE_BPS: u32 = 250;
/// The platform fee of the other benches' servers (1%).
pub(crate) const BENCH_FEE_BPS: u32 = 100;
/// The bench price (usd minor units): its fee at [`VERIFY_FEE_BPS`] is 10, at
/// [`BENCH_FEE_BPS`] 4, never rounded away to zero.
const BENCH_PRICE_MINOR: u128 = 400;
/// The bench payer's credit (usd minor units): more than any run spends.
const PAYER_CREDIT_MINOR: u128 = 1_000_000_000_000_000;

pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 32 random bytes as hex (a `TURNPIKE_SECRETS_KEY`).
fn random_hex_32() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Start `turnpike serve` with a platform fee of `fee_bps` on the chosen database, with `envs`
/// set.
pub(crate) fn start_server(
    backend: Backend,
    database_url: Option<&str>,
    dir: &TempDir,
    admin_token: &str,
    fee_bps: u32,
    envs: &[(&str, &str)],
) -> anyhow::Result<Server> {
    let exe = std::env::current_exe().context("locating the turnpike binary")?;
    let mut command = Command::new(exe);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--platform-fee-bps",
            &fee_bps.to_string(),
            // The load generator, its upstream and anvil are on this machine.
            "--outbound-allow",
            "127.0.0.0/8,::1/128",
        ])
        // The load generator is one address and one key: no rate limit, and room for every
        // simulated client's connection.
        .args(["--max-connections", &BENCH_CONNECTIONS_MAX.to_string()])
        .args(["--rate-limit-auth-failures", "0"])
        .args(["--rate-limit-challenges", "0"])
        .args(["--rate-limit-verifications", "0"])
        .arg("--data-dir")
        .arg(&dir.path)
        .env("TURNPIKE_ADMIN_TOKEN", admin_token)
        // The signing keys are sealed: a key of this run's own (`envs` may name another).
        .env(turnpike_server::secrets::SECRETS_KEY_ENV, random_hex_32()?)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if backend == Backend::Postgres {
        let url =
            database_url.context("--backend postgres needs --database-url (or DATABASE_URL)")?;
        command.arg("--database-url").arg(url);
    }
    let mut child = command.spawn().context("starting turnpike serve")?;
    let stderr = child.stderr.take().context("server stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.strip_prefix("turnpike listening on ") {
                let url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(url);
                sent = true;
            } else if sent {
                eprintln!("server: {line}");
            }
        }
    });
    let url = rx
        .recv_timeout(SERVER_START_TIMEOUT)
        .context("turnpike serve did not start")?;
    Ok(Server { child, url })
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    bearer: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let response = client
        .post(url)
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("POST {url}: body"))?;
    ensure!(
        status.is_success(),
        "POST {url}: {status}: {}",
        body["detail"]
    );
    Ok(body)
}

/// The merchant and payer keys and agent tokens of a fresh setup.
struct Setup {
    merchant_key: String,
    payer_key: String,
    /// One line per agent.
    tokens_file: std::path::PathBuf,
}

/// The spend policy `bench pay` gives every agent: a per-payment cap, a day budget in the
/// owner's time zone, a merchant allow list, a currency list and an approval threshold, each
/// generous enough never to deny or hold during a run, so that every payment is evaluated in
/// full. (Rolling budgets and velocity limits each add a scan of the agent's payments in their
/// window; see the README.)
fn bench_policy(merchant_id: &str) -> Value {
    json!({
        "timeZone": "Europe/Berlin",
        "maxPerPayment": [{"amount": "1000", "currency": "usd"}],
        "budgets": [{"amount": "1000000000", "currency": "usd", "period": "day"}],
        "merchants": {"allow": [merchant_id]},
        "currencies": ["usd"],
        "approvalAbove": [{"amount": "1000", "currency": "usd"}]
    })
}

/// A merchant with a price, a funded payer with `agents` agents (each with a token and, with
/// `policy`, [`bench_policy`]).
async fn setup(
    api: &str,
    admin_token: &str,
    dir: &TempDir,
    agents: u32,
    policy: bool,
) -> anyhow::Result<Setup> {
    let client = reqwest::Client::new();
    let tag = format!("{:x}", rand_tag());
    let merchant = post(
        &client,
        &format!("{api}/v1/admin/tenants"),
        admin_token,
        json!({"name": "bench merchant", "slug": format!("bench-m-{tag}")}),
    )
    .await?;
    let payer = post(
        &client,
        &format!("{api}/v1/admin/tenants"),
        admin_token,
        json!({"name": "bench payer", "slug": format!("bench-p-{tag}")}),
    )
    .await?;
    let merchant_key = merchant["apiKey"]["secret"]
        .as_str()
        .context("merchant key")?
        .to_owned();
    let payer_key = payer["apiKey"]["secret"]
        .as_str()
        .context("payer key")?
        .to_owned();
    let payer_id = payer["tenant"]["id"].as_str().context("payer id")?;
    post(
        &client,
        &format!("{api}/v1/admin/tenants/{payer_id}/credit"),
        admin_token,
        json!({"amount": PAYER_CREDIT_MINOR.to_string(), "currency": "usd"}),
    )
    .await?;
    let price = json!({
        "route": {"method": "GET", "path": "/bench/{item}"},
        "amount": BENCH_PRICE_MINOR.to_string(), "currency": "usd",
    });
    post(&client, &format!("{api}/v1/prices"), &merchant_key, price).await?;
    let merchant_id = merchant["tenant"]["id"].as_str().context("merchant id")?;
    let mut tokens = String::new();
    for n in 0..agents {
        let agent = post(
            &client,
            &format!("{api}/v1/agents"),
            &payer_key,
            json!({"name": format!("bench agent {n}")}),
        )
        .await?;
        let agent_id = agent["id"].as_str().context("agent id")?;
        if policy {
            let response = client
                .put(format!("{api}/v1/agents/{agent_id}/policy"))
                .bearer_auth(&payer_key)
                .json(&bench_policy(merchant_id))
                .send()
                .await?;
            ensure!(
                response.status().is_success(),
                "setting the bench policy: {}",
                response.status()
            );
        }
        let token = post(
            &client,
            &format!("{api}/v1/agents/{agent_id}/tokens"),
            &payer_key,
            json!({}),
        )
        .await?;
        tokens.push_str(token["token"].as_str().context("agent token")?);
        tokens.push('\n');
    }
    let tokens_file = dir.path.join("bench-agent-tokens");
    std::fs::write(&tokens_file, tokens).context("writing the agent tokens")?;
    Ok(Setup {
        merchant_key,
        payer_key,
        tokens_file,
    })
}

fn run_load(
    api: &str,
    setup: &Setup,
    mode: LoadMode,
    concurrency: u32,
    duration_s: u64,
) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("locating the turnpike binary")?;
    let mode = match mode {
        LoadMode::Cycle => "cycle",
        LoadMode::Challenges => "challenges",
        LoadMode::Pay => "pay",
    };
    let output = Command::new(exe)
        .args(["bench", "verify-load", "--api", api, "--mode", mode])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--duration-s", &duration_s.to_string()])
        .arg("--tokens-file")
        .arg(&setup.tokens_file)
        .env("TURNPIKE_BENCH_MERCHANT_KEY", &setup.merchant_key)
        .stderr(Stdio::inherit())
        .output()
        .context("starting the load generator")?;
    ensure!(output.status.success(), "the load generator failed");
    serde_json::from_slice(&output.stdout).context("reading the load generator's figures")
}

/// `turnpike bench verify`.
pub async fn run(args: VerifyBenchArgs) -> anyhow::Result<()> {
    ensure!(
        (1..=CONCURRENCY_MAX).contains(&args.concurrency),
        "--concurrency must be 1 to {CONCURRENCY_MAX}"
    );
    ensure!(
        (1..=DURATION_S_MAX).contains(&args.duration_s),
        "--duration-s must be 1 to {DURATION_S_MAX}"
    );
    ensure!(args.fee_bps <= 10_000, "--fee-bps must be 0 to 10000");
    let dir = TempDir::new()?;
    let admin_token = format!("bench-admin-{:x}{:x}", rand_tag(), rand_tag());
    let server = start_server(
        args.backend,
        args.database_url.as_deref(),
        &dir,
        &admin_token,
        args.fee_bps,
        &[],
    )?;
    let api = server.url.clone();
    let setup = setup(&api, &admin_token, &dir, 1, false).await?;
    let fees_before = platform_fees(&api, &admin_token).await?;
    let cycle = run_load(
        &api,
        &setup,
        LoadMode::Cycle,
        args.concurrency,
        args.duration_s,
    )?;
    let challenges = run_load(
        &api,
        &setup,
        LoadMode::Challenges,
        args.concurrency,
        args.duration_s,
    )?;
    let expected = books::Expected {
        paid: count(&cycle, "ok")? + count(&cycle, "warmUpOk")?,
        price_minor: BENCH_PRICE_MINOR,
        fee_minor: turnpike_server::method_turnpike::fee_minor(BENCH_PRICE_MINOR, args.fee_bps),
        payer_credit_minor: PAYER_CREDIT_MINOR,
    };
    ensure!(
        expected.fee_minor > 0 || args.fee_bps == 0,
        "the bench price's fee is zero"
    );
    let observed = read_books(&api, &admin_token, &setup, fees_before).await?;
    drop(server);
    let check = ledger_check(args.backend, args.database_url.as_deref(), &dir).await?;
    let mut failures = books::discrepancies(&expected, &observed);
    let errors = count(&cycle, "errors")? + count(&challenges, "errors")?;
    if errors > 0 {
        failures.insert(0, format!("{errors} requests failed"));
    }
    if !check.is_ok() {
        failures.push(format!(
            "the ledger check failed: {}",
            check.to_string().replace('\n', "; ")
        ));
    }
    let run = VerifyRun {
        args: &args,
        cycle: &cycle,
        challenges: &challenges,
        expected: &expected,
        observed: &observed,
        errors,
        ledger_ok: check.is_ok(),
    };
    if args.json {
        println!("{}", run.json());
    } else {
        run.print();
    }
    if !failures.is_empty() {
        bail!("bench verify: {}", failures.join("; "));
    }
    Ok(())
}

/// A non-negative integer figure of the load generator's output.
fn count(figures: &Value, field: &str) -> anyhow::Result<u64> {
    figures[field]
        .as_u64()
        .with_context(|| format!("the load generator reported no `{field}`: {figures}"))
}

/// The signed balance of the platform's usd fee account (the database may hold earlier runs').
async fn platform_fees(api: &str, admin_token: &str) -> anyhow::Result<i128> {
    let url = reqwest::Url::parse(&format!("{api}/v1/admin/balances"))?;
    let balances = books::get_json(&reqwest::Client::new(), url, admin_token).await?;
    Ok(books::account_of(&balances, "platform_fees")?.available)
}

/// What the server booked: the merchant's payments and balances, the payer's balance and the
/// platform's fees gained since `fees_before`.
async fn read_books(
    api: &str,
    admin_token: &str,
    setup: &Setup,
    fees_before: i128,
) -> anyhow::Result<books::Observed> {
    let client = reqwest::Client::new();
    let (settled, unsettled, off_price) =
        books::count_payments(&client, api, &setup.merchant_key, BENCH_PRICE_MINOR).await?;
    let balances_url = reqwest::Url::parse(&format!("{api}/v1/balances"))?;
    let merchant = books::get_json(&client, balances_url.clone(), &setup.merchant_key).await?;
    let payer = books::get_json(&client, balances_url, &setup.payer_key).await?;
    Ok(books::Observed {
        settled,
        unsettled,
        off_price,
        revenue: books::account_of(&merchant, "merchant_revenue")?,
        payer: books::account_of(&payer, "payer_balance")?,
        platform_fee_gain: platform_fees(api, admin_token).await? - fees_before,
    })
}

/// A finished `bench verify` run's figures.
struct VerifyRun<'a> {
    args: &'a VerifyBenchArgs,
    cycle: &'a Value,
    challenges: &'a Value,
    expected: &'a books::Expected,
    observed: &'a books::Observed,
    errors: u64,
    ledger_ok: bool,
}

impl VerifyRun<'_> {
    fn json(&self) -> Value {
        json!({
            "backend": backend_name(self.args.backend), "concurrency": self.args.concurrency,
            "durationS": self.args.duration_s,
            "cycle": self.cycle, "challenges": self.challenges,
            "feeBps": self.args.fee_bps, "priceMinor": BENCH_PRICE_MINOR.to_string(),
            "feeMinor": self.expected.fee_minor.to_string(),
            "errors": self.errors, "paid": self.expected.paid,
            "books": self.observed.json(), "ledgerCheckOk": self.ledger_ok,
        })
    }

    fn print(&self) {
        let (cycle, challenges) = (self.cycle, self.challenges);
        println!(
            "bench verify on {}, {} concurrent clients, {} s per phase, platform fee {} bps",
            backend_name(self.args.backend),
            self.args.concurrency,
            self.args.duration_s,
            self.args.fee_bps
        );
        println!(
            "full cycles (challenge + agent pay + verify): {} paid in {} s = {} paid verifications/s, {} errors",
            cycle["ok"], cycle["elapsedS"], cycle["perSecond"], cycle["errors"]
        );
        for step in ["challenge", "pay", "verify", "cycle"] {
            let s = &cycle["latencyMs"][step];
            println!(
                "  {step:<9} latency p50 {} ms, p99 {} ms, max {} ms",
                s["p50"], s["p99"], s["max"]
            );
        }
        println!(
            "challenges only: {} in {} s = {} challenges/s, p50 {} ms, p99 {} ms, {} errors",
            challenges["ok"],
            challenges["elapsedS"],
            challenges["perSecond"],
            challenges["latencyMs"]["challenge"]["p50"],
            challenges["latencyMs"]["challenge"]["p99"],
            challenges["errors"]
        );
        let o = self.observed;
        println!(
            "books: {} paid (warm-up included), {} settled; merchant revenue {}, platform fees +{}",
            self.expected.paid, o.settled, o.revenue.available, o.platform_fee_gain
        );
        println!(
            "ledger check: {}",
            if self.ledger_ok { "ok" } else { "FAILED" }
        );
    }
}

pub(crate) async fn ledger_check(
    backend: Backend,
    database_url: Option<&str>,
    dir: &TempDir,
) -> anyhow::Result<turnpike_store::CheckReport> {
    Ok(match backend {
        Backend::Sqlite => {
            turnpike_store::Store::open_sqlite(dir.path.join(crate::db::SQLITE_FILE)).await?
        }
        Backend::Postgres => {
            turnpike_store::Store::open_postgres(database_url.unwrap_or_default()).await?
        }
    }
    .check()
    .await?)
}

pub(crate) fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// `turnpike bench pay`: `/v1/agent/pay` per second with every agent under a spend policy.
pub async fn run_pay(args: PayBenchArgs) -> anyhow::Result<()> {
    ensure!(
        (1..=CONCURRENCY_MAX).contains(&args.concurrency),
        "--concurrency must be 1 to {CONCURRENCY_MAX}"
    );
    ensure!(
        (1..=DURATION_S_MAX).contains(&args.duration_s),
        "--duration-s must be 1 to {DURATION_S_MAX}"
    );
    let dir = TempDir::new()?;
    let admin_token = format!("bench-admin-{:x}{:x}", rand_tag(), rand_tag());
    let server = start_server(
        args.backend,
        args.database_url.as_deref(),
        &dir,
        &admin_token,
        BENCH_FEE_BPS,
        &[],
    )?;
    let api = server.url.clone();
    let setup = setup(&api, &admin_token, &dir, args.concurrency, true).await?;
    let pay = run_load(
        &api,
        &setup,
        LoadMode::Pay,
        args.concurrency,
        args.duration_s,
    )?;
    drop(server);
    let check = ledger_check(args.backend, args.database_url.as_deref(), &dir).await?;
    let backend = backend_name(args.backend);
    if args.json {
        println!(
            "{}",
            json!({
                "backend": backend, "agents": args.concurrency, "durationS": args.duration_s,
                "pay": pay, "ledgerCheckOk": check.is_ok(),
            })
        );
    } else {
        println!(
            "bench pay on {backend}, {} concurrent agents under a spend policy (cap, day budget, merchant and currency lists, approval threshold), {} s",
            args.concurrency, args.duration_s
        );
        println!(
            "agent payments reserved: {} in {} s = {} /v1/agent/pay per second, {} errors",
            pay["ok"], pay["elapsedS"], pay["perSecond"], pay["errors"]
        );
        for step in ["challenge", "pay"] {
            let s = &pay["latencyMs"][step];
            println!(
                "  {step:<9} latency p50 {} ms, p99 {} ms, max {} ms",
                s["p50"], s["p99"], s["max"]
            );
        }
        println!(
            "ledger check: {}",
            if check.is_ok() { "ok" } else { "FAILED" }
        );
    }
    if !check.is_ok() {
        bail!("the ledger check failed after the run:\n{check}");
    }
    Ok(())
}

#[derive(Default)]
struct Samples {
    challenge: Vec<u32>,
    pay: Vec<u32>,
    verify: Vec<u32>,
    cycle: Vec<u32>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

fn micros(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// One keep-alive HTTP/1.1 connection of the load generator: hyper's client connection, with
/// no pool, no URL parsing and no header map built per request, so that the load generator
/// takes as little as it can of the machine it measures.
struct LoadConn {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    host: http::HeaderValue,
}

/// The bodies the load generator reads; anything else in them is ignored.
#[derive(serde::Deserialize)]
struct ChallengeOut {
    /// (name, value) pairs.
    headers: Vec<(String, String)>,
}

#[derive(serde::Deserialize)]
struct PayOut {
    authorization: String,
}

#[derive(serde::Deserialize)]
struct VerifyOut {
    decision: String,
    #[serde(default)]
    body: Value,
}

impl LoadConn {
    /// Connect to `api` (`http://host:port`).
    async fn open(api: &str) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(api).with_context(|| format!("--api {api}"))?;
        ensure!(url.scheme() == "http", "--api must be an http:// URL");
        let host = url.host_str().context("--api names no host")?;
        let port = url.port_or_known_default().context("--api names no port")?;
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("connecting to {api}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: http::HeaderValue::from_str(&format!("{host}:{port}"))?,
        })
    }

    /// POST `body` as JSON to `path` with `bearer`: the parsed body of a 2xx answer, or the
    /// error (with the problem's `detail`).
    async fn post<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &'static str,
        bearer: &http::HeaderValue,
        body: Vec<u8>,
    ) -> Result<T, String> {
        use http_body_util::BodyExt as _;
        self.sender
            .ready()
            .await
            .map_err(|e| format!("{path}: connection: {e}"))?;
        let request = http::Request::post(path)
            .header(http::header::HOST, &self.host)
            .header(http::header::AUTHORIZATION, bearer)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| format!("{path}: {e}"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{path}: body: {e}"))?
            .to_bytes();
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|_| format!("{path}: {status}: unexpected body"))
        } else {
            let detail = serde_json::from_slice::<Value>(&bytes)
                .map(|b| b["detail"].to_string())
                .unwrap_or_else(|_| "no JSON body".to_owned());
            Err(format!("{path}: {status}: {detail}"))
        }
    }
}

/// A bearer `Authorization` value.
fn bearer(token: &str) -> anyhow::Result<http::HeaderValue> {
    http::HeaderValue::from_str(&format!("Bearer {token}")).context("a token is not a header value")
}

async fn one_cycle(
    conn: &mut LoadConn,
    args: &LoadArgs,
    key: &http::HeaderValue,
    token: &http::HeaderValue,
    s: &mut Samples,
) -> Result<(), String> {
    let json = |v: Value| serde_json::to_vec(&v).unwrap_or_default();
    let start = Instant::now();
    let facts = json!({"method": "GET", "path": args.path});
    let decision: ChallengeOut = conn.post("/v1/challenges", key, json(facts)).await?;
    s.challenge.push(micros(start));
    if args.mode == LoadMode::Challenges {
        return Ok(());
    }
    let challenges: Vec<&str> = decision
        .headers
        .iter()
        .filter(|(name, _)| name == "WWW-Authenticate")
        .map(|(_, value)| value.as_str())
        .collect();
    let t = Instant::now();
    let paid: PayOut = conn
        .post(
            "/v1/agent/pay",
            token,
            json(json!({"challenges": challenges})),
        )
        .await?;
    s.pay.push(micros(t));
    if args.mode == LoadMode::Pay {
        return Ok(());
    }
    let t = Instant::now();
    let body = json!({"authorization": paid.authorization, "method": "GET", "path": args.path});
    let verdict: VerifyOut = conn.post("/v1/verify", key, json(body)).await?;
    s.verify.push(micros(t));
    if verdict.decision != "paid" {
        return Err(format!(
            "verify decided {} ({})",
            verdict.decision, verdict.body["detail"]
        ));
    }
    s.cycle.push(micros(start));
    Ok(())
}

fn summary(mut v: Vec<u32>) -> Value {
    if v.is_empty() {
        return json!(null);
    }
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        (f64::from(v[i]) / 10.0).round() / 100.0
    };
    json!({"p50": at(0.50), "p99": at(0.99), "max": at(1.0), "count": v.len()})
}

/// `turnpike bench verify-load`: the load-generating process; prints one JSON object.
pub async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let key = std::env::var("TURNPIKE_BENCH_MERCHANT_KEY")
        .context("TURNPIKE_BENCH_MERCHANT_KEY is not set")?;
    let tokens: Vec<String> = std::fs::read_to_string(&args.tokens_file)
        .context("reading --tokens-file")?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    ensure!(!tokens.is_empty(), "--tokens-file holds no token");
    ensure!(
        (1..=CONCURRENCY_MAX).contains(&args.concurrency),
        "--concurrency must be 1 to {CONCURRENCY_MAX}"
    );
    let key = bearer(&key)?;
    let tokens = tokens
        .iter()
        .map(|t| bearer(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // One connection per client, opened (and warmed up with one cycle) before the clock starts.
    let mut conns = Vec::with_capacity(args.concurrency as usize);
    for _ in 0..args.concurrency {
        conns.push(LoadConn::open(&args.api).await?);
    }
    let mut warm = Samples::default();
    one_cycle(&mut conns[0], &args, &key, &tokens[0], &mut warm)
        .await
        .map_err(|e| anyhow::anyhow!("warm-up failed: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let token = tokens[i % tokens.len()].clone();
        let (args, key) = (args.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            while Instant::now() < deadline {
                match one_cycle(&mut conn, &args, &key, &token, &mut s).await {
                    Ok(()) => s.ok += 1,
                    Err(e) => {
                        s.errors += 1;
                        s.first_error.get_or_insert(e);
                        // The connection may be gone: carry on with a new one.
                        if conn.sender.is_closed() {
                            match LoadConn::open(&args.api).await {
                                Ok(fresh) => conn = fresh,
                                Err(_) => break,
                            }
                        }
                    }
                }
            }
            s
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        let s = task.await?;
        all.challenge.extend(s.challenge);
        all.pay.extend(s.pay);
        all.verify.extend(s.verify);
        all.cycle.extend(s.cycle);
        all.ok += s.ok;
        all.errors += s.errors;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(e) = &all.first_error {
        eprintln!("load: first error: {e}");
    }
    println!(
        "{}",
        json!({
            // The warm-up's one iteration, done before the clock started (in `cycle` mode, a
            // paid cycle too).
            "ok": all.ok, "errors": all.errors, "warmUpOk": 1,
            "elapsedS": (elapsed * 100.0).round() / 100.0,
            "perSecond": (all.ok as f64 / elapsed).round(),
            "latencyMs": {
                "challenge": summary(all.challenge), "pay": summary(all.pay),
                "verify": summary(all.verify), "cycle": summary(all.cycle),
            },
        })
    );
    Ok(())
}
