//! The `coffer` command line: parse, call the library, print.

pub mod args;
mod commands;
mod context;
mod render;

use anyhow::Result;
use args::{Cli, Command};

pub fn run(cli: Cli) -> Result<()> {
    let ctx = context::Context::new(&cli)?;
    match &cli.command {
        Command::Init(a) => commands::init(&ctx, a),
        Command::Backup(a) => commands::backup(&ctx, a),
        Command::Snapshots(a) => commands::snapshots(&ctx, a),
        Command::Status(a) => commands::status(&ctx, a),
        Command::Drill(a) => commands::drill(&ctx, a),
        Command::Drills(a) => commands::drills(&ctx, a),
        Command::Run(a) => commands::run_service(&ctx, &cli, a),
        Command::Ls(a) => commands::ls(&ctx, a),
        Command::Restore(a) => commands::restore(&ctx, a),
        Command::Dump(a) => commands::dump(&ctx, a),
        Command::Check(a) => commands::check(&ctx, a),
        Command::Forget(a) => commands::forget(&ctx, a),
        Command::Prune(a) => commands::prune(&ctx, a),
        Command::Key(k) => commands::key(&ctx, k),
        Command::Unlock(a) => commands::unlock(&ctx, a),
        Command::WalPush(a) => commands::wal_push(&ctx, a),
        Command::WalFetch(a) => commands::wal_fetch(&ctx, a),
        Command::WalVerify(a) => commands::wal_verify(&ctx, a),
        Command::WalHold(c) => commands::wal_hold(&ctx, c),
        Command::Generate(a) => commands::generate(&ctx, &cli, a),
        Command::Version => {
            println!("coffer {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

/// `wal-fetch` found no such file: exit 1 without a message (PostgreSQL asks for files past
/// the end of the archive as a matter of course, and takes 1 as "not there").
#[derive(Debug)]
pub struct WalNotFound;

impl std::fmt::Display for WalNotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not in the archive")
    }
}

impl std::error::Error for WalNotFound {}

/// Exit status of `wal-fetch` for every failure other than "not archived": above 125, so
/// that PostgreSQL aborts recovery instead of taking the failure for the end of the archive
/// and finishing recovery early.
pub const WAL_FETCH_FAILED: i32 = 126;
