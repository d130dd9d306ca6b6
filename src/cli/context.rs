//! The repository named by the options, environment and config file, and the terminal.

use super::args::Cli;
use super::render::{Mode, Terminal};
use anyhow::Result;
use coffer::config::Config;
use coffer::error::Error;
use coffer::ops::access::{Access, Created};
use coffer::progress::Progress;
use coffer::repo::Repository;
use std::io::IsTerminal;
use std::sync::Arc;

pub struct Context {
    pub access: Access,
    pub mode: Mode,
    pub verbose: u8,
}

impl Context {
    pub fn new(cli: &Cli) -> Result<Context> {
        let config = match &cli.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        let mode = Mode::detect(cli.quiet);
        Ok(Context {
            access: Access::new(
                cli.repo.clone(),
                cli.password_file.clone(),
                config,
                Box::new(prompt),
            )?
            .reporting_to(Terminal::progress(mode)),
            mode,
            verbose: cli.verbose,
        })
    }

    pub fn verbose(&self) -> bool {
        self.verbose > 0 && self.mode != Mode::Quiet
    }

    pub fn say(&self, line: &str) {
        if self.mode != Mode::Quiet {
            eprintln!("{line}");
        }
    }

    /// An operation's events, rendered for the terminal (or the log).
    pub fn progress(&self, what: &str, total: Option<u64>) -> Progress {
        let p = Terminal::progress(self.mode);
        p.begin(what, total);
        p
    }

    /// Where warnings and notes outside an operation's progress go.
    pub fn events(&self) -> Progress {
        Terminal::progress(self.mode)
    }

    pub fn open(&self) -> Result<Arc<Repository>> {
        self.access.open()
    }

    /// Open, creating the default repository on first use (and saying so, always).
    pub fn open_or_create_default(&self) -> Result<Arc<Repository>> {
        let (repo, created) = self.access.open_or_create_default()?;
        if let Some(c) = created {
            eprintln!("{c}");
        }
        Ok(repo)
    }

    /// `init`: a named repository is announced unless quiet, the default one always.
    pub fn init(
        &self,
        compression: Option<i32>,
        pack_mib: u64,
        like: Option<std::sync::Arc<coffer::repo::Repository>>,
    ) -> Result<()> {
        let c = self.access.init(compression, pack_mib, like)?;
        match c.how {
            Created::Named => self.say(&c.to_string()),
            _ => eprintln!("{c}"),
        }
        Ok(())
    }
}

/// Ask on the terminal; refuse when there is none.
pub fn prompt(label: &str, confirm: bool) -> Result<Vec<u8>> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::usage(
            "no passphrase given: set COFFER_PASSWORD or COFFER_PASSWORD_FILE (or password_file in the config file)",
        )
        .into());
    }
    let p = rpassword::prompt_password(label)?;
    if p.is_empty() {
        return Err(Error::usage("an empty passphrase is not allowed").into());
    }
    if confirm {
        let again = rpassword::prompt_password("Repeat the passphrase: ")?;
        if again != p {
            return Err(Error::usage("the passphrases do not match").into());
        }
    }
    Ok(p.into_bytes())
}

/// Read one line from the terminal.
pub fn prompt_line(label: &str) -> Result<String> {
    eprint!("{label}");
    let mut s = String::new();
    std::io::stdin().read_line(&mut s)?;
    Ok(s)
}
