//! `waypost`: the server and its operator commands.

mod cli;
mod commands;
mod config;
mod demo;
mod serve;

use std::process::ExitCode;

use clap::Parser;

/// glibc's allocator cost a fifth of the CPU of webhook ingestion (many short-lived buffers
/// across threads); with mimalloc the same run acknowledged about a fifth more per second
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One clear line; details (location, causes) go to the log at debug level.
            tracing::debug!(error = ?err, "command failed");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
