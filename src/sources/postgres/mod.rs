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
//! --globals-only`). Each database has a [`SourceInfo`](crate::repo::snapshot::SourceInfo) of kind `postgres` whose
//! metadata is a [`DumpInfo`]; the globals script's is a [`GlobalsInfo`].
//!
//! The rest of the PostgreSQL support is in the submodules: [`restore`] (logical restores),
//! [`physical`] (base backups), [`basebackup`] (the record a base backup carries), [`pitr`]
//! (point-in-time recovery), [`wal`] (the WAL archive), [`conn`] and [`tls`] (connections)
//! and [`tools`] (finding and running the client programs).

pub mod basebackup;
pub mod conn;
pub mod physical;
pub mod pitr;
pub mod restore;
pub mod scratch;
pub mod scratch_db;
pub mod tls;
pub mod tools;
pub mod wal;

use super::stream::{save_stream, save_stream_to};
use super::{run, CommonOptions, Metadata, Saved, Session, Source};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::features::{self, Features};
use crate::repo::snapshot::{Kind, Snapshot};
use crate::repo::tree::{Node, Tree};
use crate::repo::Repository;
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use conn::{describe, qualified, PgTarget};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::Arc;
use tools::{status_text, Tool};

/// The directory holding the dumps in a snapshot.
pub const DIR: &str = "postgres";

/// What a database dump's [`SourceInfo`](crate::repo::snapshot::SourceInfo) records.
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
    /// Bytes of the dump: every stream together (the main one and the data streams).
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
    /// Data streams dumped beside the main one (`pg_dump --data-only --table` in the same
    /// snapshot), whose tables' data the main stream leaves out. Empty for a single-stream
    /// dump (and in snapshots made before coffer split dumps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_streams: Vec<DataStream>,
}

/// One data stream of a split dump.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataStream {
    /// Its path in the snapshot, e.g. `/postgres/app.data/01.dump`.
    pub path: String,
    /// Bytes of the stream.
    pub size: u64,
    /// The tables whose data it holds.
    pub tables: Vec<TableName>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }
    /// A pg_dump `--table` pattern that matches exactly this table: both parts in double
    /// quotes (inside which pg_dump takes every character literally), quotes doubled.
    pub fn pattern(&self) -> String {
        format!(
            "\"{}\".\"{}\"",
            self.schema.replace('"', "\"\""),
            self.name.replace('"', "\"\"")
        )
    }
}

impl Metadata for DumpInfo {
    const KIND: Kind = Kind::Postgres;
}

/// What the [`SourceInfo`](crate::repo::snapshot::SourceInfo) of the `pg_dumpall --globals-only` script records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GlobalsInfo {
    pub server: String,
    pub server_version: String,
    pub pg_dumpall_version: String,
    /// Bytes of the script.
    pub size: u64,
    /// When pg_dumpall was started.
    pub started_at: DateTime<FixedOffset>,
}

impl Metadata for GlobalsInfo {
    const KIND: Kind = Kind::PostgresGlobals;
}

impl DumpInfo {
    /// The data stream holding a table's data, if it is not in the main stream.
    pub fn stream_of(&self, schema: &str, name: &str) -> Option<&DataStream> {
        self.data_streams.iter().find(|d| {
            d.tables
                .iter()
                .any(|t| t.schema == schema && t.name == name)
        })
    }
}

/// How a database's dump is split into concurrent pg_dump streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpSplit {
    /// pg_dump processes per database running at once: the main stream plus `jobs - 1`
    /// data streams at most. 1 dumps everything in one stream.
    pub jobs: usize,
    /// Only tables at least this large (heap plus TOAST, `pg_relation_size`) may move to a
    /// data stream.
    pub min_table_bytes: u64,
}

impl Default for DumpSplit {
    fn default() -> DumpSplit {
        DumpSplit {
            jobs: 2,
            min_table_bytes: 64 << 20,
        }
    }
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
    /// Dump these databases, with the globals (as `all_databases` does, for only these).
    pub databases: Vec<String>,
    pub split: DumpSplit,
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

/// The directory beside [`dump_name`] holding a split dump's data streams.
pub fn data_dir_name(db: &str) -> String {
    format!("{}.data", db.replace('/', "%2F"))
}

/// The name of the `n`th (from 1) data stream in [`data_dir_name`].
pub fn data_stream_name(n: usize) -> String {
    format!("{n:02}.dump")
}

/// Back up one database (or all of them, with the globals) into a new snapshot.
pub fn backup_postgres(
    repo: Arc<Repository>,
    opts: &PostgresOptions,
    progress: &Progress,
) -> Result<Snapshot> {
    let several = opts.all_databases || !opts.databases.is_empty();
    let mut target = PgTarget::resolve(opts.conn.as_deref(), !several, progress)?;
    if several && target.dbname.is_none() {
        target.dbname = Some("postgres".into());
    }
    let source = Dumps::connect(&target, several, &opts.databases, opts.split)?;
    run(repo, source, &opts.common, progress)
}

/// Back up a resolved target: its database, or every database and the globals.
pub fn backup_target(
    repo: Arc<Repository>,
    target: &PgTarget,
    all_databases: bool,
    split: DumpSplit,
    common: &CommonOptions,
    progress: &Progress,
) -> Result<Snapshot> {
    let source = Dumps::connect(target, all_databases, &[], split)?;
    run(repo, source, common, progress)
}

/// Logical dumps of a server's databases, ready to run.
pub struct Dumps<'a> {
    target: &'a PgTarget,
    server: ServerInfo,
    databases: Vec<String>,
    all_databases: bool,
    pg_dump: Tool,
    split: DumpSplit,
}

impl<'a> Dumps<'a> {
    /// Connect to the target, list the databases to dump (its own, or every one that
    /// accepts connections, or of those the ones in `only`) and find a pg_dump for the
    /// server's version.
    pub fn connect(
        target: &'a PgTarget,
        all_databases: bool,
        only: &[String],
        split: DumpSplit,
    ) -> Result<Self> {
        let mut client = target.connect()?;
        let server = ServerInfo::query(&mut client, target)?;
        let mut databases: Vec<String> = if all_databases {
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
        if !only.is_empty() {
            if let Some(missing) = only.iter().find(|d| !databases.contains(d)) {
                return Err(Error::new(
                    ErrorKind::Source,
                    format!(
                        "database {missing:?} is not on the server {} (or does not accept connections); it has: {}",
                        target.server(),
                        databases.join(", ")
                    ),
                )
                .into());
            }
            databases.retain(|d| only.contains(d));
        }
        drop(client);
        let pg_dump = tools::find("pg_dump", server.major())?;
        Ok(Dumps {
            target,
            server,
            databases,
            all_databases,
            pg_dump,
            split,
        })
    }
}

impl Source for Dumps<'_> {
    fn kind(&self) -> Kind {
        Kind::Postgres
    }

    fn save(self: Box<Self>, session: &mut Session, progress: &Progress) -> Result<Saved> {
        let Dumps {
            target,
            server,
            databases,
            all_databases,
            pg_dump,
            split,
        } = *self;
        let mut nodes = Vec::new();
        let mut sources = Vec::new();
        let mut paths = Vec::new();
        let mut size = 0u64;
        let mut requires = Features::default();
        for db in &databases {
            progress.set_message(db.clone());
            let t = target.with_db(db);
            let (dumped, info) = dump_database(session, &t, &server, &pg_dump, split, progress)?;
            let node = dumped[0].clone();
            size += info.dump_size;
            session.summary.files_new += 1 + info.data_streams.len() as u64;
            let path = format!("/{DIR}/{}", node.name.display());
            paths.push(path.clone());
            paths.extend(info.data_streams.iter().map(|d| d.path.clone()));
            if !info.data_streams.is_empty() {
                requires.insert(features::SPLIT_DUMP);
            }
            sources.push(info.entry(db, &path)?);
            nodes.extend(dumped);
        }
        if all_databases {
            progress.set_message("globals");
            let (node, info) = dump_globals(session, target, &server, progress)?;
            size += node.size;
            session.summary.files_new += 1;
            let path = format!("/{DIR}/{}", node.name.display());
            paths.push(path.clone());
            sources.push(info.entry("globals", &path)?);
            nodes.push(node);
        }
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let sub = session.save_tree(Tree { nodes })?;
        Ok(Saved {
            nodes: vec![Node::dir(DIR, sub, now)],
            paths,
            size,
            parent: None,
            excludes: vec![],
            sources,
            requires,
        })
    }
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

/// Heap plus TOAST bytes of every table whose data pg_dump dumps as one `TABLE DATA`
/// entry of its own (ordinary tables and leaf partitions), largest first.
const TABLE_SIZES_SQL: &str = "
SELECT n.nspname::text, c.relname::text,
       (pg_relation_size(c.oid) + COALESCE(pg_relation_size(NULLIF(c.reltoastrelid, 0)), 0))::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 3 DESC, 1, 2";

/// Split the tables (name and size, largest first) into data streams: longest job first
/// onto the least loaded of `split.jobs` streams, where stream 0 is the main one and
/// starts with every table too small to move. Tables that land on the main stream stay
/// there; the data streams returned are the non-empty others.
fn plan_streams(tables: &[(TableName, i64)], split: DumpSplit) -> Vec<Vec<TableName>> {
    if split.jobs <= 1 {
        return Vec::new();
    }
    let size = |s: i64| s.max(0) as u64;
    let main: u64 = tables
        .iter()
        .filter(|(_, s)| size(*s) < split.min_table_bytes)
        .map(|(_, s)| size(*s))
        .sum();
    let mut load = vec![0u64; split.jobs];
    load[0] = main;
    let mut streams: Vec<Vec<TableName>> = vec![Vec::new(); split.jobs];
    let mut big: Vec<&(TableName, i64)> = tables
        .iter()
        .filter(|(_, s)| size(*s) >= split.min_table_bytes)
        .collect();
    big.sort_by_key(|t| std::cmp::Reverse(t.1));
    for (t, s) in big {
        // The least loaded stream; on a tie a data stream before the main one.
        let i = (0..split.jobs)
            .min_by_key(|&i| (load[i], i == 0, i))
            .unwrap_or(0);
        load[i] += size(*s);
        streams[i].push(t.clone());
    }
    streams
        .into_iter()
        .skip(1)
        .filter(|s| !s.is_empty())
        .collect()
}

/// One pg_dump of a database's dump, running.
struct Running {
    child: std::sync::Mutex<std::process::Child>,
    stdout: std::sync::Mutex<Option<std::process::ChildStdout>>,
    stderr: std::sync::Mutex<Option<tools::Stderr>>,
    /// What it dumps, for messages: `pg_dump of database "app"`.
    what: String,
}

/// What one finished pg_dump stream gave.
struct Dumped {
    saved: Result<(Vec<crate::Id>, u64)>,
    status: std::process::ExitStatus,
    said: String,
    head: Vec<u8>,
}

impl Dumped {
    /// The stream's failure, in the words a single-stream dump has always used.
    fn failure(&mut self, what: &str) -> Option<anyhow::Error> {
        if self.saved.is_err() {
            return std::mem::replace(&mut self.saved, Ok((Vec::new(), 0))).err();
        }
        if !self.status.success() {
            let said = if self.said.is_empty() {
                "it printed nothing".to_string()
            } else {
                self.said.clone()
            };
            return Some(
                Error::new(
                    ErrorKind::Source,
                    format!(
                        "{what} failed ({}); no snapshot was written. pg_dump said:\n{said}",
                        status_text(self.status)
                    ),
                )
                .into(),
            );
        }
        if !self.head.starts_with(b"PGDMP") {
            return Some(
                Error::new(
                    ErrorKind::Source,
                    format!(
                        "{what} did not produce a custom-format archive; no snapshot was written"
                    ),
                )
                .into(),
            );
        }
        None
    }
}

/// Run every pg_dump of one database at once, each chunked on its own thread into the
/// one saver. When one fails (non-zero exit, a signal, a cut or foreign stream, a
/// repository error) the others are killed; the error is the first failure's.
fn run_dumps(
    session: &Session,
    running: &[Running],
    progress: &Progress,
) -> Result<Vec<(Vec<crate::Id>, u64, String)>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let failed = AtomicBool::new(false);
    let first = std::sync::Mutex::new(None::<usize>);
    let kill_all = || {
        for r in running {
            if let Ok(mut c) = r.child.lock() {
                let _ = c.kill();
            }
        }
    };
    let params = session.repo.config.chunker;
    let saver = &session.saver;
    let mut results: Vec<Dumped> = std::thread::scope(|sc| {
        let handles: Vec<_> = running
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (failed, first, kill_all) = (&failed, &first, &kill_all);
                sc.spawn(move || {
                    let stdout = r.stdout.lock().unwrap().take();
                    let mut reader = Head {
                        inner: stdout.expect("each stream is read once"),
                        head: Vec::new(),
                    };
                    let saved = save_stream_to(saver, &params, &mut reader, progress);
                    if saved.is_err() {
                        let _ = r.child.lock().unwrap().kill();
                    }
                    // pg_dump has closed its output (or was killed): it is exiting.
                    let status = r.child.lock().unwrap().wait();
                    let said = r
                        .stderr
                        .lock()
                        .unwrap()
                        .take()
                        .map(|s| s.text())
                        .unwrap_or_default();
                    let ok = saved.is_ok()
                        && status.as_ref().is_ok_and(|s| s.success())
                        && reader.head.starts_with(b"PGDMP");
                    if !ok && !failed.swap(true, Ordering::SeqCst) {
                        *first.lock().unwrap() = Some(i);
                        kill_all();
                    }
                    (saved, status, said, reader.head)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    })
    .into_iter()
    .map(|j| {
        let (saved, status, said, head) =
            j.map_err(|_| anyhow::anyhow!("a pg_dump reader thread panicked"))?;
        Ok(Dumped {
            saved,
            status: status?,
            said,
            head,
        })
    })
    .collect::<Result<_>>()?;
    if let Some(i) = *first.lock().unwrap() {
        if let Some(e) = results[i].failure(&running[i].what) {
            return Err(e);
        }
    }
    // No stream failed first, yet one may still have (killed by nothing of ours):
    // report the first in order.
    for (r, d) in running.iter().zip(results.iter_mut()) {
        if let Some(e) = d.failure(&r.what) {
            return Err(e);
        }
    }
    Ok(results
        .into_iter()
        .map(|d| {
            let (content, size) = d.saved.expect("checked above");
            (content, size, d.said)
        })
        .collect())
}

/// Dump one database into the session: the main stream's node first, then (for a split
/// dump) the directory of data streams.
fn dump_database(
    session: &mut Session,
    target: &PgTarget,
    server: &ServerInfo,
    pg_dump: &Tool,
    split: DumpSplit,
    progress: &Progress,
) -> Result<(Vec<Node>, DumpInfo)> {
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
    let streams = if split.jobs > 1 {
        let sizes: Vec<(TableName, i64)> = client
            .query(TABLE_SIZES_SQL, &[])
            .map_err(|e| pg_err(target, "measuring the tables", &e))?
            .iter()
            .map(|r| {
                (
                    TableName {
                        schema: r.get(0),
                        name: r.get(1),
                    },
                    r.get(2),
                )
            })
            .collect();
        plan_streams(&sizes, split)
    } else {
        Vec::new()
    };

    let started_at = now();
    let db = target.db();
    let mut commands = Vec::new();
    // Every stream: the custom format without compression, in the exported snapshot.
    let dump_command = || {
        let mut cmd = pg_dump.command();
        cmd.args(["--format=custom", "--compress=0", "--no-password"])
            .arg(format!("--snapshot={snapshot_id}"));
        cmd
    };
    let mut main = dump_command();
    for t in streams.iter().flatten() {
        main.arg(format!("--exclude-table-data={}", t.pattern()));
    }
    commands.push((main, format!("pg_dump of database {db:?}")));
    for tables in &streams {
        let mut cmd = dump_command();
        cmd.arg("--data-only");
        for t in tables {
            cmd.arg(format!("--table={}", t.pattern()));
        }
        let names: Vec<String> = tables.iter().map(TableName::qualified).collect();
        commands.push((
            cmd,
            format!(
                "pg_dump of the data of {} in database {db:?}",
                names.join(", ")
            ),
        ));
    }
    let mut running = Vec::new();
    for (mut cmd, what) in commands {
        target.configure(&mut cmd);
        match pg_dump.spawn_reader(cmd) {
            Ok((child, stdout, stderr)) => running.push(Running {
                child: child.into(),
                stdout: Some(stdout).into(),
                stderr: Some(stderr).into(),
                what,
            }),
            Err(e) => {
                for r in &running {
                    let mut c = r.child.lock().unwrap();
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e);
            }
        }
    }

    // Count rows in the exported snapshot while pg_dump runs. The transaction stays open
    // until every pg_dump has finished, so each can always import the snapshot.
    let count_target = target.clone();
    let counter = std::thread::spawn(move || {
        let r = count_rows(&mut client, &count_target);
        (client, r)
    });
    let dumped = run_dumps(session, &running, progress);
    let (mut client, counted) = counter
        .join()
        .map_err(|_| anyhow::anyhow!("row counter panicked"))?;
    let _ = client.batch_execute("COMMIT");
    drop(client);
    let dumped = dumped?;
    for (_, _, said) in &dumped {
        for line in said.lines() {
            progress.log(line);
        }
    }
    let tables = counted?;

    let mtime = started_at.timestamp_nanos_opt().unwrap_or(0);
    let mut parts = dumped.into_iter();
    let (content, main_size, _) = parts.next().expect("the main stream");
    let mut nodes = vec![Node::stream(&dump_name(db), main_size, content, mtime)];
    let mut data_streams = Vec::new();
    let mut data_nodes = Vec::new();
    for (n, ((content, size, _), tables)) in parts.zip(streams).enumerate() {
        let name = data_stream_name(n + 1);
        data_streams.push(DataStream {
            path: format!("/{DIR}/{}/{name}", data_dir_name(db)),
            size,
            tables,
        });
        data_nodes.push(Node::stream(&name, size, content, mtime));
    }
    if !data_nodes.is_empty() {
        let sub = session.save_tree(Tree { nodes: data_nodes })?;
        nodes.push(Node::dir(&data_dir_name(db), sub, mtime));
    }
    let info = DumpInfo {
        database: db.to_string(),
        format: "custom".into(),
        server: target.server(),
        server_version: server.version.clone(),
        server_version_num: server.version_num,
        pg_dump_version: pg_dump.version.clone(),
        pg_dump_major: pg_dump.major,
        database_size: row.get(1),
        dump_size: main_size + data_streams.iter().map(|d| d.size).sum::<u64>(),
        started_at,
        finished_at: now(),
        snapshot_time: row.get(2),
        encoding: row.get(3),
        lc_collate: row.get(4),
        lc_ctype: row.get(5),
        tables,
        data_streams,
    };
    Ok((nodes, info))
}

/// Roles and tablespaces from `pg_dumpall --globals-only`, as `globals.sql`.
fn dump_globals(
    session: &mut Session,
    target: &PgTarget,
    server: &ServerInfo,
    progress: &Progress,
) -> Result<(Node, GlobalsInfo)> {
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
    let info = GlobalsInfo {
        server: target.server(),
        server_version: server.version.clone(),
        pg_dumpall_version: tool.version.clone(),
        size,
        started_at,
    };
    let mtime = started_at.timestamp_nanos_opt().unwrap_or(0);
    Ok((Node::stream("globals.sql", size, content, mtime), info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TableName {
        TableName {
            schema: "public".into(),
            name: name.into(),
        }
    }

    const MIB: i64 = 1 << 20;

    #[test]
    fn big_tables_are_balanced_against_the_main_stream() {
        let split = |jobs| DumpSplit {
            jobs,
            min_table_bytes: 64 << 20,
        };
        let tables = [
            (t("accounts"), 768 * MIB),
            (t("events"), 247 * MIB),
            (t("audit"), 100 * MIB),
            (t("small"), 10 * MIB),
        ];
        // Two jobs: the largest table alone; the others stay in the main stream, which
        // ends up with 357 MiB against 768.
        assert_eq!(plan_streams(&tables, split(2)), vec![vec![t("accounts")]]);
        // Three: accounts and events get streams; audit joins the lighter main stream.
        assert_eq!(
            plan_streams(&tables, split(3)),
            vec![vec![t("accounts")], vec![t("events")]]
        );
        // One job, or no table big enough: a single stream.
        assert!(plan_streams(&tables, split(1)).is_empty());
        assert!(plan_streams(&[(t("small"), 10 * MIB)], split(4)).is_empty());
        // Two equal big tables and nothing else: one stays in the main stream.
        let even = [(t("a"), 100 * MIB), (t("b"), 100 * MIB)];
        assert_eq!(plan_streams(&even, split(2)).len(), 1);
    }

    #[test]
    fn table_patterns_match_literally() {
        let odd = TableName {
            schema: "My \"S\"".into(),
            name: "a*b.c?$".into(),
        };
        assert_eq!(odd.pattern(), r#""My ""S"""."a*b.c?$""#);
        assert_eq!(t("x").pattern(), r#""public"."x""#);
    }

    #[test]
    fn dump_info_without_data_streams_still_reads() {
        // The metadata of a dump made before split dumps existed.
        let old = serde_json::json!({
            "database": "app", "format": "custom", "server": "db:5432",
            "server_version": "15.1", "server_version_num": 150001,
            "pg_dump_version": "15.1", "pg_dump_major": 15,
            "database_size": 1, "dump_size": 2,
            "started_at": "2024-05-01T02:00:00Z", "finished_at": "2024-05-01T02:01:00Z",
            "snapshot_time": "2024-05-01 02:00:00+00", "encoding": "UTF8",
            "lc_collate": "C", "lc_ctype": "C",
            "tables": [{"schema": "public", "name": "t", "kind": "table", "rows": 3}]
        });
        let info: DumpInfo = serde_json::from_value(old.clone()).unwrap();
        assert!(info.data_streams.is_empty());
        assert!(info.stream_of("public", "t").is_none());
        // A single-stream dump is still written exactly so.
        assert_eq!(serde_json::to_value(&info).unwrap(), old);
    }
}
