//! Point-in-time recovery: a base backup laid out as a data directory, set up to recover
//! through `coffer wal-fetch` to a target.
//!
//! `coffer restore [SNAPSHOT] --pgdata DIR --target-…` picks the base backup (the newest
//! that finished before the target when none is named), checks the WAL archive (the
//! backup's own segments, no gap up to the target, the target not past the archive, the
//! timeline), restores the data directory verified, then writes `recovery.signal`, a
//! `restore_command` calling this coffer with a config file in DIR
//! (`coffer-recovery.toml`, 0600, left out of later base backups) and the target into
//! `postgresql.auto.conf`. Starting PostgreSQL on DIR then recovers to the target.

use super::basebackup::{
    base_backup_info, BaseBackupInfo, TablespaceInfo, PGDATA, RECOVERY_CONFIG, TABLESPACES,
};
use super::tools::shell_quote;
use super::wal::archive::{format_lsn, segment_name};
use super::wal::hold::{Hold, HoldSpec, Taken};
use super::wal::timeline::{self, ChainError};
use super::wal::waldump::newest_commit_time;
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::index::MasterIndex;
use crate::repo::restore::{restore, RestoreOptions, RestoreReport};
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::Node;
use crate::repo::Repository;
use crate::safefs::{self, Meta};
use anyhow::{Context as _, Result};
use chrono::{DateTime, FixedOffset};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Replay all archived WAL.
    End,
    Time(DateTime<FixedOffset>),
    Lsn(u64),
    Xid(String),
    Name(String),
    Immediate,
}

impl Target {
    /// The `postgresql.auto.conf` setting for this target.
    fn setting(&self) -> Option<(&'static str, String)> {
        match self {
            Target::End => None,
            Target::Time(t) => Some((
                "recovery_target_time",
                t.format("%Y-%m-%d %H:%M:%S%.6f%:z").to_string(),
            )),
            Target::Lsn(l) => Some(("recovery_target_lsn", format_lsn(*l))),
            Target::Xid(x) => Some(("recovery_target_xid", x.clone())),
            Target::Name(n) => Some(("recovery_target_name", n.clone())),
            Target::Immediate => Some(("recovery_target", "immediate".into())),
        }
    }
}

/// How `restore_command` reaches this repository.
#[derive(Clone, Default)]
pub struct FetchConfig {
    pub repository: String,
    pub password_file: Option<PathBuf>,
    /// Only when the passphrase came from the environment or a prompt.
    pub password: Option<String>,
    /// For an `s3://` repository: endpoint, region and credentials, resolved from the
    /// environment and config file of the restoring coffer.
    pub s3: Option<crate::backend::S3Settings>,
}

impl std::fmt::Debug for FetchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchConfig")
            .field("repository", &self.repository)
            .field("password_file", &self.password_file)
            .field("password", &crate::redact::Redacted(&self.password))
            .field("s3", &self.s3)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct PitrOptions {
    /// A snapshot id, `latest`, or none to pick by target.
    pub snapshot: Option<String>,
    pub pgdata: PathBuf,
    pub target: Target,
    /// `recovery_target_inclusive = off`.
    pub exclusive: bool,
    /// `promote`, `pause` or `shutdown`.
    pub action: Option<String>,
    /// `recovery_target_timeline`: a number, `current` or `latest`.
    pub timeline: Option<String>,
    /// Replace the contents of a non-empty DIR (and tablespace directories).
    pub force: bool,
    /// Update a non-empty DIR (and tablespace directories) in place: files whose content
    /// already matches are kept, everything else is written or removed.
    pub delta: bool,
    /// Restore tablespaces elsewhere: (name or OID, directory).
    pub tablespace_map: Vec<(String, PathBuf)>,
    pub fetch: FetchConfig,
    /// How long the hold on the WAL the recovery needs lasts after its last `wal-fetch`.
    pub wal_hold_expiry: std::time::Duration,
}

pub struct PitrReport {
    pub snapshot: Snapshot,
    pub info: BaseBackupInfo,
    pub restored: RestoreReport,
    /// The lines added to `postgresql.auto.conf`.
    pub settings: Vec<String>,
    /// The newest archived segment.
    pub newest_wal: Option<String>,
    /// The hold that keeps the WAL from the backup's start on while the recovery runs.
    pub wal_hold: Hold,
}

fn usage(msg: String) -> anyhow::Error {
    Error::usage(msg).into()
}

fn not_found(msg: String) -> anyhow::Error {
    Error::new(ErrorKind::NotFound, msg).into()
}

/// Pick the base backup: the named one, or the newest that finished before the target.
fn pick(
    repo: &Repository,
    spec: Option<&str>,
    target: &Target,
) -> Result<(Snapshot, BaseBackupInfo)> {
    if let Some(spec) = spec.filter(|s| *s != "latest") {
        let snap = repo.find_snapshot(spec)?;
        let Some(info) = base_backup_info(&snap)? else {
            snap.known_kind()?;
            return Err(usage(format!(
                "snapshot {} is not a physical base backup (kind {}); --pgdata needs one made with \
                 `coffer backup --postgres --physical`",
                snap.id.short(),
                snap.kind
            )));
        };
        return Ok((snap, info));
    }
    let mut all: Vec<(Snapshot, BaseBackupInfo)> = Vec::new();
    for s in repo.load_snapshots()? {
        if let Some(i) = base_backup_info(&s)? {
            all.push((s, i));
        }
    }
    if all.is_empty() {
        return Err(not_found(
            "the repository has no physical base backup (`coffer backup --postgres --physical`)"
                .into(),
        ));
    }
    let fits = |i: &BaseBackupInfo| match target {
        Target::Time(t) => i.stopped_at <= *t,
        Target::Lsn(l) => i.stop() <= *l,
        _ => true,
    };
    if let Some(found) = all.iter().rev().find(|(_, i)| fits(i)) {
        found.0.check_features()?;
        return Ok(found.clone());
    }
    let oldest = &all[0].1;
    Err(usage(match target {
        Target::Time(t) => format!(
            "the target time {} is before the oldest base backup, which finished at {}",
            t.to_rfc3339(),
            oldest.stopped_at.to_rfc3339()
        ),
        Target::Lsn(l) => format!(
            "the target LSN {} is before the end of the oldest base backup ({})",
            format_lsn(*l),
            oldest.stop_lsn
        ),
        _ => unreachable!("every base backup fits other targets"),
    }))
}

/// Check, before anything is written, that the archive can recover the backup to the
/// target along the timeline recovery will follow; returns the newest segment on it.
fn check_archive(
    repo: &Repository,
    snap: &Snapshot,
    info: &BaseBackupInfo,
    opts: &PitrOptions,
) -> Result<Option<String>> {
    let seg = info.wal_segment_size;
    let backup = timeline::Backup::of(snap, info).ok_or_else(|| {
        Error::integrity(format!(
            "snapshot {} has a base backup record whose WAL positions cannot be read",
            snap.id.short()
        ))
    })?;
    let archive = timeline::load_archive(repo, seg, None)?;
    // The timelines recovery follows: PostgreSQL's recovery_target_timeline.
    let chain = match opts.timeline.as_deref() {
        None | Some("latest") => {
            timeline::timeline_chain(info.timeline, backup.stop_lsn, &archive.histories)
        }
        Some("current") => vec![(info.timeline, None)],
        Some(tl) => {
            let n: u32 = tl.parse().map_err(|_| {
                usage(format!(
                    "--target-timeline {tl:?}: give a number, current or latest"
                ))
            })?;
            timeline::timeline_chain_to(info.timeline, backup.stop_lsn, &archive.histories, n)
                .map_err(|e| match e {
                    ChainError::NoHistory => not_found(format!(
                        "timeline {n} is not in the archive (no {n:08X}.history); the backup is \
                         on timeline {}",
                        info.timeline
                    )),
                    ChainError::NotDescendant => usage(format!(
                        "timeline mismatch: timeline {n} does not descend from timeline {} of \
                         base backup {}",
                        info.timeline, info.label
                    )),
                    ChainError::LeftBefore(switch) => usage(format!(
                        "timeline mismatch: timeline {n} left timeline {} at {}, before base \
                         backup {} ended ({}); pick an older base backup",
                        info.timeline,
                        format_lsn(switch),
                        info.label,
                        info.stop_lsn
                    )),
                })?
        }
    };
    let walk = timeline::walk(&archive, &backup, &chain);
    if walk.incomplete() {
        return Err(not_found(format!(
            "WAL segment {}, part of base backup {}, is missing from the archive; this backup \
             cannot be restored (pick another snapshot)",
            walk.name(walk.runs[0].0),
            info.label
        )));
    }
    // The segments recovery would read, and the newest of them.
    let names: Vec<String> = walk
        .present
        .iter()
        .map(|(s, t)| segment_name(*t, *s, seg))
        .collect();
    let newest_segno = walk
        .present
        .keys()
        .next_back()
        .copied()
        .unwrap_or(walk.stop);
    if let Target::Lsn(l) = opts.target {
        if l < info.stop() {
            return Err(usage(format!(
                "the target LSN {} is before the end of base backup {} ({}); pick an older snapshot \
                 or leave SNAPSHOT out",
                format_lsn(l),
                info.label,
                info.stop_lsn
            )));
        }
        let end = (newest_segno + 1) * seg as u64;
        if l > end {
            return Err(usage(format!(
                "the target LSN {} is after the newest archived WAL (which ends at {})",
                format_lsn(l),
                format_lsn(end)
            )));
        }
    }
    if let Target::Time(t) = opts.target {
        if t < info.stopped_at {
            return Err(usage(format!(
                "the target time {} is before base backup {} finished ({}); pick an older snapshot \
                 or leave SNAPSHOT out",
                t.to_rfc3339(),
                info.label,
                info.stopped_at.to_rfc3339()
            )));
        }
        if t > chrono::Local::now().fixed_offset() {
            return Err(usage(format!(
                "the target time {} is in the future",
                t.to_rfc3339()
            )));
        }
        // Recovery stops before the first commit (or abort) later than the target; with
        // none archived it would replay everything and then fail.
        let major = info.server_version_num / 10000;
        if let Some(last) = newest_commit_time(repo, &names, seg, major)? {
            if t >= last {
                return Err(usage(format!(
                    "the target time {} is after the newest archived WAL: its last commit is at \
                     {}, so recovery could never stop at the target; leave the target out to \
                     replay everything archived",
                    t.to_rfc3339(),
                    last.to_rfc3339()
                )));
            }
        }
    }
    // No gap between the backup's end and what recovery must replay (PostgreSQL would
    // end recovery early, at the gap, and start up as if that were the target).
    let last_needed = match opts.target {
        Target::Lsn(l) => l.saturating_sub(1) / seg as u64,
        Target::Immediate => walk.stop,
        _ => newest_segno,
    };
    if let Some((a, _)) = walk.runs.first().filter(|(a, _)| *a <= last_needed) {
        return Err(not_found(format!(
            "WAL segment {} is missing from the archive, so recovery from base backup {} \
             cannot pass LSN {}; give --target-lsn before that point to accept it",
            walk.name(*a),
            info.label,
            format_lsn(a * seg as u64)
        )));
    }
    Ok(walk
        .present
        .iter()
        .next_back()
        .map(|(s, t)| segment_name(*t, *s, seg)))
}

/// DIR must be empty or missing, unless `delta` (its contents are kept, and the restore
/// rewrites only what differs) or `force` (its contents are removed first). Never while a
/// server runs on it. Nothing below DIR is followed: a symlink in it is removed, not the
/// file it points to.
fn prepare_dir(dir: &Path, force: bool, delta: bool) -> Result<()> {
    let fd = safefs::open_root(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let names =
        safefs::entries(fd.as_fd()).with_context(|| format!("cannot read {}", dir.display()))?;
    if names.is_empty() {
        return Ok(());
    }
    if !force && !delta {
        return Err(usage(format!(
            "{} is not empty; restore into an empty directory, or give --delta to \
             update it in place (only what differs is written) or --force to replace \
             its contents",
            dir.display()
        )));
    }
    // Only a regular postmaster.pid is read (a symlink there could point anywhere).
    if let Ok(Some(pid)) = safefs::read(fd.as_fd(), OsStr::new("postmaster.pid")) {
        let alive = String::from_utf8_lossy(&pid)
            .lines()
            .next()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .map(|p| {
                p > 0
                    && (unsafe { libc::kill(p, 0) } == 0
                        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
            })
            .unwrap_or(false);
        if alive {
            return Err(usage(format!(
                "a PostgreSQL server is running on {}; stop it first",
                dir.display()
            )));
        }
    }
    if delta {
        return Ok(());
    }
    for n in names {
        safefs::remove(fd.as_fd(), &n)
            .with_context(|| format!("cannot remove {}", dir.join(&n).display()))?;
    }
    Ok(())
}

/// Point the restored cluster at moved tablespaces: `tablespace_map` (which PostgreSQL
/// reads at the start of recovery and makes the `pg_tblspc` links from) and the links.
fn point_tablespaces(
    root: BorrowedFd<'_>,
    dir: &Path,
    spc: &[(&TablespaceInfo, PathBuf, Node)],
    owner: &Node,
) -> Result<()> {
    let mut map = String::new();
    let links = safefs::open_dir(root, OsStr::new("pg_tblspc"))
        .with_context(|| format!("cannot open {}/pg_tblspc", dir.display()))?;
    for (t, loc, _) in spc {
        map.push_str(&format!("{} {}\n", t.oid, tablespace_map_path(loc)));
        let name = t.oid.to_string();
        safefs::symlink(
            links.as_fd(),
            OsStr::new(&name),
            loc.as_os_str(),
            &owned_by(owner, None),
        )
        .with_context(|| format!("cannot create {}/pg_tblspc/{name}", dir.display()))?;
    }
    safefs::fsync(links.as_fd())?;
    write_private(root, dir, "tablespace_map", map.as_bytes(), owner)
}

/// A path as `tablespace_map` spells it: backslashes escaped (line breaks are refused
/// earlier).
fn tablespace_map_path(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "\\\\")
}

/// The owner recorded for `n` (applied when running as root) and `mode`.
fn owned_by(n: &Node, mode: Option<u32>) -> Meta {
    Meta {
        owner: Some((n.uid, n.gid)),
        mode,
        mtime: None,
    }
}

/// A restored data or tablespace directory: the recorded owner, mode 0700, made durable.
fn finish_root(dir: &Path, n: &Node) -> Result<()> {
    let fd = safefs::open_root(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    safefs::set_meta(fd.as_fd(), &owned_by(n, Some(0o700)))
        .and_then(|()| safefs::fsync(fd.as_fd()))
        .with_context(|| format!("cannot set the owner and mode of {}", dir.display()))
}

/// Write `name` in the data directory, mode 0600 and owned like it: a new file under a
/// temporary name (created exclusively, never through a symlink), fsynced and renamed over
/// the old one. The caller fsyncs the directory.
fn write_private(
    root: BorrowedFd<'_>,
    dir: &Path,
    name: &str,
    data: &[u8],
    owner: &Node,
) -> Result<()> {
    safefs::write_file(root, OsStr::new(name), data, &owned_by(owner, Some(0o600)))
        .with_context(|| format!("cannot write {}/{name}", dir.display()))
}

/// A path as one word of a command PostgreSQL runs: it replaces `%`-escapes before the
/// shell sees the command, so a `%` in a path is doubled.
fn command_word(p: &Path) -> String {
    shell_quote(&p.display().to_string()).replace('%', "%%")
}

/// PostgreSQL's `restore_command` running `exe` with the config file `conf`, refreshing the
/// WAL hold `hold`.
fn restore_command(exe: &Path, conf: &Path, hold: &str) -> String {
    format!(
        "{} --config {} wal-fetch --hold {hold} %f %p",
        command_word(exe),
        command_word(conf)
    )
}

/// PostgreSQL's `recovery_end_command`: release the WAL hold once recovery has ended (a
/// failure is only a warning for PostgreSQL; the hold then expires).
fn release_command(exe: &Path, conf: &Path, hold: &str) -> String {
    format!(
        "{} --config {} wal-hold release {hold}",
        command_word(exe),
        command_word(conf)
    )
}

fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Comment out earlier recovery settings (a backup of a restored cluster carries them).
/// `conf` with earlier recovery settings commented out, byte for byte otherwise: the file is
/// PostgreSQL's (ALTER SYSTEM writes it in the server's encoding), so it is not decoded.
fn strip_recovery_settings(conf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(conf.len() + 64);
    for l in conf.split_inclusive(|&b| b == b'\n') {
        let line = l.strip_suffix(b"\n").unwrap_or(l);
        let start = line
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(line.len());
        let key = line[start..]
            .split(|&b| b == b'=' || b == b' ' || b == b'\t')
            .next()
            .unwrap_or(b"");
        if key == b"restore_command"
            || key == b"recovery_end_command"
            || key.starts_with(b"recovery_target")
        {
            out.extend_from_slice(b"# ");
            out.extend_from_slice(line);
            out.extend_from_slice(b"  (replaced by coffer restore)\n");
        } else {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

/// What [`restore_pitr`] checks before it writes anything: the base backup it would pick
/// and that the WAL archive can recover it to `opts.target`. Returns the base backup and
/// the newest archived segment on the way; nothing is written (no WAL hold either).
pub fn check_recovery(
    repo: &Repository,
    opts: &PitrOptions,
) -> Result<(Snapshot, BaseBackupInfo, Option<String>)> {
    let (snap, info) = pick(repo, opts.snapshot.as_deref(), &opts.target)?;
    let newest = check_archive(repo, &snap, &info, opts)?;
    Ok((snap, info, newest))
}

/// Restore a base backup into `opts.pgdata`, set up to recover to `opts.target`.
pub fn restore_pitr(
    repo: &Repository,
    index: &MasterIndex,
    opts: &PitrOptions,
    progress: &Progress,
) -> Result<PitrReport> {
    let (snap, info) = pick(repo, opts.snapshot.as_deref(), &opts.target)?;
    let newest_wal = check_archive(repo, &snap, &info, opts)?;
    // Keep forget from removing the WAL this recovery fetches (wal::hold); released again if
    // the restore fails.
    let hold = Taken::new(
        repo,
        &HoldSpec {
            purpose: format!("restore --pgdata {}", opts.pgdata.display()),
            start_wal: info.start_wal.clone(),
            segment_size: info.wal_segment_size,
            snapshot: Some(snap.id.to_hex()),
            expires_after: opts.wal_hold_expiry,
        },
    )?;
    let root = repo.load_tree(index, &snap.tree)?;
    let pg_node = root.find(PGDATA.as_bytes()).cloned().ok_or_else(|| {
        Error::integrity(format!("snapshot {} has no /{PGDATA}", snap.id.short()))
    })?;
    let spc_tree = match root.find(TABLESPACES.as_bytes()).and_then(|n| n.subtree) {
        Some(id) => Some(repo.load_tree(index, &id)?),
        None => None,
    };
    let dir = std::path::absolute(&opts.pgdata)?;
    for (key, _) in &opts.tablespace_map {
        if !info
            .tablespaces
            .iter()
            .any(|t| t.name == *key || t.oid.to_string() == *key)
        {
            let known: Vec<String> = info
                .tablespaces
                .iter()
                .map(|t| format!("{} ({})", t.name, t.oid))
                .collect();
            return Err(usage(format!(
                "--tablespace-map {key}: base backup {} has no such tablespace; it has {}",
                snap.id.short(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    let mut spc_dirs: Vec<(&TablespaceInfo, PathBuf, Node)> = Vec::new();
    for t in &info.tablespaces {
        let node = spc_tree
            .as_ref()
            .and_then(|s| s.find(t.oid.to_string().as_bytes()))
            .cloned()
            .ok_or_else(|| {
                Error::integrity(format!(
                    "snapshot {} lacks tablespace {} ({})",
                    snap.id.short(),
                    t.name,
                    t.oid
                ))
            })?;
        let loc = match opts
            .tablespace_map
            .iter()
            .rev()
            .find(|(k, _)| *k == t.name || *k == t.oid.to_string())
        {
            Some((_, d)) => std::path::absolute(d)?,
            None => PathBuf::from(&t.location),
        };
        if loc
            .as_os_str()
            .as_bytes()
            .iter()
            .any(|b| *b == b'\n' || *b == b'\r')
        {
            return Err(usage(format!(
                "tablespace directory {:?} contains a line break",
                loc.display()
            )));
        }
        let clash = std::iter::once(dir.as_path())
            .chain(spc_dirs.iter().map(|(_, l, _)| l.as_path()))
            .find(|o| loc.starts_with(o) || o.starts_with(&loc));
        if let Some(other) = clash {
            return Err(usage(format!(
                "tablespace {} would be restored to {}, which overlaps {}{}",
                t.name,
                loc.display(),
                other.display(),
                if opts.tablespace_map.is_empty() {
                    "; give --tablespace-map NAME=DIR to restore it elsewhere"
                } else {
                    ""
                }
            )));
        }
        spc_dirs.push((t, loc, node));
    }
    let describe_busy = |e: anyhow::Error, t: &TablespaceInfo| {
        if opts.tablespace_map.is_empty() && !opts.force && !opts.delta {
            e.context(format!(
                "tablespace {} ({}) is restored to its original location unless you give \
                 --tablespace-map {}=DIR",
                t.name, t.oid, t.name
            ))
        } else {
            e
        }
    };
    prepare_dir(&dir, opts.force, opts.delta)?;
    for (t, loc, _) in &spc_dirs {
        prepare_dir(loc, opts.force, opts.delta).map_err(|e| describe_busy(e, t))?;
    }
    let restored = restore(
        repo,
        index,
        &snap,
        &RestoreOptions {
            target: dir.clone(),
            includes: vec![],
            tree: pg_node.subtree,
            delta: opts.delta,
            sync: true,
        },
        progress,
    )?;
    let mut total = restored;
    for (_, loc, node) in &spc_dirs {
        let r = restore(
            repo,
            index,
            &snap,
            &RestoreOptions {
                target: loc.clone(),
                includes: vec![],
                tree: node.subtree,
                delta: opts.delta,
                sync: true,
            },
            progress,
        )?;
        total.files += r.files;
        total.dirs += r.dirs;
        total.symlinks += r.symlinks;
        total.bytes += r.bytes;
        total.unchanged += r.unchanged;
        total.unchanged_bytes += r.unchanged_bytes;
        total.removed += r.removed;
        finish_root(loc, node)?;
    }
    let root = safefs::open_root(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
    if !opts.tablespace_map.is_empty() {
        point_tablespaces(root.as_fd(), &dir, &spc_dirs, &pg_node)?;
    }
    finish_root(&dir, &pg_node)?;

    // restore_command: this coffer, with a config file naming the repository.
    let conf_path = dir.join(RECOVERY_CONFIG);
    let mut conf = String::from(
        "# Written by `coffer restore --pgdata` for PostgreSQL's restore_command.\n\
         # It can read the repository: delete it once recovery has finished.\n",
    );
    conf.push_str(&format!(
        "repository = {}\n",
        toml_string(&opts.fetch.repository)
    ));
    if let Some(f) = &opts.fetch.password_file {
        conf.push_str(&format!(
            "password_file = {}\n",
            toml_string(&f.display().to_string())
        ));
    } else if let Some(p) = &opts.fetch.password {
        conf.push_str(&format!("password = {}\n", toml_string(p)));
    }
    if let Some(s3) = &opts.fetch.s3 {
        conf.push_str("\n[s3]\n");
        conf.push_str(&toml::to_string(s3)?);
    }
    write_private(
        root.as_fd(),
        &dir,
        RECOVERY_CONFIG,
        conf.as_bytes(),
        &pg_node,
    )?;
    let exe = std::env::current_exe().context("cannot find the coffer executable")?;
    let command = restore_command(&exe, &conf_path, hold.id());
    let mut settings = vec![
        format!("restore_command = {}", conf_quote(&command)),
        format!(
            "recovery_end_command = {}",
            conf_quote(&release_command(&exe, &conf_path, hold.id()))
        ),
    ];
    if let Some((k, v)) = opts.target.setting() {
        settings.push(format!("{k} = {}", conf_quote(&v)));
        if opts.exclusive {
            settings.push("recovery_target_inclusive = 'off'".into());
        }
    }
    if let Some(a) = &opts.action {
        settings.push(format!("recovery_target_action = {}", conf_quote(a)));
    }
    if let Some(t) = &opts.timeline {
        settings.push(format!("recovery_target_timeline = {}", conf_quote(t)));
    }
    // The restored file holds the cluster's ALTER SYSTEM settings: read without following a
    // symlink, kept as bytes (PostgreSQL does not require UTF-8 there). Missing is empty; an
    // error reading it stops the restore (rewriting it from nothing would drop them).
    let auto = dir.join("postgresql.auto.conf");
    let old = match safefs::read(root.as_fd(), OsStr::new("postgresql.auto.conf")) {
        Ok(None) => Vec::new(),
        Ok(Some(b)) => b,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot read the restored {} (its ALTER SYSTEM settings would be lost)",
                auto.display()
            )))
        }
    };
    let mut text = strip_recovery_settings(&old);
    text.extend_from_slice(
        format!(
            "# Recovery set up by coffer restore from snapshot {} ({})\n",
            snap.id.short(),
            chrono::Local::now().to_rfc3339()
        )
        .as_bytes(),
    );
    for s in &settings {
        text.extend_from_slice(s.as_bytes());
        text.push(b'\n');
    }
    write_private(root.as_fd(), &dir, "postgresql.auto.conf", &text, &pg_node)?;
    // Every restored file is durable (each restore ends with a syncfs of its file system),
    // and so are the files above once their renames are: then recovery.signal, last.
    safefs::fsync(root.as_fd())?;
    write_private(root.as_fd(), &dir, "recovery.signal", b"", &pg_node)?;
    safefs::fsync(root.as_fd())?;
    Ok(PitrReport {
        snapshot: snap,
        info,
        restored: total,
        settings,
        newest_wal,
        wal_hold: hold.keep(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_recovery_settings_are_commented_out() {
        let c = b"shared_buffers = '1GB'\nrestore_command = 'x'\n  recovery_target_time = 'y'\nrecovery_end_command = 'z'\n";
        let out = String::from_utf8(strip_recovery_settings(c)).unwrap();
        assert!(out.starts_with("shared_buffers = '1GB'\n# restore_command"));
        assert!(out.contains("#   recovery_target_time"));
        assert!(out.contains("# recovery_end_command"));
        // Not UTF-8 (a Latin-1 value set by ALTER SYSTEM): kept byte for byte.
        let latin1 = b"search_path = '\xe9t\xe9'\nrecovery_target_name = 'x'\nwork_mem = '4MB'";
        let out = strip_recovery_settings(latin1);
        assert!(out.starts_with(b"search_path = '\xe9t\xe9'\n# recovery_target_name"));
        assert!(out.ends_with(b"work_mem = '4MB'\n"));
    }

    #[test]
    fn private_files_replace_what_is_there_without_writing_through_it() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut owner = Node::stream("x", 0, vec![], 0);
        owner.uid = unsafe { libc::geteuid() };
        owner.gid = unsafe { libc::getegid() };
        // A hard link and a symlink planted at the file's name.
        let dir = d.path().join("pgdata");
        std::fs::create_dir(&dir).unwrap();
        std::fs::hard_link(&outside, dir.join("hard.toml")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("soft.toml")).unwrap();
        let root = safefs::open_root(&dir).unwrap();
        for name in ["hard.toml", "soft.toml"] {
            write_private(root.as_fd(), &dir, name, b"password = 'secret'", &owner).unwrap();
            let p = dir.join(name);
            let m = std::fs::symlink_metadata(&p).unwrap();
            assert!(m.is_file());
            assert_eq!(m.mode() & 0o777, 0o600);
            assert_eq!(std::fs::read(&p).unwrap(), b"password = 'secret'");
        }
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        let m = std::fs::metadata(&outside).unwrap();
        assert_eq!(m.mode() & 0o777, 0o644);
    }

    #[test]
    fn fetch_config_debug_hides_the_password() {
        let c = FetchConfig {
            repository: "/r".into(),
            password: Some("hunter2-secret".into()),
            ..FetchConfig::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert_eq!(conf_quote("it's"), "'it''s'");
        let hold = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            restore_command(
                Path::new("/opt/coffer"),
                Path::new("/srv/100% pg/c.toml"),
                hold
            ),
            format!("/opt/coffer --config '/srv/100%% pg/c.toml' wal-fetch --hold {hold} %f %p")
        );
        assert_eq!(
            release_command(Path::new("/opt/coffer"), Path::new("/c.toml"), hold),
            format!("/opt/coffer --config /c.toml wal-hold release {hold}")
        );
        assert_eq!(
            Target::Lsn(0x1_0000_0028).setting(),
            Some(("recovery_target_lsn", "1/28".to_string()))
        );
    }
}
