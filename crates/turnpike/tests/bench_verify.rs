//! Black-box tests of `turnpike bench verify` and `turnpike bench pay`: the real binary starts
//! `turnpike serve` and its separate load generator on SQLite (its own temporary directory) and
//! on PostgreSQL (a database on the private server `turnpike_store::testing` starts). A short,
//! light run must complete paid cycles without an error, print well-formed figures and leave a
//! consistent ledger; `bench verify` charges a non-zero platform fee and its books (settled
//! payments, merchant revenue, platform fees, payer balance) must match its paid cycles to the
//! unit. Never a test of speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::describe;
use turnpike_store::on_both_databases;
use turnpike_store::testing::{Kind, TestDb};

on_both_databases!(
    bench_verify_pays_full_cycles_and_leaves_a_consistent_ledger,
    bench_pay_reserves_under_a_policy_and_leaves_a_consistent_ledger,
);

/// Run `turnpike bench <what> --json` on `db` with a light load; its one line of JSON.
async fn bench_json(db: &TestDb, what: &str) -> Value {
    let mut args = vec![
        "bench",
        what,
        "--concurrency",
        "4",
        "--duration-s",
        "1",
        "--json",
    ];
    match db.kind {
        Kind::Sqlite => args.extend(["--backend", "sqlite"]),
        Kind::Postgres => args.extend(["--backend", "postgres", "--database-url", &db.url]),
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnpike"))
        .args(&args)
        .env_remove("DATABASE_URL")
        .env_remove("TURNPIKE_DATA_DIR")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the turnpike binary");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", describe(&out)))
}

/// A phase's figures: some work done, none failed, latencies ordered.
fn assert_phase(phase: &Value, steps: &[&str], line: &Value) {
    let ok = phase["ok"].as_u64().unwrap_or(0);
    assert!(ok > 0, "nothing completed: {line}");
    assert_eq!(phase["errors"].as_u64(), Some(0), "{line}");
    let per_s = phase["perSecond"].as_f64().unwrap_or(0.0);
    assert!(per_s > 0.0, "{line}");
    for step in steps {
        let s = &phase["latencyMs"][step];
        let (p50, p99, max) = (
            s["p50"].as_f64().unwrap(),
            s["p99"].as_f64().unwrap(),
            s["max"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{step}: {line}");
        // One sample per completed step: a cycle counted is a cycle measured.
        assert!(s["count"].as_u64().unwrap() >= ok, "{step}: {line}");
    }
}

fn backend(db: &TestDb) -> &'static str {
    match db.kind {
        Kind::Sqlite => "sqlite",
        Kind::Postgres => "postgres",
    }
}

async fn bench_verify_pays_full_cycles_and_leaves_a_consistent_ledger(db: &TestDb) {
    let line = bench_json(db, "verify").await;
    assert_eq!(line["backend"].as_str(), Some(backend(db)), "{line}");
    assert_eq!(line["concurrency"].as_u64(), Some(4), "{line}");
    assert_phase(
        &line["cycle"],
        &["challenge", "pay", "verify", "cycle"],
        &line,
    );
    assert_phase(&line["challenges"], &["challenge"], &line);
    assert_eq!(line["ledgerCheckOk"].as_bool(), Some(true), "{line}");
    assert_books(&line);
}

/// The amount string `value` as a number.
fn minor(value: &Value) -> i128 {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an amount string: {value}"))
}

/// `bench verify` charged a fee that is not zero, and what it read back from the server is
/// exactly its paid cycles' worth.
fn assert_books(line: &Value) {
    assert_eq!(line["feeBps"].as_u64(), Some(250), "{line}");
    // 2.5% of 400 is 10, not rounded away.
    assert_eq!(line["priceMinor"].as_str(), Some("400"), "{line}");
    assert_eq!(line["feeMinor"].as_str(), Some("10"), "{line}");
    assert_eq!(line["errors"].as_u64(), Some(0), "{line}");
    let paid = line["paid"].as_u64().unwrap();
    // Every counted cycle, and the warm-up's.
    assert_eq!(paid, line["cycle"]["ok"].as_u64().unwrap() + 1, "{line}");
    let books = &line["books"];
    assert_eq!(books["settled"].as_u64(), Some(paid), "{line}");
    assert_eq!(books["unsettled"].as_u64(), Some(0), "{line}");
    assert_eq!(books["offPrice"].as_u64(), Some(0), "{line}");
    let n = i128::from(paid);
    let revenue = &books["merchantRevenue"];
    assert_eq!(minor(&revenue["creditsPosted"]), n * 400, "{line}");
    assert_eq!(minor(&revenue["debitsPosted"]), n * 10, "{line}");
    assert_eq!(minor(&revenue["available"]), n * 390, "{line}");
    assert_eq!(minor(&books["platformFeeGainMinor"]), n * 10, "{line}");
    assert_eq!(
        minor(&books["payer"]["available"]),
        1_000_000_000_000_000 - n * 400,
        "{line}"
    );
    assert_eq!(minor(&books["payer"]["debitsPending"]), 0, "{line}");
}

async fn bench_pay_reserves_under_a_policy_and_leaves_a_consistent_ledger(db: &TestDb) {
    let line = bench_json(db, "pay").await;
    assert_eq!(line["backend"].as_str(), Some(backend(db)), "{line}");
    assert_eq!(line["agents"].as_u64(), Some(4), "{line}");
    assert_phase(&line["pay"], &["challenge", "pay"], &line);
    assert_eq!(line["ledgerCheckOk"].as_bool(), Some(true), "{line}");
}
