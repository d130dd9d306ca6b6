//! PostgreSQL logical backups: `pg_dump` streamed into the repository, and restores with
//! `pg_restore`.
//!
//! A backup opens a REPEATABLE READ transaction, exports its snapshot and hands it to
//! `pg_dump --snapshot`, so the dump and the exact per-table row counts taken in that
//! transaction describe the same instant. pg_dump writes the custom format without its
//! own compression (`-Fc -Z0`) straight into the chunker: no temporary file, and
//! unchanged tables produce the same chunks from one day to the next. The snapshot is
//! written only after pg_dump exited 0, the stream began with the archive's magic, and
//! every row count succeeded.
//!
//! Layout in the snapshot: a directory `/postgres` with `DB.dump` per database and, for
//! `--all-databases`, `globals.sql` (roles and tablespaces from `pg_dumpall
//! --globals-only`). Each database has a [`SourceInfo`] of kind `postgres` whose
//! metadata is a [`DumpInfo`].

pub mod conn;
pub mod physical;
pub mod pitr;
pub mod restore;
pub mod tools;

use super::stream::save_stream;
use super::{commit, CommonOptions, Finished, Session};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::snapshot::{Snapshot, SourceInfo};
use crate::repo::tree::{Node, Tree};
use crate::repo::Repository;
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use conn::{describe, qualified, PgTarget};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::Arc;
use tools::{status_text, Tool};

/// Source kind of a database dump in [`SourceInfo::kind`].
pub const KIND_DUMP: &str = "postgres";
/// Source kind of the `pg_dumpall --globals-only` script.
pub const KIND_GLOBALS: &str = "postgres-globals";
/// The directory holding the dumps in a snapshot.
pub const DIR: &str = "postgres";

/// What a database dump's [`SourceInfo`] records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DumpInfo {
    pub database: String,
    /// `custom` (pg_dump -Fc).
    pub format: String,
    pub server: String,
    pub server_version: String,
    pub server_version_num: u32,
    pub pg_dump_version: String,
    pub pg_dump_major: u32,
    /// `pg_database_size` at the time of the dump.
    pub database_size: i64,
    /// Bytes of the dump stream.
    pub dump_size: u64,
    /// When pg_dump was started.
    pub started_at: DateTime<FixedOffset>,
    pub finished_at: DateTime<FixedOffset>,
    /// The instant the dump shows: the shared transaction's start.
    pub snapshot_time: String,
    pub encoding: String,
    pub lc_collate: String,
    pub lc_ctype: String,
    /// Every table and materialized view with its exact row count in the dump's snapshot.
    pub tables: Vec<TableRows>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableRows {
    pub schema: String,
    pub name: String,
    /// `table`, `partitioned table` or `materialized view`.
    pub kind: String,
    /// Exact count; none for partitioned tables (their partitions are counted).
    pub rows: Option<i64>,
}

impl TableRows {
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

pub struct PostgresOptions {
    /// A connection URL or string; `DATABASE_URL` and the libpq variables when none.
    pub conn: Option<String>,
    pub all_databases: bool,
    pub common: CommonOptions,
}

/// The server's version, as our connection sees it.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub version_num: u32,
}

impl ServerInfo {
    pub fn query(c: &mut postgres::Client, target: &PgTarget) -> Result<ServerInfo> {
        let row = c
            .query_one(
                "SELECT current_setting('server_version'), current_setting('server_version_num')",
                &[],
            )
            .map_err(|e| pg_err(target, "reading the server version", &e))?;
        let num: String = row.get(1);
        Ok(ServerInfo {
            version: row.get(0),
            version_num: num.parse().unwrap_or(0),
        })
    }
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }
}

/// An error from one of our own queries.
pub(crate) fn pg_err(target: &PgTarget, what: &str, e: &postgres::Error) -> anyhow::Error {
    Error::new(
        ErrorKind::Source,
        format!(
            "{what} in database {:?} at {} failed: {}",
            target.db(),
            target.server(),
            describe(e)
        ),
    )
    .into()
}

/// The stream name of a database's dump.
pub fn dump_name(db: &str) -> String {
    format!("{}.dump", db.replace('/', "%2F"))
}

/// Back up one database (or all of them, with the globals) into a new snapshot.
pub fn backup_postgres(
    repo: Arc<Repository>,
    opts: &PostgresOptions,
    progress: &Progress,
) -> Result<Snapshot> {
    let mut target = PgTarget::resolve(opts.conn.as_deref(), !opts.all_databases)?;
    if opts.all_databases && target.dbname.is_none() {
        target.dbname = Some("postgres".into());
    }
    backup_target(repo, &target, opts.all_databases, &opts.common, progress)
}

/// Back up a resolved target: its database, or every database and the globals.
pub fn backup_target(
    repo: Arc<Repository>,
    target: &PgTarget,
    all_databases: bool,
    common: &CommonOptions,
    progress: &Progress,
) -> Result<Snapshot> {
    let mut client = target.connect()?;
    let server = ServerInfo::query(&mut client, target)?;
    let databases: Vec<String> = if all_databases {
        client
            .query(
                "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
                &[],
            )
            .map_err(|e| pg_err(target, "listing databases", &e))?
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        vec![target.db().to_string()]
    };
    drop(client);
    let pg_dump = tools::find("pg_dump", server.major())?;
    let mut session = Session::start(repo)?;
    let mut nodes = Vec::new();
    let mut sources = Vec::new();
    let mut paths = Vec::new();
    let mut size = 0u64;
    for db in &databases {
        progress.set_message(db.clone());
        let t = target.with_db(db);
        let (node, info) = dump_database(&mut session, &t, &server, &pg_dump, progress)?;
        size += node.size;
        session.summary.files_new += 1;
        let path = format!("/{DIR}/{}", node.name.display());
        paths.push(path.clone());
        sources.push(SourceInfo {
            kind: KIND_DUMP.into(),
            name: db.clone(),
            path,
            metadata: serde_json::to_value(&info)?,
        });
        nodes.push(node);
    }
    if all_databases {
        progress.set_message("globals");
        let (node, info) = dump_globals(&mut session, target, &server, progress)?;
        size += node.size;
        session.summary.files_new += 1;
        let path = format!("/{DIR}/{}", node.name.display());
        paths.push(path.clone());
        sources.push(SourceInfo {
            kind: KIND_GLOBALS.into(),
            name: "globals".into(),
            path,
            metadata: info,
        });
        nodes.push(node);
    }
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let sub = session.save_tree(Tree { nodes })?;
    let tree = session.save_tree(Tree {
        nodes: vec![Node::dir(DIR, sub, now)],
    })?;
    commit(
        session,
        Finished {
            kind: KIND_DUMP.into(),
            paths,
            tree,
            size,
            parent: None,
            excludes: vec![],
            sources,
        },
        common,
    )
}

/// Reads through to the inner reader, keeping the first bytes for a format check.
struct Head<R> {
    inner: R,
    head: Vec<u8>,
}

impl<R: Read> Read for Head<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.head.len() < 16 {
            let take = (16 - self.head.len()).min(n);
            self.head.extend_from_slice(&buf[..take]);
        }
        Ok(n)
    }
}

const TABLES_SQL: &str = "
SELECT n.nspname::text, c.relname::text, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND (c.relkind <> 'm' OR c.relispopulated)
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2";

/// The tables of the connected database with exact row counts (in the caller's
/// transaction when one is open).
pub fn count_rows(c: &mut postgres::Client, target: &PgTarget) -> Result<Vec<TableRows>> {
    let rows = c
        .query(TABLES_SQL, &[])
        .map_err(|e| pg_err(target, "listing tables", &e))?;
    let mut out = Vec::with_capacity(rows.len());
    let mut failed = None;
    for r in rows {
        let (schema, name, kind): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let kind = match kind.as_str() {
            "p" => "partitioned table",
            "m" => "materialized view",
            _ => "table",
        };
        let rows = if kind == "partitioned table" {
            None
        } else {
            // A savepoint keeps a failed count (say, no permission) from aborting the
            // transaction whose snapshot pg_dump is importing; pg_dump then reports the
            // problem in its own words.
            let q = format!(
                "SAVEPOINT coffer_count; SELECT count(*) FROM {}; RELEASE SAVEPOINT coffer_count",
                qualified(&schema, &name)
            );
            match c.simple_query(&q) {
                Ok(msgs) => msgs.iter().find_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                    _ => None,
                }),
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK TO SAVEPOINT coffer_count");
                    failed.get_or_insert_with(|| {
                        pg_err(target, &format!("counting the rows of {schema}.{name}"), &e)
                    });
                    None
                }
            }
        };
        out.push(TableRows {
            schema,
            name,
            kind: kind.into(),
            rows,
        });
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn now() -> DateTime<FixedOffset> {
    chrono::Local::now().fixed_offset()
}

/// Dump one database into the session as a stream node.
fn dump_database(
    session: &mut Session,
    target: &PgTarget,
    server: &ServerInfo,
    pg_dump: &Tool,
    progress: &Progress,
) -> Result<(Node, DumpInfo)> {
    let mut client = target.connect()?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .map_err(|e| pg_err(target, "starting the dump transaction", &e))?;
    let row = client
        .query_one(
            "SELECT pg_export_snapshot(), pg_database_size(d.oid), transaction_timestamp()::text,
                    pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .map_err(|e| pg_err(target, "exporting the dump snapshot", &e))?;
    let snapshot_id: String = row.get(0);

    let started_at = now();
    let mut cmd = pg_dump.command();
    cmd.args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={snapshot_id}"));
    target.configure(&mut cmd);
    let (mut child, stdout, stderr) = pg_dump.spawn_reader(cmd)?;

    // Count rows in the exported snapshot while pg_dump runs. The transaction stays open
    // until pg_dump has finished, so pg_dump can always import the snapshot.
    let count_target = target.clone();
    let counter = std::thread::spawn(move || {
        let r = count_rows(&mut client, &count_target);
        (client, r)
    });

    let mut reader = Head {
        inner: stdout,
        head: Vec::new(),
    };
    let saved = save_stream(session, &mut reader, progress);
    if saved.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let said = stderr.text();
    let (mut client, counted) = counter
        .join()
        .map_err(|_| anyhow::anyhow!("row counter panicked"))?;
    let _ = client.batch_execute("COMMIT");
    drop(client);
    if !status.success() {
        let what = if said.is_empty() {
            "it printed nothing".to_string()
        } else {
            said
        };
        return Err(Error::new(
            ErrorKind::Source,
            format!(
                "pg_dump of database {:?} failed ({}); no snapshot was written. pg_dump said:\n{what}",
                target.db(),
                status_text(status)
            ),
        )
        .into());
    }
    let (content, size) = saved?;
    if !reader.head.starts_with(b"PGDMP") {
        return Err(Error::new(
            ErrorKind::Source,
            format!(
                "pg_dump of database {:?} did not produce a custom-format archive; no snapshot was written",
                target.db()
            ),
        )
        .into());
    }
    for line in said.lines() {
        progress.log(line);
    }
    let tables = counted?;
    let info = DumpInfo {
        database: target.db().to_string(),
        format: "custom".into(),
        server: target.server(),
        server_version: server.version.clone(),
        server_version_num: server.version_num,
        pg_dump_version: pg_dump.version.clone(),
        pg_dump_major: pg_dump.major,
        database_size: row.get(1),
        dump_size: size,
        started_at,
        finished_at: now(),
        snapshot_time: row.get(2),
        encoding: row.get(3),
        lc_collate: row.get(4),
        lc_ctype: row.get(5),
        tables,
    };
    let mtime = started_at.timestamp_nanos_opt().unwrap_or(0);
    Ok((
        Node::stream(&dump_name(target.db()), size, content, mtime),
        info,
    ))
}

/// Roles and tablespaces from `pg_dumpall --globals-only`, as `globals.sql`.
fn dump_globals(
    session: &mut Session,
    target: &PgTarget,
    server: &ServerInfo,
    progress: &Progress,
) -> Result<(Node, serde_json::Value)> {
    let tool = tools::find("pg_dumpall", server.major())?;
    let started_at = now();
    let mut cmd = tool.command();
    cmd.args(["--globals-only", "--no-password"])
        .arg(format!("--database={}", target.db()));
    target.configure(&mut cmd);
    let (mut child, stdout, stderr) = tool.spawn_reader(cmd)?;
    let saved = save_stream(session, stdout, progress);
    if saved.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let said = stderr.text();
    if !status.success() {
        return Err(Error::new(
            ErrorKind::Source,
            format!(
                "pg_dumpall --globals-only failed ({}); no snapshot was written. It said:\n{said}",
                status_text(status)
            ),
        )
        .into());
    }
    let (content, size) = saved?;
    let info = serde_json::json!({
        "server": target.server(),
        "server_version": server.version,
        "pg_dumpall_version": tool.version,
        "size": size,
        "started_at": started_at,
    });
    let mtime = started_at.timestamp_nanos_opt().unwrap_or(0);
    Ok((Node::stream("globals.sql", size, content, mtime), info))
}
