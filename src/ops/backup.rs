//! `backup`: files, a stream, a PostgreSQL dump, a physical base backup, a Redis RDB or a
//! command's output into a snapshot.

use super::mib;
use crate::progress::Progress;
use crate::repo::lock::Lock;
use crate::repo::snapshot::{Kind, Snapshot, Summary};
use crate::repo::Repository;
use crate::sources::command::{backup_command, CommandInfo, CommandOptions};
use crate::sources::files::{backup_files, FilesOptions};
use crate::sources::postgres::basebackup::{base_backup_info, BaseBackupInfo};
use crate::sources::postgres::physical::{backup_physical, PhysicalOptions};
use crate::sources::postgres::{backup_postgres, DumpInfo, DumpSplit, PostgresOptions};
use crate::sources::redis::{backup_redis, RedisInfo, RedisOptions};
use crate::sources::stream::backup_stream;
use crate::sources::{sources_of, CommonOptions};
use anyhow::Result;
use serde::Serialize;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What to back up.
pub enum Source<'a> {
    Files {
        paths: Vec<PathBuf>,
        excludes: Vec<String>,
        one_file_system: bool,
    },
    /// A byte stream, stored under `name`.
    Stream {
        reader: &'a mut dyn Read,
        name: String,
    },
    /// pg_dump of one database, of all (`all_databases`), or of those named (`databases`).
    Postgres {
        conn: Option<String>,
        all_databases: bool,
        databases: Vec<String>,
        split: DumpSplit,
    },
    /// A Redis server's RDB.
    Redis(RedisOptions),
    /// A command's standard output or output directory.
    Command(CommandOptions),
    /// A physical base backup of the server's data directory.
    Physical {
        conn: Option<String>,
        pgdata: Option<PathBuf>,
        archive_timeout: Duration,
    },
}

impl Source<'_> {
    /// What a progress display calls this backup.
    pub fn label(&self) -> &'static str {
        match self {
            Source::Files { .. } => "backup",
            Source::Stream { .. } => "backup stdin",
            Source::Postgres { .. } => "backup postgres",
            Source::Physical { .. } => "base backup",
            Source::Redis(_) => "backup redis",
            Source::Command(_) => "backup command",
        }
    }
}

/// The snapshot saved (`backup --json`).
#[derive(Serialize)]
pub struct BackupReport {
    pub id: String,
    pub short_id: String,
    pub time: String,
    pub size: u64,
    pub summary: Summary,
    pub parent: Option<String>,
    #[serde(skip)]
    pub snapshot: Snapshot,
    /// What the text report describes, decoded once (with errors) from the snapshot.
    #[serde(skip)]
    base_backup: Option<BaseBackupInfo>,
    #[serde(skip)]
    dumps: Vec<DumpInfo>,
    #[serde(skip)]
    redis: Vec<RedisInfo>,
    /// Command sources: name and metadata.
    #[serde(skip)]
    commands: Vec<(String, CommandInfo)>,
}

pub fn backup(
    repo: &Arc<Repository>,
    source: Source<'_>,
    common: CommonOptions,
    progress: &Progress,
) -> Result<BackupReport> {
    let _lock = Lock::shared(repo, "backup")?;
    let repo = repo.clone();
    let snap = match source {
        Source::Files {
            paths,
            excludes,
            one_file_system,
        } => backup_files(
            repo,
            &FilesOptions {
                paths,
                excludes,
                one_file_system,
                common,
            },
            progress,
        ),
        Source::Stream { reader, name } => backup_stream(repo, reader, &name, &common, progress),
        Source::Postgres {
            conn,
            all_databases,
            databases,
            split,
        } => backup_postgres(
            repo,
            &PostgresOptions {
                conn,
                all_databases,
                databases,
                split,
                common,
            },
            progress,
        ),
        Source::Redis(mut opts) => {
            opts.common = common;
            backup_redis(repo, &opts, progress)
        }
        Source::Command(mut opts) => {
            opts.common = common;
            backup_command(repo, &opts, progress)
        }
        Source::Physical {
            conn,
            pgdata,
            archive_timeout,
        } => backup_physical(
            repo,
            &PhysicalOptions {
                conn,
                pgdata,
                archive_timeout,
                common,
            },
            progress,
        ),
    }?;
    let base_backup = base_backup_info(&snap)?;
    let dumps = sources_of::<DumpInfo>(&snap)?
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let redis = sources_of::<RedisInfo>(&snap)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let commands = sources_of::<CommandInfo>(&snap)?
        .into_iter()
        .map(|(s, c)| (s.name.clone(), c))
        .collect();
    Ok(BackupReport {
        commands,
        redis,
        base_backup,
        dumps,
        id: snap.id.to_hex(),
        short_id: snap.id.short(),
        time: snap.time.to_rfc3339(),
        size: snap.size,
        summary: snap.summary.clone(),
        parent: snap.parent.map(|p| p.to_hex()),
        snapshot: snap,
    })
}

impl std::fmt::Display for BackupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snap = &self.snapshot;
        if let Some(info) = &self.base_backup {
            writeln!(
                f,
                "base backup of {} (PostgreSQL {}, cluster {}, timeline {}): WAL {} to {} ({} to {})",
                info.data_directory,
                info.server_version,
                info.system_identifier,
                info.timeline,
                info.start_lsn,
                info.stop_lsn,
                info.start_wal,
                info.stop_wal
            )?;
        }
        for info in &self.dumps {
            writeln!(
                f,
                "dumped database {:?} from PostgreSQL {} at {} with pg_dump {}: {} in {} tables",
                info.database,
                info.server_version,
                info.server,
                info.pg_dump_version,
                mib(info.dump_size),
                info.tables.len()
            )?;
            if !info.data_streams.is_empty() {
                let streams: Vec<String> = info
                    .data_streams
                    .iter()
                    .map(|d| {
                        let names: Vec<String> = d.tables.iter().map(|t| t.qualified()).collect();
                        format!("{} ({})", names.join(", "), mib(d.size))
                    })
                    .collect();
                writeln!(
                    f,
                    "  in {} streams: the main dump, and the data of {}",
                    streams.len() + 1,
                    streams.join("; ")
                )?;
            }
        }
        for r in &self.redis {
            let dbs: Vec<String> = r
                .databases
                .iter()
                .map(|d| format!("db{} {} keys ({} with expiry)", d.db, d.keys, d.expires))
                .collect();
            writeln!(
                f,
                "RDB of {} ({} {}, {}, RDB version {}, {} transfer): {}, {}",
                r.address,
                r.server,
                r.version,
                r.role,
                r.rdb_version,
                r.transfer,
                mib(r.rdb_size),
                if dbs.is_empty() {
                    "no keys".to_string()
                } else {
                    dbs.join(", ")
                }
            )?;
            if r.appendonly {
                writeln!(
                    f,
                    "  the server has appendonly yes: to restore from this file into a stopped server, see README (Redis, file placement)"
                )?;
            }
        }
        for (name, c) in &self.commands {
            // Command output is often small (a key, a config): exact below 1 MiB.
            let size = if c.bytes < 1 << 20 {
                format!("{} bytes", c.bytes)
            } else {
                mib(c.bytes)
            };
            let out = match c.output() {
                crate::sources::command::Output::Stdout => {
                    format!("{size} of standard output as /{name}")
                }
                crate::sources::command::Output::Dir => format!(
                    "{} files ({size}) from its output directory as /{name}/",
                    c.files
                ),
            };
            writeln!(
                f,
                "command source {name:?}: {} exited with status {} after {:.1}s; stored {out}",
                c.program, c.exit_code, c.duration_secs
            )?;
        }
        let sm = &self.summary;
        let streams =
            snap.kind == Kind::Postgres || self.commands.iter().any(|(_, c)| c.output == "stdout");
        let what = if streams { "streams" } else { "files" };
        write!(
            f,
            "snapshot {} saved: {} {what} ({} new, {} changed, {} unchanged), {} total; added {} ({} stored) in {:.1}s",
            self.short_id,
            sm.files_new + sm.files_changed + sm.files_unchanged,
            sm.files_new,
            sm.files_changed,
            sm.files_unchanged,
            mib(snap.size),
            mib(sm.bytes_added),
            mib(sm.bytes_stored),
            sm.duration_secs
        )
    }
}
