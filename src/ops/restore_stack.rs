//! `restore --stack`: the whole declared stack back, in one command (disaster recovery).
//!
//! For every chosen source (`[stack] restore_order` first, then the others in declared
//! order; `--source` picks some) the newest snapshot of that source at or before the time
//! asked (not a safety backup) is restored to the source's own target: a PostgreSQL dump
//! into its `restore_url` or `url`, a physical base backup into its `pgdata` set up for
//! point-in-time recovery to exactly that time, a Redis RDB online into its `url`, files
//! back to their paths (or under `--target DIR`), command outputs through their `restore`
//! command or into a `restore_dir`.
//!
//! Nothing is written before the plan holds: every chosen snapshot is read and verified
//! (every blob of it, [`crate::repo::verify`]), every target is reached (PostgreSQL and
//! Redis connected to, directories creatable, restore programs found), and a target that
//! is not empty is confirmed (on a terminal, or `--yes`). `--dry-run` stops there. Then
//! `[stack] before_restore` runs, the sources are restored in order (each with the safety
//! backup and checks its own restore takes), and `[stack] after_restore` runs, also after a
//! failure. The first failure stops the sequence; the report names what was and was not
//! restored, with per-source and total durations (the measured recovery time).

use super::hooks;
use super::mib;
use crate::config::sources::{PgMode, SourceConfig, SourceKind};
use crate::config::Config;
use crate::error::{kind_of, Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::index::MasterIndex;
use crate::repo::lock::Lock;
use crate::repo::restore::{self as engine, find_node, RestoreOptions};
use crate::repo::snapshot::{Kind, Snapshot};
use crate::repo::tree::NodeKind;
use crate::repo::verify::{verify_snapshot, Verified};
use crate::repo::Repository;
use crate::safefs::{self, Meta};
use crate::sources::command::{restore_command_output, CommandRestore};
use crate::sources::postgres::basebackup::base_backup_info;
use crate::sources::postgres::conn::PgTarget;
use crate::sources::postgres::pitr::{check_recovery, restore_pitr, FetchConfig, PitrOptions};
use crate::sources::postgres::restore::{
    connect_maintenance, restore_postgres, user_objects, PgRestoreOptions,
};
use crate::sources::redis::conn::{Conn, ConnOptions, Target as RedisTarget};
use crate::sources::redis::restore::{restore_redis, RedisRestoreOptions};
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::Serialize;
use std::fmt::{self, Display, Formatter};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `restore --stack` was asked. The default: every source as of its newest snapshot,
/// with safety backups and a 24-hour WAL hold, asking before targets that hold data are
/// replaced.
#[derive(Debug, Clone)]
pub struct StackRestoreOptions {
    /// Restore each source as of this time (default: its newest snapshot; for a physical
    /// PostgreSQL source, the end of the WAL archive).
    pub time: Option<DateTime<FixedOffset>>,
    /// Only these sources (by name; default all).
    pub sources: Vec<String>,
    /// Put files (and command outputs without a restore command, and physical data
    /// directories) under this directory instead of their own paths.
    pub target: Option<PathBuf>,
    /// Plan, read and verify, reach the targets; change nothing.
    pub dry_run: bool,
    /// Replace targets that are not empty without asking.
    pub yes: bool,
    /// Back up non-empty targets before replacing them (the per-source safety backups).
    pub safety_backup: bool,
    /// How a restored PostgreSQL data directory's `restore_command` reaches the repository.
    pub fetch: FetchConfig,
    /// How long the WAL hold of a point-in-time recovery lasts after its last wal-fetch.
    pub wal_hold_expiry: Duration,
}

impl Default for StackRestoreOptions {
    fn default() -> Self {
        StackRestoreOptions {
            time: None,
            sources: vec![],
            target: None,
            dry_run: false,
            yes: false,
            safety_backup: true,
            fetch: FetchConfig::default(),
            wal_hold_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

/// Where a source stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Planned, read and verified, its target reached: what `--dry-run` reports.
    Planned,
    Restored,
    Failed,
    /// Not restored, because another source (or `before_restore`, or the plan) failed.
    NotRestored,
}

impl Display for Status {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Planned => "planned",
            Status::Restored => "restored",
            Status::Failed => "FAILED",
            Status::NotRestored => "not restored",
        })
    }
}

/// How a source's restore was verified.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Before anything was written: the snapshot read back, every blob checked against its
    /// digest.
    pub read: Option<Verified>,
    /// PostgreSQL dumps: tables whose row counts were compared with those at backup time,
    /// their rows at backup time, and how many tables differ.
    pub tables: Option<usize>,
    pub rows: Option<i64>,
    pub row_mismatches: Option<usize>,
    /// Redis: keys restored, and databases whose key count is not what it should be.
    pub keys: Option<u64>,
    pub key_mismatches: Option<usize>,
    /// Files, data directories and command outputs: files and bytes written or kept
    /// (every chunk verified), and entries removed because the snapshot does not hold them.
    pub files: Option<u64>,
    pub bytes: Option<u64>,
    pub removed: Option<u64>,
}

/// One source of the stack.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    pub name: String,
    /// `postgres`, `postgres-physical`, `redis`, `files` or `command`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The snapshot restored (full id), when one was chosen.
    pub snapshot: Option<String>,
    pub snapshot_time: Option<String>,
    /// Where it goes (URLs without their password).
    pub target: String,
    pub status: Status,
    pub verification: Verification,
    /// Safety backups of the target taken before it was replaced.
    pub safety_snapshots: Vec<String>,
    /// What the user should know (what to do next, warnings of the restore).
    pub notes: Vec<String>,
    pub error: Option<String>,
    /// Seconds this source's restore took (0 when not restored).
    pub duration_secs: f64,
}

/// A `before_restore` or `after_restore` run.
#[derive(Debug, Clone, Serialize)]
pub struct HookReport {
    pub hook: String,
    pub ok: bool,
    pub error: Option<String>,
    pub duration_secs: f64,
}

/// What `restore --stack` did (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct StackRestoreReport {
    pub ok: bool,
    pub dry_run: bool,
    /// The time asked with `--time`.
    pub time: Option<String>,
    pub sources: Vec<SourceReport>,
    pub hooks: Vec<HookReport>,
    pub restored: Vec<String>,
    pub not_restored: Vec<String>,
    pub error: Option<String>,
    /// From the start of the plan to the end of `after_restore`: the measured recovery time.
    pub duration_secs: f64,
    #[serde(skip)]
    pub error_kind: Option<ErrorKind>,
}

impl StackRestoreReport {
    /// The failure, as an error of its kind (for the exit code).
    pub fn verdict(&self) -> Result<()> {
        match (&self.error, self.error_kind) {
            (Some(e), kind) => Err(Error::new(kind.unwrap_or(ErrorKind::Other), e.clone()).into()),
            (None, _) => Ok(()),
        }
    }
}

/// What restoring one source takes, decided while planning.
enum Action {
    /// Each dump of the snapshot: (database in the snapshot, connection to restore into).
    Logical {
        dumps: Vec<(String, Option<String>)>,
        multi: bool,
        jobs: u32,
    },
    Physical(Box<PitrOptions>),
    Redis {
        url: Option<String>,
        conn: ConnOptions,
    },
    /// Each path of the snapshot and where it goes.
    Files(Vec<(String, PathBuf)>),
    /// A command's output: through its restore command, or into a directory.
    Command(CommandRestore),
}

struct Step<'a> {
    src: &'a SourceConfig,
    snap: Option<Snapshot>,
    action: Option<Action>,
    /// The target holds data: replacing it needs confirmation.
    live: Option<String>,
}

fn kind_name(s: &SourceConfig) -> &'static str {
    match &s.kind {
        SourceKind::Postgres(p) if p.mode == PgMode::Physical => "postgres-physical",
        SourceKind::Postgres(_) => "postgres",
        SourceKind::Redis(_) => "redis",
        SourceKind::Files(_) => "files",
        SourceKind::Command(_) => "command",
    }
}

/// The snapshot kind a source's backups have.
fn snapshot_kind(s: &SourceConfig) -> Kind {
    match &s.kind {
        SourceKind::Postgres(p) if p.mode == PgMode::Physical => Kind::PostgresPhysical,
        SourceKind::Postgres(_) => Kind::Postgres,
        SourceKind::Redis(_) => Kind::Redis,
        SourceKind::Files(_) => Kind::Files,
        SourceKind::Command(_) => Kind::Command,
    }
}

/// The sources to restore, in restore order: `[stack] restore_order`, then the others in
/// declared order; only those named in `only` when it is not empty.
pub fn restore_sequence<'a>(config: &'a Config, only: &[String]) -> Result<Vec<&'a SourceConfig>> {
    if config.sources.is_empty() {
        return Err(Error::usage(
            "restore --stack needs the stack declared in the config file: [sources.NAME] \
             tables (give --config FILE or set COFFER_CONFIG)",
        )
        .into());
    }
    for n in only {
        if config.source(n).is_none() {
            let names: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::usage(format!(
                "--source {n:?}: the config file declares no such source (it has {})",
                names.join(", ")
            ))
            .into());
        }
    }
    let mut out: Vec<&SourceConfig> = Vec::new();
    let named = config
        .stack
        .restore_order
        .iter()
        .filter_map(|n| config.source(n));
    for s in named.chain(config.sources.iter()) {
        if !out.iter().any(|o| o.name == s.name) && (only.is_empty() || only.contains(&s.name)) {
            out.push(s);
        }
    }
    Ok(out)
}

/// The newest snapshot of `src` at or before `time` that is not a safety backup (for a
/// physical source: whose base backup had finished by then).
fn choose(
    all: &[Snapshot],
    src: &SourceConfig,
    time: Option<&DateTime<FixedOffset>>,
) -> Result<Snapshot> {
    let kind = snapshot_kind(src);
    let mut best: Option<&Snapshot> = None;
    for s in all {
        if s.source.as_deref() != Some(src.name.as_str())
            || s.has_tag("safety-backup")
            || s.kind != kind
        {
            continue;
        }
        let when = match (&kind, time) {
            (Kind::PostgresPhysical, Some(_)) => match base_backup_info(s)? {
                Some(i) => i.stopped_at,
                None => continue,
            },
            _ => s.time,
        };
        if time.is_some_and(|t| when > *t) {
            continue;
        }
        if best.is_none_or(|b| s.time > b.time) {
            best = Some(s);
        }
    }
    let Some(s) = best else {
        let when = match time {
            Some(t) => format!(" at or before {}", t.to_rfc3339()),
            None => String::new(),
        };
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no snapshot of source {:?}{when} (safety backups aside): back it up with \
                 `coffer backup --source {}`",
                src.name, src.name
            ),
        )
        .into());
    };
    s.check_features()?;
    Ok(s.clone())
}

/// `dest` for a path of the snapshot: itself, or under `--target DIR`.
fn under(target: Option<&Path>, p: &Path) -> PathBuf {
    match target {
        Some(t) => t.join(p.strip_prefix("/").unwrap_or(p)),
        None => p.to_path_buf(),
    }
}

/// A directory can be restored at `dest`: it exists as a directory, or its nearest existing
/// ancestor is a directory we may write in.
fn reachable_dir(dest: &Path) -> Result<()> {
    let mut at = Some(dest);
    while let Some(p) = at {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                if p == dest || writable(p) {
                    return Ok(());
                }
                return Err(Error::usage(format!(
                    "{} cannot be created: {} is not writable",
                    dest.display(),
                    p.display()
                ))
                .into());
            }
            Ok(_) if p == dest => {
                return Err(Error::usage(format!(
                    "{} is not a directory; move it away first",
                    dest.display()
                ))
                .into())
            }
            Ok(_) => {
                return Err(Error::usage(format!(
                    "{} cannot be created: {} is not a directory",
                    dest.display(),
                    p.display()
                ))
                .into())
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                at = p.parent()
            }
            Err(e) => {
                return Err(Error::usage(format!("cannot look at {}: {e}", p.display())).into())
            }
        }
    }
    Err(Error::usage(format!(
        "{} has no existing parent directory",
        dest.display()
    ))
    .into())
}

fn writable(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Whether something with contents is at `p`: a file, a symlink, a non-empty directory.
fn holds_data(p: &Path) -> bool {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some()),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// `conn` naming database `db` instead of its own: a URL's path replaced, a `key=value`
/// string given a later `dbname`.
fn with_database(conn: &str, db: &str) -> String {
    let c = conn.trim();
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = c.strip_prefix(scheme) {
            let (before, query) = match rest.split_once('?') {
                Some((a, q)) => (a, Some(q)),
                None => (rest, None),
            };
            let authority = before.split_once('/').map_or(before, |(a, _)| a);
            let mut out = format!("{scheme}{authority}/{}", percent_encode(db));
            if let Some(q) = query {
                out.push('?');
                out.push_str(q);
            }
            return out;
        }
    }
    format!(
        "{c} dbname='{}'",
        db.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Plan one source: its action, its target (for the report), whether the target holds
/// data; reaching the target on the way.
fn plan_source(
    repo: &Repository,
    index: &MasterIndex,
    config: &Config,
    opts: &StackRestoreOptions,
    src: &SourceConfig,
    snap: &Snapshot,
    progress: &Progress,
) -> Result<(Action, String, Option<String>)> {
    let target = opts.target.as_deref();
    match &src.kind {
        SourceKind::Postgres(p) if p.mode == PgMode::Logical => {
            let conn = p.restore_url.clone().or_else(|| p.url.clone());
            let dbs: Vec<String> = snap
                .sources
                .iter()
                .filter(|s| s.kind == Kind::Postgres)
                .map(|s| s.name.clone())
                .collect();
            if dbs.is_empty() {
                return Err(Error::integrity(format!(
                    "snapshot {} of source {:?} holds no PostgreSQL dump",
                    snap.id.short(),
                    src.name
                ))
                .into());
            }
            let multi = dbs.len() > 1;
            let mut dumps = Vec::new();
            let mut shown = Vec::new();
            let mut live = Vec::new();
            for db in dbs {
                let c = match (&conn, multi) {
                    (Some(c), true) => Some(with_database(c, &db)),
                    (c, _) => c.clone(),
                };
                let mut t = PgTarget::resolve(c.as_deref(), false, progress)?;
                if t.dbname.is_none() {
                    t.dbname = Some(db.clone());
                }
                let (mut maint, mt) = connect_maintenance(&t).map_err(|e| {
                    e.context(format!(
                        "cannot reach the PostgreSQL server of source {:?} ({})",
                        src.name,
                        t.server()
                    ))
                })?;
                let exists = maint
                    .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&t.db()])
                    .map_err(|e| {
                        crate::sources::postgres::pg_err(&mt, "looking up the target database", &e)
                    })?
                    .is_some();
                if exists {
                    let mut c = t.connect()?;
                    let n = user_objects(&mut c, &t)?;
                    if n > 0 {
                        live.push(format!(
                            "database {:?} on {} ({n} objects)",
                            t.db(),
                            t.server()
                        ));
                    }
                }
                shown.push(format!("database {:?} on {}", t.db(), t.server()));
                dumps.push((db, c));
            }
            let live = (!live.is_empty()).then(|| live.join(", "));
            Ok((
                Action::Logical {
                    dumps,
                    multi,
                    jobs: p.restore_jobs.unwrap_or(1),
                },
                shown.join(", "),
                live,
            ))
        }
        SourceKind::Postgres(p) => {
            let Some(pgdata) = &p.pgdata else {
                return Err(Error::usage(format!(
                    "[sources.{}]: set pgdata, the data directory restore --stack lays the base \
                     backup out in",
                    src.name
                ))
                .into());
            };
            let dir = under(target, pgdata);
            reachable_dir(&dir)?;
            let live = holds_data(&dir).then(|| format!("data directory {}", dir.display()));
            let pitr = PitrOptions {
                snapshot: Some(snap.id.to_hex()),
                pgdata: dir.clone(),
                target: match opts.time {
                    Some(t) => crate::sources::postgres::pitr::Target::Time(t),
                    None => crate::sources::postgres::pitr::Target::End,
                },
                exclusive: false,
                // At a target time PostgreSQL would pause; the stack is to come back up.
                action: opts.time.map(|_| "promote".to_string()),
                timeline: None,
                force: false,
                delta: false,
                tablespace_map: vec![],
                fetch: opts.fetch.clone(),
                wal_hold_expiry: opts.wal_hold_expiry,
            };
            // The archive must recover this backup to the target (checked again when it is
            // restored, with what was archived meanwhile).
            check_recovery(repo, &pitr)?;
            Ok((
                Action::Physical(Box::new(pitr)),
                format!("data directory {}", dir.display()),
                live,
            ))
        }
        SourceKind::Redis(r) => {
            let conn = ConnOptions::from_settings(&super::stack::redis_settings(r, &config.redis))?;
            let t = RedisTarget::resolve(r.url.as_deref())?;
            crate::sources::redis::restore::pick_source(snap)?;
            let mut c = Conn::connect(&t, &conn).map_err(|e| {
                e.context(format!(
                    "cannot reach the Redis server of source {:?} ({})",
                    src.name,
                    t.display()
                ))
            })?;
            let keys: u64 = crate::sources::redis::keyspace(&c.info("keyspace")?)
                .iter()
                .map(|k| k.keys)
                .sum();
            let live = (keys > 0).then(|| format!("Redis {} ({keys} keys)", t.display()));
            Ok((
                Action::Redis {
                    url: r.url.clone(),
                    conn,
                },
                t.display(),
                live,
            ))
        }
        SourceKind::Files(_) => {
            let mut paths = Vec::new();
            let mut live = Vec::new();
            for p in &snap.paths {
                find_node(repo, index, snap, p)?;
                let dest = under(target, Path::new(p));
                reachable_dir(dest.parent().unwrap_or(Path::new("/")))?;
                if holds_data(&dest) {
                    live.push(dest.display().to_string());
                }
                paths.push((p.clone(), dest));
            }
            let shown: Vec<String> = paths.iter().map(|(_, d)| d.display().to_string()).collect();
            let live = (!live.is_empty()).then(|| live.join(", "));
            Ok((Action::Files(paths), shown.join(", "), live))
        }
        SourceKind::Command(c) => {
            match super::stack::command_restore(&src.name, c, config.stack.restore_dir.as_deref())?
            {
                CommandRestore::Run { program, timeout } => {
                    program.check()?;
                    // The program must be there (on PATH, or at its path) before anything runs.
                    program.find(&[]).map_err(|e| {
                        e.context(format!("the restore command of source {:?}", src.name))
                    })?;
                    let shown = format!("restore command {}", program.name());
                    Ok((
                        Action::Command(CommandRestore::Run { program, timeout }),
                        shown,
                        None,
                    ))
                }
                CommandRestore::Dir(dir) => {
                    let dir = under(target, &dir);
                    reachable_dir(&dir)?;
                    // The output goes in as DIR/NAME: what is there already is replaced.
                    let live: Vec<String> = snap
                        .paths
                        .iter()
                        .map(|p| dir.join(p.trim_start_matches('/')))
                        .filter(|p| holds_data(p))
                        .map(|p| p.display().to_string())
                        .collect();
                    let live = (!live.is_empty()).then(|| live.join(", "));
                    Ok((
                        Action::Command(CommandRestore::Dir(dir.clone())),
                        dir.display().to_string(),
                        live,
                    ))
                }
            }
        }
    }
}

/// Restore `snap_path` of `snap` at `dest`: a directory's subtree into `dest` (in delta mode:
/// what is not in the snapshot is removed, what matches is kept) and its own mode, owner
/// and time; a file or symlink into `dest`'s parent, alone. The directories above `dest`
/// (which may be symlinks, like `/opt -> /data/opt`) are followed, never replaced.
fn restore_path(
    repo: &Repository,
    index: &MasterIndex,
    snap: &Snapshot,
    snap_path: &str,
    dest: &Path,
    progress: &Progress,
) -> Result<engine::RestoreReport> {
    let node = find_node(repo, index, snap, snap_path)?;
    let meta = Meta {
        owner: Some((node.uid, node.gid)),
        mode: Some(node.mode),
        mtime: Some(crate::repo::tree::split_epoch_ns(node.mtime_ns)),
    };
    if node.kind == NodeKind::Dir {
        let mut r = match node.subtree {
            Some(tree) => engine::restore(
                repo,
                index,
                snap,
                &RestoreOptions {
                    target: dest.to_path_buf(),
                    includes: vec![],
                    tree: Some(tree),
                    delta: true,
                    sync: true,
                },
                progress,
            )?,
            None => {
                // An empty directory: whatever is in it goes.
                let fd = safefs::open_root(dest)?;
                let mut r = engine::RestoreReport::default();
                for n in safefs::entries(fd.as_fd())? {
                    safefs::remove(fd.as_fd(), &n)?;
                    r.removed += 1;
                }
                r
            }
        };
        let fd = safefs::open_root(dest)?;
        safefs::set_meta(fd.as_fd(), &meta)
            .and_then(|()| safefs::fsync(fd.as_fd()))
            .map_err(|e| anyhow::anyhow!("cannot set the metadata of {}: {e}", dest.display()))?;
        r.dirs += 1;
        return Ok(r);
    }
    let (parent, name) = match snap_path.trim_end_matches('/').rsplit_once('/') {
        Some((p, n)) if !n.is_empty() => (p, n),
        _ => {
            return Err(Error::integrity(format!(
                "snapshot {} names the path {snap_path:?}, which is not absolute",
                snap.id.short()
            ))
            .into())
        }
    };
    let tree = if parent.is_empty() {
        snap.tree
    } else {
        find_node(repo, index, snap, parent)?
            .subtree
            .ok_or_else(|| {
                Error::integrity(format!(
                    "{parent} in snapshot {} has no tree",
                    snap.id.short()
                ))
            })?
    };
    let into = dest.parent().unwrap_or(Path::new("/"));
    engine::restore(
        repo,
        index,
        snap,
        &RestoreOptions {
            target: into.to_path_buf(),
            includes: vec![format!("/{name}")],
            tree: Some(tree),
            delta: true,
            sync: true,
        },
        progress,
    )
}

/// Restore one planned source; fills in its report.
#[allow(clippy::too_many_arguments)]
fn run_step(
    repo: &Arc<Repository>,
    index: &Arc<MasterIndex>,
    opts: &StackRestoreOptions,
    step: &Step<'_>,
    confirmed: bool,
    r: &mut SourceReport,
    progress: &Progress,
    confirm: &mut dyn FnMut(&str, &str) -> Result<bool>,
) -> Result<()> {
    let (Some(snap), Some(action)) = (&step.snap, &step.action) else {
        return Err(anyhow::anyhow!("source {:?} has no plan", step.src.name));
    };
    let yes = opts.yes || confirmed;
    let v = &mut r.verification;
    match action {
        Action::Logical { dumps, multi, jobs } => {
            let (mut tables, mut rows, mut bad) = (0usize, 0i64, 0usize);
            for (db, conn) in dumps {
                progress.set_message(format!("{}: restoring database {db:?}", step.src.name));
                let rep = restore_postgres(
                    repo,
                    index,
                    snap,
                    &PgRestoreOptions {
                        conn: conn.clone(),
                        database: multi.then(|| db.clone()),
                        jobs: *jobs,
                        yes,
                        safety_backup: opts.safety_backup,
                        ..Default::default()
                    },
                    progress,
                    confirm,
                )?;
                tables += rep.checks.len();
                rows += rep.checks.iter().map(|c| c.expected).sum::<i64>();
                bad += rep.mismatches();
                r.safety_snapshots.extend(rep.safety_snapshot.clone());
                r.notes.extend(rep.warnings.iter().cloned());
                v.tables = Some(tables);
                v.rows = Some(rows);
                v.row_mismatches = Some(bad);
                if rep.mismatches() > 0 {
                    return Err(Error::integrity(format!(
                        "database {:?}: {} of {} tables have a different row count than at backup time",
                        rep.target_database,
                        rep.mismatches(),
                        rep.checks.len()
                    ))
                    .into());
                }
            }
            if snap.sources.iter().any(|s| s.kind == Kind::PostgresGlobals) {
                r.notes.push(format!(
                    "roles and tablespaces are not restored: `coffer dump {} /postgres/globals.sql | psql` loads them",
                    snap.id.short()
                ));
            }
        }
        Action::Physical(pitr) => {
            let mut pitr = (**pitr).clone();
            // A data directory that holds something is replaced only once confirmed (it may
            // have filled since the plan found it empty).
            pitr.force = holds_data(&pitr.pgdata);
            if pitr.force && !yes {
                return Err(Error::usage(format!(
                    "the data directory {} holds data now: give --yes to replace it",
                    pitr.pgdata.display()
                ))
                .into());
            }
            let rep = restore_pitr(repo, index, &pitr, progress)?;
            v.files = Some(rep.restored.files);
            v.bytes = Some(rep.restored.bytes);
            v.removed = Some(rep.restored.removed);
            r.notes.push(format!(
                "recovery {} is set up in {}: starting PostgreSQL there (after_restore) replays the \
                 WAL archive; delete {}/{} once recovery has finished (WAL hold {})",
                match opts.time {
                    Some(t) => format!("to {}", t.to_rfc3339()),
                    None => "to the end of the archive".to_string(),
                },
                pitr.pgdata.display(),
                pitr.pgdata.display(),
                crate::sources::postgres::basebackup::RECOVERY_CONFIG,
                rep.wal_hold.id
            ));
        }
        Action::Redis { url, conn } => {
            let rep = restore_redis(
                repo,
                index,
                snap,
                &RedisRestoreOptions {
                    url: url.clone(),
                    conn: conn.clone(),
                    db: None,
                    keys: vec![],
                    replace: false,
                    flush: true,
                    yes,
                    safety_backup: opts.safety_backup,
                    dry_run: false,
                },
                progress,
                confirm,
            )?;
            v.keys = Some(rep.keys_restored);
            v.key_mismatches = Some(rep.mismatches());
            r.safety_snapshots.extend(rep.safety_snapshot.clone());
            r.notes.extend(rep.warnings.iter().cloned());
            rep.verdict()?;
        }
        Action::Command(to) => {
            let rep = restore_command_output(repo, index, snap, to, progress)?;
            v.files = Some(rep.files);
            v.bytes = Some(rep.bytes);
            if let (Some(p), Some(code)) = (&rep.program, rep.exit_code) {
                r.notes.push(format!(
                    "{p} loaded the output and exited with status {code}"
                ));
            }
        }
        Action::Files(paths) => {
            let (mut files, mut bytes, mut removed) = (0, 0, 0);
            for (p, dest) in paths {
                progress.set_message(format!("{}: restoring {}", step.src.name, dest.display()));
                let rep = restore_path(repo, index, snap, p, dest, progress)?;
                files += rep.files;
                bytes += rep.bytes;
                removed += rep.removed;
                v.files = Some(files);
                v.bytes = Some(bytes);
                v.removed = Some(removed);
            }
        }
    }
    Ok(())
}

/// Restore the stack (see the module's documentation). `confirm(question, word)` asks the
/// user to type `word` before targets that hold data are replaced; false refuses (then
/// `--yes` is needed). Errors of the plan or of a restore are in the report (see
/// [`StackRestoreReport::verdict`]); an error returned here means nothing was attempted.
pub fn restore_stack(
    repo: &Arc<Repository>,
    config: &Config,
    opts: &StackRestoreOptions,
    progress: &Progress,
    confirm: &mut dyn FnMut(&str, &str) -> Result<bool>,
) -> Result<StackRestoreReport> {
    repo.require_full("restore --stack")?;
    let started = Instant::now();
    let sequence = restore_sequence(config, &opts.sources)?;
    let _lock = Lock::shared(repo, "restore --stack")?;
    let all = repo.load_snapshots()?;
    let index = Arc::new(repo.load_index()?);
    let mut report = StackRestoreReport {
        ok: false,
        dry_run: opts.dry_run,
        time: opts.time.map(|t| t.to_rfc3339()),
        sources: vec![],
        hooks: vec![],
        restored: vec![],
        not_restored: vec![],
        error: None,
        duration_secs: 0.0,
        error_kind: None,
    };
    let mut steps: Vec<Step> = Vec::new();
    let mut failures: Vec<(String, ErrorKind)> = Vec::new();
    // 1. The plan: a snapshot for every source, every target reached.
    for src in &sequence {
        let mut r = SourceReport {
            name: src.name.clone(),
            kind: kind_name(src).to_string(),
            snapshot: None,
            snapshot_time: None,
            target: String::new(),
            status: Status::Planned,
            verification: Verification::default(),
            safety_snapshots: vec![],
            notes: vec![],
            error: None,
            duration_secs: 0.0,
        };
        let mut step = Step {
            src,
            snap: None,
            action: None,
            live: None,
        };
        progress.set_message(format!("planning {}", src.name));
        let planned = src
            .resolved()
            .and_then(|src| choose(&all, src, opts.time.as_ref()))
            .and_then(|snap| {
                r.snapshot = Some(snap.id.to_hex());
                r.snapshot_time = Some(snap.time.to_rfc3339());
                let p = plan_source(repo, &index, config, opts, src, &snap, progress);
                step.snap = Some(snap);
                p
            });
        match planned {
            Ok((action, target, live)) => {
                r.target = target;
                step.action = Some(action);
                step.live = live;
            }
            Err(e) => {
                let msg = format!("source {:?}: {e:#}", src.name);
                failures.push((msg.clone(), kind_of(&e)));
                r.status = Status::Failed;
                r.error = Some(format!("{e:#}"));
            }
        }
        report.sources.push(r);
        steps.push(step);
    }
    // 2. Every chosen snapshot read back and verified.
    if failures.is_empty() {
        for (step, r) in steps.iter().zip(report.sources.iter_mut()) {
            let Some(snap) = &step.snap else { continue };
            progress.set_message(format!(
                "{}: reading and verifying snapshot {}",
                step.src.name,
                snap.id.short()
            ));
            match verify_snapshot(repo, &index, snap, progress) {
                Ok(v) => r.verification.read = Some(v),
                Err(e) => {
                    failures.push((format!("source {:?}: {e:#}", step.src.name), kind_of(&e)));
                    r.status = Status::Failed;
                    r.error = Some(format!("{e:#}"));
                }
            }
        }
    }
    let finish = |mut report: StackRestoreReport, error: Option<(String, ErrorKind)>| {
        for r in &mut report.sources {
            if r.status == Status::Restored {
                report.restored.push(r.name.clone());
            } else if !report.dry_run || r.status != Status::Planned {
                if r.status == Status::Planned {
                    r.status = Status::NotRestored;
                }
                report.not_restored.push(r.name.clone());
            }
        }
        report.ok = error.is_none();
        if let Some((e, k)) = error {
            report.error = Some(e);
            report.error_kind = Some(k);
        }
        report.duration_secs = started.elapsed().as_secs_f64();
        report
    };
    if !failures.is_empty() {
        let kind = failures[0].1;
        let msgs: Vec<String> = failures.into_iter().map(|(m, _)| m).collect();
        return Ok(finish(
            report,
            Some((
                format!(
                    "the restore plan failed, nothing was written:\n  {}",
                    msgs.join("\n  ")
                ),
                kind,
            )),
        ));
    }
    // 3. Targets that hold data: confirmed, or --yes.
    let live: Vec<String> = steps
        .iter()
        .filter_map(|s| s.live.as_ref().map(|l| format!("{}: {l}", s.src.name)))
        .collect();
    let mut confirmed = opts.yes;
    if opts.dry_run {
        for (step, r) in steps.iter().zip(report.sources.iter_mut()) {
            if let Some(l) = &step.live {
                r.notes.push(format!(
                    "{l} holds data: it would be replaced (needs --yes or confirmation)"
                ));
            }
        }
        return Ok(finish(report, None));
    }
    if !live.is_empty() && !confirmed {
        let question = format!(
            "these targets hold data, and restore --stack replaces it:\n  {}",
            live.join("\n  ")
        );
        confirmed = confirm(&question, "restore")?;
        if !confirmed {
            return Ok(finish(
                report,
                Some((
                    format!(
                        "not confirmed, nothing was written: these targets hold data:\n  {}\ngive \
                         --yes to replace them (databases and Redis servers are backed up first unless \
                         --no-safety-backup)",
                        live.join("\n  ")
                    ),
                    ErrorKind::Usage,
                )),
            ));
        }
    }
    // 4. before_restore, the sources in order, after_restore whatever happened.
    let names: Vec<&str> = steps.iter().map(|s| s.src.name.as_str()).collect();
    let base_env = vec![("COFFER_STACK_SOURCES", names.join(" "))];
    let mut error: Option<(String, ErrorKind)> = None;
    let t = Instant::now();
    let before = hooks::run(
        "before_restore",
        &config.stack.before_restore,
        &base_env,
        ErrorKind::Other,
        progress,
    );
    if !config.stack.before_restore.is_empty() {
        report.hooks.push(HookReport {
            hook: "before_restore".into(),
            ok: before.is_ok(),
            error: before.as_ref().err().map(|e| format!("{e:#}")),
            duration_secs: t.elapsed().as_secs_f64(),
        });
    }
    if let Err(e) = before {
        error = Some((format!("{e:#}; nothing was restored"), kind_of(&e)));
    } else {
        for (step, r) in steps.iter().zip(report.sources.iter_mut()) {
            let t = Instant::now();
            progress.log(&format!(
                "restoring {} ({}) from snapshot {} to {}",
                step.src.name,
                r.kind,
                step.snap.as_ref().map(|s| s.id.short()).unwrap_or_default(),
                r.target
            ));
            let res = run_step(repo, &index, opts, step, confirmed, r, progress, confirm);
            r.duration_secs = t.elapsed().as_secs_f64();
            match res {
                Ok(()) => r.status = Status::Restored,
                Err(e) => {
                    r.status = Status::Failed;
                    r.error = Some(format!("{e:#}"));
                    error = Some((format!("source {:?}: {e:#}", step.src.name), kind_of(&e)));
                    break;
                }
            }
        }
    }
    let restored: Vec<&str> = report
        .sources
        .iter()
        .filter(|r| r.status == Status::Restored)
        .map(|r| r.name.as_str())
        .collect();
    let mut after_env = base_env.clone();
    after_env.push((
        "COFFER_STATUS",
        if error.is_none() { "ok" } else { "failed" }.into(),
    ));
    after_env.push(("COFFER_RESTORED", restored.join(" ")));
    after_env.push((
        "COFFER_ERROR",
        error.as_ref().map(|e| e.0.clone()).unwrap_or_default(),
    ));
    let t = Instant::now();
    let after = hooks::run(
        "after_restore",
        &config.stack.after_restore,
        &after_env,
        ErrorKind::Other,
        progress,
    );
    if !config.stack.after_restore.is_empty() {
        report.hooks.push(HookReport {
            hook: "after_restore".into(),
            ok: after.is_ok(),
            error: after.as_ref().err().map(|e| format!("{e:#}")),
            duration_secs: t.elapsed().as_secs_f64(),
        });
    }
    match (&mut error, after) {
        (_, Ok(())) => {}
        (None, Err(e)) => error = Some((format!("{e:#}"), kind_of(&e))),
        (Some((m, _)), Err(e)) => m.push_str(&format!("; and then {e:#}")),
    }
    let mut report = finish(report, None);
    if let Some((msg, kind)) = error {
        let mut m = msg;
        m.push_str(&format!(
            "\nrestored: {}; not restored: {}",
            if report.restored.is_empty() {
                "none".to_string()
            } else {
                report.restored.join(", ")
            },
            if report.not_restored.is_empty() {
                "none".to_string()
            } else {
                report.not_restored.join(", ")
            }
        ));
        report.ok = false;
        report.error = Some(m);
        report.error_kind = Some(kind);
    }
    Ok(report)
}

impl Display for StackRestoreReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let short = |s: &Option<String>| {
            s.as_deref()
                .map(|s| s.get(..8).unwrap_or(s).to_string())
                .unwrap_or_else(|| "-".into())
        };
        writeln!(
            f,
            "{:<16} {:<17} {:<8}  {:<12} {:>8}  target / verification",
            "source", "type", "snapshot", "status", "time"
        )?;
        for r in &self.sources {
            writeln!(
                f,
                "{:<16} {:<17} {:<8}  {:<12} {:>7.1}s  {}",
                r.name,
                r.kind,
                short(&r.snapshot),
                r.status,
                r.duration_secs,
                if r.target.is_empty() { "-" } else { &r.target }
            )?;
            let v = &r.verification;
            let mut checks = Vec::new();
            if let Some(read) = &v.read {
                checks.push(format!(
                    "read back: {} files, {}, {} blobs verified",
                    read.files,
                    mib(read.bytes),
                    read.blobs
                ));
            }
            if let (Some(t), Some(rows)) = (v.tables, v.rows) {
                let bad = v.row_mismatches.unwrap_or(0);
                checks.push(if bad == 0 {
                    format!("row counts match for {t} tables ({rows} rows)")
                } else {
                    format!("{bad} of {t} tables have other row counts")
                });
            }
            if let Some(k) = v.keys {
                checks.push(match v.key_mismatches {
                    Some(0) | None => format!("{k} keys restored, key counts match"),
                    Some(b) => format!("{k} keys restored, {b} databases with other key counts"),
                });
            }
            if let (Some(n), Some(b)) = (v.files, v.bytes) {
                checks.push(format!(
                    "{n} files, {} in place (every chunk verified){}",
                    mib(b),
                    match v.removed {
                        Some(x) if x > 0 => format!(", {x} entries not in the snapshot removed"),
                        _ => String::new(),
                    }
                ));
            }
            for c in checks {
                writeln!(f, "{:<67}{c}", "")?;
            }
            for s in &r.safety_snapshots {
                writeln!(
                    f,
                    "{:<67}safety backup of the target: snapshot {}",
                    "",
                    s.get(..8).unwrap_or(s)
                )?;
            }
            for n in &r.notes {
                writeln!(f, "{:<67}note: {n}", "")?;
            }
            if let Some(e) = &r.error {
                writeln!(f, "{:<67}error: {e}", "")?;
            }
        }
        for h in &self.hooks {
            writeln!(
                f,
                "{}: {} in {:.1}s",
                h.hook,
                if h.ok { "ok" } else { "FAILED" },
                h.duration_secs
            )?;
        }
        let sum: f64 = self.sources.iter().map(|r| r.duration_secs).sum();
        write!(
            f,
            "{}: {} in {:.1}s (sources {:.1}s){}",
            if self.dry_run {
                "dry run, nothing changed"
            } else if self.ok {
                "stack restored"
            } else {
                "stack restore FAILED"
            },
            if self.dry_run {
                format!("{} sources planned, read and verified", self.sources.len())
            } else {
                format!(
                    "{} of {} sources restored",
                    self.restored.len(),
                    self.sources.len()
                )
            },
            self.duration_secs,
            sum,
            if self.dry_run || !self.ok {
                String::new()
            } else {
                " — the measured recovery time".to_string()
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = r#"
[sources.db]
type = "postgres"
url = "postgresql://app:pw@db/app"

[sources.cache]
type = "redis"

[sources.uploads]
type = "files"
paths = ["/srv/uploads"]

[sources.env]
type = "files"
paths = ["/srv/.env"]

[stack]
restore_order = ["uploads", "db"]
"#;

    #[test]
    fn the_sequence_follows_restore_order_then_declared_order() {
        let c = Config::parse(STACK, None, &|_| None).unwrap();
        let names = |only: &[&str]| -> Vec<String> {
            let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
            restore_sequence(&c, &only)
                .unwrap()
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        assert_eq!(names(&[]), ["uploads", "db", "cache", "env"]);
        assert_eq!(names(&["env", "db"]), ["db", "env"]);
        let e = restore_sequence(&c, &["nope".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope") && e.contains("db, cache, uploads, env"),
            "{e}"
        );
        let e = restore_sequence(&Config::default(), &[]).unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::Usage);
        assert!(e.to_string().contains("[sources.NAME]"), "{e}");
    }

    #[test]
    fn database_names_go_into_the_connection() {
        assert_eq!(
            with_database("postgresql://u:p@h:5432/app?sslmode=require", "billing"),
            "postgresql://u:p@h:5432/billing?sslmode=require"
        );
        assert_eq!(with_database("postgres://h", "a b"), "postgres://h/a%20b");
        assert_eq!(
            with_database("host=h dbname=app", "it's"),
            "host=h dbname=app dbname='it\\'s'"
        );
        let t = PgTarget::parse(&with_database("host=h dbname=app", "x")).unwrap();
        assert_eq!(t.db(), "x");
    }

    #[test]
    fn targets_are_checked_without_writing() {
        let d = tempfile::tempdir().unwrap();
        // A missing directory below an existing one can be created; nothing is created.
        let deep = d.path().join("a/b/c");
        reachable_dir(&deep).unwrap();
        assert!(!d.path().join("a").exists());
        // Below a file it cannot.
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let e = reachable_dir(&d.path().join("f/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a directory"), "{e}");
        assert!(!holds_data(&d.path().join("a")));
        std::fs::create_dir(d.path().join("empty")).unwrap();
        assert!(!holds_data(&d.path().join("empty")));
        assert!(holds_data(&d.path().join("f")));
        assert!(holds_data(d.path()));
        assert_eq!(
            under(Some(Path::new("/t")), Path::new("/srv/x")),
            PathBuf::from("/t/srv/x")
        );
        assert_eq!(under(None, Path::new("/srv/x")), PathBuf::from("/srv/x"));
    }

    #[test]
    fn paths_are_restored_in_place_through_symlinked_parents() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("data/opt");
        std::fs::create_dir_all(real.join("app/uploads/sub")).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("opt")).unwrap();
        let up = d.path().join("opt/app/uploads");
        let env = d.path().join("opt/app/.env");
        std::fs::write(up.join("a"), b"aaa").unwrap();
        std::fs::write(up.join("b"), b"bbb").unwrap();
        std::fs::write(up.join("sub/c"), b"ccc").unwrap();
        std::fs::write(&env, b"SECRET=1\n").unwrap();
        std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o750)).unwrap();
        let repo = std::sync::Arc::new(crate::repo::test_repository(d.path()));
        let r = crate::ops::backup::backup(
            &repo,
            crate::ops::backup::Source::Files {
                paths: vec![up.clone(), env.clone()],
                excludes: vec![],
                one_file_system: false,
            },
            crate::sources::CommonOptions::default(),
            &Progress::hidden(),
        )
        .unwrap();
        let snap = repo.find_snapshot(&r.id).unwrap();
        let index = repo.load_index().unwrap();

        // Damage: a file gone, one changed, one added, the modes changed, .env gone.
        std::fs::remove_file(up.join("a")).unwrap();
        std::fs::write(up.join("b"), b"changed").unwrap();
        std::fs::write(up.join("sub/new"), b"x").unwrap();
        std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::remove_file(&env).unwrap();
        // A file beside the backed-up paths is not ours to remove.
        std::fs::write(d.path().join("opt/app/other"), b"keep").unwrap();

        for p in &snap.paths {
            restore_path(&repo, &index, &snap, p, Path::new(p), &Progress::hidden()).unwrap();
        }
        assert!(std::fs::symlink_metadata(d.path().join("opt"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(up.join("a")).unwrap(), b"aaa");
        assert_eq!(std::fs::read(up.join("b")).unwrap(), b"bbb");
        assert_eq!(std::fs::read(up.join("sub/c")).unwrap(), b"ccc");
        assert!(!up.join("sub/new").exists());
        assert_eq!(std::fs::metadata(&up).unwrap().mode() & 0o777, 0o750);
        assert_eq!(std::fs::read(&env).unwrap(), b"SECRET=1\n");
        assert_eq!(std::fs::metadata(&env).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read(d.path().join("opt/app/other")).unwrap(),
            b"keep"
        );

        // Under --target DIR instead: the same tree below DIR, nothing outside it touched.
        let t = d.path().join("elsewhere");
        for p in &snap.paths {
            let dest = under(Some(&t), Path::new(p));
            restore_path(&repo, &index, &snap, p, &dest, &Progress::hidden()).unwrap();
        }
        let below = under(Some(&t), &up);
        assert_eq!(std::fs::read(below.join("sub/c")).unwrap(), b"ccc");
        assert!(under(Some(&t), &env).exists());
    }

    #[test]
    fn the_newest_snapshot_of_the_source_at_or_before_the_time() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
        let snap = |source: Option<&str>, time: &str, tags: &[&str]| Snapshot {
            id: crate::repo::id::Id::of_bytes(format!("{source:?}{time}{tags:?}").as_bytes()),
            time: t(time),
            hostname: "h".into(),
            username: "u".into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            paths: vec!["/srv/uploads".into()],
            kind: Kind::Files,
            tree: crate::repo::id::Id::of_bytes(b"t"),
            parent: None,
            size: 0,
            excludes: vec![],
            sources: vec![],
            summary: Default::default(),
            program_version: String::new(),
            requires: Default::default(),
            source: source.map(str::to_string),
            run: None,
            original: None,
            sealed: None,
            stored_as: None,
        };
        let all = vec![
            snap(Some("uploads"), "2024-05-01T01:00:00Z", &[]),
            snap(Some("uploads"), "2024-05-01T02:00:00Z", &[]),
            snap(Some("uploads"), "2024-05-01T03:00:00Z", &["safety-backup"]),
            snap(None, "2024-05-01T04:00:00Z", &[]),
            snap(Some("other"), "2024-05-01T05:00:00Z", &[]),
        ];
        let c = Config::parse(STACK, None, &|_| None).unwrap();
        let up = c.source("uploads").unwrap();
        let pick = |at: Option<&str>| choose(&all, up, at.map(t).as_ref()).map(|s| s.time);
        assert_eq!(pick(None).unwrap(), t("2024-05-01T02:00:00Z"));
        assert_eq!(
            pick(Some("2024-05-01T01:30:00Z")).unwrap(),
            t("2024-05-01T01:00:00Z")
        );
        let e = pick(Some("2024-05-01T00:30:00Z")).unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::NotFound);
        assert!(
            e.to_string()
                .contains("no snapshot of source \"uploads\" at or before")
                && e.to_string().contains("coffer backup --source uploads"),
            "{e}"
        );
        // A source whose snapshots are of another kind has none.
        let db = c.source("db").unwrap();
        assert!(choose(&all, db, None).is_err());
    }
}
