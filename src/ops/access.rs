//! Reaching a repository: its location, the configuration file, and where the passphrase
//! comes from (a file, the environment, the configuration file, the default repository's
//! generated key file, or a prompt the caller supplies).

use crate::backend::{self, Backend};
use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::keys::KdfParams;
use crate::repo::{InitOptions, Repository};
use crate::sources::postgres::pitr::FetchConfig;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Asks for a passphrase when no other source gives one: `(label, confirm)`.
pub type Prompt = Box<dyn Fn(&str, bool) -> Result<Vec<u8>>>;

/// How to reach one repository.
pub struct Access {
    pub location: String,
    /// Set when no repository was named and the default one is used.
    pub default_key: Option<PathBuf>,
    /// `--password-file`/`COFFER_PASSWORD_FILE`.
    pub password_file: Option<PathBuf>,
    pub config: Config,
    prompt: Prompt,
    /// A passphrase typed at the prompt, so one operation never asks twice.
    prompted: std::cell::OnceCell<Vec<u8>>,
    /// Where the repositories it opens report their warnings.
    events: Progress,
}

/// Where the passphrase comes from, in order of precedence.
enum PassSource<'a> {
    /// `--password-file`/`COFFER_PASSWORD_FILE`, or the config file's `password_file`.
    File(&'a Path),
    /// `COFFER_PASSWORD`.
    Env(String),
    /// The config file's `password`.
    Inline(&'a str),
    /// The default repository's generated key file.
    DefaultKey(&'a Path),
    Prompt,
}

/// How a repository came to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// `init` of a named repository.
    Named,
    /// The default repository, opened by the explicit passphrase.
    DefaultWithPassphrase,
    /// The default repository, opened by a generated key file.
    DefaultWithKeyFile(PathBuf),
}

/// A repository just created, for the message that says so.
pub struct Creation {
    pub id: String,
    pub location: String,
    pub how: Created,
}

impl std::fmt::Display for Creation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.how {
            Created::Named => write!(
                f,
                "created repository {} at {}\nKeep the passphrase safe: without it the backups cannot be read.",
                self.id, self.location
            ),
            Created::DefaultWithPassphrase => write!(
                f,
                "coffer created a new repository at {} (your passphrase opens it; without it the \
                 backups cannot be read)",
                self.location
            ),
            Created::DefaultWithKeyFile(key) => write!(
                f,
                "\n\
                 ************************************************************************\n\
                 coffer created a new repository at {}\n\
                 Its key is in {}\n\
                 WITHOUT THIS KEY FILE YOUR BACKUPS CANNOT BE READ. Copy it somewhere safe,\n\
                 away from this machine (a password manager, a vault).\n\
                 ************************************************************************\n",
                self.location,
                key.display()
            ),
        }
    }
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
pub fn read_password_file(p: &Path) -> Result<Vec<u8>> {
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

impl Access {
    /// The repository `repo` (or the configuration file's `repository`; with neither, the
    /// default repository), with the passphrase file given, asking `prompt` when nothing
    /// else gives a passphrase.
    pub fn new(
        repo: Option<String>,
        password_file: Option<PathBuf>,
        config: Config,
        prompt: Prompt,
    ) -> Result<Access> {
        let (location, default_key) = match repo.or_else(|| config.repository.clone()) {
            Some(l) if !l.is_empty() => (l, None),
            _ => {
                let home = default_home()?;
                (
                    home.join("repo").display().to_string(),
                    Some(home.join("key")),
                )
            }
        };
        Ok(Access {
            location,
            default_key,
            password_file,
            config,
            prompt,
            prompted: std::cell::OnceCell::new(),
            events: Progress::hidden(),
        })
    }

    /// Where the repositories opened through this access report their warnings.
    pub fn events(&self) -> &Progress {
        &self.events
    }

    /// The repositories opened through this access report their warnings to `events`.
    pub fn reporting_to(mut self, events: Progress) -> Access {
        self.events = events;
        self
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
    /// at most once).
    pub fn passphrase(&self, confirm: bool) -> Result<Vec<u8>> {
        match self.source() {
            PassSource::DefaultKey(k) => read_password_file(k),
            PassSource::Prompt => {
                if let Some(p) = self.prompted.get() {
                    return Ok(p.clone());
                }
                let p = (self.prompt)("Passphrase: ", confirm)?;
                let _ = self.prompted.set(p.clone());
                Ok(p)
            }
            _ => Ok(self.explicit_passphrase()?.expect("an explicit source")),
        }
    }

    /// A new passphrase for a key slot: `COFFER_NEW_PASSWORD`, then `file`, then the prompt.
    pub fn new_passphrase(&self, file: Option<&Path>) -> Result<Vec<u8>> {
        if let Ok(p) = std::env::var("COFFER_NEW_PASSWORD") {
            if p.is_empty() {
                return Err(Error::usage(
                    "COFFER_NEW_PASSWORD is empty; an empty passphrase is not allowed",
                )
                .into());
            }
            return Ok(p.into_bytes());
        }
        match file {
            Some(f) => read_password_file(f),
            None => (self.prompt)("New passphrase: ", true),
        }
    }

    /// How a `restore_command` run by PostgreSQL reaches this repository: the same
    /// location and passphrase source, as absolute paths. A passphrase from the
    /// environment or a prompt has no file, so it is handed over itself.
    pub fn fetch_config(&self) -> Result<FetchConfig> {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let repository = if self.location.contains("://") {
            self.location.clone()
        } else {
            abs(Path::new(&self.location)).display().to_string()
        };
        let mut c = FetchConfig {
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

    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        backend::open(&self.location, &self.config.s3)
    }

    pub fn open(&self) -> Result<Arc<Repository>> {
        let b = self.backend()?;
        if self.default_key.is_some() && !Repository::exists(&*b)? {
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
        Ok(Arc::new(Repository::open_reporting(b, &pw, &self.events)?))
    }

    /// Open, creating the default repository on first use (then saying how).
    pub fn open_or_create_default(&self) -> Result<(Arc<Repository>, Option<Creation>)> {
        if let Some(key) = &self.default_key {
            if !Repository::exists(&*self.backend()?)? {
                let (mut repo, how) = self.create_default(key)?;
                repo.report_to(&self.events);
                let c = self.creation(&repo, how);
                return Ok((Arc::new(repo), Some(c)));
            }
        }
        Ok((self.open()?, None))
    }

    /// Create a new repository (`init`): a named one with the passphrase (confirmed at a
    /// prompt), or the default one with its key file.
    pub fn init(&self, compression: Option<i32>, pack_mib: u64) -> Result<Creation> {
        let b = self.backend()?;
        // Before asking for a passphrase.
        if Repository::exists(&*b)? {
            return Err(
                Error::usage(format!("a repository already exists at {}", self.location)).into(),
            );
        }
        if let Some(key) = &self.default_key {
            let (repo, how) = self.create_default(key)?;
            return Ok(self.creation(&repo, how));
        }
        let pw = self.passphrase(true)?;
        let repo = Repository::init(b, &pw, &self.init_options(compression, pack_mib))?;
        Ok(self.creation(&repo, Created::Named))
    }

    fn creation(&self, repo: &Repository, how: Created) -> Creation {
        Creation {
            id: repo.config.id.short(),
            location: self.location.clone(),
            how,
        }
    }

    fn create_default(&self, key: &Path) -> Result<(Repository, Created)> {
        if let Some(pw) = self.explicit_passphrase()? {
            let repo = Repository::init(self.backend()?, &pw, &self.init_options(None, 32))?;
            return Ok((repo, Created::DefaultWithPassphrase));
        }
        // The key file and the folders holding it are durable before the repository that
        // only it opens exists: a power loss must not keep the repository and lose the key.
        let home = key.parent().unwrap();
        crate::fsutil::create_dir_all(home, 0o700)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", home.display()))?;
        if !key.exists() {
            let mut raw = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut raw);
            match crate::fsutil::create_file(key, hex::encode(raw).as_bytes(), 0o600) {
                Ok(()) => {}
                // Another coffer made it meanwhile: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => anyhow::bail!("cannot create the key file {}: {e}", key.display()),
            }
        }
        let pw = read_password_file(key)?;
        let repo = Repository::init(self.backend()?, &pw, &self.init_options(None, 32))?;
        Ok((repo, Created::DefaultWithKeyFile(key.to_path_buf())))
    }

    pub fn init_options(&self, compression: Option<i32>, pack_mib: u64) -> InitOptions {
        InitOptions {
            kdf: KdfParams::default(),
            compression: compression.or(self.config.compression).unwrap_or(3),
            pack_size: pack_mib << 20,
        }
    }
}
