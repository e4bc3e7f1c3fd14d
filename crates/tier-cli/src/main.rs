//! `tier` — the command of the tier SDK: a demo workload (`tier demo`), read-only inspection of
//! disk tier directories (`tier disk`) and Redis tiers (`tier redis`), a metrics viewer
//! (`tier stats`) and fleet-wide invalidation (`tier invalidate`).
//!
//! Errors are one line on stderr (`tier: error: ...`) and an exit code: 1 runtime error,
//! 2 usage error, 3 damage found by `tier disk verify` (see [`error`]).

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cli;
mod demo;
mod disk;
mod duration;
mod envelope;
mod error;
mod invalidate;
mod keyring;
mod promtext;
mod redis;
mod stats;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::{CliError, EXIT_USAGE};

fn main() -> ExitCode {
    // `tier … | head`: a reader that goes away ends the process quietly, as it does other Unix
    // tools, instead of a panic in `println!` (Rust ignores SIGPIPE by default). Sockets are not
    // affected: std and tokio send with MSG_NOSIGNAL.
    // SAFETY: the first thing `main` does, before any thread exists; `SIG_DFL` is a valid
    // disposition of SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // A bug must still be one line, not a backtrace (RUST_BACKTRACE may be set).
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let at =
            info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("tier: internal error (please report): {}{at}", what.replace('\n', " "));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // Logs of the libraries (redis-rs's `log` records included) only when asked for
    // (RUST_LOG=debug): they would garble the output. Colours only on a terminal.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG") {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return report(CliError::runtime(format!("start the async runtime: {e}"))),
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for background tasks (metrics endpoint, backplane) at exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(e),
    }
}

async fn run(cli: Cli) -> error::Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Stats(args) => stats::run(args).await,
        Command::Disk(cmd) => disk::run(cmd),
        Command::Redis(cmd) => redis::run(cmd).await,
        Command::Invalidate(args) => invalidate::run(args).await,
    }
}

fn report(e: CliError) -> ExitCode {
    eprintln!("tier: error: {e}");
    e.exit_code()
}

/// clap's help and version go to stdout with exit 0; its errors become one line and exit 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(EXIT_USAGE)
        }
        _ => {
            // clap's message, up to its usage block, on one line.
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let line = line.trim_start_matches("error: ");
            eprintln!("tier: error: {line} (see tier --help)");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
