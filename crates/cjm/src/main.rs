//! `cjm`: the command line of the cjm plugin system.
//!
//! Exit codes: 0 success; 1 `validate` found problems; 2 bad command line; for a failed plugin
//! operation, one code per error category (see `cjm --help`).

mod cli;
mod commands;
mod drift_cache;
mod output;
mod progress;
mod remote;
mod scaffold;
mod secret;
mod serve;
mod ui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when stdout is closed early (`cjm list | head`).
    cjm_sys::signal::default_sigpipe();
    let cli = cli::Cli::parse();
    output::init_logging(cli.verbose);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cjm: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(commands::run(cli))
}
