//! `coffer drill`: prove that a source's backup restores, by restoring it into scratch
//! resources that coffer creates and always removes, checking what came back, and timing it
//! (the measured RTO: from the drill's start to the restore verified and checked).
//!
//! - **PostgreSQL, logical**: a scratch cluster of the dump's major version
//!   ([`crate::sources::postgres::scratch`]), every database of the snapshot restored into
//!   it (without owners and privileges: the scratch cluster has none of the live roles), then
//!   the checks: every table's row count against the count recorded at backup, `min_tables`,
//!   the SQL `checks` (each must return true, run in the first database), and with `amcheck`
//!   `bt_index_check(heapallindexed)` on every B-tree index. With the source's `drill_url`,
//!   the databases go instead into scratch databases on that server
//!   ([`crate::sources::postgres::scratch_db`]), created and always dropped.
//! - **PostgreSQL, physical**: the base backup laid out in a scratch data directory,
//!   recovered from the WAL archive to its end (or `--target-time`) and promoted by a scratch
//!   server that archives nothing, then the SQL checks, `min_tables` and amcheck in the
//!   source URL's database.
//! - **Redis**: the RDB loaded by a scratch `redis-server`, then each database's keys against
//!   the counts at backup and the `COMMAND ARGS => REPLY` checks.
//! - **Command sources**: the output fed to `drill_command`/`drill_shell`, which must exit 0.
//! - **Files**: the snapshot restored into a private temp dir (every chunk verified as it is
//!   written), then the files and bytes found there against the snapshot's own count, and the
//!   `checks`: paths, as backed up, that must exist.
//!
//! A drill never connects to the live source, nor to any server it did not start but a
//! configured `drill_url`. Each drill is recorded in the run history (job
//! `drill`), also when it fails. A check that fails, or data that fails verification, fails
//! the drill (exit 3); anything else that stops it is an error (exit 1).

use crate::config::sources::PostgresSource;
use crate::config::sources::{Drill, PgMode, SourceConfig};
use crate::config::{Config, SourceKind};
use crate::error::{kind_of, Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::id::Id;
use crate::repo::index::MasterIndex;
use crate::repo::lock::Lock;
use crate::repo::runs::{self, DrillCheck, DrillDetails, DrillStep, RunRecord, RunStatus};
use crate::repo::snapshot::Snapshot;
use crate::repo::Repository;
use crate::sources::postgres::conn::PgTarget;
use crate::sources::postgres::pitr::{restore_pitr, FetchConfig, PitrOptions, Target};
use crate::sources::postgres::restore::{restore_postgres, PgRestoreOptions};
use crate::sources::postgres::scratch::{self, ScratchCluster};
use crate::sources::postgres::scratch_db::ScratchServer;
use crate::sources::postgres::DumpInfo;
use crate::sources::Metadata;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub struct DrillOptions {
    /// These declared sources (default: those with a `drill` table, else all).
    pub sources: Vec<String>,
    /// Drill this snapshot instead of each source's newest.
    pub snapshot: Option<String>,
    /// Physical PostgreSQL: recover to this time instead of the end of the archive.
    pub target_time: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Physical PostgreSQL: how the scratch server's `restore_command` reads the archive.
    pub fetch: FetchConfig,
}

/// `drill --json`.
#[derive(Serialize)]
pub struct DrillReport {
    pub run: String,
    pub sources: Vec<SourceDrill>,
    pub passed: usize,
    /// Drills where a check failed or data failed verification.
    pub failed: usize,
    /// Drills stopped by another error.
    pub errors: usize,
    pub duration_secs: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillStatus {
    Passed,
    /// A check failed, or the snapshot's data failed verification.
    Failed,
    /// Something else stopped the drill (a missing tool, a server that did not start…).
    Error,
}

#[derive(Serialize)]
pub struct SourceDrill {
    pub source: String,
    #[serde(rename = "type")]
    pub source_type: String,
    pub status: DrillStatus,
    pub snapshot: Option<String>,
    /// Wall time from the start of this source's drill to its restore verified and checked.
    pub rto_secs: f64,
    pub steps: Vec<DrillStep>,
    pub checks: Vec<DrillCheck>,
    pub error: Option<String>,
    /// Bytes restored.
    pub bytes: u64,
}

impl SourceDrill {
    /// What went wrong: the error, else the checks that failed; None when it passed.
    pub fn failure(&self) -> Option<String> {
        self.error.clone().or_else(|| {
            let failed: Vec<String> = self
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{} ({})", c.check, c.detail))
                .collect();
            (!failed.is_empty()).then(|| format!("failed checks: {}", failed.join("; ")))
        })
    }
}

/// Which sources a drill takes.
fn chosen<'a>(config: &'a Config, opts: &DrillOptions) -> Result<Vec<&'a SourceConfig>> {
    if !opts.sources.is_empty() {
        return super::stack::pick(config, &opts.sources);
    }
    if config.sources.is_empty() {
        return Err(Error::usage(
            "the config file declares no sources: coffer drill works on [sources.NAME] tables",
        )
        .into());
    }
    let with: Vec<&SourceConfig> = config
        .sources
        .iter()
        .filter(|s| s.drill.is_some())
        .collect();
    Ok(if with.is_empty() {
        config.sources.iter().collect()
    } else {
        with
    })
}

/// Drill the chosen sources, one after the other.
pub fn drill(
    repo: &Arc<Repository>,
    config: &Config,
    opts: &DrillOptions,
    progress: &Progress,
) -> Result<DrillReport> {
    repo.require_full("drill")?;
    let t0 = Instant::now();
    for d in scratch::clean_stale() {
        progress.log(&format!(
            "removed the scratch directory of an earlier drill that did not finish: {}",
            d.display()
        ));
    }
    let mut sources = chosen(config, opts)?;
    let snapshot = match &opts.snapshot {
        Some(spec) => {
            let s = repo.find_snapshot(spec)?;
            if opts.sources.is_empty() {
                let name = s.source.clone().ok_or_else(|| {
                    Error::usage(format!(
                        "snapshot {} belongs to no declared source: name the source with --source",
                        s.id.short()
                    ))
                })?;
                sources = super::stack::pick(config, &[name])?;
            } else if sources.len() > 1 {
                return Err(Error::usage("--snapshot drills one source: give one --source").into());
            }
            Some(s)
        }
        None => None,
    };
    let run = runs::new_run_id();
    let _lock = Lock::shared(repo, "drill")?;
    // Read under the lock: prune cannot remove what they name while the drill runs.
    let index = repo.load_index()?;
    let snaps = match snapshot {
        Some(_) => Vec::new(),
        None => repo.load_snapshots()?,
    };
    let mut out = Vec::new();
    for src in sources {
        let r = drill_source(repo, &index, &snaps, src, snapshot.clone(), opts, progress);
        record(repo, &run, src, &r, progress);
        out.push(r);
        if crate::cancel::requested() {
            return Err(Error::new(
                ErrorKind::Other,
                "the drill was interrupted; its scratch resources are removed",
            )
            .into());
        }
    }
    let count = |st| out.iter().filter(|r| r.status == st).count();
    Ok(DrillReport {
        run,
        passed: count(DrillStatus::Passed),
        failed: count(DrillStatus::Failed),
        errors: count(DrillStatus::Error),
        sources: out,
        duration_secs: t0.elapsed().as_secs_f64(),
    })
}

impl DrillReport {
    /// Exit 3 when a check failed (or data failed verification), 1 on another error.
    pub fn verdict(&self) -> Result<()> {
        let names = |st| {
            self.sources
                .iter()
                .filter(|s| s.status == st)
                .map(|s| s.source.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.failed > 0 {
            return Err(Error::integrity(format!(
                "the drill of {} failed: see the checks above",
                names(DrillStatus::Failed)
            ))
            .into());
        }
        if self.errors > 0 {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "the drill of {} could not be completed",
                    names(DrillStatus::Error)
                ),
            )
            .into());
        }
        Ok(())
    }
}

/// What a drill restores from: the repository, its index and the snapshot (the index and
/// the snapshot list are read once for all the sources of a drill).
struct Origin<'a> {
    repo: &'a Arc<Repository>,
    index: &'a MasterIndex,
    snap: &'a Snapshot,
}

/// The newest snapshot of a source, safety backups aside.
fn newest(snaps: &[Snapshot], source: &str) -> Result<Snapshot> {
    snaps
        .iter()
        .filter(|s| s.source.as_deref() == Some(source) && !s.has_tag("safety-backup"))
        .max_by_key(|s| s.time)
        .cloned()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("source {source} has no snapshot to drill: back it up first"),
            )
            .into()
        })
}

/// What a drill of one source collects as it goes.
struct Drilling {
    t0: Instant,
    steps: Vec<DrillStep>,
    checks: Vec<DrillCheck>,
    bytes: u64,
}

impl Drilling {
    /// Time `f` as the step `name`.
    fn step<T>(
        &mut self,
        name: &str,
        p: &Progress,
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        p.log(&format!("drill: {name}"));
        let t = Instant::now();
        let r = f(self);
        self.steps.push(DrillStep {
            step: name.to_string(),
            duration_secs: t.elapsed().as_secs_f64(),
            ok: r.is_ok(),
        });
        r
    }

    fn check(&mut self, check: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(DrillCheck {
            check: check.into(),
            ok,
            detail: detail.into(),
        });
    }
}

fn drill_source(
    repo: &Arc<Repository>,
    index: &MasterIndex,
    snaps: &[Snapshot],
    src: &SourceConfig,
    snapshot: Option<Snapshot>,
    opts: &DrillOptions,
    p: &Progress,
) -> SourceDrill {
    let mut d = Drilling {
        t0: Instant::now(),
        steps: Vec::new(),
        checks: Vec::new(),
        bytes: 0,
    };
    let none = Drill::default();
    let spec = src.drill.as_ref().unwrap_or(&none);
    let snap = match snapshot.map(Ok).unwrap_or_else(|| newest(snaps, &src.name)) {
        Ok(s) => s.check_features().map(|()| s),
        Err(e) => Err(e),
    };
    let origin = |snap| Origin { repo, index, snap };
    let result = snap
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .and_then(|snap| match &src.kind {
            SourceKind::Postgres(pg) if pg.mode == PgMode::Logical => {
                drill_logical(&origin(snap), pg, spec, &mut d, p)
            }
            SourceKind::Postgres(pg) => drill_physical(&origin(snap), pg, spec, opts, &mut d, p),
            SourceKind::Files(_) => drill_files(&origin(snap), spec, &mut d, p),
            SourceKind::Redis(_) => drill_redis(&origin(snap), spec, &mut d, p),
            SourceKind::Command(c) => drill_command(&origin(snap), &src.name, c, &mut d, p),
        });
    let failed_check = d.checks.iter().any(|c| !c.ok);
    let (status, error) = match result {
        _ if crate::cancel::requested() => (
            DrillStatus::Error,
            Some("interrupted by a signal before it was done".to_string()),
        ),
        Ok(()) if !failed_check => (DrillStatus::Passed, None),
        Ok(()) => (DrillStatus::Failed, None),
        Err(e) if kind_of(&e) == ErrorKind::Integrity => {
            (DrillStatus::Failed, Some(format!("{e:#}")))
        }
        Err(e) => (DrillStatus::Error, Some(format!("{e:#}"))),
    };
    SourceDrill {
        source: src.name.clone(),
        source_type: src.kind.type_name().to_string(),
        status,
        snapshot: snap.ok().map(|s| s.id.to_hex()),
        rto_secs: d.t0.elapsed().as_secs_f64(),
        steps: d.steps,
        checks: d.checks,
        error,
        bytes: d.bytes,
    }
}

/// The drill's run record (a failure to write it is a warning: the drill itself stands).
fn record(repo: &Repository, run: &str, src: &SourceConfig, r: &SourceDrill, p: &Progress) {
    let now = chrono::Local::now().fixed_offset();
    let started = now - chrono::Duration::milliseconds((r.rto_secs * 1000.0) as i64);
    let rec = RunRecord {
        id: Id::default(),
        run: run.to_string(),
        job: "drill".into(),
        source: src.name.clone(),
        source_type: src.kind.type_name().to_string(),
        host: crate::repo::hostname(),
        started,
        finished: now,
        status: if r.status == DrillStatus::Passed {
            RunStatus::Ok
        } else {
            RunStatus::Failed
        },
        error: r.failure(),
        bytes_read: r.bytes,
        bytes_added: 0,
        snapshot: r.snapshot.clone(),
        drill: Some(DrillDetails {
            rto_secs: r.rto_secs,
            steps: r.steps.clone(),
            checks: r.checks.clone(),
        }),
        repositories: Vec::new(),
    };
    if let Err(e) = runs::save(repo, &rec) {
        p.warn(&format!(
            "source {}: could not record the drill in the history: {e:#}",
            src.name
        ));
    }
}

/// Where a logical drill restores: a scratch cluster of its own, or scratch databases on the
/// source's `drill_url`.
enum ScratchPlace {
    Cluster(ScratchCluster),
    Server {
        server: ScratchServer,
        /// The dump's spool (a private temp dir, removed with the drill).
        spool: tempfile::TempDir,
    },
}

impl ScratchPlace {
    fn open(drill_url: Option<&str>, major: u32, d: &mut Drilling, p: &Progress) -> Result<Self> {
        match drill_url {
            None => d.step(&format!("start a scratch PostgreSQL {major}"), p, |_| {
                Ok(ScratchPlace::Cluster(ScratchCluster::start(major)?))
            }),
            Some(url) => d.step("connect to drill_url", p, |_| {
                let (server, dropped) = ScratchServer::open(url, p)?;
                for name in dropped {
                    p.log(&format!(
                        "dropped the scratch database of an earlier drill that did not finish: \
                         {name} on {}",
                        server.server()
                    ));
                }
                Ok(ScratchPlace::Server {
                    server,
                    spool: scratch::scratch_dir()?,
                })
            }),
        }
    }

    /// The target to restore database `db` of the dump into, and where to spool it.
    fn target(&mut self, db: &str, p: &Progress) -> Result<(PgTarget, &Path)> {
        match self {
            ScratchPlace::Cluster(c) => Ok((
                PgTarget::resolve(Some(&c.conn(db)), false, p)?,
                // In the scratch directory: removed with it, whatever happens.
                c.dir(),
            )),
            ScratchPlace::Server { server, spool } => Ok((server.database(), spool.path())),
        }
    }

    fn remove(self, d: &mut Drilling, p: &Progress) -> Result<()> {
        match self {
            ScratchPlace::Cluster(c) => d.step("remove the scratch cluster", p, |_| c.remove()),
            ScratchPlace::Server { server, spool } => {
                d.step("drop the scratch databases", p, |_| server.remove())?;
                Ok(spool.close()?)
            }
        }
    }
}

fn drill_logical(
    o: &Origin,
    pg: &PostgresSource,
    spec: &Drill,
    d: &mut Drilling,
    p: &Progress,
) -> Result<()> {
    let (repo, snap) = (o.repo, o.snap);
    let dumps: Vec<DumpInfo> = snap
        .sources
        .iter()
        .filter(|s| s.kind == DumpInfo::KIND)
        .map(|s| DumpInfo::of(snap, s))
        .collect::<Result<_>>()?;
    let Some(first) = dumps.first() else {
        return Err(Error::usage(format!(
            "snapshot {} holds no PostgreSQL dump",
            snap.id.short()
        ))
        .into());
    };
    let major = first.server_version_num / 10000;
    let mut place = ScratchPlace::open(pg.drill_url.as_deref(), major, d, p)?;
    let mut tables = 0u64;
    for info in &dumps {
        let (target, spool) = place.target(&info.database, p)?;
        let opts = PgRestoreOptions {
            target: Some(target.clone()),
            database: Some(info.database.clone()),
            jobs: 2,
            // Never replace what is there: a scratch database is new, and on a drill_url
            // server a name in use is someone else's.
            yes: false,
            no_owner: true,
            no_privileges: true,
            spool_dir: Some(spool.to_path_buf()),
            ..Default::default()
        };
        let report = d.step(
            &format!("fetch, verify and restore database {}", info.database),
            p,
            |_| restore_postgres(repo, o.index, snap, &opts, p, &mut |_, _| Ok(false)),
        )?;
        d.bytes += info.dump_size;
        let bad: Vec<String> = report
            .checks
            .iter()
            .filter(|c| !c.ok())
            .map(|c| match c.actual {
                Some(a) => format!("{}: {a} rows, {} at backup", c.table, c.expected),
                None => format!("{}: missing ({} rows at backup)", c.table, c.expected),
            })
            .collect();
        d.check(
            format!("row counts of database {}", info.database),
            bad.is_empty(),
            if bad.is_empty() {
                format!(
                    "{} tables, each as many rows as at backup",
                    report.checks.len()
                )
            } else {
                bad.join("; ")
            },
        );
        let mut client = target.connect()?;
        tables += count_tables(&mut client)?;
        let checks_here = std::ptr::eq(info, first);
        d.step(&format!("checks in database {}", info.database), p, |d| {
            if checks_here {
                sql_checks(&mut client, &spec.checks, d);
            }
            if spec.amcheck {
                amcheck(&mut client, &info.database, d)?;
            }
            Ok(())
        })?;
    }
    if let Some(min) = spec.min_tables {
        d.check(
            format!("at least {min} tables"),
            tables >= min,
            format!("{tables} tables restored"),
        );
    }
    place.remove(d, p)
}

/// Each SQL check must return one row whose first column is true.
fn sql_checks(client: &mut postgres::Client, checks: &[String], d: &mut Drilling) {
    for sql in checks {
        let (ok, detail) = match client.query(sql.as_str(), &[]) {
            Ok(rows) => match rows.first().map(|r| r.try_get::<_, bool>(0)) {
                Some(Ok(true)) => (true, "true".to_string()),
                Some(Ok(false)) => (false, "false".to_string()),
                Some(Err(e)) => (false, format!("not a boolean: {e}")),
                None => (false, "no row".to_string()),
            },
            Err(e) => (false, db_message(&e)),
        };
        d.check(sql.clone(), ok, detail);
    }
}

/// Tables of the connected database (partitioned ones included, the catalogs aside).
fn count_tables(client: &mut postgres::Client) -> Result<u64> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%'",
            &[],
        )?
        .get(0);
    Ok(n as u64)
}

/// How long a physical drill waits for the scratch server to recover and promote.
const RECOVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Physical PostgreSQL: the base backup laid out in a scratch data directory (tablespaces
/// too), recovered from the WAL archive to its end (or `--target-time`) by a scratch server
/// that reads the archive through `restore_command` and is promoted, then the checks in
/// the source URL's database (default `postgres`).
fn drill_physical(
    o: &Origin,
    pg: &PostgresSource,
    spec: &Drill,
    opts: &DrillOptions,
    d: &mut Drilling,
    p: &Progress,
) -> Result<()> {
    let (repo, snap) = (o.repo, o.snap);
    use crate::sources::postgres::basebackup::BaseBackupInfo;
    let info = snap
        .sources
        .iter()
        .find(|s| s.kind == BaseBackupInfo::KIND)
        .map(|s| BaseBackupInfo::of(snap, s))
        .transpose()?
        .ok_or_else(|| {
            Error::usage(format!("snapshot {} holds no base backup", snap.id.short()))
        })?;
    let major = info.server_version_num / 10000;
    let cluster = ScratchCluster::prepare(major)?;
    let tablespace_map = info
        .tablespaces
        .iter()
        .map(|t| {
            (
                t.oid.to_string(),
                cluster.dir().join(format!("tblspc-{}", t.oid)),
            )
        })
        .collect();
    let popts = PitrOptions {
        snapshot: Some(snap.id.to_hex()),
        pgdata: cluster.data().to_path_buf(),
        target: match opts.target_time {
            Some(t) => Target::Time(t),
            None => Target::End,
        },
        exclusive: false,
        action: Some("promote".into()),
        timeline: None,
        force: true,
        delta: false,
        tablespace_map,
        fetch: opts.fetch.clone(),
        wal_hold_expiry: std::time::Duration::from_secs(24 * 3600),
    };
    let restored = d.step("fetch, verify and restore the base backup", p, |_| {
        restore_pitr(repo, o.index, &popts, p)
    })?;
    d.bytes = restored.restored.bytes;
    // The scratch server's recovery_end_command releases the WAL hold when its recovery
    // ends; a drill that stops before that releases it here, whatever happened.
    let hold = restored.wal_hold.id.clone();
    let r = recover_and_check(pg, spec, major, cluster, d, p);
    if let Err(e) = crate::sources::postgres::wal::hold::release(repo, &hold) {
        p.warn(&format!(
            "could not release the drill's WAL hold {hold}: {e:#}"
        ));
    }
    r
}

/// The rest of a physical drill, on the restored data directory.
fn recover_and_check(
    pg: &PostgresSource,
    spec: &Drill,
    major: u32,
    cluster: ScratchCluster,
    d: &mut Drilling,
    p: &Progress,
) -> Result<()> {
    let cluster = d.step(
        &format!("start a scratch PostgreSQL {major} on it, consistent"),
        p,
        |_| cluster.launch(3600),
    )?;
    let db = pg
        .url
        .as_deref()
        .and_then(|u| crate::sources::postgres::conn::PgTarget::parse(u).ok())
        .and_then(|t| t.dbname)
        .unwrap_or_else(|| "postgres".into());
    let conn = |db: &str| -> Result<postgres::Client> {
        crate::sources::postgres::conn::PgTarget::resolve(Some(&cluster.conn(db)), false, p)?
            .connect()
    };
    d.step("recover to the end of the WAL and promote", p, |d| {
        let t0 = Instant::now();
        // One session, polled often (it survives the promotion); a new one if it breaks.
        let mut session: Option<postgres::Client> = None;
        loop {
            let c = match session.as_mut() {
                Some(c) => c,
                None => session.insert(conn("postgres")?),
            };
            let recovering: bool = match c.query_one("SELECT pg_is_in_recovery()", &[]) {
                Ok(row) => row.get(0),
                Err(e) if e.is_closed() => {
                    session = None; // asked again on a new one, after the pause
                    true
                }
                Err(e) => return Err(e.into()),
            };
            if !recovering {
                d.check(
                    "recovered and promoted",
                    true,
                    format!("out of recovery after {:.1} s", t0.elapsed().as_secs_f64()),
                );
                return Ok(());
            }
            if t0.elapsed() > RECOVERY_TIMEOUT || crate::cancel::requested() {
                d.check(
                    "recovered and promoted",
                    false,
                    "still in recovery: see the server log of the scratch cluster",
                );
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })?;
    d.step(&format!("checks in database {db}"), p, |d| {
        let mut client = conn(&db)?;
        sql_checks(&mut client, &spec.checks, d);
        if let Some(min) = spec.min_tables {
            let n = count_tables(&mut client)?;
            d.check(
                format!("at least {min} tables"),
                n >= min,
                format!("{n} tables in database {db}"),
            );
        }
        if spec.amcheck {
            amcheck(&mut client, &db, d)?;
        }
        Ok(())
    })?;
    d.step("remove the scratch cluster", p, |_| cluster.remove())?;
    Ok(())
}

/// The server's message for a failed query, else the client's error.
fn db_message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map_or(e.to_string(), |d| d.message().to_string())
}

/// `bt_index_check(heapallindexed => true)` on every valid B-tree index of the database.
fn amcheck(client: &mut postgres::Client, db: &str, d: &mut Drilling) -> Result<()> {
    client.batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")?;
    let rows = client.query(
        "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am ON am.oid = c.relam \
         WHERE am.amname = 'btree' AND i.indisvalid AND i.indisready \
         AND c.relpersistence <> 't' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 2",
        &[],
    )?;
    let mut bad = Vec::new();
    for r in &rows {
        let oid: postgres::types::Oid = r.get(0);
        let name: String = r.get(1);
        if let Err(e) = client.execute("SELECT bt_index_check($1::oid::regclass, true)", &[&oid]) {
            bad.push(format!("{name}: {}", db_message(&e)));
        }
    }
    d.check(
        format!("amcheck of the B-tree indexes of database {db}"),
        bad.is_empty(),
        if bad.is_empty() {
            format!("{} indexes checked, heap included", rows.len())
        } else {
            bad.join("; ")
        },
    );
    Ok(())
}

/// A command source: its output, verified chunk by chunk, fed to `drill_command` (or
/// `drill_shell`) as `restore` would get it (standard input, or `{output_dir}`); the command
/// must exit 0.
fn drill_command(
    o: &Origin,
    name: &str,
    c: &crate::config::sources::CommandSource,
    d: &mut Drilling,
    p: &Progress,
) -> Result<()> {
    let (repo, snap) = (o.repo, o.snap);
    use crate::sources::command::restore::{restore_command_output, CommandRestore};
    use crate::sources::command::Program;
    let program = match (&c.drill_command, &c.drill_shell) {
        (Some(argv), _) => Program::Argv(argv.clone()),
        (None, Some(line)) => Program::Shell(line.clone()),
        (None, None) => {
            return Err(Error::usage(format!(
                "source {name}: a command source's drill runs its drill_command (or drill_shell) \
                 on the restored output: give one in [sources.{name}]"
            ))
            .into())
        }
    };
    let shown = match &program {
        Program::Argv(a) => a.join(" "),
        Program::Shell(l) => l.clone(),
    };
    let to = CommandRestore::Run {
        program,
        timeout: c.drill_timeout,
    };
    let r = d.step(
        "fetch, verify and feed the output to the drill command",
        p,
        |_| {
            match restore_command_output(repo, o.index, snap, &to, p) {
                Ok(r) => Ok(Ok(r)),
                // Data that fails verification fails the drill as such; the command failing
                // is what the check reports.
                Err(e) if kind_of(&e) == ErrorKind::Integrity => Err(e),
                Err(e) => Ok(Err(e)),
            }
        },
    )?;
    match r {
        Ok(r) => {
            d.bytes = r.bytes;
            d.check(
                format!("{shown} succeeds"),
                true,
                format!(
                    "exit status {} on {} bytes",
                    r.exit_code.unwrap_or(0),
                    r.bytes
                ),
            );
        }
        Err(e) => d.check(format!("{shown} succeeds"), false, format!("{e:#}")),
    }
    Ok(())
}

/// How long a Redis drill waits for the scratch server to load the RDB.
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A Redis reply as a check compares it: text, a number, `(nil)`, `(error) …`, or the
/// elements of an array on lines of their own.
fn reply_text(r: &crate::sources::redis::conn::Reply) -> String {
    use crate::sources::redis::conn::Reply;
    match r {
        Reply::Status(s) => s.clone(),
        Reply::Error(e) => format!("(error) {e}"),
        Reply::Int(i) => i.to_string(),
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        Reply::Bulk(None) | Reply::Array(None) => "(nil)".into(),
        Reply::Array(Some(v)) => v.iter().map(reply_text).collect::<Vec<_>>().join("\n"),
    }
}

/// Redis: the RDB written out of the snapshot into a scratch directory (every chunk
/// verified), loaded by a scratch `redis-server` (which checks its CRC64), then the keys of
/// each database against the snapshot's counts, and the `checks`: `COMMAND ARGS => REPLY`,
/// run in database 0.
fn drill_redis(o: &Origin, spec: &Drill, d: &mut Drilling, p: &Progress) -> Result<()> {
    let (repo, snap) = (o.repo, o.snap);
    use crate::sources::redis::scratch::ScratchRedis;
    let (src, meta) = crate::sources::redis::restore::pick_source(snap)?;
    let dir = scratch::scratch_dir()?;
    d.step("fetch and verify the RDB", p, |d| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(dir.path().join("dump.rdb"))?;
        d.bytes = crate::repo::restore::dump(repo, o.index, snap, &src.path, &mut f)?;
        Ok(())
    })?;
    let databases = meta
        .databases
        .iter()
        .map(|x| x.db + 1)
        .max()
        .unwrap_or(1)
        .max(16);
    let server = d.step("load it into a scratch redis-server", p, |_| {
        ScratchRedis::start(dir.path(), databases, LOAD_TIMEOUT)
    })?;
    d.step("checks", p, |d| {
        let mut c = server.connect(0)?;
        let now = crate::sources::redis::keyspace(&c.info("keyspace")?);
        let mut bad = Vec::new();
        for want in &meta.databases {
            let got = now.iter().find(|x| x.db == want.db).map_or(0, |x| x.keys);
            // Keys with an expiry may have expired since the backup; the others may not go.
            if got > want.keys || got < want.keys - want.expires.min(want.keys) {
                bad.push(format!(
                    "db{}: {got} keys, {} at backup ({} with an expiry)",
                    want.db, want.keys, want.expires
                ));
            }
        }
        for g in now
            .iter()
            .filter(|g| !meta.databases.iter().any(|w| w.db == g.db))
        {
            bad.push(format!("db{}: {} keys, none at backup", g.db, g.keys));
        }
        let total: u64 = now.iter().map(|x| x.keys).sum();
        d.check(
            "keys per database as at backup",
            bad.is_empty(),
            if bad.is_empty() {
                format!("{total} keys in {} database(s)", now.len())
            } else {
                bad.join("; ")
            },
        );
        for check in &spec.checks {
            let Some((cmd, want)) = check.split_once("=>") else {
                d.check(
                    check.clone(),
                    false,
                    "write a Redis check as COMMAND ARGS => REPLY, e.g. \"GET greeting => hello\"",
                );
                continue;
            };
            let args: Vec<&[u8]> = cmd.split_whitespace().map(str::as_bytes).collect();
            let got = reply_text(&c.command(&args)?);
            let want = want.trim();
            d.check(check.clone(), got == want, format!("replied {got:?}"));
        }
        Ok(())
    })?;
    drop(server);
    d.step("remove the scratch server", p, |_| Ok(dir.close()?))?;
    Ok(())
}

/// Files, directories and bytes under `dir` (symlinks not followed).
fn tally(dir: &Path) -> Result<(u64, u64, u64)> {
    let (mut files, mut dirs, mut bytes) = (0, 0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.path().symlink_metadata()?;
            if m.is_dir() {
                dirs += 1;
                stack.push(e.path());
            } else if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    Ok((files, dirs, bytes))
}

fn drill_files(o: &Origin, spec: &Drill, d: &mut Drilling, p: &Progress) -> Result<()> {
    let (repo, snap) = (o.repo, o.snap);
    let dir = scratch::scratch_dir()?;
    let target = dir.path().join("restored");
    let report = d.step("fetch, verify and restore the files", p, |_| {
        crate::repo::restore::restore(
            repo,
            o.index,
            snap,
            &crate::repo::restore::RestoreOptions {
                target: target.clone(),
                includes: Vec::new(),
                tree: None,
                delta: false,
                sync: false,
            },
            p,
        )
    })?;
    d.bytes = report.bytes;
    d.step("checks", p, |d| {
        let (files, _dirs, bytes) = tally(&target)?;
        let s = &snap.summary;
        let want = s.files_new + s.files_changed + s.files_unchanged;
        d.check(
            "files and bytes as in the snapshot",
            files == want && bytes == snap.size,
            format!(
                "{files} files of {bytes} bytes restored; the snapshot holds {want} files of {} bytes",
                snap.size
            ),
        );
        for path in &spec.checks {
            let at = target.join(path.trim_start_matches('/'));
            let ok = at.symlink_metadata().is_ok();
            d.check(
                format!("{path} exists"),
                ok,
                if ok { "present" } else { "missing from the restored tree" },
            );
        }
        Ok(())
    })?;
    d.step("remove the scratch directory", p, |_| Ok(dir.close()?))?;
    Ok(())
}

/// `coffer drills`: the drill history, oldest first (of these sources, when given).
pub fn history(repo: &Repository, sources: &[String]) -> Result<Vec<RunRecord>> {
    Ok(runs::load(repo)?
        .into_iter()
        .filter(|r| r.job == "drill" && (sources.is_empty() || sources.contains(&r.source)))
        .collect())
}

/// The text of `coffer drills`.
pub struct HistoryTable<'a>(pub &'a [RunRecord]);

impl std::fmt::Display for HistoryTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return writeln!(f, "no drills yet: run coffer drill");
        }
        writeln!(
            f,
            "{:<19}  {:<16} {:<10} {:<7} {:>9} {:>7}  error",
            "finished", "source", "snapshot", "result", "rto", "checks"
        )?;
        for r in self.0 {
            let d = r.drill.clone().unwrap_or_default();
            let ok = d.checks.iter().filter(|c| c.ok).count();
            writeln!(
                f,
                "{:<19}  {:<16} {:<10} {:<7} {:>8.1}s {:>7}  {}",
                r.finished.format("%Y-%m-%d %H:%M:%S"),
                r.source,
                r.snapshot.as_deref().map_or("-", |s| &s[..8.min(s.len())]),
                match r.status {
                    RunStatus::Ok => "passed",
                    RunStatus::Failed => "FAILED",
                },
                d.rto_secs,
                format!("{ok}/{}", d.checks.len()),
                r.error.as_deref().unwrap_or("")
            )?;
        }
        Ok(())
    }
}

impl std::fmt::Display for DrillReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.sources {
            writeln!(
                f,
                "{} ({}): {} — RTO {:.1} s{}",
                s.source,
                s.source_type,
                match s.status {
                    DrillStatus::Passed => "PASSED",
                    DrillStatus::Failed => "FAILED",
                    DrillStatus::Error => "ERROR",
                },
                s.rto_secs,
                s.snapshot
                    .as_deref()
                    .map(|id| format!(", snapshot {}", &id[..8.min(id.len())]))
                    .unwrap_or_default()
            )?;
            for st in &s.steps {
                writeln!(
                    f,
                    "  {:>7.1}s  {}{}",
                    st.duration_secs,
                    st.step,
                    if st.ok { "" } else { "  (failed)" }
                )?;
            }
            for c in &s.checks {
                writeln!(
                    f,
                    "  [{}] {}: {}",
                    if c.ok { "ok" } else { "FAIL" },
                    c.check,
                    c.detail
                )?;
            }
            if let Some(e) = &s.error {
                writeln!(f, "  error: {e}")?;
            }
        }
        write!(
            f,
            "{} passed, {} failed, {} errors in {:.1} s",
            self.passed, self.failed, self.errors, self.duration_secs
        )
    }
}
