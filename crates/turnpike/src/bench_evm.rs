//! `turnpike bench evm`: paid requests per second and time to receipt of the `evm` rail, end to
//! end on a local chain.
//!
//! The command starts anvil (a separate process), compiles and deploys the project's EIP-3009 test
//! stablecoin (`contracts/TestStablecoin.sol`, with node and solc-js from `npm ci`), mints tokens
//! to `payers` fresh payer keys, starts `turnpike serve` (a separate process) on the chosen
//! database, and sets up over the API a merchant whose `evm` rail submits with anvil's dev account
//! 1 as hot wallet, with a gateway price offering only `evm` in front of the built-in echo
//! upstream (served by this process). A separate load-generating process (`turnpike bench
//! evm-load`, hidden, in `payers.rs`) then runs `payers` concurrent payers for `duration_s`
//! seconds, each in a loop: `GET` the gateway route, take its `402`'s `evm` challenge, sign an
//! EIP-3009 `TransferWithAuthorization` bound to it, `GET` again with `Authorization: Payment`,
//! expect `200` with a successful `Payment-Receipt`. Time to receipt runs from the `402` (fully
//! read) to the `200`'s headers. Afterwards the tokens the recipient holds on the chain must equal
//! the merchant's booked revenue plus the platform fee on it, and the ledger invariants must hold.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolConstructor};
use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::bench::{Backend, TempDir, rand_tag};
use crate::bench_verify::{
    CONCURRENCY_MAX, DURATION_S_MAX, backend_name, ledger_check, start_server,
};

mod payers;
pub use payers::{EvmLoadArgs, load};

alloy::sol! {
    /// The part of `contracts/TestStablecoin.sol` the bench calls.
    contract TestStablecoin {
        constructor(string name_, string version_);
        function balanceOf(address owner) external view returns (uint256);
        function mint(address to, uint256 value) external;
    }
}

/// Options of `turnpike bench evm`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvmBenchArgs {
    /// Database the server runs on.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// PostgreSQL URL (required with `--backend postgres`).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Concurrent payers (one key and one loop each).
    #[arg(long, default_value_t = 16)]
    pub payers: u32,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Blocks the rail waits for (`confirmations` of `PUT /v1/rails/evm`). Above 1, the bench
    /// mines an empty block every 200 ms so that later confirmations arrive.
    #[arg(long, default_value_t = 1)]
    pub confirmations: u32,
    /// The anvil binary (default: node_modules/.bin/anvil of the repository, from `npm ci`).
    #[arg(long)]
    pub anvil: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Most confirmations the bench waits for.
pub const CONFIRMATIONS_MAX: u32 = 64;
/// The seed of the payer keys, passed to the load generator (hex of 32 bytes).
const PAYER_SEED_ENV: &str = "TURNPIKE_BENCH_PAYER_SEED";
/// The test stablecoin's EIP-712 name and version as the bench deploys it.
const TOKEN_NAME: &str = "Turnpike Bench USD";
const TOKEN_VERSION: &str = "1";
/// The token's decimals (fixed in the contract).
const TOKEN_DECIMALS: u8 = 6;
/// The ledger currency the price is in.
const CURRENCY: &str = "usdc";
/// Price of one request, in token base units (0.001 of the token).
const PRICE_MINOR: u128 = 1_000;
/// Tokens minted to each payer: more than any run spends.
const PAYER_FUNDING_MINOR: u128 = 1_000_000_000_000_000;
/// The gateway route's path pattern and the path the payers request.
const ROUTE_PATH: &str = "/bench/{item}";
const REQUEST_PATH: &str = "/bench/item";
/// Longest wait for anvil to print its address, and for its RPC to answer.
const ANVIL_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the bench mines an empty block when more than one confirmation is asked for.
const MINE_INTERVAL: Duration = Duration::from_millis(200);
/// How long the chain and the ledger may take to agree after the run (settlements left pending
/// are booked by the server's resolver).
const AGREEMENT_WAIT: Duration = Duration::from_secs(30);
/// Most bytes of anvil's output kept for error messages.
const ANVIL_LOG_MAX: usize = 64 * 1024;

/// `turnpike bench evm`.
pub async fn run(args: EvmBenchArgs) -> anyhow::Result<()> {
    check_limits(args.payers, args.duration_s)?;
    ensure!(
        (1..=CONFIRMATIONS_MAX).contains(&args.confirmations),
        "--confirmations must be 1 to {CONFIRMATIONS_MAX}"
    );
    if args.backend == Backend::Postgres && args.database_url.is_none() {
        bail!("--backend postgres needs --database-url (or DATABASE_URL)");
    }
    let root = repo_root()?;
    let anvil_path = args
        .anvil
        .clone()
        .unwrap_or_else(|| root.join("node_modules/.bin/anvil"));
    ensure!(
        anvil_path.is_file(),
        "anvil not found at {}: run `npm ci` at the repository root ({}), or pass --anvil PATH",
        anvil_path.display(),
        root.display()
    );
    let bytecode = compile_stablecoin(&root)?;

    let anvil = tokio::task::spawn_blocking(move || Anvil::start(&anvil_path)).await??;
    let chain = Chain::connect(&anvil).await?;
    let seed = B256::from(random_bytes()?);
    let token = chain.deploy(bytecode).await?;
    let payers: Vec<Address> = (0..args.payers)
        .map(|i| payer_key(&seed, i).map(|k| k.address()))
        .collect::<anyhow::Result<_>>()?;
    for payer in &payers {
        chain.mint(token, *payer, PAYER_FUNDING_MINOR).await?;
    }
    // A fresh address: its balance is exactly what the run paid it.
    let recipient = payer_key(&seed, u32::MAX)?.address();
    let _miner = (args.confirmations > 1).then(|| chain.spawn_miner());

    let upstream = Echo::start().await?;
    let dir = TempDir::new()?;
    let admin_token = format!("bench-admin-{:x}{:x}", rand_tag(), rand_tag());
    let secrets_key = hex(&random_bytes()?);
    let server = start_server(
        args.backend,
        args.database_url.as_deref(),
        &dir,
        &admin_token,
        crate::bench_verify::BENCH_FEE_BPS,
        &[(turnpike_server::secrets::SECRETS_KEY_ENV, &secrets_key)],
    )?;
    let merchant = Merchant::create(
        &server.url,
        &admin_token,
        &MerchantSetup {
            chain_id: chain.chain_id,
            rpc_url: &anvil.rpc_url,
            recipient,
            token,
            hot_wallet_key: &anvil.keys[1],
            confirmations: args.confirmations,
            upstream_url: &upstream.url,
        },
    )
    .await?;
    let url = format!("{}/gw/{}{REQUEST_PATH}", server.url, merchant.slug);
    let load = run_load(&url, &seed, args.payers, args.duration_s).await?;

    let agreement = agreement(&chain, &merchant, token, recipient).await?;
    drop(server);
    drop(upstream);
    let check = ledger_check(args.backend, args.database_url.as_deref(), &dir).await?;
    report(&args, &load, &agreement, check.is_ok());
    if !agreement.agree {
        bail!(
            "the chain and the ledger disagree: {} base units moved to the recipient on chain, \
             but the ledger booked {} (merchant revenue {} + platform fee {})",
            agreement.chain_moved,
            agreement.booked(),
            agreement.revenue_net(),
            agreement.fee
        );
    }
    if !check.is_ok() {
        bail!("the ledger check failed after the run:\n{check}");
    }
    ensure!(
        load["paid"].as_u64().unwrap_or(0) > 0,
        "no paid request succeeded (errors above)"
    );
    Ok(())
}

fn check_limits(payers: u32, duration_s: u64) -> anyhow::Result<()> {
    ensure!(
        (1..=CONCURRENCY_MAX).contains(&payers),
        "--payers must be 1 to {CONCURRENCY_MAX}"
    );
    ensure!(
        (1..=DURATION_S_MAX).contains(&duration_s),
        "--duration-s must be 1 to {DURATION_S_MAX}"
    );
    Ok(())
}

fn report(args: &EvmBenchArgs, load: &Value, agreement: &Agreement, ledger_ok: bool) {
    let backend = backend_name(args.backend);
    if args.json {
        println!(
            "{}",
            json!({
                "backend": backend, "payers": args.payers, "durationS": args.duration_s,
                "confirmations": args.confirmations, "load": load,
                "chainMovedMinor": agreement.chain_moved.to_string(),
                "ledgerRevenueMinor": agreement.revenue_net().to_string(),
                "ledgerFeeMinor": agreement.fee.to_string(),
                "chainLedgerAgree": agreement.agree, "ledgerCheckOk": ledger_ok,
            })
        );
        return;
    }
    println!(
        "bench evm on {backend} and anvil, {} concurrent payers, {} confirmation(s), {} s",
        args.payers, args.confirmations, args.duration_s
    );
    println!(
        "paid requests: {} in {} s = {} paid requests/s; {} errors",
        load["paid"], load["elapsedS"], load["paidPerSecond"], load["errors"]
    );
    let t = &load["timeToReceiptMs"];
    println!(
        "time from 402 to receipt: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        t["p50"], t["p90"], t["p99"], t["max"]
    );
    if let Some(kinds) = load["errorsByKind"].as_object() {
        for (kind, e) in kinds {
            println!("  error {kind}: {} (e.g. {})", e["count"], e["example"]);
        }
    }
    println!(
        "chain vs ledger: {} moved to the recipient; revenue {} + fee {} = {} booked: {}",
        agreement.chain_moved,
        agreement.revenue_net(),
        agreement.fee,
        agreement.booked(),
        if agreement.agree { "agree" } else { "MISMATCH" }
    );
    println!("ledger check: {}", if ledger_ok { "ok" } else { "FAILED" });
}

/// The checkout this binary runs in: the current directory or an ancestor holding the contract
/// and its compile script, else the one it was built from.
fn repo_root() -> anyhow::Result<PathBuf> {
    let is_root = |dir: &Path| {
        dir.join("contracts/TestStablecoin.sol").is_file()
            && dir.join("scripts/compile-contracts.mjs").is_file()
    };
    if let Ok(cwd) = std::env::current_dir()
        && let Some(dir) = cwd.ancestors().find(|d| is_root(d))
    {
        return Ok(dir.to_owned());
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if is_root(&built) {
        return Ok(built.canonicalize()?);
    }
    bail!(
        "contracts/TestStablecoin.sol not found: run `turnpike bench evm` inside a Turnpike \
         checkout (after `npm ci`)"
    )
}

/// The stablecoin's creation bytecode, compiled by `scripts/compile-contracts.mjs` (solc-js).
fn compile_stablecoin(root: &Path) -> anyhow::Result<Bytes> {
    ensure!(
        root.join("node_modules/solc").is_dir(),
        "solc-js not found in {}/node_modules: run `npm ci` at the repository root",
        root.display()
    );
    let output = Command::new("node")
        .arg(root.join("scripts/compile-contracts.mjs"))
        .arg(root.join("contracts/TestStablecoin.sol"))
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "node not found: Node 20+ is needed to compile contracts/TestStablecoin.sol \
                 (install it, then run `npm ci`)"
            ),
            _ => anyhow::Error::new(err).context("running node"),
        })?;
    ensure!(
        output.status.success(),
        "compiling contracts/TestStablecoin.sol failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let artifact: Value =
        serde_json::from_slice(&output.stdout).context("reading the compiled contract")?;
    artifact["contracts"]["TestStablecoin"]["bytecode"]
        .as_str()
        .context("no TestStablecoin bytecode in the compiler's output")?
        .parse()
        .context("the TestStablecoin bytecode is not hex")
}

/// A running anvil on a free port, killed on drop.
struct Anvil {
    child: Child,
    rpc_url: String,
    /// The dev accounts' private keys, as printed (each holds 10,000 ETH).
    keys: Vec<B256>,
    log: Arc<Mutex<String>>,
}

impl Anvil {
    fn start(binary: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, Vec<B256>)>();
        let stdout = child.stdout.take().context("anvil stdout")?;
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut keys = Vec::new();
            let mut in_keys = false;
            let mut sent = false;
            // Read to the end: anvil logs every RPC method it serves, and must never block.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let trimmed = line.trim();
                if trimmed == "Private Keys" {
                    in_keys = true;
                } else if in_keys {
                    // "(0) 0xac09…ff80"
                    if let Some((_, key)) = trimmed.split_once(") ")
                        && let Ok(key) = key.parse::<B256>()
                    {
                        keys.push(key);
                    } else if !trimmed.is_empty() && !trimmed.starts_with('=') {
                        in_keys = false;
                    }
                }
                if !sent && let Some(addr) = trimmed.strip_prefix("Listening on ") {
                    let _ = tx.send((addr.to_owned(), std::mem::take(&mut keys)));
                    sent = true;
                } else if sent {
                    // Only after the banner, which prints the dev accounts' keys and mnemonic.
                    append_bounded(&sink, &line);
                }
            }
        });
        let stderr = child.stderr.take().context("anvil stderr")?;
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                append_bounded(&sink, &line);
            }
        });
        let mut anvil = Self {
            child,
            rpc_url: String::new(),
            keys: Vec::new(),
            log,
        };
        let Ok((addr, keys)) = rx.recv_timeout(ANVIL_START_TIMEOUT) else {
            bail!("anvil did not report its address:\n{}", anvil.log());
        };
        ensure!(
            keys.len() >= 2,
            "anvil printed fewer than two private keys:\n{}",
            anvil.log()
        );
        anvil.rpc_url = format!("http://{addr}");
        anvil.keys = keys;
        Ok(anvil)
    }

    fn log(&self) -> String {
        self.log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

fn append_bounded(sink: &Mutex<String>, line: &str) {
    let mut log = sink.lock().unwrap_or_else(PoisonError::into_inner);
    if log.len() > ANVIL_LOG_MAX {
        let cut = log.len() - ANVIL_LOG_MAX / 2;
        let cut = (cut..log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        log.drain(..cut);
    }
    log.push_str(line);
    log.push('\n');
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chain as the bench's deployer (anvil dev account 0) sees it.
struct Chain {
    deployer: DynProvider,
    reader: DynProvider,
    chain_id: u64,
}

impl Chain {
    async fn connect(anvil: &Anvil) -> anyhow::Result<Self> {
        let url: reqwest::Url = anvil.rpc_url.parse().context("anvil's RPC URL")?;
        let deployer_key =
            PrivateKeySigner::from_bytes(&anvil.keys[0]).context("anvil's first key")?;
        let deployer = ProviderBuilder::new()
            .wallet(deployer_key)
            .connect_http(url.clone())
            .erased();
        let reader = ProviderBuilder::new().connect_http(url).erased();
        let deadline = Instant::now() + ANVIL_START_TIMEOUT;
        let chain_id = loop {
            match reader.get_chain_id().await {
                Ok(id) => break id,
                Err(err) if Instant::now() > deadline => {
                    bail!("anvil at {} does not answer: {err}", anvil.rpc_url)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        Ok(Self {
            deployer,
            reader,
            chain_id,
        })
    }

    /// Send `tx` as the deployer and wait for a successful receipt.
    async fn send_ok(
        &self,
        what: &str,
        tx: TransactionRequest,
    ) -> anyhow::Result<alloy::rpc::types::TransactionReceipt> {
        let receipt = self
            .deployer
            .send_transaction(tx)
            .await
            .with_context(|| what.to_owned())?
            .get_receipt()
            .await
            .with_context(|| format!("{what}: receipt"))?;
        ensure!(receipt.status(), "{what} reverted");
        Ok(receipt)
    }

    async fn deploy(&self, bytecode: Bytes) -> anyhow::Result<Address> {
        let mut code = bytecode.to_vec();
        code.extend(
            TestStablecoin::constructorCall {
                name_: TOKEN_NAME.to_owned(),
                version_: TOKEN_VERSION.to_owned(),
            }
            .abi_encode(),
        );
        let tx = TransactionRequest::default().with_deploy_code(code);
        self.send_ok("deploying TestStablecoin", tx)
            .await?
            .contract_address
            .context("the deployment has no contract address")
    }

    async fn mint(&self, token: Address, to: Address, amount_minor: u128) -> anyhow::Result<()> {
        let call = TestStablecoin::mintCall {
            to,
            value: U256::from(amount_minor),
        };
        let tx = TransactionRequest::default()
            .with_to(token)
            .with_input(call.abi_encode());
        self.send_ok("minting to a payer", tx).await.map(|_| ())
    }

    async fn balance(&self, token: Address, owner: Address) -> anyhow::Result<U256> {
        let tx = TransactionRequest::default()
            .with_to(token)
            .with_input(TestStablecoin::balanceOfCall { owner }.abi_encode());
        let out = self.reader.call(tx).await.context("balanceOf")?;
        TestStablecoin::balanceOfCall::abi_decode_returns(&out).context("balanceOf's answer")
    }

    /// Mine an empty block every [`MINE_INTERVAL`] until dropped.
    fn spawn_miner(&self) -> AbortOnDrop {
        let provider = self.reader.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(MINE_INTERVAL);
            loop {
                tick.tick().await;
                if let Err(err) = provider
                    .raw_request::<_, Value>("evm_mine".into(), json!([]))
                    .await
                {
                    eprintln!("bench: evm_mine failed: {err}");
                }
            }
        }))
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Payer `i`'s key: keccak256(seed ‖ i), a valid secp256k1 scalar but with negligible odds.
fn payer_key(seed: &B256, i: u32) -> anyhow::Result<PrivateKeySigner> {
    let bytes = keccak256([seed.as_slice(), &i.to_be_bytes()].concat());
    PrivateKeySigner::from_bytes(&bytes).context("deriving a payer key")
}

fn random_bytes() -> anyhow::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The built-in echo upstream of `turnpike demo`, served by this process.
struct Echo {
    url: String,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Echo {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .context("starting the echo upstream")?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = axum::Router::new().fallback(crate::demo::echo);
        let task = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, task })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the merchant's rail and price are made of.
struct MerchantSetup<'a> {
    chain_id: u64,
    rpc_url: &'a str,
    recipient: Address,
    token: Address,
    hot_wallet_key: &'a B256,
    confirmations: u32,
    upstream_url: &'a str,
}

/// The bench's merchant: its gateway slug and secret key.
struct Merchant {
    api: String,
    slug: String,
    key: String,
}

impl Merchant {
    async fn create(api: &str, admin_token: &str, s: &MerchantSetup<'_>) -> anyhow::Result<Self> {
        let client = reqwest::Client::new();
        let slug = format!("bench-evm-{:x}", rand_tag());
        let tenant = send(
            &client,
            reqwest::Method::POST,
            &format!("{api}/v1/admin/tenants"),
            admin_token,
            json!({"name": "bench evm merchant", "slug": slug}),
        )
        .await?;
        let key = tenant["apiKey"]["secret"]
            .as_str()
            .context("the merchant's key")?
            .to_owned();
        let token = s.token.to_checksum(None);
        send(
            &client,
            reqwest::Method::PUT,
            &format!("{api}/v1/rails/evm"),
            &key,
            json!({
                "chainId": s.chain_id,
                "rpcUrl": s.rpc_url,
                "recipient": s.recipient.to_checksum(None),
                "confirmations": s.confirmations,
                "tokens": [{"currency": CURRENCY, "address": token, "decimals": TOKEN_DECIMALS,
                            "name": TOKEN_NAME, "version": TOKEN_VERSION}],
                "hotWalletKey": s.hot_wallet_key.to_string(),
            }),
        )
        .await
        .context("configuring the evm rail")?;
        send(
            &client,
            reqwest::Method::POST,
            &format!("{api}/v1/prices"),
            &key,
            json!({"route": {"method": "GET", "path": ROUTE_PATH},
                   "amount": PRICE_MINOR.to_string(), "currency": CURRENCY,
                   "methods": ["evm"], "upstreamUrl": s.upstream_url}),
        )
        .await
        .context("creating the price")?;
        Ok(Self {
            api: api.to_owned(),
            slug,
            key,
        })
    }

    /// The merchant's `usdc` revenue account: (credits posted, debits posted).
    async fn revenue(&self) -> anyhow::Result<(u128, u128)> {
        let response = reqwest::Client::new()
            .get(format!("{}/v1/balances", self.api))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e.without_url()))
            .context("GET /v1/balances")?;
        let status = response.status();
        let body: Value = response.json().await.context("GET /v1/balances: body")?;
        ensure!(
            status.is_success(),
            "GET /v1/balances: {status}: {}",
            body["detail"]
        );
        let Some(account) = body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["kind"] == "merchant_revenue" && a["currency"] == CURRENCY)
        else {
            return Ok((0, 0));
        };
        let field = |name: &str| -> anyhow::Result<u128> {
            account[name]
                .as_str()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("the revenue account's {name}"))
        };
        Ok((field("creditsPosted")?, field("debitsPosted")?))
    }
}

/// `method url` with a bearer token and a JSON body; the JSON answer of a 2xx.
async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    bearer: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let response = client
        .request(method.clone(), url)
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .map_err(|e| anyhow::Error::new(e.without_url()))
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("{method} {url}: body"))?;
    ensure!(
        status.is_success(),
        "{method} {url}: {status}: {}",
        body["detail"]
    );
    Ok(body)
}

/// The chain's and the ledger's view of what the run paid.
struct Agreement {
    /// Token base units the recipient holds (it started with none).
    chain_moved: U256,
    /// Credits posted to the merchant's revenue: every booked payment, gross.
    gross: u128,
    /// Debits posted from it: the platform fee (the bench's merchant is never paid out).
    fee: u128,
    agree: bool,
}

impl Agreement {
    fn revenue_net(&self) -> u128 {
        self.gross.saturating_sub(self.fee)
    }

    /// Merchant revenue plus the fee booked on it.
    fn booked(&self) -> u128 {
        self.revenue_net() + self.fee
    }
}

/// Compare the chain with the ledger, waiting up to [`AGREEMENT_WAIT`] for settlements still in
/// flight or pending to be booked.
async fn agreement(
    chain: &Chain,
    merchant: &Merchant,
    token: Address,
    recipient: Address,
) -> anyhow::Result<Agreement> {
    let deadline = Instant::now() + AGREEMENT_WAIT;
    loop {
        let chain_moved = chain.balance(token, recipient).await?;
        let (gross, fee) = merchant.revenue().await?;
        let agree = fee <= gross && chain_moved == U256::from(gross);
        let agreement = Agreement {
            chain_moved,
            gross,
            fee,
            agree,
        };
        if agree || Instant::now() >= deadline {
            return Ok(agreement);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Run the load generator as a separate process; its JSON figures.
async fn run_load(url: &str, seed: &B256, payers: u32, duration_s: u64) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("locating the turnpike binary")?;
    let output = tokio::process::Command::new(exe)
        .args(["bench", "evm-load", "--url", url])
        .args(["--payers", &payers.to_string()])
        .args(["--duration-s", &duration_s.to_string()])
        .args(["--token-name", TOKEN_NAME, "--token-version", TOKEN_VERSION])
        .env(PAYER_SEED_ENV, hex(seed.as_slice()))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("starting the load generator")?;
    ensure!(output.status.success(), "the load generator failed");
    serde_json::from_slice(&output.stdout).context("reading the load generator's figures")
}
