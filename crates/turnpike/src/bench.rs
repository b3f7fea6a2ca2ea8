//! `turnpike bench ledger`: a load generator for the posting engine over a real database.
//!
//! It creates its own accounts (ids prefixed by a per-run random tag, so runs never collide in
//! a shared PostgreSQL database), funds one payer account per submitter, then has `concurrency`
//! tasks each submit their share of `transfers` one at a time, timing each. With `--hot` every
//! transfer credits one merchant account (the payment pattern); without it each submitter has
//! its own. The same run then repeats a shorter load with batching off (one transaction per
//! transfer) and reports the speed-up. Finally the ledger invariants are checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use turnpike_ledger::{
    AccountFlags, AccountId, AccountKind, Clock as _, Engine, EngineConfig, NewAccount,
    SystemClock, TransferId, TransferRequest,
};
use turnpike_store::Store;

/// Which database to run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A fresh SQLite file in a temporary directory.
    Sqlite,
    /// The PostgreSQL database `--database-url` names.
    Postgres,
}

/// Options of `turnpike bench ledger`.
#[derive(Debug, Clone, clap::Args)]
pub struct LedgerBenchArgs {
    /// Database to run against.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// PostgreSQL URL (required with `--backend postgres`).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Transfers to submit in the batched run.
    #[arg(long, default_value_t = 20_000)]
    pub transfers: u32,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Every transfer credits the same merchant account.
    #[arg(long)]
    pub hot: bool,
    /// Transfers in the unbatched comparison run (0 skips it).
    #[arg(long, default_value_t = 2_000)]
    pub unbatched_transfers: u32,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct RunFigures {
    transfers: u32,
    elapsed: Duration,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl RunFigures {
    fn per_second(&self) -> f64 {
        f64::from(self.transfers) / self.elapsed.as_secs_f64()
    }
}

const CURRENCY: &str = "usd";
/// Each payer is funded for more than it can spend in any run.
const FUNDING_MINOR: u128 = 1_000_000_000_000;

pub async fn run(args: LedgerBenchArgs) -> anyhow::Result<()> {
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(
        args.transfers >= args.concurrency,
        "--transfers must be at least --concurrency"
    );
    let (store, _tempdir) = open(&args).await?;
    let store = Arc::new(store);
    let tag: u64 = rand_tag();
    let accounts = Accounts::create(&store, tag, args.concurrency, args.hot).await?;

    let batched = load(
        &store,
        &accounts,
        EngineConfig::default(),
        args.transfers,
        args.concurrency,
        1,
    )
    .await?;
    let unbatched = if args.unbatched_transfers > 0 {
        let config = EngineConfig {
            batch_max: 1,
            ..EngineConfig::default()
        };
        let n = args.unbatched_transfers.max(args.concurrency);
        Some(load(&store, &accounts, config, n, args.concurrency, 2).await?)
    } else {
        None
    };

    let report = store.check().await.context("ledger check after the run")?;
    if !report.is_ok() {
        eprint!("{report}");
        bail!("ledger invariants violated after the benchmark (listed above)");
    }

    let speedup = unbatched.map(|u| batched.per_second() / u.per_second());
    if args.json {
        let mut line = serde_json::json!({
            "transfers_per_s": round1(batched.per_second()),
            "p50_ms": round3(batched.p50_ms),
            "p99_ms": round3(batched.p99_ms),
            "max_ms": round3(batched.max_ms),
            "transfers": batched.transfers,
            "concurrency": args.concurrency,
            "hot": args.hot,
            "backend": format!("{:?}", args.backend).to_lowercase(),
        });
        if let (Some(u), Some(s)) = (unbatched, speedup) {
            line["unbatched_transfers_per_s"] = serde_json::json!(round1(u.per_second()));
            line["unbatched_p99_ms"] = serde_json::json!(round3(u.p99_ms));
            line["batching_speedup"] = serde_json::json!(round1(s));
        }
        println!("{line}");
    } else {
        println!(
            "backend {:?}, {} submitters, {} account",
            args.backend,
            args.concurrency,
            if args.hot {
                "one hot merchant"
            } else {
                "one merchant per submitter"
            }
        );
        print_run("batched (group commit)", &batched);
        if let (Some(u), Some(s)) = (unbatched, speedup) {
            print_run("unbatched (1 tx/transfer)", &u);
            println!("group commit speed-up: {s:.1}x");
        }
        print!("ledger check: {report}");
    }
    Ok(())
}

fn print_run(label: &str, r: &RunFigures) {
    println!(
        "{label}: {} transfers in {:.2} s = {:.0} transfers/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.transfers,
        r.elapsed.as_secs_f64(),
        r.per_second(),
        r.p50_ms,
        r.p99_ms,
        r.max_ms
    );
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn rand_tag() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

async fn open(args: &LedgerBenchArgs) -> anyhow::Result<(Store, Option<TempDir>)> {
    match args.backend {
        Backend::Sqlite => {
            let dir = TempDir::new()?;
            let store = Store::open_sqlite(&dir.path.join("bench.db"))
                .await
                .context("opening SQLite")?;
            Ok((store, Some(dir)))
        }
        Backend::Postgres => {
            let url = args
                .database_url
                .as_deref()
                .context("--backend postgres needs --database-url (or DATABASE_URL)")?;
            let store = Store::open_postgres(url)
                .await
                .context("connecting to PostgreSQL")?;
            Ok((store, None))
        }
    }
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "turnpike-bench-{}-{:x}",
            std::process::id(),
            rand_tag()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

struct Accounts {
    tag: u64,
    payers: Vec<AccountId>,
    merchants: Vec<AccountId>,
}

/// Ids: high 64 bits the run tag, then a role byte, then an index.
fn id(tag: u64, role: u8, index: u32) -> u128 {
    (u128::from(tag) << 64) | (u128::from(role) << 56) | u128::from(index)
}

impl Accounts {
    async fn create(store: &Store, tag: u64, concurrency: u32, hot: bool) -> anyhow::Result<Self> {
        let now = SystemClock.now_ms();
        let new = |role: u8, index: u32, kind: AccountKind, flags: AccountFlags| NewAccount {
            id: AccountId(id(tag, role, index)),
            tenant: format!("bench-{tag:x}"),
            owner: format!("bench-{role}-{index}"),
            kind,
            currency: CURRENCY.into(),
            flags,
        };
        let no_overdraft = AccountFlags {
            debits_must_not_exceed_credits: true,
            ..AccountFlags::default()
        };
        let world = new(0, 0, AccountKind::External, AccountFlags::default());
        store
            .create_account(world.clone(), now)
            .await?
            .map_err(|e| anyhow::anyhow!("world account: {e}"))?;
        let mut payers = Vec::new();
        let mut merchants = Vec::new();
        for i in 0..concurrency {
            let payer = new(1, i, AccountKind::PayerBalance, no_overdraft);
            store
                .create_account(payer.clone(), now)
                .await?
                .map_err(|e| anyhow::anyhow!("payer account: {e}"))?;
            payers.push(payer.id);
            if !hot || i == 0 {
                let merchant = new(2, i, AccountKind::MerchantRevenue, AccountFlags::default());
                store
                    .create_account(merchant.clone(), now)
                    .await?
                    .map_err(|e| anyhow::anyhow!("merchant account: {e}"))?;
                merchants.push(merchant.id);
            }
        }
        // Fund every payer from the world account, through the engine like any transfer.
        let engine = Engine::start(Arc::new(store.clone()), EngineConfig::default());
        for (i, payer) in payers.iter().enumerate() {
            let request = TransferRequest::Transfer {
                id: TransferId(id(tag, 3, u32::try_from(i)?)),
                debit_account_id: world.id,
                credit_account_id: *payer,
                amount: FUNDING_MINOR,
                currency: CURRENCY.into(),
                timeout_ms: None,
                code: 1,
                user_data: None,
            };
            engine
                .transfer(request)
                .await?
                .map_err(|e| anyhow::anyhow!("funding: {e}"))?;
        }
        Ok(Self {
            tag,
            payers,
            merchants,
        })
    }
}

/// Submit `transfers` from `concurrency` tasks and time each; `run` keeps ids distinct per run.
async fn load(
    store: &Arc<Store>,
    accounts: &Accounts,
    config: EngineConfig,
    transfers: u32,
    concurrency: u32,
    run: u8,
) -> anyhow::Result<RunFigures> {
    let engine = Engine::start(Arc::new((**store).clone()), config);
    let per_task = transfers / concurrency;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let engine = engine.clone();
        let payer = accounts.payers[task as usize];
        let merchant = accounts.merchants[(task as usize) % accounts.merchants.len()];
        let tag = accounts.tag;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_task as usize);
            for i in 0..per_task {
                let request = TransferRequest::Transfer {
                    id: TransferId(id(tag, 0x10 + run, task * per_task + i)),
                    debit_account_id: payer,
                    credit_account_id: merchant,
                    amount: 1 + u128::from(i % 1000),
                    currency: CURRENCY.into(),
                    timeout_ms: None,
                    code: 2,
                    user_data: None,
                };
                let t0 = Instant::now();
                let result = engine.transfer(request).await?;
                latencies.push(t0.elapsed());
                result.map_err(|e| anyhow::anyhow!("transfer refused: {e}"))?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(transfers as usize);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| {
        let idx = ((latencies.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(latencies.len() - 1);
        latencies[idx].as_secs_f64() * 1000.0
    };
    Ok(RunFigures {
        transfers: per_task * concurrency,
        elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    })
}
