//! The `coffer` binary. See README.md for commands and exit codes.

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::args::Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("COFFER_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("coffer={level},opendal=warn"))
    });
    // Colour only for a person at a terminal: cron mail, the journal and `2>&1 | tee log`
    // get plain text. NO_COLOR (any non-empty value) turns it off everywhere.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    // SIGPIPE default behaviour for `coffer dump … | head`.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let fetching = matches!(cli.command, cli::args::Command::WalFetch(_));
    if let Err(e) = cli::run(cli) {
        if e.downcast_ref::<cli::WalNotFound>().is_some() {
            std::process::exit(1);
        }
        eprintln!("coffer: error: {e:#}");
        if fetching {
            std::process::exit(cli::WAL_FETCH_FAILED);
        }
        std::process::exit(coffer::error::kind_of(&e).exit_code());
    }
}
