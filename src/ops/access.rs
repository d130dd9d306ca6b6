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

/// The name of the top-level `repository` where a repository name is expected
/// (`init --like primary`, `copy --from primary`); no `[repositories.NAME]` may take it.
pub const PRIMARY: &str = "primary";

/// Asks for a passphrase when no other source gives one: `(label, confirm)`.
pub type Prompt = Box<dyn Fn(&str, bool) -> Result<Vec<u8>>>;

/// How to reach one repository.
pub struct Access {
    pub location: String,
    /// The `[repositories.NAME]` table this access is for; none for the primary.
    pub name: Option<String>,
    /// Set when no repository was named and the default one is used.
    pub default_key: Option<PathBuf>,
    /// `--password-file`/`COFFER_PASSWORD_FILE`.
    pub password_file: Option<PathBuf>,
    pub config: Config,
    prompt: std::rc::Rc<Prompt>,
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

/// Open `[repositories.NAME]` of `config` without a terminal (a source's `copy_to`, the
/// service): its own passphrase source, else the environment's and the top-level ones.
pub fn open_named(config: &Config, name: &str, events: &Progress) -> Result<Arc<Repository>> {
    let refuse: Prompt = Box::new(|_, _| {
        Err(
            Error::usage("no passphrase given: set password_file in the [repositories.NAME] table")
                .into(),
        )
    });
    Access::new(None, None, config.clone(), refuse)?
        .reporting_to(events.clone())
        .repository(name)?
        .open()
}

/// The primary repository's location: the config file's `repository`, else the default
/// repository (with its key file).
fn primary_location(config: &Config) -> Result<(String, Option<PathBuf>)> {
    match config.repository.clone() {
        Some(l) if !l.is_empty() => Ok((l, None)),
        _ => {
            let home = default_home()?;
            Ok((
                home.join("repo").display().to_string(),
                Some(home.join("key")),
            ))
        }
    }
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
        let named = repo
            .as_deref()
            .filter(|r| config.repositories.contains_key(*r))
            .map(str::to_string);
        let (location, default_key) = match (&named, repo) {
            (Some(n), _) => (config.repositories[n].location.clone(), None),
            (None, Some(l)) if !l.is_empty() && l != PRIMARY => (l, None),
            (None, _) => primary_location(&config)?,
        };
        Ok(Access {
            location,
            name: named,
            default_key,
            password_file,
            config,
            prompt: std::rc::Rc::new(prompt),
            prompted: std::cell::OnceCell::new(),
            events: Progress::hidden(),
        })
    }

    /// The primary repository of the same configuration (`repository`, else the default
    /// one), with this access's `--password-file`.
    pub fn primary(&self) -> Result<Access> {
        let (location, default_key) = match self.name {
            None => (self.location.clone(), self.default_key.clone()),
            Some(_) => primary_location(&self.config)?,
        };
        Ok(self.sibling(location, None, default_key))
    }

    fn sibling(
        &self,
        location: String,
        name: Option<String>,
        default_key: Option<PathBuf>,
    ) -> Access {
        Access {
            location,
            password_file: if name.is_none() {
                self.password_file.clone()
            } else {
                None
            },
            name,
            default_key,
            config: self.config.clone(),
            prompt: self.prompt.clone(),
            prompted: std::cell::OnceCell::new(),
            events: self.events.clone(),
        }
    }

    /// The repository `[repositories.NAME]` of the same configuration, or the primary for
    /// `primary`. A named one has its own passphrase source (falling back to the
    /// environment's and the top-level ones, not to this access's `--password-file`).
    pub fn repository(&self, name: &str) -> Result<Access> {
        if name == PRIMARY {
            return self.primary();
        }
        let Some(r) = self.config.repositories.get(name) else {
            let known: Vec<&str> = self
                .config
                .repositories
                .keys()
                .map(String::as_str)
                .collect();
            return Err(Error::usage(format!(
                "no repository named {name:?} in the configuration{}",
                if known.is_empty() {
                    ": declare it in a [repositories.NAME] table".to_string()
                } else {
                    format!(" (declared: {})", known.join(", "))
                }
            ))
            .into());
        };
        Ok(self.sibling(r.location.clone(), Some(name.to_string()), None))
    }

    /// How this access names its repository in messages: `NAME (LOCATION)` or the location.
    pub fn display(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", self.location),
            None => self.location.clone(),
        }
    }

    /// The retention of this repository's `[repositories.NAME]` table, if it has one.
    pub fn keep(&self) -> Option<&crate::repo::forget::Policy> {
        self.table().and_then(|t| t.keep.as_ref())
    }

    /// The `[repositories.NAME]` table of this access.
    fn table(&self) -> Option<&crate::config::RepositoryConfig> {
        self.name
            .as_ref()
            .and_then(|n| self.config.repositories.get(n))
    }

    /// The S3 settings, resolved: a named repository's own `s3` as given, else the
    /// top-level `[s3]` under the `AWS_*` variables.
    fn s3(&self) -> crate::backend::S3Settings {
        match self.table().and_then(|t| t.s3.as_ref()) {
            Some(s3) => s3.clone(),
            None => self.config.s3.resolve(),
        }
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
        if let Some(t) = self.table() {
            if let Some(f) = &t.password_file {
                return PassSource::File(f);
            }
            if let Some(p) = &t.password {
                return PassSource::Inline(p);
            }
        }
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
            c.s3 = Some(self.s3());
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
        backend::open_resolved(&self.location, &self.s3())
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
    pub fn init(
        &self,
        compression: Option<i32>,
        pack_mib: u64,
        like: Option<Arc<Repository>>,
    ) -> Result<Creation> {
        let b = self.backend()?;
        // Before asking for a passphrase.
        if Repository::exists(&*b)? {
            return Err(
                Error::usage(format!("a repository already exists at {}", self.location)).into(),
            );
        }
        if let Some(key) = &self.default_key {
            if like.is_some() {
                return Err(Error::usage(
                    "--like needs a repository to create: name one with --repo or `repository`",
                )
                .into());
            }
            let (repo, how) = self.create_default(key)?;
            return Ok(self.creation(&repo, how));
        }
        let pw = self.passphrase(true)?;
        let opts = InitOptions {
            like,
            ..self.init_options(compression, pack_mib)
        };
        let repo = Repository::init(b, &pw, &opts)?;
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
            compression: compression
                .or(self.table().and_then(|t| t.compression))
                .or(self.config.compression)
                .unwrap_or(3),
            pack_size: pack_mib << 20,
            like: None,
        }
    }
}
