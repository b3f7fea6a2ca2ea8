//! The `turnpike` binary: operator CLI and developer tools for the Machine Payments Protocol.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod bench_evm;
mod bench_verify;
mod conformance;
mod db;
mod decode;
mod demo;
mod ledger;
mod owner;
mod pay;
mod serve;

/// Turnpike: a hosted control plane for the Machine Payments Protocol (HTTP 402).
#[derive(Debug, Parser)]
#[command(name = "turnpike", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Turnpike server (embedded SQLite under --data-dir unless --database-url is given).
    Serve(serve::ServeArgs),
    /// Operator commands that work on the database directly.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// MPP developer tools.
    Mpp {
        #[command(subcommand)]
        command: MppCommand,
    },
    /// Answer one request of the cross-SDK conformance suite (JSON on stdin, JSON on stdout).
    ConformanceAdapter,
    /// Create or upgrade the database schema (also done at start-up).
    Migrate {
        #[command(flatten)]
        db: db::DbArgs,
    },
    /// Ledger tools.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Request a URL, paying its 402 with an agent token (curl for agents).
    Pay(pay::PayArgs),
    /// Run a complete local demo: server, merchant, payer, agent and one paid request.
    Demo(demo::DemoArgs),
    /// Load generators that measure Turnpike on this machine.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Agents and their tokens, over the API with a tenant secret key (TURNPIKE_API_KEY).
    Agent {
        #[command(subcommand)]
        command: owner::AgentCommand,
    },
    /// Agents' spend policies: set, show, and dry-run against recorded decisions.
    Policy {
        #[command(subcommand)]
        command: owner::PolicyCommand,
    },
    /// Payments held for the owner's approval.
    Approvals {
        #[command(subcommand)]
        command: owner::ApprovalsCommand,
    },
    /// The recorded decisions of agents' payments, newest first.
    Audit(owner::AuditArgs),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant and print it with its first secret API key (shown once).
    Create(serve::TenantCreateArgs),
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Verify the ledger invariants over the whole database; exits 1 naming the offending ids.
    Check {
        #[command(flatten)]
        db: db::DbArgs,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Transfers per second and latency of the posting engine on a real database.
    Ledger(bench::LedgerBenchArgs),
    /// Paid verifications and challenges per second of a real server over real HTTP.
    Verify(bench_verify::VerifyBenchArgs),
    /// `/v1/agent/pay` per second of a real server, every agent under a spend policy.
    Pay(bench_verify::PayBenchArgs),
    /// Paid requests per second and time to receipt of the evm rail, end to end on anvil.
    Evm(bench_evm::EvmBenchArgs),
    /// The load generator `bench verify` and `bench pay` run as a separate process.
    #[command(hide = true)]
    VerifyLoad(bench_verify::LoadArgs),
    /// The load generator `bench evm` runs as a separate process.
    #[command(hide = true)]
    EvmLoad(bench_evm::EvmLoadArgs),
}

#[derive(Debug, Subcommand)]
enum MppCommand {
    /// Decode a challenge, credential or receipt (a header line or its value) to pretty JSON.
    Decode {
        /// The header line or value; read from stdin when absent or `-`.
        value: Option<String>,
    },
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(future: F) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(future)
}

/// Logs to stderr, filtered by RUST_LOG (default: info for Turnpike, warn for the rest).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,turnpike=info,turnpike_server=info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// mimalloc: the request path allocates many small short-lived buffers across worker threads,
/// where glibc's allocator spent about a tenth of the server's CPU (`turnpike bench verify`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the process (reqwest and sqlx share rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_tracing();
    let result = match cli.command {
        Command::Serve(args) => block_on(serve::run(args)),
        Command::Admin {
            command:
                AdminCommand::Tenant {
                    command: TenantCommand::Create(args),
                },
        } => block_on(serve::tenant_create(args)),
        Command::Mpp {
            command: MppCommand::Decode { value },
        } => decode::run(value),
        Command::ConformanceAdapter => conformance::run(),
        Command::Pay(args) => block_on(pay::run(args)),
        Command::Demo(args) => block_on(demo::run(args)),
        Command::Migrate { db } => block_on(ledger::migrate(db)),
        Command::Ledger {
            command: LedgerCommand::Check { db },
        } => block_on(ledger::check(db)),
        Command::Bench {
            command: BenchCommand::Ledger(args),
        } => block_on(bench::run(args)),
        Command::Bench {
            command: BenchCommand::Verify(args),
        } => block_on(bench_verify::run(args)),
        Command::Bench {
            command: BenchCommand::Pay(args),
        } => block_on(bench_verify::run_pay(args)),
        Command::Bench {
            command: BenchCommand::VerifyLoad(args),
        } => block_on(bench_verify::load(args)),
        Command::Bench {
            command: BenchCommand::Evm(args),
        } => block_on(bench_evm::run(args)),
        Command::Bench {
            command: BenchCommand::EvmLoad(args),
        } => block_on(bench_evm::load(args)),
        Command::Agent { command } => block_on(owner::agent(command)),
        Command::Policy { command } => block_on(owner::policy(command)),
        Command::Approvals { command } => block_on(owner::approvals(command)),
        Command::Audit(args) => block_on(owner::audit(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
