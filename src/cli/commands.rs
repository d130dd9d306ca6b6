//! One function per command: call the library, print the result.

use super::args::*;
use super::context::{prompt, prompt_line, read_password_file, Context};
use anyhow::{Context as _, Result};
use coffer::backend::FileKind;
use coffer::error::Error;
use coffer::progress::Progress;
use coffer::repo::check::{self, ReadData};
use coffer::repo::forget::{self, Policy};
use coffer::repo::keys::KdfParams;
use coffer::repo::lock::{self, ExclusiveLock, Lock};
use coffer::repo::restore::{self, RestoreOptions};
use coffer::repo::snapshot::Kind;
use coffer::repo::tree::NodeKind;
use coffer::repo::{prune, walk_tree, Repository};
use coffer::sources::files::{backup_files, FilesOptions};
use coffer::sources::postgres::basebackup::base_backup_info;
use coffer::sources::postgres::physical::{backup_physical, PhysicalOptions};
use coffer::sources::postgres::restore::{restore_postgres, PgRestoreOptions};
use coffer::sources::postgres::wal;
use coffer::sources::postgres::{backup_postgres, DumpInfo, DumpSplit, PostgresOptions};
use coffer::sources::stream::backup_stream;
use coffer::sources::{sources_of, CommonOptions, Metadata};
use serde_json::json;
use std::io::Write;
use std::sync::Arc;

/// The first 8 characters of an object name from a listing (the whole name if shorter:
/// names in storage are not ours to trust).
fn short_name(name: &str) -> &str {
    name.get(..8).unwrap_or(name)
}

fn mib(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

pub fn init(ctx: &Context, a: &InitArgs) -> Result<()> {
    let b = ctx.backend()?;
    if b.stat(FileKind::Config, "")?.is_some() {
        return Err(
            Error::usage(format!("a repository already exists at {}", ctx.location)).into(),
        );
    }
    if ctx.default_key.is_some() {
        let _ = ctx.open_or_create_default()?;
        return Ok(());
    }
    let pw = ctx.passphrase(true)?;
    let repo = Repository::init(b, &pw, &ctx.init_options(a.compression, a.pack_size))?;
    ctx.say(&format!(
        "created repository {} at {}\nKeep the passphrase safe: without it the backups cannot be read.",
        repo.config.id.short(),
        ctx.location
    ));
    Ok(())
}

fn parse_time(s: &Option<String>) -> Result<Option<chrono::DateTime<chrono::FixedOffset>>> {
    s.as_ref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
                Error::usage(format!(
                    "--time {t:?} is not RFC 3339 (e.g. 2024-05-01T02:00:00Z): {e}"
                ))
                .into()
            })
        })
        .transpose()
}

pub fn backup(ctx: &Context, a: &BackupArgs) -> Result<()> {
    let common = CommonOptions {
        tags: a.tags.clone(),
        time: parse_time(&a.time)?,
        hostname: a.host.clone(),
    };
    if !a.stdin && a.paths.is_empty() && a.postgres.is_none() {
        return Err(Error::usage("give paths to back up, --stdin, or --postgres URL").into());
    }
    let repo = ctx.open_or_create_default()?;
    let _lock = Lock::shared(&repo, "backup")?;
    let snap = if let (Some(conn), true) = (&a.postgres, a.physical) {
        let p = Progress::bytes(ctx.mode, "base backup", None);
        let s = backup_physical(
            repo.clone(),
            &PhysicalOptions {
                conn: conn.clone(),
                pgdata: a.pgdata.clone(),
                archive_timeout: std::time::Duration::from_secs(a.archive_timeout),
                common,
            },
            &p,
        );
        p.finish();
        let s = s?;
        if !a.json {
            if let Some(info) = base_backup_info(&s)? {
                ctx.say(&format!(
                    "base backup of {} (PostgreSQL {}, cluster {}, timeline {}): WAL {} to {} ({} to {})",
                    info.data_directory,
                    info.server_version,
                    info.system_identifier,
                    info.timeline,
                    info.start_lsn,
                    info.stop_lsn,
                    info.start_wal,
                    info.stop_wal
                ));
            }
        }
        s
    } else if let Some(conn) = &a.postgres {
        let p = Progress::bytes(ctx.mode, "backup postgres", None);
        let s = backup_postgres(
            repo.clone(),
            &PostgresOptions {
                conn: conn.clone(),
                all_databases: a.all_databases,
                split: DumpSplit {
                    jobs: a.dump_jobs as usize,
                    min_table_bytes: a.dump_min_table_bytes,
                },
                common,
            },
            &p,
        );
        p.finish();
        let s = s?;
        if !a.json {
            for (_, info) in sources_of::<DumpInfo>(&s)? {
                ctx.say(&format!(
                        "dumped database {:?} from PostgreSQL {} at {} with pg_dump {}: {} in {} tables",
                        info.database,
                        info.server_version,
                        info.server,
                        info.pg_dump_version,
                        mib(info.dump_size),
                        info.tables.len()
                    ));
                if !info.data_streams.is_empty() {
                    let streams: Vec<String> = info
                        .data_streams
                        .iter()
                        .map(|d| {
                            let names: Vec<String> =
                                d.tables.iter().map(|t| t.qualified()).collect();
                            format!("{} ({})", names.join(", "), mib(d.size))
                        })
                        .collect();
                    ctx.say(&format!(
                        "  in {} streams: the main dump, and the data of {}",
                        streams.len() + 1,
                        streams.join("; ")
                    ));
                }
            }
        }
        s
    } else if a.stdin {
        let p = Progress::bytes(ctx.mode, "backup stdin", None);
        let stdin = std::io::stdin().lock();
        let s = backup_stream(repo.clone(), stdin, &a.stdin_name, &common, &p)?;
        p.finish();
        s
    } else {
        let p = Progress::bytes(ctx.mode, "backup", None);
        let s = backup_files(
            repo.clone(),
            &FilesOptions {
                paths: a.paths.clone(),
                excludes: a.excludes.clone(),
                common,
            },
            &p,
        )?;
        p.finish();
        s
    };
    let sm = &snap.summary;
    if a.json {
        println!(
            "{}",
            json!({"id": snap.id.to_hex(), "short_id": snap.id.short(), "time": snap.time.to_rfc3339(),
                   "size": snap.size, "summary": sm, "parent": snap.parent.map(|p| p.to_hex())})
        );
    } else {
        let what = if snap.kind == Kind::Postgres {
            "streams"
        } else {
            "files"
        };
        ctx.say(&format!(
            "snapshot {} saved: {} {what} ({} new, {} changed, {} unchanged), {} total; added {} ({} stored) in {:.1}s",
            snap.id.short(),
            sm.files_new + sm.files_changed + sm.files_unchanged,
            sm.files_new,
            sm.files_changed,
            sm.files_unchanged,
            mib(snap.size),
            mib(sm.bytes_added),
            mib(sm.bytes_stored),
            sm.duration_secs
        ));
    }
    Ok(())
}

pub fn snapshots(ctx: &Context, a: &SnapshotsArgs) -> Result<()> {
    let repo = ctx.open()?;
    let snaps: Vec<_> = repo
        .load_snapshots()?
        .into_iter()
        .filter(|s| a.tags.iter().all(|t| s.has_tag(t)))
        .collect();
    if a.json {
        let v: Vec<_> = snaps
            .iter()
            .map(|s| {
                json!({"id": s.id.to_hex(), "short_id": s.id.short(), "time": s.time.to_rfc3339(),
                       "hostname": s.hostname, "username": s.username, "tags": s.tags, "paths": s.paths,
                       "kind": s.kind, "size": s.size, "tree": s.tree.to_hex(),
                       "parent": s.parent.map(|p| p.to_hex()), "sources": s.sources, "summary": s.summary,
                       "requires": s.requires})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<10} {:<20} {:<16} {:<8} {:>11}  {:<16} paths",
        "id", "time", "host", "kind", "size", "tags"
    )?;
    for s in &snaps {
        writeln!(
            out,
            "{:<10} {:<20} {:<16} {:<8} {:>11}  {:<16} {}",
            s.id.short(),
            s.time.format("%Y-%m-%d %H:%M:%S"),
            s.hostname,
            s.kind,
            mib(s.size),
            s.tags.join(","),
            s.paths.join(" ")
        )?;
    }
    writeln!(out, "{} snapshot(s)", snaps.len())?;
    Ok(())
}

/// One line of `ls --json`.
#[derive(serde::Serialize)]
struct LsEntry<'a> {
    path: &'a str,
    #[serde(rename = "type")]
    kind: NodeKind,
    mode: String,
    size: u64,
    uid: u32,
    gid: u32,
    /// An integer of any size (past 2262 it does not fit in 64 bits).
    mtime_ns: i128,
    target: Option<String>,
}

pub fn ls(ctx: &Context, a: &LsArgs) -> Result<()> {
    let repo = ctx.open()?;
    let snap = repo.find_snapshot(&a.snapshot)?;
    let index = repo.load_index()?;
    let mut out = std::io::stdout().lock();
    walk_tree(&repo, &index, &snap.tree, "", &mut |path, n| {
        if a.json {
            let v = LsEntry {
                path,
                kind: n.kind,
                mode: format!("{:o}", n.mode),
                size: n.size,
                uid: n.uid,
                gid: n.gid,
                mtime_ns: n.mtime_ns,
                target: n.target.as_ref().map(|t| t.display()),
            };
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        } else {
            let t = match n.kind {
                NodeKind::Dir => 'd',
                NodeKind::File => '-',
                NodeKind::Symlink => 'l',
                NodeKind::Stream => 's',
            };
            let link = n
                .target
                .as_ref()
                .map(|t| format!(" -> {}", t.display()))
                .unwrap_or_default();
            writeln!(out, "{t}{:04o} {:>12} {path}{link}", n.mode, n.size)?;
        }
        Ok(())
    })?;
    Ok(())
}

pub fn restore(ctx: &Context, a: &RestoreArgs) -> Result<()> {
    let repo = ctx.open()?;
    let _lock = Lock::shared(&repo, "restore")?;
    if let Some(dir) = &a.pgdata {
        return restore_pgdata(ctx, a, &repo, dir);
    }
    let spec = a.snapshot.as_deref().unwrap_or("latest");
    let snap = if a.to_postgres.is_some() && spec == "latest" {
        latest_dump(&repo, a.database.as_deref())?
    } else {
        repo.find_snapshot(spec)?
    };
    let index = repo.load_index()?;
    if let Some(conn) = &a.to_postgres {
        return restore_to_postgres(ctx, a, &repo, &index, &snap, conn.clone());
    }
    let target = a.target.clone().expect("clap requires --target");
    let p = Progress::bytes(ctx.mode, "restore", Some(snap.size));
    let r = restore::restore(
        &repo,
        &index,
        &snap,
        &RestoreOptions {
            target: target.clone(),
            includes: a.includes.clone(),
            tree: None,
            delta: a.delta,
            sync: a.sync,
        },
        &p,
    );
    p.finish();
    let r = r?;
    if a.json {
        println!(
            "{}",
            json!({"snapshot": snap.id.to_hex(), "target": target, "files": r.files, "dirs": r.dirs,
                   "symlinks": r.symlinks, "bytes": r.bytes, "unchanged_files": r.unchanged,
                   "unchanged_bytes": r.unchanged_bytes, "removed": r.removed})
        );
        return Ok(());
    }
    ctx.say(&format!(
        "restored snapshot {} to {}: {} files, {} directories, {} symlinks, {} (every chunk verified)",
        snap.id.short(),
        target.display(),
        r.files,
        r.dirs,
        r.symlinks,
        mib(r.bytes)
    ));
    say_delta(ctx, &r);
    Ok(())
}

/// With --delta: what was already in place and what was removed.
fn say_delta(ctx: &Context, r: &restore::RestoreReport) {
    if r.unchanged > 0 || r.removed > 0 {
        ctx.say(&format!(
            "  {} files ({}) were already in place and kept; {} entries not in the snapshot were removed",
            r.unchanged,
            mib(r.unchanged_bytes),
            r.removed
        ));
    }
}

/// `latest` for a database restore: the newest snapshot holding a dump (of `database`,
/// when given) that is not a safety backup taken by an earlier restore.
fn latest_dump(
    repo: &Repository,
    database: Option<&str>,
) -> Result<coffer::repo::snapshot::Snapshot> {
    repo.load_snapshots()?
        .into_iter()
        .filter(|s| !s.has_tag("safety-backup"))
        .filter(|s| {
            s.sources
                .iter()
                .any(|src| src.kind == Kind::Postgres && database.is_none_or(|d| src.name == d))
        })
        .max_by_key(|s| s.time)
        .ok_or_else(|| {
            anyhow::Error::from(Error::new(
                coffer::error::ErrorKind::NotFound,
                "no snapshot holds a PostgreSQL dump (safety backups aside); name one by id",
            ))
        })
        .and_then(|s| s.check_features().map(|()| s))
}

/// Parse a recovery target time: RFC 3339, or PostgreSQL's `YYYY-MM-DD HH:MM:SS[.f][+TZ]`
/// (local time when no zone is given).
fn parse_target_time(s: &str) -> Result<chrono::DateTime<chrono::FixedOffset>> {
    use chrono::TimeZone;
    let t = s.trim();
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(d);
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(d) = chrono::DateTime::parse_from_str(t, f) {
            return Ok(d);
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(n) = chrono::NaiveDateTime::parse_from_str(t, f) {
            if let Some(d) = chrono::Local.from_local_datetime(&n).earliest() {
                return Ok(d.fixed_offset());
            }
        }
    }
    Err(Error::usage(format!(
        "--target-time {s:?} is not a time (e.g. 2024-05-01T14:03:00+02:00 or \"2024-05-01 14:03:00\")"
    ))
    .into())
}

fn restore_pgdata(
    ctx: &Context,
    a: &RestoreArgs,
    repo: &Repository,
    dir: &std::path::Path,
) -> Result<()> {
    use coffer::sources::postgres::pitr::{restore_pitr, PitrOptions, Target};
    let target = if let Some(t) = &a.target_time {
        Target::Time(parse_target_time(t)?)
    } else if let Some(l) = &a.target_lsn {
        Target::Lsn(wal::archive::parse_lsn(l).ok_or_else(|| {
            Error::usage(format!("--target-lsn {l:?} is not an LSN (e.g. 0/3000060)"))
        })?)
    } else if let Some(x) = &a.target_xid {
        if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::usage(format!("--target-xid {x:?} is not a transaction id")).into());
        }
        Target::Xid(x.clone())
    } else if let Some(n) = &a.target_name {
        Target::Name(n.clone())
    } else if a.target_immediate {
        Target::Immediate
    } else {
        Target::End
    };
    let opts = PitrOptions {
        snapshot: a.snapshot.clone(),
        pgdata: dir.to_path_buf(),
        target,
        exclusive: a.target_exclusive,
        action: a.target_action.clone(),
        timeline: a.target_timeline.clone(),
        force: a.force,
        delta: a.delta,
        tablespace_map: a.tablespace_map.clone(),
        fetch: ctx.fetch_config()?,
        wal_hold_expiry: std::time::Duration::from_secs(a.wal_hold_hours * 3600),
    };
    let index = repo.load_index()?;
    let p = Progress::bytes(ctx.mode, "restore pgdata", None);
    let r = restore_pitr(repo, &index, &opts, &p);
    p.finish();
    let r = r?;
    if a.json {
        println!(
            "{}",
            json!({"snapshot": r.snapshot.id.to_hex(), "pgdata": dir, "files": r.restored.files,
                   "bytes": r.restored.bytes, "unchanged_files": r.restored.unchanged,
                   "unchanged_bytes": r.restored.unchanged_bytes, "removed": r.restored.removed,
                   "start_lsn": r.info.start_lsn, "stop_lsn": r.info.stop_lsn,
                   "timeline": r.info.timeline, "newest_wal": r.newest_wal, "settings": r.settings,
                   "wal_hold": {"id": r.wal_hold.id, "start_wal": r.wal_hold.start_wal,
                                "expires_after_hours": a.wal_hold_hours}})
        );
        return Ok(());
    }
    ctx.say(&format!(
        "restored base backup {} (PostgreSQL {}, taken {}, WAL {} to {}) to {}: {} files, {} (every chunk verified)",
        r.snapshot.id.short(),
        r.info.server_version,
        r.info.started_at.to_rfc3339(),
        r.info.start_lsn,
        r.info.stop_lsn,
        dir.display(),
        r.restored.files,
        mib(r.restored.bytes)
    ));
    say_delta(ctx, &r.restored);
    ctx.say(&format!(
        "recovery settings in {}/postgresql.auto.conf:",
        dir.display()
    ));
    for s in &r.settings {
        ctx.say(&format!("  {s}"));
    }
    if let Some(n) = &r.newest_wal {
        ctx.say(&format!("newest archived WAL segment: {n}"));
    }
    ctx.say(&format!(
        "WAL hold {}: forget keeps the archived WAL from {} on while this recovery runs \
         (released when recovery ends; expires {} h after its last wal-fetch)",
        r.wal_hold.id, r.wal_hold.start_wal, a.wal_hold_hours
    ));
    ctx.say(&format!(
        "start PostgreSQL on {} to recover; then delete {}/{} (it can read the repository)",
        dir.display(),
        dir.display(),
        coffer::sources::postgres::basebackup::RECOVERY_CONFIG
    ));
    Ok(())
}

fn restore_to_postgres(
    ctx: &Context,
    a: &RestoreArgs,
    repo: &Arc<Repository>,
    index: &coffer::repo::index::MasterIndex,
    snap: &coffer::repo::snapshot::Snapshot,
    conn: Option<String>,
) -> Result<()> {
    if !a.includes.is_empty() {
        return Err(Error::usage("--include restores files; use --table for tables").into());
    }
    let opts = PgRestoreOptions {
        conn,
        database: a.database.clone(),
        jobs: a.jobs,
        yes: a.yes,
        safety_backup: !a.no_safety_backup,
        tables: a.tables.clone(),
        rename: a.rename.clone(),
        dry_run: a.dry_run,
        no_owner: a.no_owner,
        no_privileges: a.no_privileges,
        spool_dir: a.spool_dir.clone(),
    };
    let p = Progress::bytes(ctx.mode, "restore postgres", None);
    let mut confirm = |question: &str, db: &str| -> Result<bool> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Ok(false);
        }
        p.log(question);
        let answer = prompt_line(&format!("Type the database name ({db}) to go on: "))?;
        Ok(answer.trim() == db)
    };
    let r = restore_postgres(repo, index, snap, &opts, &p, &mut confirm);
    p.finish();
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        ctx.say(&format!(
            "{} snapshot {} into database {:?} on {}{}",
            if r.dry_run {
                "dry run, nothing changed: restoring"
            } else {
                "restored"
            },
            snap.id.short(),
            r.target_database,
            r.server,
            if r.dry_run { " would:" } else { ":" }
        ));
        for line in &r.plan {
            ctx.say(&format!("  - {line}"));
        }
        for w in &r.warnings {
            tracing::warn!("{w}");
        }
        if let Some(s) = &r.safety_snapshot {
            ctx.say(&format!(
                "safety backup of the previous {:?}: snapshot {} (tag safety-backup)",
                r.target_database,
                &s[..8]
            ));
        }
        if !r.checks.is_empty() {
            ctx.say("row counts (at backup → restored):");
            for c in &r.checks {
                let actual = c.actual.map(|n| n.to_string()).unwrap_or("missing".into());
                let mark = if c.ok() { "ok" } else { "MISMATCH" };
                ctx.say(&format!(
                    "  {:<40} {:>12} → {:>12}  {mark}",
                    c.table, c.expected, actual
                ));
            }
        }
    }
    let bad = r.mismatches();
    if bad > 0 {
        return Err(Error::integrity(format!(
            "{bad} of {} tables have a different row count than at backup time",
            r.checks.len()
        ))
        .into());
    }
    if !r.dry_run && !a.json {
        ctx.say(&format!(
            "row counts match for all {} tables (every chunk verified)",
            r.checks.len()
        ));
    }
    Ok(())
}

pub fn dump(ctx: &Context, a: &DumpArgs) -> Result<()> {
    let repo = ctx.open()?;
    let snap = repo.find_snapshot(&a.snapshot)?;
    let index = repo.load_index()?;
    let path = match &a.path {
        Some(p) => p.clone(),
        None => match snap.sources.as_slice() {
            [one] if *snap.known_kind()? != Kind::Files => one.path.clone(),
            _ => {
                return Err(Error::usage(format!(
                "snapshot {} holds several files or streams; name one (coffer ls {0} lists them)",
                snap.id.short()
            ))
                .into())
            }
        },
    };
    // The PostgreSQL dump whose main stream this is, if it is one.
    let pg = snap
        .sources
        .iter()
        .find(|s| s.kind == DumpInfo::KIND && s.path == path)
        .map(|s| DumpInfo::of(&snap, s))
        .transpose()?;
    if let Some(dir) = &a.out {
        return dump_to_dir(&repo, &index, &snap, &path, pg.as_ref(), dir);
    }
    if let Some(info) = pg.as_ref().filter(|i| !i.data_streams.is_empty()) {
        return Err(Error::usage(format!(
            "the dump of {:?} in snapshot {} is split into {} streams (the largest tables' data \
             is dumped beside the main archive), which one output cannot hold: use \
             `coffer dump {} --out DIR` to write them all into DIR with the pg_restore commands \
             to run, or name one stream ({})",
            info.database,
            snap.id.short(),
            info.data_streams.len() + 1,
            a.snapshot,
            std::iter::once(path.as_str())
                .chain(info.data_streams.iter().map(|d| d.path.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    restore::dump(&repo, &index, &snap, &path, &mut out)?;
    Ok(())
}

/// `coffer dump --out DIR`: every stream of the file or dump into DIR (mode 0600), and
/// for a PostgreSQL dump the pg_restore commands that load it, in order. Each file is
/// written under a temporary name, fsynced and renamed to its name (which must not exist
/// yet), then its directory is fsynced; nothing below DIR is reached through a symlink.
fn dump_to_dir(
    repo: &coffer::repo::Repository,
    index: &coffer::repo::index::MasterIndex,
    snap: &coffer::repo::snapshot::Snapshot,
    path: &str,
    pg: Option<&DumpInfo>,
    dir: &std::path::Path,
) -> Result<()> {
    use coffer::safefs::{self, Meta, NewFile, Replace};
    use std::ffi::OsStr;
    use std::os::fd::AsFd;
    let base = path.rsplit_once('/').map_or("", |(b, _)| b);
    let mut paths = vec![path.to_string()];
    if let Some(info) = pg {
        paths.extend(info.data_streams.iter().map(|d| d.path.clone()));
    }
    let root =
        safefs::open_root(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for p in &paths {
        let rel = p.strip_prefix(base).unwrap_or(p).trim_start_matches('/');
        let file = dir.join(rel);
        let mut parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let name = parts
            .pop()
            .ok_or_else(|| Error::usage(format!("{p:?} names no file")))?;
        let mut at = None;
        let mut here = dir.to_path_buf();
        for part in parts {
            here.push(part);
            let parent = at.as_ref().unwrap_or(&root);
            let (fd, _) = safefs::ensure_dir(parent.as_fd(), OsStr::new(part), Replace::Links)
                .with_context(|| format!("cannot create {}", here.display()))?;
            at = Some(fd);
        }
        let fd = at.as_ref().unwrap_or(&root).as_fd();
        let out = NewFile::create(fd, OsStr::new(name))
            .with_context(|| format!("cannot create {}", file.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file());
        restore::dump(repo, index, snap, p, &mut w)?;
        drop(w);
        let private = Meta {
            owner: None,
            mode: Some(0o600),
            mtime: None,
        };
        out.commit(&private, false)
            .with_context(|| format!("cannot create {}", file.display()))?;
        safefs::fsync(fd).with_context(|| format!("cannot write {}", file.display()))?;
        written.push(file);
    }
    use coffer::sources::postgres::tools::shell_quote;
    let q = |p: &std::path::Path| shell_quote(&p.display().to_string());
    match pg {
        Some(info) if !info.data_streams.is_empty() => {
            let db = shell_quote(&info.database);
            println!(
                "# The dump of {:?} in {} streams. Into an empty database {db}, run in order \
                 (the data steps may run at the same time):",
                info.database,
                written.len()
            );
            let main = q(&written[0]);
            println!("pg_restore --section=pre-data -d {db} {main}");
            println!("pg_restore --section=data -d {db} {main}");
            for f in &written[1..] {
                println!("pg_restore --data-only -d {db} {}", q(f));
            }
            println!("pg_restore --section=post-data -d {db} {main}");
        }
        Some(info) => println!(
            "pg_restore -d {} {}",
            shell_quote(&info.database),
            q(&written[0])
        ),
        None => println!("{}", written[0].display()),
    }
    Ok(())
}

pub fn check(ctx: &Context, a: &CheckArgs) -> Result<()> {
    let repo = ctx.open()?;
    let _lock = Lock::shared(&repo, "check")?;
    let read = if a.read_data {
        ReadData::All
    } else if let Some(s) = &a.read_data_subset {
        let pct: f64 = s.trim_end_matches('%').parse().map_err(|_| {
            Error::usage(format!(
                "--read-data-subset {s:?}: expected a percentage like 10%"
            ))
        })?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(Error::usage("--read-data-subset must be between 0% and 100%").into());
        }
        ReadData::Subset(pct / 100.0)
    } else {
        ReadData::None
    };
    let quiet = ctx.mode == coffer::progress::Mode::Quiet;
    let r = check::check(&repo, read, &|m| {
        if !quiet {
            eprintln!("{m}");
        }
    })?;
    if a.json {
        let damaged: Vec<_> = r
            .damaged_packs
            .iter()
            .map(|(p, why)| json!({"pack": p.to_hex(), "problem": why,
                "snapshots": r.affected.get(p).map(|v| v.iter().map(|s| s.to_hex()).collect::<Vec<_>>()).unwrap_or_default()}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"ok": r.ok(), "errors": r.errors, "warnings": r.warnings,
                "damaged_packs": damaged, "snapshots": r.snapshots, "packs": r.packs, "packs_read": r.packs_read})
            )?
        );
    }
    for w in &r.warnings {
        ctx.say(&format!("warning: {w}"));
    }
    for e in &r.errors {
        eprintln!("error: {e}");
    }
    for (p, why) in &r.damaged_packs {
        let users = r.affected.get(p).cloned().unwrap_or_default();
        eprintln!(
            "error: pack {p} is damaged: {why}\n       snapshots that depend on it: {}",
            if users.is_empty() {
                "none".to_string()
            } else {
                users
                    .iter()
                    .map(|s| s.short())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        );
    }
    if r.ok() {
        ctx.say(&format!(
            "no errors were found ({} snapshots, {} packs{})",
            r.snapshots,
            r.packs,
            if r.packs_read > 0 {
                format!(", {} read and verified", r.packs_read)
            } else {
                String::new()
            }
        ));
        Ok(())
    } else {
        Err(Error::integrity(format!(
            "the repository is damaged: {} error(s), {} damaged pack(s)",
            r.errors.len(),
            r.damaged_packs.len()
        ))
        .into())
    }
}

pub fn forget(ctx: &Context, a: &ForgetArgs) -> Result<()> {
    let policy = Policy {
        last: a.keep_last.unwrap_or(0),
        hourly: a.keep_hourly.unwrap_or(0),
        daily: a.keep_daily.unwrap_or(0),
        weekly: a.keep_weekly.unwrap_or(0),
        monthly: a.keep_monthly.unwrap_or(0),
        yearly: a.keep_yearly.unwrap_or(0),
        within: a
            .keep_within
            .as_ref()
            .map(|w| {
                w.parse()
                    .map_err(|e: anyhow::Error| Error::usage(e.to_string()))
            })
            .transpose()?,
        keep_tags: a.keep_tag.clone(),
    };
    if policy.is_empty() && a.snapshots.is_empty() {
        return Err(Error::usage(
            "no policy given: use --keep-* options or name snapshots to forget",
        )
        .into());
    }
    let repo = ctx.open()?;
    let lock = if a.dry_run {
        None
    } else {
        Some(Lock::exclusive(&repo, "forget")?)
    };
    // Every snapshot, strictly: one that cannot be read, or that needs a feature this
    // coffer does not know, stops forget before anything is decided or deleted (retention
    // on a subset could remove what the rest would keep).
    let all = repo.load_snapshots_strict()?;
    let mut remove = Vec::new();
    for spec in &a.snapshots {
        remove.push(coffer::repo::pick_snapshot(&all, spec)?);
    }
    let mut report = Vec::new();
    if !policy.is_empty() {
        let candidates: Vec<_> = all
            .iter()
            .filter(|s| a.tags.iter().all(|t| s.has_tag(t)))
            .filter(|s| !remove.iter().any(|r| r.id == s.id))
            .cloned()
            .collect();
        let keys: Vec<String> = a
            .group_by
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for (group, list) in
            forget::group(candidates, &keys).map_err(|e| Error::usage(e.to_string()))?
        {
            let decisions = forget::apply(list, &policy);
            if !a.json {
                ctx.say(&format!("group {group}:"));
            }
            for d in &decisions {
                if !a.json {
                    ctx.say(&format!(
                        "  {} {} {}  {}",
                        if d.keep { "keep  " } else { "remove" },
                        d.snapshot.id.short(),
                        d.snapshot.time.format("%Y-%m-%d %H:%M:%S"),
                        d.reasons.join(",")
                    ));
                }
            }
            report.push(json!({"group": group,
                "keep": decisions.iter().filter(|d| d.keep).map(|d| d.snapshot.id.to_hex()).collect::<Vec<_>>(),
                "remove": decisions.iter().filter(|d| !d.keep).map(|d| d.snapshot.id.to_hex()).collect::<Vec<_>>()}));
            remove.extend(
                decisions
                    .into_iter()
                    .filter(|d| !d.keep)
                    .map(|d| d.snapshot),
            );
        }
    }
    // What stays: the snapshots read above (forget holds the exclusive lock, so no backup
    // adds one meanwhile) less those removed.
    let kept: Vec<_> = all
        .into_iter()
        .filter(|s| !remove.iter().any(|r| r.id == s.id))
        .collect();
    let print_json = |wal: serde_json::Value| -> Result<()> {
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"groups": report, "dry_run": a.dry_run,
                    "removed": remove.iter().map(|s| s.id.to_hex()).collect::<Vec<_>>(),
                    "wal": wal}))?
            );
        }
        Ok(())
    };
    let Some(lock) = lock else {
        ctx.say(&format!(
            "would remove {} snapshot(s) (dry run: nothing changed)",
            remove.len()
        ));
        return print_json(wal_retention(ctx, &repo, &kept, None)?);
    };
    let n = forget::remove(&lock, &remove)?;
    ctx.say(&format!("removed {n} snapshot(s)"));
    print_json(wal_retention(ctx, &repo, &kept, Some(&lock))?)?;
    if a.prune {
        run_prune(ctx, prune::Run::Delete(&lock), 10.0)?;
    }
    drop(lock);
    Ok(())
}

/// Remove (under `lock`; without one, list) the archived WAL that none of the `kept`
/// snapshots and no live WAL hold needs, and remove expired holds. Returns the report for
/// `--json`.
fn wal_retention(
    ctx: &Context,
    repo: &Repository,
    kept: &[coffer::repo::snapshot::Snapshot],
    lock: Option<&ExclusiveLock>,
) -> Result<serde_json::Value> {
    let plan = wal::retention::plan(repo, kept)?;
    let hold_json = |h: &wal::hold::Hold| {
        json!({"id": h.id, "purpose": h.purpose, "host": h.host, "start_wal": h.start_wal,
               "refreshed": h.refreshed, "expires": h.expires()})
    };
    let mut report = json!({
        "archived": plan.archived,
        "skipped": plan.skipped,
        "oldest_backup": plan.oldest_backup,
        "keep_from": plan.keep_from,
        "held_by": plan.held_by,
        "holds": plan.holds.iter().map(hold_json).collect::<Vec<_>>(),
        "expired_holds": plan.expired.iter().map(hold_json).collect::<Vec<_>>(),
        "remove_files": plan.remove.len(),
        "remove_bytes": plan.bytes(),
        "removed_files": 0,
        "removed_bytes": 0,
        "kept_files": plan.kept,
    });
    // Live holds keep WAL, and say so; expired ones are removed.
    for h in &plan.holds {
        ctx.say(&format!(
            "WAL archive: kept from {} on for WAL hold {} ({} on {}; last used {}, expires {})",
            h.start_wal,
            h.id,
            h.purpose,
            h.host,
            h.refreshed.to_rfc3339(),
            h.expires()
                .map(|e| e.to_rfc3339())
                .unwrap_or_else(|| "never".into())
        ));
    }
    for h in &plan.expired {
        ctx.say(&format!(
            "WAL archive: WAL hold {} ({} on {}) expired at {}{}",
            h.id,
            h.purpose,
            h.host,
            h.expires()
                .map(|e| e.to_rfc3339())
                .unwrap_or_else(|| "?".into()),
            if lock.is_none() {
                "; it would be removed"
            } else {
                "; removed"
            }
        ));
    }
    if let Some(why) = &plan.skipped {
        if plan.archived {
            ctx.say(&format!("WAL archive: {why}"));
        }
        if let Some(lock) = lock {
            wal::retention::apply(lock, &plan)?;
        }
        return Ok(report);
    }
    let from = match &plan.held_by {
        Some(id) => format!(
            "older than {}, where WAL hold {id} starts (the oldest kept base backup {} starts later)",
            plan.keep_from.as_deref().unwrap_or("?"),
            plan.oldest_backup.as_deref().unwrap_or("?")
        ),
        None => format!(
            "older than {}, the start of the oldest kept base backup {}",
            plan.keep_from.as_deref().unwrap_or("?"),
            plan.oldest_backup.as_deref().unwrap_or("?")
        ),
    };
    if plan.remove.is_empty() {
        ctx.say(&format!(
            "WAL archive: nothing to remove ({} file(s) kept; none {from})",
            plan.kept
        ));
        if let Some(lock) = lock {
            wal::retention::apply(lock, &plan)?;
        }
        return Ok(report);
    }
    let Some(lock) = lock else {
        ctx.say(&format!(
            "WAL archive: would remove {} file(s), {}, {from} (dry run: nothing changed):",
            plan.remove.len(),
            mib(plan.bytes())
        ));
        // Consecutive segments of a timeline as one line; other files one by one.
        let mut runs: std::collections::BTreeMap<u32, Vec<(u64, u64)>> = Default::default();
        for f in plan
            .remove
            .iter()
            .filter(|f| f.kind == wal::archive::WalFileKind::Segment)
        {
            let r = runs.entry(f.timeline).or_default();
            match r.last_mut() {
                Some((_, last)) if *last + 1 == f.segno => *last = f.segno,
                _ => r.push((f.segno, f.segno)),
            }
        }
        let seg = plan.segment_size;
        for (tli, r) in &runs {
            for (a, z) in r {
                ctx.say(&format!(
                    "  {}",
                    segment_run(
                        &wal::archive::segment_name(*tli, *a, seg),
                        &wal::archive::segment_name(*tli, *z, seg),
                        z - a + 1
                    )
                ));
            }
        }
        for f in plan
            .remove
            .iter()
            .filter(|f| f.kind != wal::archive::WalFileKind::Segment)
        {
            ctx.say(&format!("  {}", f.name));
        }
        return Ok(report);
    };
    let (n, bytes) = wal::retention::apply(lock, &plan)?;
    ctx.say(&format!(
        "WAL archive: removed {n} file(s), {}, {from}; {} file(s) kept",
        mib(bytes),
        plan.kept
    ));
    report["removed_files"] = json!(n);
    report["removed_bytes"] = json!(bytes);
    Ok(report)
}

fn run_prune(ctx: &Context, run: prune::Run<'_>, max_unused_pct: f64) -> Result<()> {
    let quiet = ctx.mode == coffer::progress::Mode::Quiet;
    let dry_run = matches!(run, prune::Run::DryRun(_));
    let r = prune::prune(run, max_unused_pct / 100.0, &|m| {
        if !quiet {
            eprintln!("{m}");
        }
    })?;
    ctx.say(&format!(
        "{}{} of {} pack(s) unused, {} to repack, {} unindexed; {} {}; {} blobs used, {} unused",
        if dry_run { "dry run: " } else { "" },
        r.packs_deleted,
        r.packs_total,
        r.packs_repacked,
        r.packs_unindexed,
        if dry_run { "would free" } else { "freed" },
        mib(r.bytes_deleted),
        r.blobs_used,
        r.blobs_unused
    ));
    Ok(())
}

pub fn prune(ctx: &Context, a: &PruneArgs) -> Result<()> {
    let repo = ctx.open()?;
    if a.dry_run {
        return run_prune(ctx, prune::Run::DryRun(&repo), a.max_unused);
    }
    let lock = Lock::exclusive(&repo, "prune")?;
    run_prune(ctx, prune::Run::Delete(&lock), a.max_unused)
}

fn new_passphrase(file: &Option<std::path::PathBuf>) -> Result<Vec<u8>> {
    if let Ok(p) = std::env::var("COFFER_NEW_PASSWORD") {
        if p.is_empty() {
            return Err(Error::usage(
                "COFFER_NEW_PASSWORD is empty; an empty passphrase is not allowed",
            )
            .into());
        }
        return Ok(p.into_bytes());
    }
    if let Some(f) = file {
        return read_password_file(f);
    }
    prompt("New passphrase: ", true)
}

pub fn key(ctx: &Context, k: &KeyCommand) -> Result<()> {
    let repo = ctx.open()?;
    match k {
        KeyCommand::List { json } => {
            let keys = repo.list_keys()?;
            for k in &keys {
                if let Err(e) = &k.slot {
                    tracing::warn!(
                        "key slot {} is damaged ({e}); remove it with `coffer key remove {}`",
                        k.name,
                        short_name(&k.name)
                    );
                }
            }
            if *json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|k| match &k.slot {
                        Ok(s) => json!({"id": k.name, "current": k.name == repo.key_name, "kind": s.kind, "created": s.created, "hostname": s.hostname, "username": s.username}),
                        Err(e) => json!({"id": k.name, "current": false, "damaged": e}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for k in keys {
                    let mark = if k.name == repo.key_name { "*" } else { " " };
                    match k.slot {
                        Ok(s) => println!(
                            "{mark} {:<8} {:<10} {}@{} {}",
                            short_name(&k.name),
                            s.kind,
                            s.username,
                            s.hostname,
                            s.created.format("%Y-%m-%d %H:%M:%S UTC")
                        ),
                        Err(e) => println!("{mark} {:<8} damaged: {e}", short_name(&k.name)),
                    }
                }
            }
        }
        KeyCommand::Add { new_password_file } => {
            let pw = new_passphrase(new_password_file)?;
            let name = repo.add_key(&pw, KdfParams::default())?;
            ctx.say(&format!("added key {}", short_name(&name)));
        }
        KeyCommand::Remove { id } => {
            let name = repo.remove_key(id)?;
            ctx.say(&format!("removed key {}", short_name(&name)));
        }
        KeyCommand::Passwd { new_password_file } => {
            let pw = new_passphrase(new_password_file)?;
            let mut repo =
                Arc::try_unwrap(repo).map_err(|_| anyhow::anyhow!("repository in use"))?;
            let name = repo.change_passphrase(&pw, KdfParams::default())?;
            ctx.say(&format!(
                "passphrase changed (new key {})",
                short_name(&name)
            ));
        }
    }
    Ok(())
}

pub fn unlock(ctx: &Context, a: &UnlockArgs) -> Result<()> {
    let repo = ctx.open()?;
    let r = lock::unlock(&repo, a.remove_all)?;
    for (path, why) in &r.damaged {
        ctx.say(&format!("removed damaged lock {path} ({why})"));
    }
    for (path, why) in &r.unreadable {
        ctx.say(&format!(
            "removed lock {path}, which could not be read ({why})"
        ));
    }
    for (path, why) in &r.damaged_kept {
        ctx.say(&format!(
            "kept damaged lock {path} ({why}): it is not yet 30 minutes old, so it may belong to \
             a running coffer; if none is running on any host, `coffer unlock --remove-all` \
             removes it"
        ));
    }
    ctx.say(&format!("removed {} lock(s)", r.removed.len()));
    Ok(())
}

pub fn wal_push(ctx: &Context, a: &WalPushArgs) -> Result<()> {
    if wal::push::take_marker(&a.path) {
        // Pushed ahead by an earlier call, durably.
        return Ok(());
    }
    let repo = ctx.open()?;
    let n = wal::push::push_with_ahead(&repo, &a.path, a.jobs as usize)?;
    if ctx.verbose() {
        ctx.say(&format!(
            "archived {} ({n} file(s) in this call)",
            a.path.display()
        ));
    }
    Ok(())
}

pub fn wal_fetch(ctx: &Context, a: &WalFetchArgs) -> Result<()> {
    // A segment prefetched by an earlier call needs no repository (no key derivation).
    if wal::fetch::take_prefetched(&a.name, &a.dest)? {
        refresh_hold(ctx, a, None);
        return Ok(());
    }
    let repo = ctx.open()?;
    let fetched = wal::fetch::fetch(&repo, &a.name, &a.dest, a.prefetch as usize);
    refresh_hold(ctx, a, Some(&repo));
    match fetched? {
        wal::fetch::Fetched::Written => Ok(()),
        wal::fetch::Fetched::NotArchived => {
            if ctx.verbose() {
                ctx.say(&format!("{} is not in the archive", a.name));
            }
            Err(super::WalNotFound.into())
        }
    }
}

/// Refresh the WAL hold of the recovery this `wal-fetch` serves (`--hold`), when the last
/// refresh is old enough. Failures are warnings, not errors: the file asked for was fetched
/// (or its absence established) correctly, and failing the fetch would stop a recovery that
/// can succeed, for the sake of protection against a `forget` that may never come.
fn refresh_hold(ctx: &Context, a: &WalFetchArgs, repo: Option<&Repository>) {
    let Some(id) = &a.hold else {
        return;
    };
    let stamp = wal::hold::stamp_path(&wal::fetch::prefetch_dir(&a.dest), id);
    if !wal::hold::refresh_due(&stamp) {
        return;
    }
    let opened;
    let repo = match repo {
        Some(r) => r,
        None => match ctx.open() {
            Ok(r) => {
                opened = r;
                &opened
            }
            Err(e) => {
                tracing::warn!("cannot refresh WAL hold {id}: {e:#}");
                return;
            }
        },
    };
    match wal::hold::refresh(repo, id) {
        Ok(Some(_)) => {}
        Ok(None) => tracing::warn!(
            "WAL hold {id} no longer exists (released, or expired and removed by forget): \
             forget may remove WAL this recovery still needs"
        ),
        Err(e) => tracing::warn!("cannot refresh WAL hold {id}: {e:#}"),
    }
    if let Err(e) = wal::hold::touch(&stamp) {
        tracing::warn!("{e:#}");
    }
}

pub fn wal_hold(ctx: &Context, c: &WalHoldCommand) -> Result<()> {
    let repo = ctx.open()?;
    match c {
        WalHoldCommand::List { json: as_json } => {
            let now = chrono::Local::now().fixed_offset();
            let holds = wal::hold::list(&repo)?;
            if *as_json {
                let v: Vec<serde_json::Value> = holds
                    .iter()
                    .map(|l| match l {
                        wal::hold::Listed::Hold(h) => json!({"id": h.id, "purpose": h.purpose,
                            "host": h.host, "start_wal": h.start_wal, "snapshot": h.snapshot,
                            "created": h.created, "refreshed": h.refreshed,
                            "expires": h.expires(), "expired": h.expired(now)}),
                        wal::hold::Listed::Unreadable { id, error } => {
                            json!({"id": id, "error": error})
                        }
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let mut out = std::io::stdout().lock();
            for l in &holds {
                match l {
                    wal::hold::Listed::Hold(h) => writeln!(
                        out,
                        "{}  from {}  {} on {}  last used {}  {} {}",
                        h.id,
                        h.start_wal,
                        h.purpose,
                        h.host,
                        h.refreshed.to_rfc3339(),
                        if h.expired(now) { "expired" } else { "expires" },
                        h.expires()
                            .map(|e| e.to_rfc3339())
                            .unwrap_or_else(|| "never".into())
                    )?,
                    wal::hold::Listed::Unreadable { id, error } => {
                        writeln!(out, "{id}  unreadable: {error}")?
                    }
                }
            }
            if holds.is_empty() {
                ctx.say("no WAL holds");
            }
            Ok(())
        }
        WalHoldCommand::Release { ids } => {
            for prefix in ids {
                let id = wal::hold::find(&repo, prefix)?;
                wal::hold::release(&repo, &id)?;
                ctx.say(&format!("released WAL hold {id}"));
            }
            Ok(())
        }
    }
}

fn segment_run(first: &str, last: &str, count: u64) -> String {
    if count == 1 {
        first.to_string()
    } else {
        format!("{first} to {last} ({count} segments)")
    }
}

fn window_text(w: &wal::verify::Window) -> String {
    let latest_time = match w.latest_archived_at {
        Some(t) => format!(
            "archived {}; the last commit in it is no later",
            t.with_timezone(&chrono::Local).to_rfc3339()
        ),
        None => "time unknown: the storage gives no write time".to_string(),
    };
    format!(
        "from {} ({}, end of base backup {}) to {} on timeline {} (end of segment {}, {latest_time})",
        w.earliest_lsn,
        w.earliest_time.to_rfc3339(),
        &w.earliest_backup[..w.earliest_backup.len().min(8)],
        w.latest_lsn,
        w.latest_timeline,
        w.latest_segment,
    )
}

pub fn wal_verify(ctx: &Context, a: &WalVerifyArgs) -> Result<()> {
    let repo = ctx.open()?;
    let _lock = Lock::shared(&repo, "wal-verify")?;
    let r = wal::verify::verify(&repo)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "WAL archive{}: {} segment(s), {} history file(s), {} partial, {} backup label(s); {} MiB segments",
            r.system_identifier
                .as_ref()
                .map(|s| format!(" of cluster {s}"))
                .unwrap_or_default(),
            r.segments,
            r.history_files,
            r.partial_files,
            r.backup_files,
            r.segment_size >> 20
        )?;
        for t in &r.timelines {
            let from = match (&t.parent, &t.switch_lsn) {
                (Some(p), Some(l)) => format!(" (from timeline {p} at {l})"),
                _ => String::new(),
            };
            let extent = match (&t.first_segment, &t.last_segment) {
                (Some(f), Some(l)) => format!(
                    "{} ({} segment(s){})",
                    if f == l {
                        f.clone()
                    } else {
                        format!("{f} to {l}")
                    },
                    t.segments,
                    if t.holes > 0 {
                        format!(", {} missing in between", t.holes)
                    } else {
                        String::new()
                    }
                ),
                _ => "no segment".to_string(),
            };
            writeln!(out, "  timeline {}{from}: {extent}", t.timeline)?;
        }
        for b in &r.backups {
            let verdict = match (b.status, &b.window) {
                ("ok", Some(w)) => format!(
                    "ok, recoverable from {} to {} on timeline {}",
                    w.earliest_lsn, w.latest_lsn, w.latest_timeline
                ),
                (_, Some(w)) => format!(
                    "GAP at {}: recoverable from {} only up to {} on timeline {}",
                    b.first_missing.as_deref().unwrap_or("?"),
                    w.earliest_lsn,
                    w.latest_lsn,
                    w.latest_timeline
                ),
                _ => format!(
                    "INCOMPLETE: its segment {} is missing; it cannot be restored",
                    b.first_missing.as_deref().unwrap_or("?")
                ),
            };
            let tls: Vec<String> = b.timelines.iter().map(|t| t.to_string()).collect();
            writeln!(
                out,
                "base backup {} (timeline {}, WAL {} to {}, finished {}; follows timeline(s) {}): {verdict}",
                b.short_id,
                b.timeline,
                b.start_lsn,
                b.stop_lsn,
                b.stopped_at.to_rfc3339(),
                tls.join(" → ")
            )?;
            for n in &b.notes {
                writeln!(out, "  note: {n}")?;
            }
        }
        for g in &r.gaps {
            writeln!(
                out,
                "missing: {} (WAL {} to {}), needed by base backup(s) {}",
                segment_run(&g.first, &g.last, g.count),
                g.start_lsn,
                g.end_lsn,
                g.backups.join(", ")
            )?;
        }
        match &r.window {
            Some(w) => {
                writeln!(out, "recoverable window: {}", window_text(w))?;
                if let Some(t) = r.latest_commit_time {
                    writeln!(
                        out,
                        "newest archived commit: {} (the latest --target-time that recovery can reach)",
                        t.to_rfc3339()
                    )?;
                }
            }
            None if !r.backups.is_empty() => {
                writeln!(out, "recoverable window: none (no base backup is complete)")?
            }
            None => {}
        }
        for n in &r.notes {
            writeln!(out, "note: {n}")?;
        }
    }
    if r.ok {
        return Ok(());
    }
    let gaps: Vec<String> = r
        .gaps
        .iter()
        .map(|g| {
            format!(
                "{} (base backup(s) {})",
                segment_run(&g.first, &g.last, g.count),
                g.backups.join(", ")
            )
        })
        .collect();
    Err(Error::integrity(format!(
        "the WAL archive has {} gap(s) affecting base backups: missing {}",
        r.gaps.len(),
        gaps.join("; ")
    ))
    .into())
}
