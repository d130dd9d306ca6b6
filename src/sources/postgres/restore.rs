//! Restoring a logical dump into a live server with `pg_restore`.
//!
//! The dump is first read out of the repository into a private spool file, verifying
//! every chunk, and `pg_restore --list` must accept it; only then is the server touched.
//! The spool file is seekable, which parallel restore (`--jobs`) needs for archives that
//! pg_dump wrote to a pipe.
//!
//! * Whole database: a missing target is created; an existing one is dropped and created
//!   again (same owner, encoding and locale) so that it ends up exactly as the dump —
//!   after a confirmation, and after a safety backup of it into the same repository when
//!   it is not empty.
//! * `--table`: each table's definition and data are restored beside the live table as
//!   `NAME_restore` (or `--as`), in one transaction, through psql; indexes, constraints
//!   and triggers that reach into live tables are not part of it.
//!
//! Afterwards the row counts recorded at backup time are compared with the restored
//! tables ([`PgRestoreReport::checks`]).

use super::conn::{describe, qualified, quote_ident, PgTarget};
use super::tools::{self, status_text, Stderr, Tool};
use super::{pg_err, DataStream, DumpInfo, ServerInfo, TableRows};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::index::MasterIndex;
use crate::repo::snapshot::{Snapshot, SourceInfo};
use crate::repo::Repository;
use crate::sources::{CommonOptions, Metadata};
use anyhow::{Context as _, Result};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct PgRestoreOptions {
    /// Target connection (URL or string); its database is the one restored into.
    pub conn: Option<String>,
    /// A target already resolved, instead of `conn` (a drill's scratch database).
    pub target: Option<PgTarget>,
    /// Which database of a multi-database snapshot to restore.
    pub database: Option<String>,
    /// pg_restore --jobs.
    pub jobs: u32,
    /// Overwrite a non-empty database without asking.
    pub yes: bool,
    /// Back up a non-empty target before replacing it.
    pub safety_backup: bool,
    /// Restore only these tables, beside the live ones.
    pub tables: Vec<String>,
    /// New name for the single restored table (default NAME_restore).
    pub rename: Option<String>,
    pub dry_run: bool,
    pub no_owner: bool,
    pub no_privileges: bool,
    /// Where the verified dump is spooled (default: the system temp directory).
    pub spool_dir: Option<PathBuf>,
}

impl PgRestoreOptions {
    /// The ownership and privilege flags every pg_restore run of this restore gets.
    fn ownership_args(&self) -> impl Iterator<Item = &'static str> {
        [
            self.no_owner.then_some("--no-owner"),
            self.no_privileges.then_some("--no-privileges"),
        ]
        .into_iter()
        .flatten()
    }
}

/// One table's row count at backup time and after the restore (`None`: table missing).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RowCheck {
    pub table: String,
    pub expected: i64,
    pub actual: Option<i64>,
}

impl RowCheck {
    pub fn ok(&self) -> bool {
        self.actual == Some(self.expected)
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PgRestoreReport {
    pub source_database: String,
    pub target_database: String,
    pub server: String,
    pub dry_run: bool,
    /// The target database did not exist and was created.
    pub created: bool,
    /// An existing database was dropped and created again.
    pub replaced: bool,
    /// The safety backup of the target taken before it was replaced.
    pub safety_snapshot: Option<String>,
    /// `--table` restores: (original, restored as).
    pub tables_restored: Vec<(String, String)>,
    pub checks: Vec<RowCheck>,
    /// Entries in the archive's table of contents.
    pub toc_entries: usize,
    /// What was (or, with --dry-run, would be) done, one line each.
    pub plan: Vec<String>,
    /// What the user should know about a restore that went through (printed, and in JSON).
    pub warnings: Vec<String>,
}

impl PgRestoreReport {
    pub fn mismatches(&self) -> usize {
        self.checks.iter().filter(|c| !c.ok()).count()
    }
}

/// The database dump to restore from a snapshot.
pub fn pick_source(snap: &Snapshot, database: Option<&str>) -> Result<(SourceInfo, DumpInfo)> {
    let dumps: Vec<&SourceInfo> = snap
        .sources
        .iter()
        .filter(|s| s.kind == DumpInfo::KIND)
        .collect();
    let chosen = match (database, dumps.as_slice()) {
        (_, []) => {
            snap.known_kind()?;
            return Err(Error::usage(format!(
                "snapshot {} holds no PostgreSQL dump (it is a {:?} snapshot)",
                snap.id.short(),
                snap.kind
            ))
            .into());
        }
        (None, [one]) => *one,
        (None, many) => {
            let names: Vec<&str> = many.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::usage(format!(
                "snapshot {} holds several databases ({}); choose one with --database",
                snap.id.short(),
                names.join(", ")
            ))
            .into());
        }
        (Some(d), many) => *many.iter().find(|s| s.name == d).ok_or_else(|| {
            let names: Vec<&str> = many.iter().map(|s| s.name.as_str()).collect();
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "snapshot {} has no dump of database {d:?} (it has: {})",
                    snap.id.short(),
                    names.join(", ")
                ),
            )
        })?,
    };
    Ok((chosen.clone(), DumpInfo::of(snap, chosen)?))
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Connect to a maintenance database of the target server.
pub(crate) fn connect_maintenance(target: &PgTarget) -> Result<(postgres::Client, PgTarget)> {
    let mut first = None;
    for db in ["postgres", "template1"] {
        let t = target.with_db(db);
        match t.connect() {
            Ok(c) => return Ok((c, t)),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(first.unwrap())
}

/// Read the dump out of the repository into a private file, verifying every chunk.
fn spool(
    repo: &Repository,
    index: &MasterIndex,
    snap: &Snapshot,
    path: &str,
    dir: Option<&Path>,
    progress: &Progress,
) -> Result<tempfile::NamedTempFile> {
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let file = tempfile::Builder::new()
        .prefix("coffer-restore-")
        .suffix(".dump")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a spool file in {}", dir.display()))?;
    progress.set_message("reading and verifying the dump");
    let mut out = BufWriter::with_capacity(1 << 20, file.as_file());
    crate::repo::restore::dump(repo, index, snap, path, &mut out).map_err(|e| {
        if crate::error::kind_of(&e) == ErrorKind::Other {
            e.context(format!(
                "writing the dump to the spool file in {} failed (use --spool-dir for a \
                 directory with more room)",
                dir.display()
            ))
        } else {
            e
        }
    })?;
    drop(out);
    Ok(file)
}

/// One stream of a dump, read out of the repository and verified into a spool file, with
/// its table of contents (checked by pg_restore itself).
struct Spooled {
    /// Its path in the snapshot.
    path: String,
    file: tempfile::NamedTempFile,
    list: String,
}

/// The pg_restore for this server and dump, and the verified streams: the main one first,
/// then the data streams asked for (by path), all spooled at once.
#[allow(clippy::too_many_arguments)]
fn fetch_dump(
    repo: &Repository,
    index: &MasterIndex,
    snap: &Snapshot,
    source: &SourceInfo,
    info: &DumpInfo,
    server: &ServerInfo,
    opts: &PgRestoreOptions,
    data: &[&DataStream],
    progress: &Progress,
) -> Result<(Tool, Vec<Spooled>)> {
    let pg_restore = tools::find("pg_restore", server.major().max(info.pg_dump_major))?;
    let paths: Vec<&str> = std::iter::once(source.path.as_str())
        .chain(data.iter().map(|d| d.path.as_str()))
        .collect();
    let dir = opts.spool_dir.as_deref();
    let spooled: Vec<Result<Spooled>> = std::thread::scope(|sc| {
        let handles: Vec<_> = paths
            .iter()
            .map(|path| {
                let pg_restore = &pg_restore;
                sc.spawn(move || {
                    let file = spool(repo, index, snap, path, dir, progress)?;
                    let list = toc(pg_restore, file.path())
                        .with_context(|| format!("{path} in snapshot {}", snap.id.short()))?;
                    Ok(Spooled {
                        path: path.to_string(),
                        file,
                        list,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a spooling thread panicked")))
            })
            .collect()
    });
    let spooled = spooled.into_iter().collect::<Result<Vec<_>>>()?;
    Ok((pg_restore, spooled))
}

/// `pg_restore --list`: the archive's table of contents, or an error if it is not a
/// valid archive.
fn toc(pg_restore: &Tool, file: &Path) -> Result<String> {
    let out = pg_restore
        .command()
        .arg("--list")
        .arg(file)
        .output()
        .with_context(|| format!("cannot run {}", pg_restore.path.display()))?;
    if !out.status.success() {
        return Err(Error::integrity(format!(
            "pg_restore does not accept the dump ({}): {}",
            status_text(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn toc_entries(list: &str) -> usize {
    list.lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .count()
}

/// Objects a user created in the connected database (relations, schemas besides public,
/// functions, large objects).
pub(crate) fn user_objects(c: &mut postgres::Client, t: &PgTarget) -> Result<i64> {
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                       AND n.nspname !~ '^pg_(toast|temp_)')
                  + (SELECT count(*) FROM pg_namespace
                     WHERE nspname NOT IN ('public', 'pg_catalog', 'information_schema')
                       AND nspname !~ '^pg_')
                  + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
                  + (SELECT count(*) FROM pg_largeobject_metadata)",
            &[],
        )
        .map_err(|e| pg_err(t, "looking at the target database", &e))?;
    Ok(row.get(0))
}

/// Compare recorded row counts with the connected database.
fn check_rows(
    c: &mut postgres::Client,
    t: &PgTarget,
    tables: &[(TableRows, String)],
) -> Result<Vec<RowCheck>> {
    let mut out = Vec::new();
    for (tr, restored_name) in tables {
        let Some(expected) = tr.rows else { continue };
        let q = qualified(&tr.schema, restored_name);
        let exists: Option<String> = c
            .query_one("SELECT to_regclass($1)::text", &[&q])
            .map_err(|e| pg_err(t, "checking the restored tables", &e))?
            .get(0);
        let actual = match exists {
            None => None,
            Some(_) => Some(
                c.query_one(&format!("SELECT count(*) FROM {q}"), &[])
                    .map_err(|e| pg_err(t, &format!("counting the rows of {q}"), &e))?
                    .get::<_, i64>(0),
            ),
        };
        out.push(RowCheck {
            table: q,
            expected,
            actual,
        });
    }
    Ok(out)
}

/// Restore a snapshot's dump into a server. `confirm(question, database)` is asked
/// before a non-empty database is replaced (unless `yes`); returning false refuses.
pub fn restore_postgres(
    repo: &Arc<Repository>,
    index: &MasterIndex,
    snap: &Snapshot,
    opts: &PgRestoreOptions,
    progress: &Progress,
    confirm: &mut dyn FnMut(&str, &str) -> Result<bool>,
) -> Result<PgRestoreReport> {
    let (source, info) = pick_source(snap, opts.database.as_deref())?;
    let mut target = match &opts.target {
        Some(t) => t.clone(),
        None => PgTarget::resolve(opts.conn.as_deref(), false, progress)?,
    };
    if target.dbname.is_none() {
        target.dbname = Some(info.database.clone());
    }
    if !opts.tables.is_empty() {
        return restore_tables(repo, index, snap, &source, &info, &target, opts, progress);
    }
    if opts.rename.is_some() {
        return Err(Error::usage("--as renames a table restored with --table").into());
    }
    let (mut maint, maint_target) = connect_maintenance(&target)?;
    let server = ServerInfo::query(&mut maint, &maint_target)?;
    let all: Vec<&DataStream> = info.data_streams.iter().collect();
    let (pg_restore, spooled) = fetch_dump(
        repo, index, snap, &source, &info, &server, opts, &all, progress,
    )?;
    let db = target.db().to_string();
    let mut report = PgRestoreReport {
        source_database: info.database.clone(),
        target_database: db.clone(),
        server: target.server(),
        dry_run: opts.dry_run,
        toc_entries: spooled.iter().map(|s| toc_entries(&s.list)).sum(),
        ..Default::default()
    };
    report.plan.push(format!(
        "check the dump of {:?} from snapshot {}: {} bytes read and verified, {} archive entries accepted by pg_restore{}",
        info.database,
        snap.id.short(),
        info.dump_size,
        report.toc_entries,
        if spooled.len() > 1 {
            format!(" (in {} streams)", spooled.len())
        } else {
            String::new()
        }
    ));

    let existing = maint
        .query_opt(
            "SELECT pg_get_userbyid(datdba)::text, pg_encoding_to_char(encoding)::text,
                    datcollate::text, datctype::text
             FROM pg_database WHERE datname = $1",
            &[&db],
        )
        .map_err(|e| pg_err(&maint_target, "looking up the target database", &e))?;
    let objects = match &existing {
        Some(_) => {
            let mut c = target.connect()?;
            user_objects(&mut c, &target)?
        }
        None => 0,
    };
    let safety = existing.is_some() && objects > 0 && opts.safety_backup;
    match (&existing, objects) {
        (None, _) => report
            .plan
            .push(format!("create database {db:?} on {}", report.server)),
        (Some(_), 0) => report.plan.push(format!(
            "replace the empty database {db:?} on {}",
            report.server
        )),
        (Some(_), n) => {
            if safety {
                report.plan.push(format!(
                    "back up the current {db:?} ({n} objects) into the repository (tag safety-backup)"
                ));
            }
            report.plan.push(format!(
                "drop and recreate database {db:?} on {} ({n} objects in it now)",
                report.server
            ));
        }
    }
    if spooled.len() > 1 {
        report.plan.push(format!(
            "run pg_restore {}: the schema, then the data of {} streams ({} at a time), then indexes and constraints",
            pg_restore.version,
            spooled.len(),
            opts.jobs.max(1)
        ));
    } else {
        report.plan.push(format!(
            "run pg_restore {} with {} job(s)",
            pg_restore.version,
            opts.jobs.max(1)
        ));
    }
    let counted = info.tables.iter().filter(|t| t.rows.is_some()).count();
    report
        .plan
        .push(format!("compare the row counts of {counted} tables"));
    if opts.dry_run {
        return Ok(report);
    }

    if objects > 0 && !opts.yes {
        let question = format!(
            "Database {db:?} on {} is not empty ({objects} objects). Restoring replaces it{}.",
            report.server,
            if safety {
                " (a safety backup is taken first)"
            } else {
                ""
            }
        );
        if !confirm(&question, &db)? {
            return Err(Error::usage(format!(
                "database {db:?} on {} is not empty ({objects} objects); refusing to replace it \
                 without confirmation. Pass --yes to replace it{}",
                report.server,
                if opts.safety_backup {
                    " (a safety backup is taken first)"
                } else {
                    ""
                }
            ))
            .into());
        }
    }
    if safety {
        progress.set_message(format!("safety backup of {db}"));
        let snap = super::backup_target(
            repo.clone(),
            &target,
            false,
            super::DumpSplit::default(),
            &CommonOptions {
                tags: vec![
                    "safety-backup".into(),
                    format!("before-restore-{}", snap.id.short()),
                ],
                ..Default::default()
            },
            progress,
        )
        .context("the safety backup of the target database failed; nothing was changed")?;
        report.safety_snapshot = Some(snap.id.to_hex());
    }

    let (owner, encoding, collate, ctype) = match &existing {
        Some(r) => (Some(r.get::<_, String>(0)), r.get(1), r.get(2), r.get(3)),
        None => (
            None,
            info.encoding.clone(),
            info.lc_collate.clone(),
            info.lc_ctype.clone(),
        ),
    };
    if existing.is_some() {
        let force = if server.major() >= 13 {
            " WITH (FORCE)"
        } else {
            ""
        };
        maint
            .batch_execute(&format!("DROP DATABASE {}{force}", quote_ident(&db)))
            .map_err(|e| pg_err(&maint_target, &format!("dropping database {db:?}"), &e))?;
        report.replaced = true;
    } else {
        report.created = true;
    }
    let mut create = format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING {}",
        quote_ident(&db),
        sql_literal(&encoding)
    );
    if let Some(o) = &owner {
        create.push_str(&format!(" OWNER {}", quote_ident(o)));
    }
    let with_locale = format!(
        "{create} LC_COLLATE {} LC_CTYPE {}",
        sql_literal(&collate),
        sql_literal(&ctype)
    );
    if let Err(e) = maint.batch_execute(&with_locale) {
        // The source's locale may not exist on this server. The restore goes on with the
        // server's default (the data is intact; sorting and case rules may differ), so this
        // is a warning in the report, not an error -- but never silent.
        let w = format!(
            "database {db:?} was created with the server's default locale: LC_COLLATE {collate:?} / LC_CTYPE {ctype:?} of the backup are not available here ({}); text ordering and indexes on text may differ from the original",
            describe(&e)
        );
        progress.warn(&w);
        report.warnings.push(w);
        maint.batch_execute(&create).map_err(|e2| {
            pg_err(
                &maint_target,
                &format!("creating database {db:?} ({})", describe(&e)),
                &e2,
            )
        })?;
    }
    drop(maint);

    progress.set_message(format!("pg_restore into {db}"));
    let restore = PgRestoreRun {
        tool: &pg_restore,
        target: &target,
        opts,
        safety: report.safety_snapshot.as_deref(),
    };
    if let [main] = spooled.as_slice() {
        restore.run(&[], opts.jobs, main.file.path(), "")?;
    } else {
        restore_split(&restore, &spooled, opts.jobs)?;
    }
    progress.set_message("comparing row counts");
    let mut c = target.connect()?;
    let tables: Vec<(TableRows, String)> = info
        .tables
        .iter()
        .map(|t| (t.clone(), t.name.clone()))
        .collect();
    report.checks = check_rows(&mut c, &target, &tables)?;
    Ok(report)
}

/// pg_restore runs into one database, with the options every run shares.
struct PgRestoreRun<'a> {
    tool: &'a Tool,
    target: &'a PgTarget,
    opts: &'a PgRestoreOptions,
    /// The safety backup's snapshot id, for the failure message.
    safety: Option<&'a str>,
}

impl PgRestoreRun<'_> {
    /// Run pg_restore with `args` on `file`; `what` names the step in a failure.
    fn run(&self, args: &[&str], jobs: u32, file: &Path, what: &str) -> Result<()> {
        let mut cmd = self.tool.command();
        cmd.args(["--no-password", "--exit-on-error"]).args(args);
        if jobs > 1 {
            cmd.arg(format!("--jobs={jobs}"));
        }
        cmd.args(self.opts.ownership_args());
        self.target.configure(&mut cmd);
        cmd.arg(file);
        let out = cmd
            .stdout(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", self.tool.path.display()))?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "pg_restore {what}into {:?} failed ({}); the database is only partly restored{}. \
                     pg_restore said:\n{}",
                    self.target.db(),
                    status_text(out.status),
                    match self.safety {
                        Some(s) => format!("; its previous content is in snapshot {}", &s[..8]),
                        None => String::new(),
                    },
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )
            .into());
        }
        Ok(())
    }
}

/// Restore a split dump: the main stream's schema (pre-data); then the data of the main
/// stream and of every data stream, up to `jobs` pg_restores at a time; then the main
/// stream's indexes, constraints, triggers and materialized views (post-data). Loading
/// data before post-data is what pg_restore itself does, so no table's data meets a
/// constraint or trigger half-way.
fn restore_split(run: &PgRestoreRun, spooled: &[Spooled], jobs: u32) -> Result<()> {
    let (main, data) = spooled.split_first().expect("the main stream");
    run.run(&["--section=pre-data"], 1, main.file.path(), "(schema) ")?;
    let jobs = jobs.max(1);
    // The main stream's data gets the jobs the data streams leave over.
    let main_jobs = jobs.saturating_sub(data.len() as u32).max(1);
    let queue: std::sync::Mutex<std::collections::VecDeque<(&Spooled, bool)>> =
        std::sync::Mutex::new(
            std::iter::once((main, true))
                .chain(data.iter().map(|d| (d, false)))
                .collect(),
        );
    let workers = (jobs as usize).min(spooled.len());
    let failures: Vec<anyhow::Error> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let queue = &queue;
                sc.spawn(move || -> Result<()> {
                    loop {
                        let Some((s, is_main)) = queue.lock().unwrap().pop_front() else {
                            return Ok(());
                        };
                        let done = if is_main {
                            run.run(&["--section=data"], main_jobs, s.file.path(), "(data) ")
                        } else {
                            let name = s.path.rsplit('/').next().unwrap_or(&s.path);
                            run.run(
                                &["--data-only"],
                                1,
                                s.file.path(),
                                &format!("(data stream {name}) "),
                            )
                        };
                        if done.is_err() {
                            // Start nothing more; what runs already finishes.
                            queue.lock().unwrap().clear();
                        }
                        done?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(anyhow::anyhow!("a pg_restore thread panicked")),
            })
            .collect()
    });
    if let Some(e) = failures.into_iter().next() {
        return Err(e);
    }
    run.run(
        &["--section=post-data"],
        jobs,
        main.file.path(),
        "(indexes and constraints) ",
    )
}

/// Find `spec` (`NAME` in any schema, or `SCHEMA.NAME`) among the dumped tables.
fn find_table<'a>(info: &'a DumpInfo, spec: &str) -> Result<&'a TableRows> {
    let matches: Vec<&TableRows> = info
        .tables
        .iter()
        .filter(|t| {
            t.name == spec || format!("{}.{}", t.schema, t.name) == spec || t.qualified() == spec
        })
        .collect();
    match matches.as_slice() {
        [] => Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "the dump of {:?} has no table {spec:?} (it has {} tables; `coffer snapshots --json` lists them)",
                info.database,
                info.tables.len()
            ),
        )
        .into()),
        [one] => {
            if one.kind != "table" {
                return Err(Error::usage(format!(
                    "{} is a {}; --table restores ordinary tables (for a partitioned table, name its partitions)",
                    one.qualified(),
                    one.kind
                ))
                .into());
            }
            Ok(one)
        }
        many => {
            let names: Vec<String> = many.iter().map(|t| t.qualified()).collect();
            Err(Error::usage(format!(
                "{spec:?} matches several tables ({}); write SCHEMA.NAME",
                names.join(", ")
            ))
            .into())
        }
    }
}

/// The TOC lines that create a table (`definition`) or load its data.
fn table_entries(list: &str, t: &TableRows, definition: bool) -> Vec<String> {
    let want = [if definition {
        format!("TABLE {} {} ", t.schema, t.name)
    } else {
        format!("TABLE DATA {} {} ", t.schema, t.name)
    }];
    list.lines()
        .filter(|l| !l.starts_with(';'))
        .filter(|l| {
            // "ID; CATALOG OID TYPE SCHEMA NAME OWNER"
            let rest = l.splitn(4, ' ').nth(3).unwrap_or("");
            want.iter().any(|w| rest.starts_with(w.as_str()))
        })
        .map(str::to_string)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn restore_tables(
    repo: &Arc<Repository>,
    index: &MasterIndex,
    snap: &Snapshot,
    source: &SourceInfo,
    info: &DumpInfo,
    target: &PgTarget,
    opts: &PgRestoreOptions,
    progress: &Progress,
) -> Result<PgRestoreReport> {
    if opts.rename.is_some() && opts.tables.len() != 1 {
        return Err(Error::usage("--as names one table: give exactly one --table with it").into());
    }
    let chosen: Vec<&TableRows> = opts
        .tables
        .iter()
        .map(|s| find_table(info, s))
        .collect::<Result<_>>()?;
    let mut c = target.connect()?;
    let server = ServerInfo::query(&mut c, target)?;
    let psql = tools::find("psql", server.major()).or_else(|_| tools::find("psql", 0))?;
    // The main stream has every table's definition; a table's data may be in a data stream.
    let mut needed: Vec<&DataStream> = Vec::new();
    for t in &chosen {
        if let Some(d) = info.stream_of(&t.schema, &t.name) {
            if !needed.iter().any(|n| n.path == d.path) {
                needed.push(d);
            }
        }
    }
    let (pg_restore, spooled) = fetch_dump(
        repo, index, snap, source, info, &server, opts, &needed, progress,
    )?;
    let main = &spooled[0];
    let mut report = PgRestoreReport {
        source_database: info.database.clone(),
        target_database: target.db().to_string(),
        server: target.server(),
        dry_run: opts.dry_run,
        toc_entries: spooled.iter().map(|s| toc_entries(&s.list)).sum(),
        ..Default::default()
    };
    let mut restored = Vec::new();
    for t in &chosen {
        let new_name = opts
            .rename
            .clone()
            .unwrap_or_else(|| format!("{}_restore", t.name));
        let new_q = qualified(&t.schema, &new_name);
        let exists: Option<String> = c
            .query_one("SELECT to_regclass($1)::text", &[&new_q])
            .map_err(|e| pg_err(target, "checking the target table", &e))?
            .get(0);
        if exists.is_some() {
            return Err(Error::usage(format!(
                "{new_q} already exists in database {:?}; drop it or choose another name with --as",
                target.db()
            ))
            .into());
        }
        // (archive, its TOC lines to restore): the definition from the main stream, the
        // data from wherever it is.
        let mut entries: Vec<(&Spooled, Vec<String>)> =
            vec![(main, table_entries(&main.list, t, true))];
        match info.stream_of(&t.schema, &t.name) {
            Some(d) => {
                let s = spooled
                    .iter()
                    .find(|s| s.path == d.path)
                    .expect("spooled above");
                entries.push((s, table_entries(&s.list, t, false)));
            }
            None => entries[0].1.extend(table_entries(&main.list, t, false)),
        }
        if entries.iter().any(|(_, lines)| lines.is_empty()) {
            return Err(Error::integrity(format!(
                "the dump's table of contents has no entry for {}",
                t.qualified()
            ))
            .into());
        }
        report.plan.push(format!(
            "restore {} (definition and {} rows) as {new_q} in database {:?}",
            t.qualified(),
            t.rows.unwrap_or(0),
            target.db()
        ));
        report.tables_restored.push((t.qualified(), new_q.clone()));
        restored.push(((*t).clone(), new_name, entries));
    }
    if opts.dry_run {
        return Ok(report);
    }
    for (t, new_name, entries) in &restored {
        progress.set_message(format!("restoring {}", t.qualified()));
        let mut load = psql.command();
        load.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "--no-password",
            "--file=-",
        ]);
        target.configure(&mut load);
        load.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut load = load
            .spawn()
            .with_context(|| format!("cannot run {}", psql.path.display()))?;
        let load_err = Stderr::collect(load.stderr.take().unwrap());
        let from = t.qualified();
        let to = qualified(&t.schema, new_name);
        let mut stdin = BufWriter::with_capacity(1 << 20, load.stdin.take().unwrap());
        // The definition, then the data (from a data stream when the dump is split), one
        // pg_restore after the other into one psql transaction.
        let mut failed = None;
        for (archive, lines) in entries {
            if let Err(e) = sql_of(
                &pg_restore,
                opts,
                archive.file.path(),
                lines,
                &mut stdin,
                from.as_bytes(),
                to.as_bytes(),
            ) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            // Never let psql reach the end of its input: it would commit half a table.
            let _ = load.kill();
            let _ = load.wait();
            return Err(e.context(format!("restoring {from}; nothing was restored")));
        }
        let pumped = stdin.flush();
        drop(stdin);
        let load_status = load.wait()?;
        if !load_status.success() {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "loading {from} as {to} failed ({}); nothing was restored. psql said:\n{}",
                    status_text(load_status),
                    load_err.text()
                ),
            )
            .into());
        }
        pumped.with_context(|| format!("passing {from} from pg_restore to psql"))?;
    }
    let tables: Vec<(TableRows, String)> = restored
        .iter()
        .map(|(t, n, _)| (t.clone(), n.clone()))
        .collect();
    report.checks = check_rows(&mut c, target, &tables)?;
    Ok(report)
}

/// Run `pg_restore --file=- --use-list` for the TOC `lines` of `archive` and copy its SQL
/// to `out`, renaming the table `from` to `to`.
fn sql_of(
    pg_restore: &Tool,
    opts: &PgRestoreOptions,
    archive: &Path,
    lines: &[String],
    out: &mut impl Write,
    from: &[u8],
    to: &[u8],
) -> Result<()> {
    let mut listfile = tempfile::Builder::new().prefix("coffer-toc-").tempfile()?;
    for e in lines {
        writeln!(listfile, "{e}")?;
    }
    listfile.flush()?;
    let mut dump = pg_restore.command();
    dump.arg("--file=-")
        .arg(format!("--use-list={}", listfile.path().display()))
        .args(opts.ownership_args());
    dump.arg(archive)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut dump = dump
        .spawn()
        .with_context(|| format!("cannot run {}", pg_restore.path.display()))?;
    let dump_err = Stderr::collect(dump.stderr.take().unwrap());
    let pumped = rewrite_sql(
        BufReader::with_capacity(1 << 20, dump.stdout.take().unwrap()),
        out,
        from,
        to,
    );
    if pumped.is_err() {
        let _ = dump.kill();
    }
    let status = dump.wait()?;
    if !status.success() {
        return Err(Error::new(
            ErrorKind::Other,
            format!(
                "pg_restore failed ({}): {}",
                status_text(status),
                dump_err.text()
            ),
        )
        .into());
    }
    pumped.context("passing the table from pg_restore to psql")
}

/// Copy pg_restore's SQL to psql, renaming the qualified table `from` to `to` in SQL
/// statements (never inside COPY data).
fn rewrite_sql(mut r: impl BufRead, mut w: impl Write, from: &[u8], to: &[u8]) -> Result<()> {
    let mut line = Vec::with_capacity(1 << 16);
    let mut in_copy = false;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if in_copy {
            if line == b"\\.\n" {
                in_copy = false;
            }
            w.write_all(&line)?;
            continue;
        }
        if line.starts_with(b"COPY ") && line.ends_with(b"FROM stdin;\n") {
            in_copy = true;
        }
        w.write_all(&rename_in(&line, from, to))?;
    }
    w.flush()?;
    Ok(())
}

fn rename_in(line: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + 16);
    let mut i = 0;
    while i < line.len() {
        let boundary_before = i == 0 || matches!(line[i - 1], b' ' | b'(' | b'\t');
        let end = i + from.len();
        if boundary_before
            && line[i..].starts_with(from)
            && (end == line.len() || matches!(line[end], b' ' | b'(' | b';' | b'\n' | b','))
        {
            out.extend_from_slice(to);
            i = end;
        } else {
            out.push(line[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_statements_not_data() {
        let sql = b"CREATE TABLE sales.orders (\n    id integer\n);\n\
ALTER TABLE sales.orders OWNER TO bob;\n\
COPY sales.orders (id, note) FROM stdin;\n1\tsales.orders \n2\tx\n\\.\n\
CREATE TABLE sales.orders_x (id int);\n";
        let mut out = Vec::new();
        rewrite_sql(&sql[..], &mut out, b"sales.orders", b"sales.orders_restore").unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("CREATE TABLE sales.orders_restore (\n"));
        assert!(out.contains("ALTER TABLE sales.orders_restore OWNER TO bob;"));
        assert!(out.contains("COPY sales.orders_restore (id, note) FROM stdin;"));
        assert!(out.contains("1\tsales.orders \n"), "data untouched");
        assert!(out.contains("CREATE TABLE sales.orders_x (id int);"));
    }

    #[test]
    fn a_missing_or_different_count_is_a_mismatch() {
        let check = |expected, actual| RowCheck {
            table: "t".into(),
            expected,
            actual,
        };
        let r = PgRestoreReport {
            checks: vec![check(5, Some(5)), check(5, Some(4)), check(0, None)],
            ..Default::default()
        };
        assert_eq!(r.mismatches(), 2);
    }

    #[test]
    fn toc_lines_for_a_table() {
        let list = ";\n; Archive created at 2024\n\
215; 1259 16390 TABLE public Mixed Case alice\n\
216; 1259 16391 TABLE public Mixed Case2 alice\n\
3345; 0 16390 TABLE DATA public Mixed Case alice\n\
3346; 2606 16400 CONSTRAINT public Mixed Case pk alice\n";
        let t = TableRows {
            schema: "public".into(),
            name: "Mixed Case".into(),
            kind: "table".into(),
            rows: Some(1),
        };
        let e = table_entries(list, &t, true);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("215;"));
        let e = table_entries(list, &t, false);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("3345;"));
    }
}
