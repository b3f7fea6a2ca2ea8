//! Black-box tests of `turnpike bench evm`: the real binary starts anvil, the server (on SQLite and
//! on PostgreSQL) and its load generator, and pays through the gateway with EIP-3009
//! authorizations. A smoke test with a tiny load (never a test of speed) and the argument errors.

// The test bodies are plain `async fn`s that macro-generated `#[tokio::test]`s call, which
// clippy's `allow-unwrap-in-tests` does not recognise as tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use serde_json::Value;
use turnpike_store::on_both_databases;
use turnpike_store::testing::{Kind, TestDb};

on_both_databases!(bench_evm_pays_through_the_gateway_and_the_chain_agrees_with_the_ledger);

/// The bench's price of one request, in token base units.
const PRICE_MINOR: u64 = 1_000;

async fn turnpike(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_turnpike"))
        .args(args)
        .env_remove("DATABASE_URL")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the turnpike binary")
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn bench_evm_pays_through_the_gateway_and_the_chain_agrees_with_the_ledger(db: &TestDb) {
    let mut args = vec![
        "bench",
        "evm",
        "--payers",
        "2",
        "--duration-s",
        "1",
        "--json",
    ];
    match db.kind {
        Kind::Sqlite => args.extend(["--backend", "sqlite"]),
        Kind::Postgres => args.extend(["--backend", "postgres", "--database-url", &db.url]),
    }
    let out = turnpike(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    let report: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", describe(&out)));
    let load = &report["load"];
    let paid = load["paid"].as_u64().expect("paid");
    assert!(paid > 0, "{}", describe(&out));
    assert_eq!(load["errors"], 0, "{}", describe(&out));
    assert_eq!(load["errorsByKind"], serde_json::json!({}));
    let t = &load["timeToReceiptMs"];
    let ms = |key: &str| t[key].as_f64().unwrap_or_else(|| panic!("{key}: {t}"));
    assert!(ms("p50") > 0.0 && ms("p50") <= ms("p90") && ms("p90") <= ms("p99"));
    assert!(ms("p99") <= ms("max"), "{t}");
    assert_eq!(t["count"].as_u64(), Some(paid));
    assert!(load["paidPerSecond"].as_f64().is_some_and(|r| r > 0.0));
    // Every paid request moved the price on chain once (plus the load generator's warm-up), and
    // the ledger booked exactly that: the merchant's revenue plus the 1% platform fee.
    let moved: u64 = report["chainMovedMinor"].as_str().unwrap().parse().unwrap();
    assert_eq!(moved, (paid + 1) * PRICE_MINOR, "{}", describe(&out));
    let revenue: u64 = report["ledgerRevenueMinor"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let fee: u64 = report["ledgerFeeMinor"].as_str().unwrap().parse().unwrap();
    assert_eq!(fee, moved / 100);
    assert_eq!(revenue + fee, moved);
    assert_eq!(report["chainLedgerAgree"], true);
    assert_eq!(report["ledgerCheckOk"], true);
    assert_eq!(report["payers"], 2);
    let backend = match db.kind {
        Kind::Sqlite => "sqlite",
        Kind::Postgres => "postgres",
    };
    assert_eq!(report["backend"], backend);
}

/// Each bad argument fails at once with one clear line, before anything is started.
#[tokio::test]
async fn bench_evm_refuses_bad_arguments_with_one_clear_line() {
    let cases: [(&[&str], &str); 5] = [
        (&["--payers", "0"], "--payers must be 1 to 1024"),
        (&["--duration-s", "0"], "--duration-s must be 1 to 3600"),
        (&["--confirmations", "0"], "--confirmations must be 1 to 64"),
        (
            &["--anvil", "/nonexistent/anvil"],
            "anvil not found at /nonexistent/anvil: run `npm ci`",
        ),
        (
            &["--backend", "postgres"],
            "--backend postgres needs --database-url",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["bench", "evm"];
        if !extra.contains(&"--backend") {
            args.extend(["--backend", "sqlite"]);
        }
        if !extra.contains(&"--duration-s") {
            args.extend(["--duration-s", "1"]);
        }
        args.extend(extra);
        let out = turnpike(&args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected),
            "{args:?}: expected `{expected}`:\n{}",
            describe(&out)
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {}", describe(&out));
        assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
    }
}
