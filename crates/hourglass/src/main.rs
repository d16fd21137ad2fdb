//! `hourglass`: run a node (`serve`), a whole local cluster (`dev`), or talk to a cluster.

mod allocator;
mod bench;
mod breakdown;
mod cert_cmd;
mod cli;
mod client_cmds;
mod output;
mod server_cmds;
mod token_cmd;
mod worker_cmd;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Exit status for errors the user caused in how the command was written.
pub const EXIT_USAGE: u8 = 2;

/// An error with the exit status it maps to.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

pub fn usage(msg: impl std::fmt::Display) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error: anyhow::anyhow!("{msg}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_) | Command::Dev(_)) {
        allocator::limit_arenas();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => server_cmds::serve(*args).await,
            Command::Dev(args) => server_cmds::dev(args).await,
            Command::Timer(cmd) => client_cmds::timer(&cli.global, cmd).await,
            Command::Cluster(cmd) => client_cmds::cluster(&cli.global, cmd).await,
            Command::Worker(args) => worker_cmd::run(&cli.global, args).await,
            Command::Bench(args) => bench::run(&cli.global, args).await,
            Command::Cert(cmd) => cert_cmd::run(cmd),
            Command::Token(cmd) => token_cmd::run(cmd, cli.global.json),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
