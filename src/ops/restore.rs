//! `restore`: a snapshot into a directory, a PostgreSQL dump into a database, or a
//! physical base backup as a data directory set up for point-in-time recovery.

use super::mib;
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::lock::Lock;
use crate::repo::restore::{self, RestoreOptions, RestoreReport};
use crate::repo::snapshot::Kind;
use crate::repo::snapshot::Snapshot;
use crate::repo::Repository;
use crate::sources::postgres::basebackup::RECOVERY_CONFIG;
use crate::sources::postgres::pitr::{restore_pitr, PitrOptions, PitrReport, Target};
use crate::sources::postgres::restore::{restore_postgres, PgRestoreOptions, PgRestoreReport};
use crate::sources::postgres::wal::archive::parse_lsn;
use crate::sources::redis::restore::{restore_redis, RedisRestoreOptions, RedisRestoreReport};
use anyhow::Result;
use serde::Serialize;
use std::fmt::{self, Display, Formatter};
use std::path::PathBuf;
use std::sync::Arc;

/// A snapshot restored into a directory (`restore --target --json`).
#[derive(Serialize)]
pub struct FilesRestored {
    pub snapshot: String,
    pub target: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub unchanged_files: u64,
    pub unchanged_bytes: u64,
    pub removed: u64,
}

/// Restore snapshot `spec` as `opts` say.
pub fn files(
    repo: &Arc<Repository>,
    spec: &str,
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<FilesRestored> {
    repo.require_full("restore")?;
    let _lock = Lock::shared(repo, "restore")?;
    let snap = repo.find_snapshot(spec)?;
    progress.set_total(snap.size);
    let index = repo.load_index()?;
    let r = restore::restore(repo, &index, &snap, opts, progress)?;
    Ok(FilesRestored {
        snapshot: snap.id.to_hex(),
        target: opts.target.clone(),
        files: r.files,
        dirs: r.dirs,
        symlinks: r.symlinks,
        bytes: r.bytes,
        unchanged_files: r.unchanged,
        unchanged_bytes: r.unchanged_bytes,
        removed: r.removed,
    })
}

impl Display for FilesRestored {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "restored snapshot {} to {}: {} files, {} directories, {} symlinks, {} (every chunk verified)",
            &self.snapshot[..8],
            self.target.display(),
            self.files,
            self.dirs,
            self.symlinks,
            mib(self.bytes)
        )?;
        delta(f, self.unchanged_files, self.unchanged_bytes, self.removed)
    }
}

/// With --delta: what was already in place and what was removed.
fn delta(f: &mut Formatter<'_>, unchanged: u64, unchanged_bytes: u64, removed: u64) -> fmt::Result {
    if unchanged > 0 || removed > 0 {
        write!(
            f,
            "\n  {unchanged} files ({}) were already in place and kept; {removed} entries not in \
             the snapshot were removed",
            mib(unchanged_bytes),
        )?;
    }
    Ok(())
}

/// A dump restored into a database (`restore --to-postgres --json`: the report itself).
#[derive(Serialize)]
#[serde(transparent)]
pub struct DatabaseRestored {
    pub report: PgRestoreReport,
    /// The snapshot's short id.
    #[serde(skip)]
    pub snapshot: String,
}

/// Restore the dump in snapshot `spec` into a database. `latest` is the newest snapshot
/// holding a dump (of the database asked for) that is no safety backup. `confirm` is asked
/// before a non-empty database is replaced: `(question, database name)`.
pub fn database(
    repo: &Arc<Repository>,
    spec: &str,
    opts: &PgRestoreOptions,
    progress: &Progress,
    confirm: &mut dyn FnMut(&str, &str) -> Result<bool>,
) -> Result<DatabaseRestored> {
    repo.require_full("restore")?;
    let _lock = Lock::shared(repo, "restore")?;
    let snap = if spec == "latest" {
        latest_dump(repo, opts.database.as_deref())?
    } else {
        repo.find_snapshot(spec)?
    };
    let index = repo.load_index()?;
    let report = restore_postgres(repo, &index, &snap, opts, progress, confirm)?;
    Ok(DatabaseRestored {
        report,
        snapshot: snap.id.short(),
    })
}

/// `latest` for a database restore: the newest snapshot holding a dump (of `database`,
/// when given) that is not a safety backup taken by an earlier restore.
pub fn latest_dump(repo: &Repository, database: Option<&str>) -> Result<Snapshot> {
    newest_restorable(repo, "a PostgreSQL dump", |s| {
        s.sources
            .iter()
            .any(|src| src.kind == Kind::Postgres && database.is_none_or(|d| src.name == d))
    })
}

/// The newest snapshot for which `holds` is true and that is not a safety backup taken by
/// an earlier restore, with its features checked; `what` names what it must hold.
fn newest_restorable(
    repo: &Repository,
    what: &str,
    holds: impl Fn(&Snapshot) -> bool,
) -> Result<Snapshot> {
    repo.load_snapshots()?
        .into_iter()
        .filter(|s| !s.has_tag("safety-backup") && holds(s))
        .max_by_key(|s| s.time)
        .ok_or_else(|| {
            anyhow::Error::from(Error::new(
                ErrorKind::NotFound,
                format!("no snapshot holds {what} (safety backups aside); name one by id"),
            ))
        })
        .and_then(|s| s.check_features().map(|()| s))
}

impl DatabaseRestored {
    /// What was done (or would be), before the warnings.
    pub fn plan(&self) -> String {
        let r = &self.report;
        let mut s = format!(
            "{} snapshot {} into database {:?} on {}{}",
            if r.dry_run {
                "dry run, nothing changed: restoring"
            } else {
                "restored"
            },
            self.snapshot,
            r.target_database,
            r.server,
            if r.dry_run { " would:" } else { ":" }
        );
        for line in &r.plan {
            s += &format!("\n  - {line}");
        }
        s
    }

    /// Errors when a table's row count differs from the one at backup time.
    pub fn verdict(&self) -> Result<()> {
        let bad = self.report.mismatches();
        if bad > 0 {
            return Err(Error::integrity(format!(
                "{bad} of {} tables have a different row count than at backup time",
                self.report.checks.len()
            ))
            .into());
        }
        Ok(())
    }
}

/// The safety backup and the row counts, after the warnings.
impl Display for DatabaseRestored {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        let mut lines = Vec::new();
        if let Some(s) = &r.safety_snapshot {
            lines.push(format!(
                "safety backup of the previous {:?}: snapshot {} (tag safety-backup)",
                r.target_database,
                &s[..8]
            ));
        }
        if !r.checks.is_empty() {
            lines.push("row counts (at backup → restored):".into());
            for c in &r.checks {
                let actual = c.actual.map(|n| n.to_string()).unwrap_or("missing".into());
                let mark = if c.ok() { "ok" } else { "MISMATCH" };
                lines.push(format!(
                    "  {:<40} {:>12} → {:>12}  {mark}",
                    c.table, c.expected, actual
                ));
            }
        }
        if !r.dry_run && r.mismatches() == 0 {
            lines.push(format!(
                "row counts match for all {} tables (every chunk verified)",
                r.checks.len()
            ));
        }
        f.write_str(&lines.join("\n"))
    }
}

/// Restore the RDB in snapshot `spec` into a running Redis server. `latest` is the newest
/// `redis` snapshot that is not a safety backup. `confirm` is asked before databases that
/// hold keys are flushed: `(question, word to type)`.
pub fn redis(
    repo: &Arc<Repository>,
    spec: &str,
    opts: &RedisRestoreOptions,
    progress: &Progress,
    confirm: &mut dyn FnMut(&str, &str) -> Result<bool>,
) -> Result<RedisRestoreReport> {
    repo.require_full("restore")?;
    let _lock = Lock::shared(repo, "restore")?;
    let snap = if spec == "latest" {
        latest_redis(repo)?
    } else {
        repo.find_snapshot(spec)?
    };
    let index = Arc::new(repo.load_index()?);
    restore_redis(repo, &index, &snap, opts, progress, confirm)
}

/// `latest` for a Redis restore: the newest snapshot of kind `redis` that is not a safety
/// backup taken by an earlier restore.
pub fn latest_redis(repo: &Repository) -> Result<Snapshot> {
    newest_restorable(repo, "a Redis RDB", |s| s.kind == Kind::Redis)
}

/// The recovery target from the `--target-*` options (at most one given; none: the end
/// of the archive). A time is RFC 3339 or PostgreSQL's `YYYY-MM-DD HH:MM:SS[.f][+TZ]`
/// (local time when no zone is given).
pub fn recovery_target(
    time: Option<&str>,
    lsn: Option<&str>,
    xid: Option<&str>,
    name: Option<&str>,
    immediate: bool,
) -> Result<Target> {
    Ok(if let Some(t) = time {
        Target::Time(parse_target_time(t)?)
    } else if let Some(l) = lsn {
        Target::Lsn(parse_lsn(l).ok_or_else(|| {
            Error::usage(format!("--target-lsn {l:?} is not an LSN (e.g. 0/3000060)"))
        })?)
    } else if let Some(x) = xid {
        if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::usage(format!("--target-xid {x:?} is not a transaction id")).into());
        }
        Target::Xid(x.to_string())
    } else if let Some(n) = name {
        Target::Name(n.to_string())
    } else if immediate {
        Target::Immediate
    } else {
        Target::End
    })
}

fn parse_target_time(s: &str) -> Result<chrono::DateTime<chrono::FixedOffset>> {
    parse_time(s).ok_or_else(|| {
        Error::usage(format!(
            "--target-time {s:?} is not a time (e.g. 2024-05-01T14:03:00+02:00 or \"2024-05-01 14:03:00\")"
        ))
        .into()
    })
}

/// A time as `--target-time` and `restore --stack --time` take it: RFC 3339 or
/// PostgreSQL's `YYYY-MM-DD HH:MM:SS[.f][+TZ]` (local time when no zone is given).
pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    use chrono::TimeZone;
    let t = s.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Some(d);
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(d) = chrono::DateTime::parse_from_str(t, f) {
            return Some(d);
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(n) = chrono::NaiveDateTime::parse_from_str(t, f) {
            if let Some(d) = chrono::Local.from_local_datetime(&n).earliest() {
                return Some(d.fixed_offset());
            }
        }
    }
    None
}

/// A base backup laid out as a data directory (`restore --pgdata --json`).
#[derive(Serialize)]
pub struct PgdataRestored {
    pub snapshot: String,
    pub pgdata: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub unchanged_files: u64,
    pub unchanged_bytes: u64,
    pub removed: u64,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub newest_wal: Option<String>,
    pub settings: Vec<String>,
    pub wal_hold: WalHold,
    #[serde(skip)]
    pub server_version: String,
    #[serde(skip)]
    pub started_at: chrono::DateTime<chrono::FixedOffset>,
}

/// The hold that keeps the WAL the recovery needs.
#[derive(Serialize)]
pub struct WalHold {
    pub id: String,
    pub start_wal: String,
    pub expires_after_hours: u64,
}

/// Lay out a base backup as `opts.pgdata`, set up to recover from the WAL archive.
pub fn pgdata(
    repo: &Arc<Repository>,
    opts: &PitrOptions,
    progress: &Progress,
) -> Result<PgdataRestored> {
    repo.require_full("restore")?;
    let _lock = Lock::shared(repo, "restore")?;
    let index = repo.load_index()?;
    let PitrReport {
        snapshot,
        info,
        restored:
            RestoreReport {
                files,
                bytes,
                unchanged,
                unchanged_bytes,
                removed,
                ..
            },
        settings,
        newest_wal,
        wal_hold,
    } = restore_pitr(repo, &index, opts, progress)?;
    Ok(PgdataRestored {
        snapshot: snapshot.id.to_hex(),
        pgdata: opts.pgdata.clone(),
        files,
        bytes,
        unchanged_files: unchanged,
        unchanged_bytes,
        removed,
        start_lsn: info.start_lsn,
        stop_lsn: info.stop_lsn,
        timeline: info.timeline,
        newest_wal,
        settings,
        wal_hold: WalHold {
            id: wal_hold.id,
            start_wal: wal_hold.start_wal,
            expires_after_hours: opts.wal_hold_expiry.as_secs() / 3600,
        },
        server_version: info.server_version,
        started_at: info.started_at,
    })
}

impl Display for PgdataRestored {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let dir = self.pgdata.display();
        write!(
            f,
            "restored base backup {} (PostgreSQL {}, taken {}, WAL {} to {}) to {dir}: {} files, {} (every chunk verified)",
            &self.snapshot[..8],
            self.server_version,
            self.started_at.to_rfc3339(),
            self.start_lsn,
            self.stop_lsn,
            self.files,
            mib(self.bytes)
        )?;
        delta(f, self.unchanged_files, self.unchanged_bytes, self.removed)?;
        writeln!(f)?;
        writeln!(f, "recovery settings in {dir}/postgresql.auto.conf:")?;
        for s in &self.settings {
            writeln!(f, "  {s}")?;
        }
        if let Some(n) = &self.newest_wal {
            writeln!(f, "newest archived WAL segment: {n}")?;
        }
        let h = &self.wal_hold;
        writeln!(
            f,
            "WAL hold {}: forget keeps the archived WAL from {} on while this recovery runs \
             (released when recovery ends; expires {} h after its last wal-fetch)",
            h.id, h.start_wal, h.expires_after_hours
        )?;
        write!(
            f,
            "start PostgreSQL on {dir} to recover; then delete {dir}/{RECOVERY_CONFIG} (it can \
             read the repository)"
        )
    }
}
