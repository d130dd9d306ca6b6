//! Resolving the repository and passphrase from options, environment and config file.

use super::args::Cli;
use anyhow::Result;
use coffer::backend::{self, FileKind};
use coffer::config::Config;
use coffer::error::{Error, ErrorKind};
use coffer::progress::Mode;
use coffer::repo::keys::KdfParams;
use coffer::repo::{InitOptions, Repository};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Context {
    pub location: String,
    /// Set when no repository was named and the default one is used.
    pub default_key: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub config: Config,
    pub mode: Mode,
    pub verbose: u8,
    /// A passphrase typed at the prompt, so one command never asks twice.
    prompted: std::cell::OnceCell<Vec<u8>>,
}

/// Where the passphrase comes from, in order of precedence.
enum PassSource<'a> {
    /// `--password-file`/`COFFER_PASSWORD_FILE`, or the config file's `password_file`.
    File(&'a std::path::Path),
    /// `COFFER_PASSWORD`.
    Env(String),
    /// The config file's `password`.
    Inline(&'a str),
    /// The default repository's generated key file.
    DefaultKey(&'a std::path::Path),
    Prompt,
}

/// Where the default repository and its key file live.
pub fn default_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("COFFER_HOME") {
        return Ok(PathBuf::from(h));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("coffer"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| {
        Error::usage("no repository given and HOME is not set: use --repo or COFFER_REPO")
    })?;
    Ok(PathBuf::from(home).join(".local/share/coffer"))
}

/// A passphrase from a file, for every passphrase file coffer reads (`--password-file`,
/// `--new-password-file`, `password_file`, the default key file): exactly one trailing
/// newline (`\n` or `\r\n`) is removed, nothing else, as README.md says.
pub fn read_password_file(p: &std::path::Path) -> Result<Vec<u8>> {
    let mut v = std::fs::read(p)
        .map_err(|e| Error::usage(format!("cannot read passphrase file {}: {e}", p.display())))?;
    if v.ends_with(b"\n") {
        v.pop();
        if v.ends_with(b"\r") {
            v.pop();
        }
    }
    if v.is_empty() {
        return Err(Error::usage(format!(
            "passphrase file {} is empty; an empty passphrase is not allowed",
            p.display()
        ))
        .into());
    }
    Ok(v)
}

impl Context {
    pub fn new(cli: &Cli) -> Result<Context> {
        let config = match &cli.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        let (location, default_key) = match cli.repo.clone().or_else(|| config.repository.clone()) {
            Some(l) if !l.is_empty() => (l, None),
            _ => {
                let home = default_home()?;
                (
                    home.join("repo").display().to_string(),
                    Some(home.join("key")),
                )
            }
        };
        Ok(Context {
            location,
            default_key,
            password_file: cli.password_file.clone(),
            config,
            mode: Mode::detect(cli.quiet),
            verbose: cli.verbose,
            prompted: std::cell::OnceCell::new(),
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

    fn source(&self) -> PassSource<'_> {
        if let Some(f) = &self.password_file {
            PassSource::File(f)
        } else if let Ok(p) = std::env::var("COFFER_PASSWORD") {
            PassSource::Env(p)
        } else if let Some(f) = &self.config.password_file {
            PassSource::File(f)
        } else if let Some(p) = &self.config.password {
            PassSource::Inline(p)
        } else if let Some(k) = self.default_key.as_deref().filter(|k| k.exists()) {
            PassSource::DefaultKey(k)
        } else {
            PassSource::Prompt
        }
    }

    /// A passphrase given explicitly: `--password-file`/`COFFER_PASSWORD_FILE`, then
    /// `COFFER_PASSWORD`, then the config file's `password_file` and `password`.
    pub fn explicit_passphrase(&self) -> Result<Option<Vec<u8>>> {
        match self.source() {
            PassSource::File(f) => read_password_file(f).map(Some),
            PassSource::Env(p) if p.is_empty() => Err(Error::usage(
                "COFFER_PASSWORD is empty; an empty passphrase is not allowed",
            )
            .into()),
            PassSource::Env(p) => Ok(Some(p.into_bytes())),
            PassSource::Inline("") => {
                Err(Error::usage("the config file's password is empty").into())
            }
            PassSource::Inline(p) => Ok(Some(p.as_bytes().to_vec())),
            PassSource::DefaultKey(_) | PassSource::Prompt => Ok(None),
        }
    }

    /// The passphrase: explicit sources, then the default key file, then a prompt (asked
    /// at most once per command).
    pub fn passphrase(&self, confirm: bool) -> Result<Vec<u8>> {
        match self.source() {
            PassSource::DefaultKey(k) => read_password_file(k),
            PassSource::Prompt => {
                if let Some(p) = self.prompted.get() {
                    return Ok(p.clone());
                }
                let p = prompt("Passphrase: ", confirm)?;
                let _ = self.prompted.set(p.clone());
                Ok(p)
            }
            _ => Ok(self.explicit_passphrase()?.expect("an explicit source")),
        }
    }

    /// How a `restore_command` run by PostgreSQL reaches this repository: the same
    /// location and passphrase source, as absolute paths. A passphrase from the
    /// environment or a prompt has no file, so it is handed over itself.
    pub fn fetch_config(&self) -> Result<coffer::sources::postgres::pitr::FetchConfig> {
        let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let repository = if self.location.contains("://") {
            self.location.clone()
        } else {
            abs(std::path::Path::new(&self.location))
                .display()
                .to_string()
        };
        let mut c = coffer::sources::postgres::pitr::FetchConfig {
            repository,
            ..Default::default()
        };
        if self.location.starts_with("s3://") {
            // The server that runs restore_command has none of our AWS_* variables.
            c.s3 = Some(self.config.s3.resolve());
        }
        match self.source() {
            PassSource::File(f) | PassSource::DefaultKey(f) => c.password_file = Some(abs(f)),
            _ => {
                let p = self.passphrase(false)?;
                c.password = Some(String::from_utf8(p).map_err(|_| {
                    Error::usage("the passphrase is not UTF-8; give it with COFFER_PASSWORD_FILE")
                })?);
            }
        }
        Ok(c)
    }

    pub fn backend(&self) -> Result<Arc<dyn backend::Backend>> {
        backend::open(&self.location, &self.config.s3)
    }

    pub fn open(&self) -> Result<Arc<Repository>> {
        let b = self.backend()?;
        if self.default_key.is_some() && b.stat(FileKind::Config, "")?.is_none() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no repository named and the default repository {} does not exist yet; \
                     `coffer backup PATH` creates it, or use --repo / COFFER_REPO",
                    self.location
                ),
            )
            .into());
        }
        let pw = self.passphrase(false)?;
        Ok(Arc::new(Repository::open(b, &pw)?))
    }

    /// Open, creating the default repository on first use.
    pub fn open_or_create_default(&self) -> Result<Arc<Repository>> {
        if let Some(key) = &self.default_key {
            let b = self.backend()?;
            if b.stat(FileKind::Config, "")?.is_none() {
                return Ok(Arc::new(self.create_default(key)?));
            }
        }
        self.open()
    }

    fn create_default(&self, key: &std::path::Path) -> Result<Repository> {
        if let Some(pw) = self.explicit_passphrase()? {
            let repo = Repository::init(self.backend()?, &pw, &self.init_options(None, 32))?;
            eprintln!(
                "coffer created a new repository at {} (your passphrase opens it; without it the \
                 backups cannot be read)",
                self.location
            );
            return Ok(repo);
        }
        // The key file and the folders holding it are durable before the repository that
        // only it opens exists: a power loss must not keep the repository and lose the key.
        let home = key.parent().unwrap();
        coffer::fsutil::create_dir_all(home, 0o700)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", home.display()))?;
        if !key.exists() {
            let mut raw = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
            match coffer::fsutil::create_file(key, hex::encode(raw).as_bytes(), 0o600) {
                Ok(()) => {}
                // Another coffer made it meanwhile: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => anyhow::bail!("cannot create the key file {}: {e}", key.display()),
            }
        }
        let pw = read_password_file(key)?;
        let repo = Repository::init(self.backend()?, &pw, &self.init_options(None, 32))?;
        eprintln!(
            "\n\
             ************************************************************************\n\
             coffer created a new repository at {}\n\
             Its key is in {}\n\
             WITHOUT THIS KEY FILE YOUR BACKUPS CANNOT BE READ. Copy it somewhere safe,\n\
             away from this machine (a password manager, a vault).\n\
             ************************************************************************\n",
            self.location,
            key.display()
        );
        Ok(repo)
    }

    pub fn init_options(&self, compression: Option<i32>, pack_mib: u64) -> InitOptions {
        InitOptions {
            kdf: KdfParams::default(),
            compression: compression.or(self.config.compression).unwrap_or(3),
            pack_size: pack_mib << 20,
        }
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
