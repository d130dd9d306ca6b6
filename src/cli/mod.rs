//! The `coffer` command line: parse, call the library, print.

pub mod args;
mod commands;
mod context;

use anyhow::Result;
use args::{Cli, Command};

pub fn run(cli: Cli) -> Result<()> {
    let ctx = context::Context::new(&cli)?;
    match &cli.command {
        Command::Init(a) => commands::init(&ctx, a),
        Command::Backup(a) => commands::backup(&ctx, a),
        Command::Snapshots(a) => commands::snapshots(&ctx, a),
        Command::Ls(a) => commands::ls(&ctx, a),
        Command::Restore(a) => commands::restore(&ctx, a),
        Command::Dump(a) => commands::dump(&ctx, a),
        Command::Check(a) => commands::check(&ctx, a),
        Command::Forget(a) => commands::forget(&ctx, a),
        Command::Prune(a) => commands::prune(&ctx, a),
        Command::Key(k) => commands::key(&ctx, k),
        Command::Unlock(a) => commands::unlock(&ctx, a),
        Command::Version => {
            println!("coffer {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
