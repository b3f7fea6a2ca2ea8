//! Black-box tests of `turnpike migrate`, `turnpike ledger check` and `turnpike bench ledger`:
//! the real binary against SQLite (a data directory) and PostgreSQL (a database on a private
//! server this test binary starts: `turnpike_store::testing`). Without PostgreSQL installed the
//! PostgreSQL tests fail saying so; they never skip.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::sync::Arc;

use turnpike_ledger::{
    AccountFlags, AccountId, AccountKind, Engine, EngineConfig, NewAccount, TransferId,
    TransferRequest,
};
use turnpike_store::testing::{Kind, TestDb};

use turnpike_store::on_both_databases;

on_both_databases!(
    migrate_creates_the_schema_and_running_it_again_is_harmless,
    check_passes_on_a_healthy_ledger_and_names_an_account_altered_by_hand,
    check_flags_a_merchant_revenue_below_zero,
    check_sums_a_currency_beyond_u128_without_failing,
    bench_ledger_prints_one_json_line_of_figures,
    bench_ledger_hot_prints_one_json_line_of_figures,
);

const T0: i64 = 1_800_000_000_000;
const WORLD: AccountId = AccountId(0x0000_0000_0000_0000_0000_0000_0000_0001);
const PAYER: AccountId = AccountId(0x7a11_e7a1_1e7a_11e7_a11e_7a11_e7a1_1e01);
const MERCHANT: AccountId = AccountId(0x3e4c_4a47_0000_beef_cafe_0000_1234_abcd);

/// Run the `turnpike` binary with `args`, its database chosen only by the arguments (the
/// environment's `DATABASE_URL` and `TURNPIKE_DATA_DIR` are removed).
async fn turnpike(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_turnpike"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("TURNPIKE_DATA_DIR")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the turnpike binary")
}

/// The arguments naming `db` to `migrate` and `ledger check`.
fn db_args(db: &TestDb) -> Vec<String> {
    match db.kind {
        Kind::Sqlite => vec![
            "--data-dir".into(),
            db.dir().expect("sqlite dir").display().to_string(),
        ],
        Kind::Postgres => vec!["--database-url".into(), db.url.clone()],
    }
}

async fn turnpike_on(db: &TestDb, command: &[&str]) -> Output {
    let db_args = db_args(db);
    let args: Vec<&str> = command
        .iter()
        .copied()
        .chain(db_args.iter().map(String::as_str))
        .collect();
    turnpike(&args).await
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 stderr")
}

/// `ledger check` printed a clean report: one line `<database>: checked ...: ok`.
fn reports_ok(out: &Output) -> bool {
    let stdout = stdout(out);
    stdout.lines().count() == 1 && stdout.trim_end().ends_with(": ok")
}

fn assert_success(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", describe(out));
}

async fn migrate_creates_the_schema_and_running_it_again_is_harmless(db: &TestDb) {
    if db.kind == Kind::Sqlite {
        assert!(!db.dir().unwrap().join("turnpike.db").exists());
    }
    for _ in 0..2 {
        let out = turnpike_on(db, &["migrate"]).await;
        assert_success(&out);
        assert!(stdout(&out).contains("migrated"), "{}", describe(&out));
        assert!(stderr(&out).is_empty(), "{}", describe(&out));
    }
    if db.kind == Kind::Sqlite {
        assert!(db.dir().unwrap().join("turnpike.db").is_file());
    }
    // The tables are there (a missing table would fail the statement).
    assert_eq!(db.exec_raw("DELETE FROM ledger_accounts").await, 0);
    assert_eq!(db.exec_raw("DELETE FROM ledger_transfers").await, 0);

    // An empty ledger is a healthy one.
    let out = turnpike_on(db, &["ledger", "check"]).await;
    assert_success(&out);
    assert!(reports_ok(&out), "{}", describe(&out));
}

#[tokio::test]
async fn check_without_a_sqlite_database_fails_and_creates_none() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let out = turnpike(&["ledger", "check", "--data-dir", data_dir.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = stderr(&out);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", describe(&out));
    assert!(errors[0].contains("turnpike migrate"), "{}", describe(&out));
    assert!(!data_dir.exists(), "{}", describe(&out));
}

fn new_account(id: AccountId, kind: AccountKind, flags: AccountFlags) -> NewAccount {
    NewAccount {
        id,
        tenant: "t1".into(),
        owner: "owner".into(),
        kind,
        currency: "usd".into(),
        flags,
    }
}

fn transfer(id: u128, debit: AccountId, credit: AccountId, amount: u128) -> TransferRequest {
    TransferRequest::Transfer {
        id: TransferId(id),
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        currency: "usd".into(),
        timeout_ms: None,
        code: 1,
        user_data: None,
    }
}

/// Accounts and a few transfers, posted through the real engine over the real store.
async fn populate(db: &TestDb) {
    let store = db.open().await;
    let no_overdraft = AccountFlags {
        debits_must_not_exceed_credits: true,
        ..AccountFlags::default()
    };
    for account in [
        new_account(WORLD, AccountKind::External, AccountFlags::default()),
        new_account(PAYER, AccountKind::PayerBalance, no_overdraft),
        new_account(
            MERCHANT,
            AccountKind::MerchantRevenue,
            AccountFlags::default(),
        ),
    ] {
        store.create_account(account, T0).await.unwrap().unwrap();
    }
    let engine = Engine::start(Arc::new(store.clone()), EngineConfig::default());
    for request in [
        transfer(1, WORLD, PAYER, 100),
        transfer(2, PAYER, MERCHANT, 40),
        transfer(3, PAYER, MERCHANT, 2),
    ] {
        let posted = engine.transfer(request).await.expect("engine").unwrap();
        assert!(posted.created);
    }
    drop(engine);
    let merchant = store.account(None, MERCHANT).await.unwrap().unwrap();
    assert_eq!(merchant.credits_posted, 42);
    store.close().await;
}

/// More transfers through a fresh engine on `db`'s populated ledger.
async fn post_more(db: &TestDb, requests: Vec<TransferRequest>) {
    let store = db.open().await;
    let engine = Engine::start(Arc::new(store.clone()), EngineConfig::default());
    for request in requests {
        let posted = engine.transfer(request).await.expect("engine").unwrap();
        assert!(posted.created);
    }
    drop(engine);
    store.close().await;
}

async fn check_flags_a_merchant_revenue_below_zero(db: &TestDb) {
    populate(db).await;
    // The merchant received 42; 50 leave its revenue (no floor stops it): 8 below zero.
    post_more(db, vec![transfer(4, MERCHANT, WORLD, 50)]).await;
    let out = turnpike_on(db, &["ledger", "check"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = stdout(&out);
    let line = stdout
        .lines()
        .find(|l| l.contains(&MERCHANT.to_string()))
        .unwrap_or_else(|| panic!("the merchant is not named:\n{}", describe(&out)));
    assert!(
        line.contains("merchant revenue below zero (available -8)"),
        "{}",
        describe(&out)
    );
    assert!(!stdout.contains(&PAYER.to_string()), "{}", describe(&out));
}

async fn check_sums_a_currency_beyond_u128_without_failing(db: &TestDb) {
    populate(db).await;
    // The payer holds 58 after populate: fill its credits, then its debits, to u128::MAX. The
    // credits of payer and merchant together then exceed u128, and still balance the debits.
    post_more(
        db,
        vec![
            transfer(5, WORLD, PAYER, u128::MAX - 100),
            transfer(6, PAYER, MERCHANT, u128::MAX - 42),
        ],
    )
    .await;
    let out = turnpike_on(db, &["ledger", "check"]).await;
    assert_success(&out);
    assert!(reports_ok(&out), "{}", describe(&out));
}

async fn check_passes_on_a_healthy_ledger_and_names_an_account_altered_by_hand(db: &TestDb) {
    populate(db).await;

    let out = turnpike_on(db, &["ledger", "check"]).await;
    assert_success(&out);
    assert!(reports_ok(&out), "{}", describe(&out));
    assert!(stderr(&out).is_empty(), "{}", describe(&out));

    let merchant = MERCHANT.to_string();
    assert_eq!(merchant.len(), 32);
    assert!(merchant.bytes().all(|b| b.is_ascii_hexdigit()));
    // SQLite stores amounts as decimal TEXT, PostgreSQL as NUMERIC(39,0): the literal suits both.
    let changed = db
        .exec_raw(&format!(
            "UPDATE ledger_accounts SET credits_posted = '999' WHERE id = '{merchant}'"
        ))
        .await;
    assert_eq!(changed, 1);

    let out = turnpike_on(db, &["ledger", "check"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let (stdout, stderr) = (stdout(&out), stderr(&out));
    assert!(
        stdout.contains(&merchant) || stderr.contains(&merchant),
        "the altered account {merchant} is not named:\n{}",
        describe(&out)
    );
    // Only the altered account is named: the payer and the world account are still consistent.
    for other in [PAYER, WORLD] {
        let other = other.to_string();
        assert!(
            !stdout.contains(&other) && !stderr.contains(&other),
            "account {other} was not altered but is named:\n{}",
            describe(&out)
        );
    }
    let error_lines = stderr.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(error_lines, 1, "{}", describe(&out));
}

async fn bench_ledger_prints_one_json_line_of_figures(db: &TestDb) {
    bench_ledger_json(db, false).await;
}

async fn bench_ledger_hot_prints_one_json_line_of_figures(db: &TestDb) {
    bench_ledger_json(db, true).await;
}

/// A smoke test of `turnpike bench ledger --json` with a small load: it runs, prints one JSON
/// line of well-formed figures, and leaves a consistent ledger. Never a test of speed.
async fn bench_ledger_json(db: &TestDb, hot: bool) {
    let mut args = vec!["bench", "ledger"];
    match db.kind {
        // The SQLite bench runs in a temporary file of its own.
        Kind::Sqlite => args.extend(["--backend", "sqlite"]),
        Kind::Postgres => args.extend(["--backend", "postgres", "--database-url", &db.url]),
    }
    args.extend([
        "--transfers",
        "400",
        "--concurrency",
        "8",
        "--unbatched-transfers",
        "80",
        "--json",
    ]);
    if hot {
        args.push("--hot");
    }
    let out = turnpike(&args).await;
    assert_success(&out);

    let stdout = stdout(&out);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    let line: serde_json::Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", describe(&out)));
    assert!(line.is_object(), "{}", describe(&out));
    let number = |key: &str| {
        line[key]
            .as_f64()
            .unwrap_or_else(|| panic!("`{key}` is not a number:\n{}", describe(&out)))
    };
    let (per_s, p50, p99) = (
        number("transfers_per_s"),
        number("p50_ms"),
        number("p99_ms"),
    );
    for (key, value) in [("transfers_per_s", per_s), ("p50_ms", p50), ("p99_ms", p99)] {
        assert!(
            value.is_finite() && value > 0.0,
            "`{key}` = {value}:\n{}",
            describe(&out)
        );
    }
    assert!(p50 <= p99, "p50 {p50} > p99 {p99}:\n{}", describe(&out));
    assert_eq!(line["transfers"].as_u64(), Some(400), "{}", describe(&out));
    assert_eq!(line["concurrency"].as_u64(), Some(8), "{}", describe(&out));
    assert_eq!(line["hot"].as_bool(), Some(hot), "{}", describe(&out));
    let backend = match db.kind {
        Kind::Sqlite => "sqlite",
        Kind::Postgres => "postgres",
    };
    assert_eq!(
        line["backend"].as_str(),
        Some(backend),
        "{}",
        describe(&out)
    );

    if db.kind == Kind::Postgres {
        // The bench's accounts and transfers are in the shared database: they check out.
        let out = turnpike_on(db, &["ledger", "check"]).await;
        assert_success(&out);
        assert!(reports_ok(&out), "{}", describe(&out));
    }
}
