//! The `turnpike` binary: operator CLI and developer tools for the Machine Payments Protocol.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod conformance;
mod decode;

/// Turnpike: a hosted control plane for the Machine Payments Protocol (HTTP 402).
#[derive(Debug, Parser)]
#[command(name = "turnpike", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// MPP developer tools.
    Mpp {
        #[command(subcommand)]
        command: MppCommand,
    },
    /// Answer one request of the cross-SDK conformance suite (JSON on stdin, JSON on stdout).
    ConformanceAdapter,
}

#[derive(Debug, Subcommand)]
enum MppCommand {
    /// Decode a challenge, credential or receipt (a header line or its value) to pretty JSON.
    Decode {
        /// The header line or value; read from stdin when absent or `-`.
        value: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mpp {
            command: MppCommand::Decode { value },
        } => decode::run(value),
        Command::ConformanceAdapter => conformance::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
