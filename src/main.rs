//! The `coffer` binary. See README.md for commands and exit codes.

mod cli;

use clap::Parser;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // PostgreSQL reads wal-fetch's status: 1 to 125 mean "not archived" and end recovery
    // early, so every failure of wal-fetch, from a usage error (which clap would report
    // with 2) to a panic (101), must exit 126. Known before parsing, since parsing may fail.
    let fetching = cli::args::subcommand_of(&args).is_some_and(|c| c == "wal-fetch");
    if fetching {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            std::process::exit(cli::WAL_FETCH_FAILED);
        }));
    }
    let cli = match cli::args::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // --help and --version (printed on stdout) are not failures.
        Err(e) if fetching && e.use_stderr() => {
            let _ = e.print();
            std::process::exit(cli::WAL_FETCH_FAILED);
        }
        Err(e) => e.exit(),
    };
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
    // SIGPIPE stays ignored (Rust's default): a socket closed by its peer (PostgreSQL ending
    // a session, an S3 server closing a pooled connection) is an error on that socket, never
    // a silent death. A closed standard output is `cli::StdoutClosed`.
    if let Err(e) = cli::run(cli) {
        if cli::stdout_closed(&e) {
            std::process::exit(0);
        }
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
