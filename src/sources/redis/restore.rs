//! Restoring a Redis snapshot into a running server (`restore --to-redis`).
//!
//! The RDB is read out of the repository twice, never spooled:
//!
//! 1. **Verify pass.** The whole file is parsed with our own reader ([`super::rdb`]), the
//!    CRC-64 checked, the keys chosen (`--db`, `--key`) and counted; keys that already
//!    exist in the target are looked up (pipelined `EXISTS`) while the file streams by.
//!    A damaged file stops here (exit 3) and nothing has been written.
//! 2. **Checks.** The target must understand the file: one `RESTORE` probe per value type
//!    (the smallest value of that type, with an absolute expiry in the past, which Redis
//!    verifies and loads but does not store) proves that it accepts the RDB version and
//!    has the module types; keys that exist are refused without `--replace`.
//! 3. `--flush`: a safety backup of the target into the repository (tag `safety-backup`),
//!    then `FLUSHDB` of each database restored into.
//! 4. **Write pass.** `RESTORE key ttl payload [REPLACE] ABSTTL`, pipelined in batches,
//!    with the payloads made from the value bytes as they are in the file
//!    ([`Entry::restore_payload`]); keys whose expiry has passed (by the server's clock)
//!    are skipped and counted; then `FUNCTION RESTORE` of the function libraries.
//! 5. **Counts.** Each database's `DBSIZE` is compared with what it should hold now, and
//!    the keys in the file with the snapshot's metadata.

use super::conn::{Conn, ConnOptions, Reply, Target};
use super::rdb::{self, Entry, Item, RdbReader};
use super::{RedisInfo, RedisOptions};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::index::MasterIndex;
use crate::repo::snapshot::{Snapshot, SourceInfo};
use crate::repo::tree::NodeKind;
use crate::repo::Repository;
use crate::sources::{sources_of, CommonOptions};
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::{self, Display, Formatter};
use std::io::{Read, Write};
use std::sync::Arc;

/// Commands per pipelined batch, and bytes: whichever comes first.
const BATCH_COMMANDS: usize = 1000;
const BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Default)]
pub struct RedisRestoreOptions {
    /// The target server (`redis://…`); without one, `REDIS_URL`, then 127.0.0.1:6379.
    pub url: Option<String>,
    pub conn: ConnOptions,
    /// Restore only this database of the snapshot: into the URL's database when it names
    /// one, else into the database with the same number.
    pub db: Option<u32>,
    /// Restore only keys that match one of these globs.
    pub keys: Vec<String>,
    /// Overwrite keys that exist in the target.
    pub replace: bool,
    /// Empty each database restored into first (after a safety backup).
    pub flush: bool,
    /// Flush without asking.
    pub yes: bool,
    /// Back up the target before flushing it.
    pub safety_backup: bool,
    pub dry_run: bool,
}

/// One database: what the snapshot says, what the file holds, what was restored, and
/// what the target holds afterwards.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DbCheck {
    /// The database in the snapshot.
    pub db: u32,
    /// The database restored into.
    pub target_db: u32,
    /// Keys the snapshot's metadata records for the database (whole-database restores).
    pub snapshot_keys: Option<u64>,
    /// Whether those counts are exact (counted in the file, `counts_from: "rdb"`), so that
    /// a difference from the file is damage. Counts from `INFO keyspace` (`"info"`) were
    /// taken just before the server forked: keys written in between make them differ from
    /// the file, which is then reported as a warning, not an error.
    #[serde(skip)]
    pub exact_counts: bool,
    /// Keys of the database in the file.
    pub rdb_keys: u64,
    /// Of those, the ones chosen by `--key` (all without it).
    pub selected: u64,
    /// Chosen keys skipped because their expiry had passed.
    pub expired: u64,
    pub restored: u64,
    /// Keys in the target database before (0 when flushed).
    pub before: u64,
    /// Restored keys that replaced a key of the same name.
    pub replaced: u64,
    /// Keys the database should hold now: before + restored - replaced.
    pub expected: u64,
    /// What it holds (None in a dry run).
    pub actual: Option<u64>,
    /// Keys with an expiry that may have gone since (restored keys whose expiry passed
    /// before the count, keys with an expiry that were there before).
    pub may_have_expired: u64,
}

impl DbCheck {
    /// The file holds what the snapshot says.
    pub fn file_ok(&self) -> bool {
        !self.exact_counts || self.snapshot_keys.is_none_or(|n| n == self.rdb_keys)
    }

    pub fn ok(&self) -> bool {
        self.file_ok()
            && self
                .actual
                .is_none_or(|a| a <= self.expected && a + self.may_have_expired >= self.expected)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisRestoreReport {
    pub snapshot: String,
    /// The target, without credentials.
    pub target: String,
    /// "redis" or "valkey", and its version.
    pub server: String,
    pub server_version: String,
    pub rdb_version: u32,
    pub rdb_bytes: u64,
    pub dry_run: bool,
    /// The key patterns (`--key`).
    pub patterns: Vec<String>,
    pub keys_in_rdb: u64,
    pub keys_selected: u64,
    pub keys_restored: u64,
    pub keys_expired: u64,
    pub keys_replaced: u64,
    pub functions_restored: usize,
    /// Databases emptied before the restore.
    pub flushed: Vec<u32>,
    /// The safety backup of the target taken before flushing it.
    pub safety_snapshot: Option<String>,
    pub databases: Vec<DbCheck>,
    /// What was (or, with --dry-run, would be) done, one line each.
    pub plan: Vec<String>,
    pub warnings: Vec<String>,
}

impl RedisRestoreReport {
    pub fn mismatches(&self) -> usize {
        self.databases.iter().filter(|d| !d.ok()).count()
    }

    /// Errors when a count differs.
    pub fn verdict(&self) -> Result<()> {
        let bad = self.mismatches();
        if bad > 0 {
            return Err(Error::integrity(format!(
                "{bad} of {} databases do not hold the number of keys they should (see the \
                 comparison above)",
                self.databases.len()
            ))
            .into());
        }
        Ok(())
    }

    /// What was done (or would be), before the warnings.
    pub fn plan_text(&self) -> String {
        let mut s = format!(
            "{} snapshot {} into {} ({} {}){}",
            if self.dry_run {
                "dry run, nothing changed: restoring"
            } else {
                "restored"
            },
            self.snapshot,
            self.target,
            self.server,
            self.server_version,
            if self.dry_run { " would:" } else { ":" }
        );
        for line in &self.plan {
            s += &format!("\n  - {line}");
        }
        s
    }
}

/// The comparison of the key counts, after the plan.
impl Display for RedisRestoreReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let mut lines = Vec::new();
        if let Some(s) = &self.safety_snapshot {
            lines.push(format!(
                "safety backup of the target before flushing: snapshot {} (tag safety-backup)",
                &s[..8.min(s.len())]
            ));
        }
        lines.push(format!(
            "key counts per database (snapshot → file → restored → target):{}",
            if self.dry_run { " (dry run)" } else { "" }
        ));
        lines.push(format!(
            "  {:<10} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10}",
            "db", "snapshot", "in file", "expired", "restored", "replaced", "expected", "target"
        ));
        for d in &self.databases {
            let name = if d.db == d.target_db {
                format!("{}", d.db)
            } else {
                format!("{}→{}", d.db, d.target_db)
            };
            let snap = d.snapshot_keys.map_or("-".into(), |n| n.to_string());
            let actual = d.actual.map_or("-".into(), |n| n.to_string());
            let mark = match (d.ok(), d.file_ok()) {
                (true, _) => "ok",
                (false, false) => "MISMATCH (file vs snapshot)",
                (false, true) => "MISMATCH",
            };
            lines.push(format!(
                "  {name:<10} {snap:>10} {:>10} {:>9} {:>10} {:>10} {:>10} {actual:>10}  {mark}",
                d.rdb_keys, d.expired, d.restored, d.replaced, d.expected
            ));
        }
        if !self.patterns.is_empty() {
            lines.push(format!(
                "  ({} of {} keys matched --key {})",
                self.keys_selected,
                self.keys_in_rdb,
                self.patterns.join(" --key ")
            ));
        }
        if !self.dry_run && self.mismatches() == 0 {
            lines.push(format!(
                "{} keys restored, {} expired ones skipped; the key counts match in all {} databases \
                 (RDB checksum verified)",
                self.keys_restored,
                self.keys_expired,
                self.databases.len()
            ));
        }
        f.write_str(&lines.join("\n"))
    }
}

/// The Redis RDB of a snapshot: its source entry and metadata.
pub fn pick_source(snap: &Snapshot) -> Result<(SourceInfo, RedisInfo)> {
    let mut found = sources_of::<RedisInfo>(snap)?;
    match found.len() {
        1 => {
            let (s, m) = found.remove(0);
            Ok((s.clone(), m))
        }
        0 => {
            snap.known_kind()?;
            Err(Error::usage(format!(
                "snapshot {} holds no Redis RDB (it is a {:?} snapshot)",
                snap.id.short(),
                snap.kind.as_str()
            ))
            .into())
        }
        n => Err(Error::usage(format!(
            "snapshot {} holds {n} Redis RDBs; this coffer restores snapshots of one",
            snap.id.short()
        ))
        .into()),
    }
}

/// A file of a snapshot as a [`Read`]: its blobs read and verified on a helper thread, a
/// few ahead; a blob that fails verification is an error of its kind (integrity).
pub struct SnapshotFile {
    rx: crossbeam_channel::Receiver<Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
    read: u64,
    size: u64,
    path: String,
}

impl SnapshotFile {
    pub fn open(
        repo: &Arc<Repository>,
        index: &Arc<MasterIndex>,
        snap: &Snapshot,
        path: &str,
    ) -> Result<SnapshotFile> {
        let node = crate::repo::restore::find_node(repo, index, snap, path)?;
        if !matches!(node.kind, NodeKind::File | NodeKind::Stream) {
            return Err(Error::usage(format!("{path} is not a file or stream")).into());
        }
        let (tx, rx) = crossbeam_channel::bounded::<Result<Vec<u8>>>(8);
        let (repo, index) = (repo.clone(), index.clone());
        let content = node.content.clone();
        std::thread::spawn(move || {
            for c in &content {
                let r = repo.read_blob(&index, c);
                let stop = r.is_err();
                if tx.send(r).is_err() || stop {
                    return;
                }
            }
        });
        Ok(SnapshotFile {
            rx,
            cur: Vec::new(),
            pos: 0,
            read: 0,
            size: node.size,
            path: path.to_string(),
        })
    }

    /// The size the snapshot records.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Read for SnapshotFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(data)) => {
                    self.read += data.len() as u64;
                    self.cur = data;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    let kind = crate::error::kind_of(&e);
                    return Err(std::io::Error::other(Error::new(kind, format!("{e:#}"))));
                }
                Err(_) if self.read != self.size => {
                    return Err(std::io::Error::other(Error::integrity(format!(
                        "{}: read {} bytes, the snapshot records {}",
                        self.path, self.read, self.size
                    ))));
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Which keys to restore, and where.
struct Selection {
    db: Option<u32>,
    /// The database the keys of `db` go into (the URL's, or the same number).
    into: Option<u32>,
    globs: Option<globset::GlobSet>,
}

impl Selection {
    fn new(opts: &RedisRestoreOptions, target: &Target) -> Result<Selection> {
        let globs = if opts.keys.is_empty() {
            None
        } else {
            let mut b = globset::GlobSetBuilder::new();
            for p in &opts.keys {
                let g = globset::GlobBuilder::new(p)
                    .literal_separator(false)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| Error::usage(format!("--key {p:?} is not a valid glob: {e}")))?;
                b.add(g);
            }
            Some(
                b.build()
                    .map_err(|e| Error::usage(format!("--key patterns: {e}")))?,
            )
        };
        Ok(Selection {
            db: opts.db,
            into: opts.db.map(|n| target.db().unwrap_or(n)),
            globs,
        })
    }

    fn wants(&self, e: &Entry) -> bool {
        if self.db.is_some_and(|d| d != e.db) {
            return false;
        }
        match &self.globs {
            None => true,
            Some(g) => {
                use std::os::unix::ffi::OsStrExt;
                g.is_match(std::ffi::OsStr::from_bytes(&e.key))
            }
        }
    }

    fn target_db(&self, db: u32) -> u32 {
        self.into.unwrap_or(db)
    }
}

/// A stable 64-bit digest of a (database, key) pair, to remember keys cheaply.
fn key_id(db: u32, key: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&db.to_le_bytes());
    h.update(key);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

fn server_error(conn: &Conn, what: &str, e: &str) -> anyhow::Error {
    Error::new(
        ErrorKind::Source,
        format!("Redis at {} refused {what}: {e}", conn.target()),
    )
    .into()
}

fn unexpected(conn: &Conn, what: &str, r: &Reply) -> anyhow::Error {
    Error::new(
        ErrorKind::Source,
        format!(
            "Redis at {}: unexpected answer to {what}: {r:?}",
            conn.target()
        ),
    )
    .into()
}

fn select(conn: &mut Conn, db: u32) -> Result<()> {
    match conn.command(&[b"SELECT", db.to_string().as_bytes()])? {
        Reply::Status(_) => Ok(()),
        Reply::Error(e) => Err(Error::usage(format!(
            "the target {} has no database {db} ({e}); restore into another one with --db and a \
             database in the URL, or raise its 'databases' setting",
            conn.target()
        ))
        .into()),
        r => Err(unexpected(conn, "SELECT", &r)),
    }
}

fn dbsize(conn: &mut Conn) -> Result<u64> {
    match conn.command(&[b"DBSIZE"])? {
        Reply::Int(n) => Ok(n.max(0) as u64),
        Reply::Error(e) => Err(server_error(conn, "DBSIZE", &e)),
        r => Err(unexpected(conn, "DBSIZE", &r)),
    }
}

/// The server's clock, in Unix milliseconds (`TIME`), or None if it refuses.
fn server_time_ms(conn: &mut Conn) -> Result<Option<i64>> {
    Ok(match conn.command(&[b"TIME"])? {
        Reply::Array(Some(v)) if v.len() == 2 => {
            let num = |r: &Reply| r.text().and_then(|t| t.parse::<i64>().ok());
            match (num(&v[0]), num(&v[1])) {
                (Some(s), Some(us)) => Some(s * 1000 + us / 1000),
                _ => None,
            }
        }
        _ => None,
    })
}

fn local_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The server's "now", from our clock and the offset measured once.
struct Clock {
    skew_ms: i64,
}

impl Clock {
    fn now(&self) -> i64 {
        local_ms() + self.skew_ms
    }
}

/// Pipelined `EXISTS` of the chosen keys during the verify pass.
#[derive(Default)]
struct ExistsCheck {
    batch: Vec<(u32, [u8; 16], Vec<u8>)>,
    db: Option<u32>,
    found: u64,
    per_db: BTreeMap<u32, u64>,
    examples: Vec<String>,
    /// The keys found, when they will be replaced (to count replacements exactly).
    ids: HashSet<[u8; 16]>,
    keep_ids: bool,
}

impl ExistsCheck {
    fn add(&mut self, conn: &mut Conn, tdb: u32, key: &[u8]) -> Result<()> {
        if self.db != Some(tdb) {
            self.run(conn)?;
            select(conn, tdb)?;
            self.db = Some(tdb);
        }
        self.batch.push((tdb, key_id(tdb, key), key.to_vec()));
        if self.batch.len() >= BATCH_COMMANDS {
            self.run(conn)?;
        }
        Ok(())
    }

    fn run(&mut self, conn: &mut Conn) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        for (_, _, k) in &self.batch {
            conn.send(&[b"EXISTS", k])?;
        }
        conn.flush()?;
        for (tdb, id, k) in std::mem::take(&mut self.batch) {
            match conn.read_reply()? {
                Reply::Int(0) => {}
                Reply::Int(_) => {
                    self.found += 1;
                    *self.per_db.entry(tdb).or_default() += 1;
                    if self.examples.len() < 5 {
                        self.examples
                            .push(format!("{} in db {tdb}", rdb::key_display(&k)));
                    }
                    if self.keep_ids {
                        self.ids.insert(id);
                    }
                }
                Reply::Error(e) => return Err(server_error(conn, "EXISTS", &e)),
                r => return Err(unexpected(conn, "EXISTS", &r)),
            }
        }
        Ok(())
    }
}

/// What the verify pass learnt.
#[derive(Default)]
struct Verified {
    rdb_version: u32,
    size: u64,
    checksum: bool,
    /// Per source database: keys in the file, keys chosen, chosen keys already expired.
    per_db: BTreeMap<u32, (u64, u64, u64)>,
    /// The smallest chosen value of each type (and module type), for the probes.
    probes: BTreeMap<(u8, Option<String>), Entry>,
    module_aux: Vec<String>,
    functions: Vec<rdb::Function>,
    existing: Option<ExistsCheck>,
}

fn verify_pass(
    file: SnapshotFile,
    sel: &Selection,
    mut exists: Option<(&mut Conn, ExistsCheck, &BTreeSet<u32>)>,
    clock: &Clock,
    progress: &Progress,
) -> Result<Verified> {
    let mut r = RdbReader::new(file)?;
    let mut v = Verified {
        rdb_version: r.header().version,
        ..Default::default()
    };
    let mut reported = 0;
    let now = clock.now();
    while let Some(item) = r.next_item()? {
        let off = r.offset();
        progress.inc(off - reported);
        reported = off;
        let e = match item {
            Item::Key(e) => e,
            Item::Function(f) => {
                v.functions.push(f);
                continue;
            }
        };
        let c = v.per_db.entry(e.db).or_default();
        c.0 += 1;
        if !sel.wants(&e) {
            continue;
        }
        c.1 += 1;
        if e.expire_ms.is_some_and(|t| t <= now) {
            c.2 += 1;
            continue;
        }
        let tdb = sel.target_db(e.db);
        if let Some((conn, check, dbs)) = exists.as_mut() {
            if dbs.contains(&tdb) {
                check.add(conn, tdb, &e.key)?;
            }
        }
        let kind = (e.type_byte, e.module.clone());
        let smaller = v
            .probes
            .get(&kind)
            .is_none_or(|p| e.value.len() < p.value.len());
        if smaller {
            v.probes.insert(kind, e);
        }
    }
    if let Some((conn, mut check, _)) = exists {
        check.run(conn)?;
        v.existing = Some(check);
    }
    let t = r.trailer().cloned().unwrap_or_default();
    progress.inc(t.size - reported);
    v.size = t.size;
    v.checksum = t.checksum.is_some();
    v.module_aux = r.module_aux().to_vec();
    Ok(v)
}

/// A key name no one uses, for the probes.
fn probe_key() -> Vec<u8> {
    use rand::Rng;
    let n: u128 = rand::thread_rng().gen();
    format!("coffer:restore-probe:{n:032x}").into_bytes()
}

/// `RESTORE` with an absolute expiry in the past: the server checks the payload's version
/// and CRC and loads the value (which needs its module), then stores nothing.
fn probe(conn: &mut Conn, key: &[u8], payload: &[u8]) -> Result<std::result::Result<(), String>> {
    match conn.command(&[b"RESTORE", key, b"1", payload, b"ABSTTL"])? {
        Reply::Status(_) => Ok(Ok(())),
        Reply::Error(e) => Ok(Err(e)),
        r => Err(unexpected(conn, "RESTORE", &r)),
    }
}

fn type_name(t: u8) -> &'static str {
    match t {
        0 => "string",
        1 | 10 | 14 | 18 => "list",
        2 | 11 | 20 => "set",
        3 | 5 | 12 | 17 => "sorted set",
        4 | 9 | 13 | 16 => "hash",
        22..=25 => "hash with field expiry",
        15 | 19 | 21 => "stream",
        6 | 7 => "module",
        _ => "value",
    }
}

/// The module names `MODULE LIST` shows, for messages (None when it is refused).
fn module_list(conn: &mut Conn) -> Result<Option<Vec<String>>> {
    Ok(match conn.command(&[b"MODULE", b"LIST"])? {
        Reply::Array(Some(mods)) => Some(
            mods.iter()
                .filter_map(|m| match m {
                    Reply::Array(Some(kv)) => kv
                        .chunks(2)
                        .find(|p| p[0].text().as_deref() == Some("name"))
                        .and_then(|p| p.get(1)?.text()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    })
}

/// The function libraries the target has (`FUNCTION LIST`).
fn function_libraries(conn: &mut Conn) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    if let Reply::Array(Some(libs)) = conn.command(&[b"FUNCTION", b"LIST"])? {
        for l in libs {
            if let Reply::Array(Some(kv)) = l {
                for p in kv.chunks(2) {
                    if p[0].text().as_deref() == Some("library_name") {
                        if let Some(n) = p.get(1).and_then(Reply::text) {
                            out.insert(n);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Restore a snapshot's RDB into a running server (see the module documentation).
/// `confirm(question, word)` is asked before databases that hold keys are flushed (unless
/// `yes`); the user types `word` to go on, and false refuses.
pub fn restore_redis(
    repo: &Arc<Repository>,
    index: &Arc<MasterIndex>,
    snap: &Snapshot,
    opts: &RedisRestoreOptions,
    progress: &Progress,
    confirm: &mut dyn FnMut(&str, &str) -> Result<bool>,
) -> Result<RedisRestoreReport> {
    let (source, info) = pick_source(snap)?;
    let target = Target::resolve(opts.url.as_deref())?;
    let sel = Selection::new(opts, &target)?;
    if let Some(d) = opts.db {
        if !info.databases.iter().any(|c| c.db == d) {
            let have: Vec<String> = info.databases.iter().map(|c| c.db.to_string()).collect();
            progress.warn(&format!(
                "the snapshot's metadata records no keys in database {d} (it has: {})",
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ));
        }
    }
    // A URL database with a snapshot of others: said before the whole file is read, when
    // the metadata tells (and again after the verify pass, from the keys chosen).
    if let (None, true, Some(u)) = (opts.db, opts.keys.is_empty(), target.db()) {
        let others: Vec<u32> = info.databases.iter().map(|c| c.db).collect();
        if others.iter().any(|&d| d != u) {
            return Err(url_db_error(u, &others));
        }
    }
    let mut conn = Conn::connect(&target, &opts.conn)?;
    let server_info = conn.info("server")?;
    let server = match server_info.get("server_name") {
        Some(n) if !n.is_empty() => n.clone(),
        _ => "redis".to_string(),
    };
    let server_version = server_info
        .get(&format!("{server}_version"))
        .or_else(|| server_info.get("redis_version"))
        .cloned()
        .unwrap_or_default();
    let keyspace = super::keyspace(&conn.info("keyspace")?);
    let clock = Clock {
        skew_ms: server_time_ms(&mut conn)?.map_or(0, |t| t - local_ms()),
    };
    let mut report = RedisRestoreReport {
        snapshot: snap.id.short(),
        target: target.display(),
        server: server.clone(),
        server_version: server_version.clone(),
        rdb_version: info.rdb_version,
        dry_run: opts.dry_run,
        patterns: opts.keys.clone(),
        ..Default::default()
    };

    // 1. The verify pass, with the existence check of the chosen keys in the databases
    // that hold keys and are not flushed.
    progress.set_message("reading and verifying the RDB");
    let file = SnapshotFile::open(repo, index, snap, &source.path)?;
    progress.set_total(file.size());
    let nonempty: BTreeSet<u32> = keyspace
        .iter()
        .filter(|c| c.keys > 0)
        .map(|c| c.db)
        .collect();
    let check = ExistsCheck {
        keep_ids: opts.replace,
        ..Default::default()
    };
    let exists = (!opts.flush && !nonempty.is_empty()).then_some((&mut conn, check, &nonempty));
    let v = verify_pass(file, &sel, exists, &clock, progress)
        .with_context(|| format!("{} in snapshot {}", source.path, snap.id.short()))?;
    report.rdb_version = v.rdb_version;
    report.rdb_bytes = v.size;
    if v.rdb_version != info.rdb_version {
        let w = format!(
            "the snapshot's metadata says RDB version {}, the file is version {}",
            info.rdb_version, v.rdb_version
        );
        progress.warn(&w);
        report.warnings.push(w);
    }
    let selected_dbs: Vec<u32> = v
        .per_db
        .iter()
        .filter(|(_, c)| c.1 > 0)
        .map(|(d, _)| *d)
        .collect();
    if opts.db.is_none() {
        if let Some(u) = target.db() {
            if selected_dbs.iter().any(|&d| d != u) {
                return Err(url_db_error(u, &selected_dbs));
            }
        }
    }
    report.plan.push(format!(
        "check the RDB of snapshot {} (version {}, {} bytes): read and verified, checksum {}",
        snap.id.short(),
        v.rdb_version,
        v.size,
        if v.checksum {
            "matches"
        } else {
            "not written by the server"
        }
    ));

    // 2. The target must understand every kind of value.
    progress.set_message("checking the target");
    let pkey = probe_key();
    for ((t, _), e) in &v.probes {
        if let Err(err) = probe(&mut conn, &pkey, &e.restore_payload(v.rdb_version))? {
            let what = match &e.module {
                Some(m) => {
                    let list = module_list(&mut conn)?
                        .map(|l| {
                            if l.is_empty() {
                                "none loaded".to_string()
                            } else {
                                format!("loaded: {}", l.join(", "))
                            }
                        })
                        .unwrap_or_else(|| "MODULE LIST refused".into());
                    format!(
                        "the target has no module for module type {m:?} ({list}); load the module \
                         that provides it on the target first"
                    )
                }
                None if err.contains("payload version") => format!(
                    "the RDB is version {} and {} {} at {} does not read it (it refuses the \
                     payload: {err}); restore into a server at least as new as the one backed up \
                     ({} {})",
                    v.rdb_version, server, server_version, report.target, info.server, info.version
                ),
                None => format!(
                    "{} {} at {} cannot load {} values (RDB type {t}) of this RDB: {err}",
                    server,
                    server_version,
                    report.target,
                    type_name(*t)
                ),
            };
            let kind = if err.starts_with("READONLY") || err.starts_with("NOPERM") {
                ErrorKind::Source
            } else {
                ErrorKind::Usage
            };
            return Err(Error::new(kind, format!("nothing was restored: {what}")).into());
        }
    }
    if !v.module_aux.is_empty() {
        let w = format!(
            "the RDB holds module data that is not a key ({}); RESTORE cannot carry it, so it is \
             not restored",
            v.module_aux.join(", ")
        );
        progress.warn(&w);
        report.warnings.push(w);
    }

    // Keys that exist.
    let existing = v.existing.unwrap_or_default();
    if existing.found > 0 && !opts.replace {
        return Err(Error::usage(format!(
            "nothing was restored: {} of the keys to restore exist in the target already (e.g. {}); \
             pass --replace to overwrite them, or --flush to empty the databases restored into \
             first",
            existing.found,
            existing.examples.join(", ")
        ))
        .into());
    }

    // Function libraries: only in a restore of everything.
    let whole = opts.db.is_none() && opts.keys.is_empty();
    let functions: Vec<&rdb::Function> = if whole {
        v.functions.iter().collect()
    } else {
        Vec::new()
    };
    if !whole && !v.functions.is_empty() {
        let w = format!(
            "the RDB holds {} function libraries; they are restored only with neither --db nor --key",
            v.functions.len()
        );
        progress.warn(&w);
        report.warnings.push(w);
    }
    if !functions.is_empty() && !opts.replace && !opts.flush {
        let have = function_libraries(&mut conn)?;
        let clash: Vec<&str> = functions
            .iter()
            .filter_map(|f| f.name.as_deref())
            .filter(|n| have.contains(*n))
            .collect();
        if !clash.is_empty() {
            return Err(Error::usage(format!(
                "nothing was restored: the target has function libraries of the same name \
                 already ({}); pass --replace to replace them",
                clash.join(", ")
            ))
            .into());
        }
    }

    // The databases, with what they hold now.
    let mut checks: Vec<DbCheck> = Vec::new();
    for (&db, &(in_file, chosen, expired)) in &v.per_db {
        if opts.db.is_some_and(|d| d != db) || (chosen == 0 && !whole) {
            continue;
        }
        let tdb = sel.target_db(db);
        select(&mut conn, tdb)?;
        let before = dbsize(&mut conn)?;
        let before_expires = keyspace
            .iter()
            .find(|c| c.db == tdb)
            .map_or(0, |c| c.expires);
        checks.push(DbCheck {
            db,
            target_db: tdb,
            snapshot_keys: opts.keys.is_empty().then(|| {
                info.databases
                    .iter()
                    .find(|c| c.db == db)
                    .map_or(0, |c| c.keys)
            }),
            rdb_keys: in_file,
            selected: chosen,
            expired,
            before,
            may_have_expired: if opts.flush { 0 } else { before_expires },
            ..Default::default()
        });
    }
    let exact = info.counts_from == "rdb";
    for d in checks.iter_mut() {
        d.exact_counts = exact;
    }
    if whole {
        // Databases the snapshot's metadata has and the file has not.
        for c in &info.databases {
            if !checks.iter().any(|d| d.db == c.db) {
                select(&mut conn, c.db)?;
                checks.push(DbCheck {
                    db: c.db,
                    target_db: c.db,
                    snapshot_keys: Some(c.keys),
                    exact_counts: exact,
                    before: dbsize(&mut conn)?,
                    ..Default::default()
                });
            }
        }
        checks.sort_by_key(|d| d.db);
    }
    let off: Vec<String> = checks
        .iter()
        .filter(|d| !exact && d.snapshot_keys.is_some_and(|n| n != d.rdb_keys))
        .map(|d| {
            format!(
                "db{}: {} in the file, {} in INFO at backup",
                d.db,
                d.rdb_keys,
                d.snapshot_keys.unwrap_or(0)
            )
        })
        .collect();
    if !off.is_empty() {
        report.warnings.push(format!(
            "the snapshot's key counts came from INFO keyspace just before the server forked,              and differ from the file ({}): keys were written in between; the restore is              checked against the file",
            off.join("; ")
        ));
    }
    report.keys_in_rdb = v.per_db.values().map(|c| c.0).sum();
    report.keys_selected = checks.iter().map(|d| d.selected).sum();
    let to_restore: u64 = checks.iter().map(|d| d.selected - d.expired).sum();
    let flush_dbs: Vec<u32> = if opts.flush {
        checks
            .iter()
            .filter(|d| d.selected > 0 && d.before > 0)
            .map(|d| d.target_db)
            .collect()
    } else {
        Vec::new()
    };
    let safety = opts.safety_backup && !flush_dbs.is_empty();
    if safety {
        report.plan.push(format!(
            "back up the target {} into the repository (tag safety-backup)",
            report.target
        ));
    }
    if !flush_dbs.is_empty() {
        let held: u64 = checks
            .iter()
            .filter(|d| flush_dbs.contains(&d.target_db))
            .map(|d| d.before)
            .sum();
        report.plan.push(format!(
            "empty database(s) {} of the target (FLUSHDB; {held} keys in them now)",
            join(&flush_dbs)
        ));
    }
    let expired: u64 = checks.iter().map(|d| d.expired).sum();
    report.plan.push(format!(
        "restore {to_restore} keys into database(s) {} with pipelined RESTORE{}{}",
        join(&checks.iter().map(|d| d.target_db).collect::<Vec<_>>()),
        if opts.replace && existing.found > 0 {
            format!(", replacing the {} that exist", existing.found)
        } else {
            String::new()
        },
        if expired > 0 {
            format!(" ({expired} keys whose expiry has passed are skipped)")
        } else {
            String::new()
        }
    ));
    if !functions.is_empty() {
        report.plan.push(format!(
            "restore {} function libraries (FUNCTION RESTORE{})",
            functions.len(),
            if opts.replace || opts.flush {
                " REPLACE"
            } else {
                ""
            }
        ));
    }
    report
        .plan
        .push("compare the key counts of each database".into());
    if opts.dry_run {
        for d in &mut checks {
            let before = if flush_dbs.contains(&d.target_db) {
                0
            } else {
                d.before
            };
            d.replaced = existing.per_db.get(&d.target_db).copied().unwrap_or(0);
            d.expected = (before + (d.selected - d.expired)).saturating_sub(d.replaced);
        }
        report.keys_expired = expired;
        report.databases = checks;
        return Ok(report);
    }

    // 3. Flush, after the confirmation and the safety backup.
    if !flush_dbs.is_empty() {
        if !opts.yes {
            let question = format!(
                "Database(s) {} of {} hold keys. --flush empties them before the restore{}.",
                join(&flush_dbs),
                report.target,
                if safety {
                    " (a safety backup is taken first)"
                } else {
                    ""
                }
            );
            if !confirm(&question, "flush")? {
                return Err(Error::usage(format!(
                    "database(s) {} of {} hold keys; refusing to flush them without \
                     confirmation. Pass --yes to flush them{}",
                    join(&flush_dbs),
                    report.target,
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
            progress.set_message("safety backup of the target");
            let s = super::backup_redis(
                repo.clone(),
                &RedisOptions {
                    url: opts.url.clone(),
                    conn: opts.conn.clone(),
                    common: CommonOptions {
                        tags: vec![
                            "safety-backup".into(),
                            format!("before-restore-{}", snap.id.short()),
                        ],
                        ..Default::default()
                    },
                    ..Default::default()
                },
                progress,
            )
            .context("the safety backup of the target failed; nothing was changed")?;
            report.safety_snapshot = Some(s.id.to_hex());
        }
        for &db in &flush_dbs {
            select(&mut conn, db)?;
            match conn.command(&[b"FLUSHDB"])? {
                Reply::Status(_) => {}
                Reply::Error(e) => return Err(server_error(&conn, "FLUSHDB", &e)),
                r => return Err(unexpected(&conn, "FLUSHDB", &r)),
            }
            if let Some(d) = checks.iter_mut().find(|d| d.target_db == db) {
                d.before = 0;
                d.may_have_expired = 0;
            }
        }
        report.flushed = flush_dbs;
    }

    // 4. The write pass.
    progress.set_message("restoring keys");
    let file = SnapshotFile::open(repo, index, snap, &source.path)?;
    progress.set_total(file.size() * 2);
    let out = write_pass(
        &mut conn,
        file,
        &Plan {
            sel: &sel,
            clock: &clock,
            replace: opts.replace,
            existing: &existing.ids,
            version: v.rdb_version,
        },
        progress,
    );
    let Written {
        restored,
        expiries,
        expired_now,
        replaced,
        failure,
        error,
    } = out;
    let total: u64 = restored.values().sum();
    if let Some(e) = error {
        return Err(partial(e, &report, total));
    }
    if let Some((key, err)) = failure {
        return Err(partial(
            Error::new(
                ErrorKind::Source,
                format!(
                    "Redis at {} refused RESTORE of key {key}: {err}",
                    report.target
                ),
            )
            .into(),
            &report,
            total,
        ));
    }
    if !functions.is_empty() {
        let mut p = Vec::new();
        for f in &functions {
            p.extend_from_slice(&f.raw);
        }
        let payload = rdb::finish_payload(p, v.rdb_version);
        let mut args: Vec<&[u8]> = vec![b"FUNCTION", b"RESTORE", &payload];
        if opts.replace || opts.flush {
            args.push(b"REPLACE");
        }
        match conn.command(&args)? {
            Reply::Status(_) => report.functions_restored = functions.len(),
            Reply::Error(e) => {
                return Err(partial(
                    server_error(&conn, "FUNCTION RESTORE", &e),
                    &report,
                    restored.values().sum(),
                ))
            }
            r => return Err(unexpected(&conn, "FUNCTION RESTORE", &r)),
        }
    }

    // 5. The counts.
    progress.set_message("comparing key counts");
    for d in &mut checks {
        d.expired = expired_now.get(&d.db).copied().unwrap_or(0);
        d.restored = restored.get(&d.target_db).copied().unwrap_or(0);
        d.replaced = replaced.get(&d.target_db).copied().unwrap_or(0);
        d.expected = (d.before + d.restored).saturating_sub(d.replaced);
        select(&mut conn, d.target_db)?;
        d.actual = Some(dbsize(&mut conn)?);
        let now = clock.now();
        d.may_have_expired += expiries
            .get(&d.target_db)
            .map_or(0, |v| v.iter().filter(|&&t| t <= now).count() as u64);
    }
    report.keys_restored = checks.iter().map(|d| d.restored).sum();
    report.keys_expired = checks.iter().map(|d| d.expired).sum();
    report.keys_replaced = checks.iter().map(|d| d.replaced).sum();
    report.databases = checks;
    Ok(report)
}

/// A failure of the write pass: the target holds part of the snapshot.
fn partial(e: anyhow::Error, report: &RedisRestoreReport, restored: u64) -> anyhow::Error {
    let safety = report
        .safety_snapshot
        .as_deref()
        .map(|s| {
            format!(
                "; snapshot {} (tag safety-backup) holds what it held before",
                &s[..8]
            )
        })
        .unwrap_or_default();
    e.context(format!(
        "the restore into {} stopped after {restored} keys: the target is only partly \
         restored{safety}",
        report.target
    ))
}

fn url_db_error(url_db: u32, dbs: &[u32]) -> anyhow::Error {
    Error::usage(format!(
        "the URL names database {url_db}, but the keys to restore are in database(s) {}; \
         restore one database into it with --db N, or leave the database out of the URL to \
         restore each database into the one with its number",
        join(dbs)
    ))
    .into()
}

fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// What a reply in flight answers.
enum Pending {
    Select,
    Restore {
        db: u32,
        key: Vec<u8>,
        expire: Option<i64>,
    },
}

/// What the write pass restores, and how.
struct Plan<'a> {
    sel: &'a Selection,
    clock: &'a Clock,
    replace: bool,
    /// The keys that exist in the target (with --replace).
    existing: &'a HashSet<[u8; 16]>,
    version: u32,
}

/// Commands ready to send, with what their replies answer.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    pending: Vec<Pending>,
    /// Bytes of the RDB read up to the end of this batch.
    offset: u64,
}

/// What the write pass did.
#[derive(Default)]
struct Written {
    /// Keys restored per target database.
    restored: BTreeMap<u32, u64>,
    /// Expiries of the restored keys that have one, per target database.
    expiries: BTreeMap<u32, Vec<i64>>,
    /// Chosen keys skipped because their expiry had passed, per source database.
    expired_now: BTreeMap<u32, u64>,
    /// Restored keys that replaced one, per target database.
    replaced: BTreeMap<u32, u64>,
    /// The first refused RESTORE: (key, error).
    failure: Option<(String, String)>,
    /// Reading the RDB or talking to the server failed.
    error: Option<anyhow::Error>,
}

/// Append one command in RESP to `out`.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Append `RESTORE key ttl payload [REPLACE] [ABSTTL]`, the payload written straight from
/// the value bytes (its footer's CRC computed as they are copied).
fn encode_restore(out: &mut Vec<u8>, e: &Entry, version: u32, replace: bool) {
    let ttl = e.expire_ms.map_or("0".to_string(), |t| t.to_string());
    let n = 4 + usize::from(replace) + usize::from(e.expire_ms.is_some());
    out.extend_from_slice(format!("*{n}\r\n$7\r\nRESTORE\r\n").as_bytes());
    out.extend_from_slice(format!("${}\r\n", e.key.len()).as_bytes());
    out.extend_from_slice(&e.key);
    out.extend_from_slice(format!("\r\n${}\r\n{ttl}\r\n", ttl.len()).as_bytes());
    out.extend_from_slice(format!("${}\r\n", e.value.len() + 11).as_bytes());
    let start = out.len();
    out.push(e.type_byte);
    out.extend_from_slice(&e.value);
    out.extend_from_slice(&(version as u16).to_le_bytes());
    let crc = rdb::crc64(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(b"\r\n");
    if replace {
        out.extend_from_slice(b"$7\r\nREPLACE\r\n");
    }
    if e.expire_ms.is_some() {
        out.extend_from_slice(b"$6\r\nABSTTL\r\n");
    }
}

/// The write pass: one thread reads the RDB and encodes batches of commands, this one sends
/// them and reads the replies of each batch after the next one is sent, so that parsing,
/// the network and the server work at the same time.
fn write_pass(conn: &mut Conn, file: SnapshotFile, plan: &Plan, progress: &Progress) -> Written {
    let (tx, rx) = crossbeam_channel::bounded::<Batch>(4);
    let mut w = Written::default();
    std::thread::scope(|sc| {
        let producer = sc.spawn(move || -> Result<Written> {
            let mut counts = Written::default();
            let mut r = RdbReader::new(file)?;
            let mut b = Batch::default();
            let mut db = None;
            while let Some(item) = r.next_item()? {
                let Item::Key(e) = item else { continue };
                if !plan.sel.wants(&e) {
                    continue;
                }
                let tdb = plan.sel.target_db(e.db);
                if e.expire_ms.is_some_and(|t| t <= plan.clock.now()) {
                    *counts.expired_now.entry(e.db).or_default() += 1;
                    continue;
                }
                if plan.replace && plan.existing.contains(&key_id(tdb, &e.key)) {
                    *counts.replaced.entry(tdb).or_default() += 1;
                }
                if db != Some(tdb) {
                    encode(&mut b.bytes, &[b"SELECT", tdb.to_string().as_bytes()]);
                    b.pending.push(Pending::Select);
                    db = Some(tdb);
                }
                encode_restore(&mut b.bytes, &e, plan.version, plan.replace);
                b.pending.push(Pending::Restore {
                    db: tdb,
                    key: e.key,
                    expire: e.expire_ms,
                });
                if b.pending.len() >= BATCH_COMMANDS || b.bytes.len() >= BATCH_BYTES {
                    b.offset = r.offset();
                    if tx.send(std::mem::take(&mut b)).is_err() {
                        return Ok(counts); // the sender stopped
                    }
                }
            }
            b.offset = r.offset();
            tx.send(b).ok();
            Ok(counts)
        });
        let mut inflight: Vec<Pending> = Vec::new();
        let mut reported = 0;
        let mut send = |batch: Batch, w: &mut Written| -> Result<()> {
            let s = conn.raw().get_mut();
            s.write_all(&batch.bytes)
                .and_then(|()| s.flush())
                .map_err(|e| {
                    Error::new(ErrorKind::Source, format!("sending to Redis failed: {e}"))
                })?;
            read_replies(conn, std::mem::take(&mut inflight), w)?;
            inflight = batch.pending;
            progress.inc(batch.offset - reported);
            reported = batch.offset;
            Ok(())
        };
        for batch in rx.iter() {
            if let Err(e) = send(batch, &mut w) {
                w.error = Some(e);
                break;
            }
            if w.failure.is_some() {
                break;
            }
        }
        drop(rx);
        if w.error.is_none() {
            if let Err(e) = read_replies(conn, std::mem::take(&mut inflight), &mut w) {
                w.error = Some(e);
            }
        }
        match producer.join() {
            Ok(Ok(c)) => {
                w.expired_now = c.expired_now;
                w.replaced = c.replaced;
            }
            Ok(Err(e)) => {
                w.error.get_or_insert(e);
            }
            Err(_) => {
                w.error
                    .get_or_insert_with(|| anyhow::anyhow!("the RDB reading thread panicked"));
            }
        }
    });
    w
}

/// Read the replies of the commands in `pending`.
fn read_replies(conn: &mut Conn, pending: Vec<Pending>, w: &mut Written) -> Result<()> {
    for p in pending {
        let reply = conn.read_reply()?;
        match (p, reply) {
            (Pending::Select, Reply::Status(_)) => {}
            (Pending::Select, Reply::Error(e)) => return Err(server_error(conn, "SELECT", &e)),
            (Pending::Restore { db, expire, .. }, Reply::Status(_)) => {
                *w.restored.entry(db).or_default() += 1;
                if let Some(t) = expire {
                    w.expiries.entry(db).or_default().push(t);
                }
            }
            (Pending::Restore { key, .. }, Reply::Error(e)) => {
                if w.failure.is_none() {
                    w.failure = Some((rdb::key_display(&key), e));
                }
            }
            (_, r) => return Err(unexpected(conn, "RESTORE", &r)),
        }
    }
    Ok(())
}
