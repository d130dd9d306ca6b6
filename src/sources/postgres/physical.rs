//! PostgreSQL physical base backups: the data directory copied into the deduplicated
//! store between `pg_backup_start` and `pg_backup_stop` (non-exclusive, one session).
//!
//! What is left out follows PostgreSQL's own base backup: the contents of `pg_wal/` and of
//! the runtime directories (`pg_replslot`, `pg_stat_tmp`, …; the directories themselves are
//! kept), `postmaster.pid`/`.opts`, `pg_internal.init`, temporary files and relations,
//! and every fork of an unlogged relation except its `_init` fork. `global/pg_control` is
//! read last. Files that change, shrink or vanish during the copy are normal: WAL replay
//! from the backup's start repairs them, which is why a base backup is only usable with
//! the WAL from its start to its stop LSN, and why the snapshot is written only after
//! those segments are in this repository's WAL archive.
//!
//! Layout in the snapshot: `/pgdata` holds the data directory, with the `backup_label`
//! and `tablespace_map` that `pg_backup_stop` returned; `/tablespaces/OID` holds each
//! tablespace's directory. The [`SourceInfo`] of kind `postgres-physical` carries a
//! [`BaseBackupInfo`].
//!
//! A file is read again unless its size, mtime, ctime and inode match the previous base
//! backup of the same cluster. A file whose timestamps were less than a second old when it
//! was read is stored with inode 0, so the next backup reads it again: a file rewritten
//! right after being read, within one timestamp tick, is never taken as unchanged.

use super::basebackup::{
    base_backups, BaseBackupInfo, TablespaceInfo, PGDATA, RECOVERY_CONFIG, TABLESPACES,
};
use super::conn::PgTarget;
use super::wal::archive;
use super::{pg_err, ServerInfo};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::features::{self, Features};
use crate::repo::pack::BlobType;
use crate::repo::snapshot::{Kind, Snapshot};
use crate::repo::tree::{Node, NodeKind, OsBytes, Tree};
use crate::repo::Repository;
use crate::sources::files::{meta_node, Archiver, EntryRules};
use crate::sources::{run, CommonOptions, Metadata, Saved, Session, Source};
use anyhow::Result;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server's `wal_segment_size` setting (bytes, as `pg_settings` gives it since
/// PostgreSQL 11). An error, never a guess: with a wrong size every segment name and WAL
/// position of the backup would be wrong.
fn parse_segment_size(setting: &str) -> Result<u32> {
    setting
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| archive::valid_segment_size(*n))
        .ok_or_else(|| {
            source_err(format!(
                "the server reports wal_segment_size = {setting:?}, which is not a WAL segment \
                 size in bytes (a power of two from 1 MiB to 1 GiB)"
            ))
        })
}

pub struct PhysicalOptions {
    pub conn: Option<String>,
    /// The data directory; the server's `data_directory` setting when none.
    pub pgdata: Option<PathBuf>,
    /// How long to wait for the backup's last WAL segment to reach the archive.
    pub archive_timeout: Duration,
    pub common: CommonOptions,
}

/// Directories whose contents PostgreSQL's own base backup leaves out (kept empty).
const EMPTY_DIRS: &[&str] = &[
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Files of the data directory's top level left out.
const ROOT_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "backup_manifest",
    "recovery.signal",
    "standby.signal",
    RECOVERY_CONFIG,
];

struct PgRules {
    root: PathBuf,
}

/// `123_init` → `123`.
fn init_fork_of(name: &[u8]) -> Option<&[u8]> {
    let rel = name.strip_suffix(b"_init")?;
    (!rel.is_empty() && rel.iter().all(u8::is_ascii_digit)).then_some(rel)
}

/// The relfilenode a relation file belongs to: `123`, `123.4`, `123_fsm`, `123_vm.1`.
fn relation_of(name: &[u8]) -> Option<&[u8]> {
    let end = name
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(name.len());
    let (rel, rest) = name.split_at(end);
    let fork_ok = rest.is_empty()
        || rest[0] == b'.'
        || rest.starts_with(b"_fsm")
        || rest.starts_with(b"_vm")
        || rest.starts_with(b"_init");
    (!rel.is_empty() && fork_ok).then_some(rel)
}

/// A temporary relation's file: `t3_16384`, `t3_16384_fsm`, `t3_16384.1`.
fn is_temp_relation(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(b"t") else {
        return false;
    };
    let Some(us) = rest.iter().position(|&b| b == b'_') else {
        return false;
    };
    us > 0 && rest[..us].iter().all(u8::is_ascii_digit) && relation_of(&rest[us + 1..]).is_some()
}

impl EntryRules for PgRules {
    fn filter(&self, dir: &Path, entries: &mut Vec<(Vec<u8>, PathBuf)>) {
        let rel = dir.strip_prefix(&self.root).ok();
        let rel_str = rel.map(|r| r.to_string_lossy().into_owned());
        match rel_str.as_deref() {
            Some("") => {
                entries.retain(|(n, _)| !ROOT_FILES.iter().any(|f| f.as_bytes() == n.as_slice()))
            }
            Some("pg_wal") => entries.retain(|(n, _)| n == b"archive_status"),
            Some("pg_wal/archive_status") => entries.clear(),
            Some(d) if EMPTY_DIRS.contains(&d) => entries.clear(),
            Some("global") => {
                // pg_control last, as PostgreSQL's own base backup sends it.
                if let Some(i) = entries.iter().position(|(n, _)| n == b"pg_control") {
                    let e = entries.remove(i);
                    entries.push(e);
                }
            }
            _ => {}
        }
        entries.retain(|(n, _)| !n.starts_with(b"pgsql_tmp") && n != b"pg_internal.init");
        // Unlogged relations: only the init fork is kept (the rest is reset at recovery).
        let unlogged: std::collections::HashSet<Vec<u8>> = entries
            .iter()
            .filter_map(|(n, _)| init_fork_of(n).map(<[u8]>::to_vec))
            .collect();
        entries.retain(|(n, _)| {
            if is_temp_relation(n) {
                return false;
            }
            match relation_of(n) {
                Some(r) if unlogged.contains(r) => init_fork_of(n).is_some(),
                _ => true,
            }
        });
    }
}

fn source_err(msg: String) -> anyhow::Error {
    Error::new(ErrorKind::Source, msg).into()
}

/// The system identifier in a data directory's `global/pg_control`.
fn control_system_identifier(pgdata: &Path) -> Result<u64> {
    let path = pgdata.join("global/pg_control");
    let data = std::fs::read(&path).map_err(|e| {
        source_err(format!(
            "cannot read {}: {e}; coffer must run on the database host, as root or the server's OS user",
            path.display()
        ))
    })?;
    let b: [u8; 8] = data
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| source_err(format!("{} is too short", path.display())))?;
    Ok(u64::from_le_bytes(b))
}

/// A line `KEY: value` of a backup_label.
fn label_field<'a>(label: &'a str, key: &str) -> Option<&'a str> {
    label
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// The newest earlier base backup of the same cluster and data directory.
fn find_parent(
    repo: &Repository,
    sysid: &str,
    pgdata: &str,
) -> Result<Option<(Snapshot, BaseBackupInfo)>> {
    let mut found = None;
    for s in repo.load_snapshots()? {
        for i in base_backups(&s)? {
            if i.system_identifier == sysid && i.data_directory == pgdata {
                found = Some((s.clone(), i));
            }
        }
    }
    Ok(found)
}

fn small_file(
    session: &mut Session,
    name: &str,
    data: &[u8],
    like: &Node,
    mtime_ns: i64,
) -> Result<Node> {
    let mut content = Vec::new();
    if !data.is_empty() {
        content.push(session.saver.save(BlobType::Data, data.to_vec())?.0);
    }
    Ok(Node {
        name: OsBytes(name.as_bytes().to_vec()),
        kind: NodeKind::File,
        mode: 0o600,
        uid: like.uid,
        gid: like.gid,
        mtime_ns: mtime_ns.into(),
        ctime_ns: mtime_ns.into(),
        inode: 0,
        device: 0,
        size: data.len() as u64,
        content,
        subtree: None,
        target: None,
    })
}

/// Take a base backup of the server named by `opts.conn` into a new snapshot.
pub fn backup_physical(
    repo: Arc<Repository>,
    opts: &PhysicalOptions,
    progress: &Progress,
) -> Result<Snapshot> {
    let source = Physical::connect(&repo, opts, progress)?;
    run(repo, source, &opts.common, progress)
}

/// A base backup, connected and checked, ready to copy the data directory.
pub struct Physical {
    client: postgres::Client,
    target: PgTarget,
    server: ServerInfo,
    sysid: String,
    segment_size: u32,
    pgdata: PathBuf,
    tablespaces: Vec<TablespaceInfo>,
    parent: Option<(Snapshot, BaseBackupInfo)>,
    archive_timeout: Duration,
}

impl Physical {
    /// Connect to the server, check that a base backup of it can be taken and restored
    /// (version, archiving, this host's data directory, this repository's archive), and
    /// find the previous base backup of the same cluster.
    pub fn connect(
        repo: &Repository,
        opts: &PhysicalOptions,
        progress: &Progress,
    ) -> Result<Physical> {
        let mut target = PgTarget::resolve(opts.conn.as_deref(), false, progress)?;
        if target.dbname.is_none() {
            target.dbname = Some("postgres".into());
        }
        let mut c = target.connect()?;
        let server = ServerInfo::query(&mut c, &target)?;
        if server.major() < 15 {
            return Err(source_err(format!(
                "physical backups need PostgreSQL 15 or newer (pg_backup_start); {} runs {}",
                target.server(),
                server.version
            )));
        }
        let row = c
            .query_one(
                "SELECT current_setting('data_directory'), current_setting('archive_mode'),
                    current_setting('archive_command'),
                    (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'),
                    (SELECT system_identifier::text FROM pg_control_system()),
                    pg_is_in_recovery()",
                &[],
            )
            .map_err(|e| pg_err(&target, "reading the server settings", &e))?;
        let data_directory: String = row.get(0);
        let archive_mode: String = row.get(1);
        let archive_command: String = row.get(2);
        let segment_size = parse_segment_size(&row.get::<_, String>(3))?;
        let sysid: String = row.get(4);
        if row.get::<_, bool>(5) {
            return Err(source_err(format!(
                "{} is a standby; take base backups from the primary",
                target.server()
            )));
        }
        if archive_mode == "off" {
            return Err(source_err(format!(
                "WAL archiving is off on {}, so a base backup could never be restored: set \
             archive_mode = on and archive_command = 'coffer wal-push %p' (with this repository's \
             settings in its environment or config file), restart the server and try again",
                target.server()
            )));
        }
        if !archive_command.contains("wal-push") {
            progress.log(&format!(
            "warning: archive_command is {archive_command:?}; the base backup waits for its WAL \
             in this repository's archive (coffer wal-push %p)"
        ));
        }
        let pgdata =
            std::path::absolute(opts.pgdata.as_deref().unwrap_or(Path::new(&data_directory)))?;
        let on_disk = control_system_identifier(&pgdata)?;
        if on_disk.to_string() != sysid {
            return Err(source_err(format!(
            "{} belongs to cluster {on_disk}, but {} is cluster {sysid}; give the server's data \
             directory with --pgdata (coffer must run on the database host)",
            pgdata.display(),
            target.server()
        )));
        }
        if let Some(info) = archive::archive_info(repo)? {
            if info.system_identifier != sysid {
                return Err(source_err(format!(
                "this repository's WAL archive belongs to cluster {}, not {sysid}; use another repository",
                info.system_identifier
            )));
            }
        }
        let tablespaces: Vec<TablespaceInfo> = c
            .query(
                "SELECT oid::int8, spcname::text, pg_tablespace_location(oid)
             FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid",
                &[],
            )
            .map_err(|e| pg_err(&target, "listing tablespaces", &e))?
            .iter()
            .map(|r| TablespaceInfo {
                oid: r.get::<_, i64>(0) as u32,
                name: r.get(1),
                location: r.get(2),
            })
            .collect();

        let parent = find_parent(repo, &sysid, &pgdata.display().to_string())?;
        Ok(Physical {
            client: c,
            target,
            server,
            sysid,
            segment_size,
            pgdata,
            tablespaces,
            parent,
            archive_timeout: opts.archive_timeout,
        })
    }
}

impl Source for Physical {
    fn kind(&self) -> Kind {
        Kind::PostgresPhysical
    }

    fn save(self: Box<Self>, session: &mut Session, progress: &Progress) -> Result<Saved> {
        let Physical {
            client: mut c,
            target,
            server,
            sysid,
            segment_size,
            pgdata,
            tablespaces,
            parent,
            archive_timeout,
        } = *self;
        let repo = session.repo.clone();
        let pgdata_str = pgdata.display().to_string();
        let rules = PgRules {
            root: pgdata.clone(),
        };
        // A file written less than a second before coffer reads it is read again next time
        // (files::RACY_WINDOW_NS, as for `backup PATH…`).
        session.cache_trees();
        let mut a = Archiver::new(session, progress, Some(&rules))?;
        let parent_tree = parent.as_ref().and_then(|(s, _)| a.load_parent(&s.tree));

        let started_at = chrono::Local::now().fixed_offset();
        let label = format!("coffer {}", started_at.format("%Y-%m-%dT%H:%M:%S%:z"));
        c.query_one("SELECT pg_backup_start($1, true)::text", &[&label])
            .map_err(|e| pg_err(&target, "pg_backup_start", &e))?;
        progress.set_message(pgdata_str.clone());

        // The data directory's top level, global/ last.
        let root_meta = std::fs::symlink_metadata(&pgdata)
            .map_err(|e| source_err(format!("cannot read {}: {e}", pgdata.display())))?;
        let mut entries: Vec<(Vec<u8>, PathBuf)> = std::fs::read_dir(&pgdata)
            .and_then(|rd| {
                rd.map(|e| e.map(|e| (e.file_name().as_bytes().to_vec(), e.path())))
                    .collect()
            })
            .map_err(|e| source_err(format!("cannot read {}: {e}", pgdata.display())))?;
        entries.sort();
        rules.filter(&pgdata, &mut entries);
        if let Some(i) = entries.iter().position(|(n, _)| n == b"global") {
            let g = entries.remove(i);
            entries.push(g);
        }
        let parent_pgdata = parent_tree
            .as_ref()
            .and_then(|t| t.find(PGDATA.as_bytes()))
            .and_then(|n| a.parent_tree(Some(n)));
        let parent_spc = parent_tree
            .as_ref()
            .and_then(|t| t.find(TABLESPACES.as_bytes()))
            .and_then(|n| a.parent_tree(Some(n)));
        let mut root_nodes = Vec::new();
        let mut spc_nodes = Vec::new();
        for (i, (name, path)) in entries.iter().enumerate() {
            if i + 1 == entries.len() && name == b"global" {
                // Tablespaces before global/ (pg_control comes last of all).
                for t in &tablespaces {
                    let oid = t.oid.to_string();
                    let loc = Path::new(&t.location);
                    let pnode = parent_spc.as_ref().and_then(|p| p.find(oid.as_bytes()));
                    if let Some(n) = a.archive_node(loc, oid.as_bytes(), pnode)? {
                        spc_nodes.push(n);
                    }
                }
            }
            let pnode = parent_pgdata.as_ref().and_then(|p| p.find(name));
            if let Some(n) = a.archive_node(path, name, pnode)? {
                root_nodes.push(n);
            }
        }
        if !entries.iter().any(|(n, _)| n == b"global") {
            return Err(source_err(format!(
                "{} has no global/ directory: not a PostgreSQL data directory",
                pgdata.display()
            )));
        }

        let row = c
            .query_one(
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)",
                &[],
            )
            .map_err(|e| pg_err(&target, "pg_backup_stop", &e))?;
        let stopped_at = chrono::Local::now().fixed_offset();
        drop(c);
        let stop_lsn_text: String = row.get(0);
        let labelfile: String = row.get(1);
        let spcmapfile: Option<String> = row.get(2);
        let stop_lsn = archive::parse_lsn(&stop_lsn_text).ok_or_else(|| {
            source_err(format!(
                "pg_backup_stop returned a bad LSN {stop_lsn_text:?}"
            ))
        })?;
        let timeline: u32 = label_field(&labelfile, "START TIMELINE")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| source_err("the backup_label has no START TIMELINE".into()))?;
        let start_field = label_field(&labelfile, "START WAL LOCATION")
            .ok_or_else(|| source_err("the backup_label has no START WAL LOCATION".into()))?;
        let start_lsn_text = start_field
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        let start_lsn = archive::parse_lsn(&start_lsn_text)
            .ok_or_else(|| source_err(format!("bad START WAL LOCATION {start_field:?}")))?;
        let start_segno = start_lsn / segment_size as u64;
        // The segment holding the last byte before the stop LSN.
        let stop_segno = stop_lsn.saturating_sub(1) / segment_size as u64;
        let start_wal = archive::segment_name(timeline, start_segno, segment_size);
        let stop_wal = archive::segment_name(timeline, stop_segno.max(start_segno), segment_size);

        let needed: Vec<String> = (start_segno..=stop_segno.max(start_segno))
            .map(|n| archive::segment_name(timeline, n, segment_size))
            .collect();
        wait_for_wal(&repo, needed, archive_timeout, progress)?;

        let mtime_ns = stopped_at.timestamp_nanos_opt().unwrap_or(0);
        let mut root_dir = meta_node(PGDATA.as_bytes(), NodeKind::Dir, &root_meta);
        let label_node = small_file(
            a.session(),
            "backup_label",
            labelfile.as_bytes(),
            &root_dir,
            mtime_ns,
        )?;
        root_nodes.push(label_node);
        if let Some(map) = spcmapfile.filter(|m| !m.is_empty()) {
            let n = small_file(
                a.session(),
                "tablespace_map",
                map.as_bytes(),
                &root_dir,
                mtime_ns,
            )?;
            root_nodes.push(n);
        }
        root_dir.subtree = Some(a.session().save_tree(Tree { nodes: root_nodes })?);
        let mut top = vec![root_dir];
        let mut paths = vec![format!("/{PGDATA}")];
        if !spc_nodes.is_empty() {
            let sub = a.session().save_tree(Tree { nodes: spc_nodes })?;
            top.push(Node::dir(TABLESPACES, sub, mtime_ns));
            paths.push(format!("/{TABLESPACES}"));
        }
        let size = a.size();
        let info = BaseBackupInfo {
            server: target.server(),
            server_version: server.version.clone(),
            server_version_num: server.version_num,
            system_identifier: sysid,
            timeline,
            start_lsn: archive::format_lsn(start_lsn),
            stop_lsn: archive::format_lsn(stop_lsn),
            start_wal,
            stop_wal,
            wal_segment_size: segment_size,
            data_directory: pgdata_str.clone(),
            label,
            started_at,
            stopped_at,
            tablespaces,
        };
        Ok(Saved {
            nodes: top,
            paths,
            size,
            parent: parent.map(|(s, _)| s.id),
            excludes: vec![],
            sources: vec![info.entry(&pgdata_str, &format!("/{PGDATA}"))?],
            requires: Features::default().with(features::PHYSICAL),
        })
    }
}

/// Wait until every segment the backup needs is in the archive. PostgreSQL archives them
/// once pg_backup_stop switched to the next segment; with push-ahead they become durable in
/// any order, so the last one arriving says nothing about the others.
fn wait_for_wal(
    repo: &Repository,
    mut missing: Vec<String>,
    timeout: Duration,
    progress: &Progress,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        let mut still = Vec::new();
        for name in missing {
            let obj = archive::object_name(&name);
            if repo
                .backend
                .stat(crate::backend::FileKind::Wal, &obj)?
                .is_none()
            {
                still.push(name);
            }
        }
        missing = still;
        let Some(first) = missing.first() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(source_err(format!(
                "WAL segment {first} (and {} more), needed by this base backup, did not reach the \
                 archive within {} s; check that archive_command is 'coffer wal-push %p' with \
                 this repository and look at pg_stat_archiver; no snapshot was written",
                missing.len() - 1,
                timeout.as_secs()
            )));
        }
        if !said {
            progress.log(&format!("waiting for WAL segment {first} to be archived"));
            said = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_size_setting_is_parsed_or_refused() {
        assert_eq!(parse_segment_size("16777216").unwrap(), 16 << 20);
        assert_eq!(parse_segment_size("1073741824").unwrap(), 1 << 30);
        for bad in ["", "16MB", "0", "1000000", "2147483648", "-16777216"] {
            let e = parse_segment_size(bad).unwrap_err();
            assert!(format!("{e}").contains("wal_segment_size"), "{bad}: {e}");
        }
    }

    fn names(dir: &Path, root: &Path, list: &[&str]) -> Vec<String> {
        let rules = PgRules {
            root: root.to_path_buf(),
        };
        let mut e: Vec<(Vec<u8>, PathBuf)> = list
            .iter()
            .map(|n| (n.as_bytes().to_vec(), dir.join(n)))
            .collect();
        rules.filter(dir, &mut e);
        e.into_iter()
            .map(|(n, _)| String::from_utf8(n).unwrap())
            .collect()
    }

    #[test]
    fn what_is_left_out() {
        let root = Path::new("/data");
        assert_eq!(
            names(
                root,
                root,
                &[
                    "PG_VERSION",
                    "backup_label",
                    "base",
                    "global",
                    "pg_wal",
                    "postmaster.pid",
                    "postmaster.opts",
                    "pgsql_tmp"
                ]
            ),
            ["PG_VERSION", "base", "global", "pg_wal"]
        );
        assert_eq!(
            names(
                &root.join("pg_wal"),
                root,
                &[
                    "000000010000000000000001",
                    "archive_status",
                    ".coffer-pushed"
                ]
            ),
            ["archive_status"]
        );
        assert!(names(&root.join("pg_replslot"), root, &["slot1"]).is_empty());
        assert_eq!(
            names(
                &root.join("global"),
                root,
                &["1260", "pg_control", "pg_filenode.map", "pg_internal.init"]
            ),
            ["1260", "pg_filenode.map", "pg_control"]
        );
        assert_eq!(
            names(
                &root.join("base/5"),
                root,
                &[
                    "16384",
                    "16384.1",
                    "16384_fsm",
                    "16384_init",
                    "16384_vm",
                    "16390",
                    "16390_vm",
                    "t3_16400",
                    "t3_16400_fsm",
                    "PG_VERSION",
                    "pgsql_tmp123"
                ]
            ),
            ["16384_init", "16390", "16390_vm", "PG_VERSION"]
        );
    }

    #[test]
    fn label_fields() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nSTART TIMELINE: 1\n";
        assert_eq!(label_field(label, "START TIMELINE"), Some("1"));
        assert_eq!(
            label_field(label, "START WAL LOCATION"),
            Some("0/2000028 (file 000000010000000000000002)")
        );
    }
}
