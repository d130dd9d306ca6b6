//! The `coffer` command line: parse, call the library, print.

/// [`out`] with a newline: `outln!("{x}")?`.
macro_rules! outln {
    () => {
        $crate::cli::out(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::cli::out(format_args!("{}\n", format_args!($($t)*)))
    };
}

pub mod args;
mod commands;
mod context;
mod render;

use anyhow::Result;
use args::{Cli, Command};

pub fn run(cli: Cli) -> Result<()> {
    if cli.no_cache {
        coffer::repo::cache::disable();
    }
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
        Command::Copy(a) => commands::copy(&ctx, a),
        Command::Forget(a) => commands::forget(&ctx, a),
        Command::Prune(a) => commands::prune(&ctx, a),
        Command::Key(k) => commands::key(&ctx, k),
        Command::Unlock(a) => commands::unlock(&ctx, a),
        Command::Cache(c) => commands::cache(&ctx, c),
        Command::WalPush(a) => commands::wal_push(&ctx, a),
        Command::WalCopy(a) => commands::wal_copy(&ctx, a),
        Command::WalFetch(a) => commands::wal_fetch(&ctx, a),
        Command::WalVerify(a) => commands::wal_verify(&ctx, a),
        Command::WalHold(c) => commands::wal_hold(&ctx, c),
        Command::Generate(a) => commands::generate(&ctx, &cli, a),
        Command::Version => outln!("coffer {}", env!("CARGO_PKG_VERSION")),
    }
}

/// Standard output was closed by its reader (`coffer ls latest | head`): coffer stops
/// what it prints, cleans up as on any error (locks released), and exits 0 without a
/// message, as a filter would.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Print to standard output. coffer ignores SIGPIPE (a network peer that closes a socket
/// is an error on that socket, never the death of a backup or of `coffer run`), so a closed
/// standard output comes back here as an error: [`StdoutClosed`].
pub fn out(args: std::fmt::Arguments) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_fmt(args).and_then(|()| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// Whether `e` is, or came from, a write to a closed standard output.
pub fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

/// Standard output as a stream (`coffer dump`): a write to a closed one fails with an
/// `io::Error` holding [`StdoutClosed`].
pub struct Stdout(std::io::StdoutLock<'static>);

impl Stdout {
    pub fn lock() -> Stdout {
        Stdout(std::io::stdout().lock())
    }
}

fn closed(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl std::io::Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(closed)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(closed)
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
