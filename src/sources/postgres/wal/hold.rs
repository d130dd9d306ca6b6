//! Holds on archived WAL, and the retention horizon.
//!
//! WAL retention (`coffer forget`, [`super::retention`]) removes the WAL that no kept base
//! backup needs. A recovery in progress may still need older WAL: it was set up from a base
//! backup that `forget` has since removed, and its `wal-fetch` calls take no lock. A *hold*
//! says so: retention keeps every archived segment whose segment number is at least the
//! hold's start, on every timeline, while the hold is live.
//!
//! - `restore --pgdata` takes a hold from the base backup's start segment ([`take`]), under
//!   its shared lock, so that every later `forget` sees it. Later restore drills take theirs
//!   the same way.
//! - The recovery's `wal-fetch` calls refresh it ([`refresh`]), at most every
//!   [`REFRESH_AFTER`] (a stamp file in the prefetch directory says when the last refresh was,
//!   so most calls write nothing).
//! - It expires [`Hold::expires_after_secs`] after its last refresh (default
//!   [`DEFAULT_EXPIRY`], 24 h): a recovery that stopped fetching long ago no longer keeps WAL.
//!   `forget` ignores expired holds and removes them.
//! - `recovery_end_command` releases it ([`release`]) when recovery ends, and
//!   `coffer wal-hold release ID` does by hand.
//!
//! Each hold is one object `wal/holds/<id>` (`id`: 16 random bytes, 32 lowercase hex digits),
//! sealed like a WAL object ([`archive::seal_file`]) under the name `holds/<id>`, holding the JSON
//! of [`Hold`].
//!
//! The *horizon* `wal/retention` (sealed under the name `retention`, JSON of [`Horizon`])
//! records the lowest segment number retention has kept: before removing anything, `forget`
//! raises it to its cut-off. A `wal-fetch` of a segment that is not archived and lies below the
//! horizon fails (exit 126) instead of answering "not archived" (exit 1): the WAL was removed
//! on purpose, and PostgreSQL would take "not archived" for the end of the archive and end
//! recovery early, at the wrong point.

use super::archive::{self, WalFileKind};
use crate::backend::{is_not_found, FileKind};
use crate::error::{Error, ErrorKind};
use crate::repo::Repository;
use anyhow::{Context as _, Result};
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a hold lasts after its last refresh, unless taken with another time.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// The longest expiry a hold may be taken with (a year): longer would keep WAL forever in
/// all but name.
pub const MAX_EXPIRY: Duration = Duration::from_secs(366 * 24 * 3600);

/// A `wal-fetch` refreshes its recovery's hold when the last refresh is older than this.
pub const REFRESH_AFTER: Duration = Duration::from_secs(10 * 60);

/// The horizon's object name (under `wal/`).
pub const HORIZON: &str = "retention";

/// One hold on archived WAL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hold {
    /// 32 lowercase hex digits; the object is `wal/holds/<id>`.
    pub id: String,
    /// What it is for, e.g. `restore --pgdata /srv/pg-restored`.
    pub purpose: String,
    /// The host that took it.
    pub host: String,
    /// The first segment held (a segment name: its timeline is the one the recovery starts
    /// on). Retention keeps every segment from this segment number on, on every timeline.
    pub start_wal: String,
    /// The segment size `start_wal` is counted in.
    pub segment_size: u32,
    /// The snapshot (base backup) the recovery was restored from, if any.
    pub snapshot: Option<String>,
    pub created: DateTime<FixedOffset>,
    pub refreshed: DateTime<FixedOffset>,
    /// Seconds after `refreshed` at which the hold expires.
    pub expires_after_secs: u64,
}

impl Hold {
    /// When the hold expires if nobody refreshes it (`None`: too far to represent, never).
    pub fn expires(&self) -> Option<DateTime<FixedOffset>> {
        let secs = i64::try_from(self.expires_after_secs).ok()?;
        self.refreshed
            .checked_add_signed(chrono::TimeDelta::try_seconds(secs)?)
    }

    pub fn expired(&self, now: DateTime<FixedOffset>) -> bool {
        self.expires().is_some_and(|e| e <= now)
    }

    /// The segment number the hold starts at, counted in `segment_size` (the archive's).
    /// `None` when the hold was taken with another segment size or names no segment.
    pub fn start_segno(&self, segment_size: u32) -> Option<u64> {
        if self.segment_size != segment_size {
            return None;
        }
        archive::parse_segment(&self.start_wal, segment_size).map(|(_, s)| s)
    }
}

/// What a new hold is for ([`take`]).
#[derive(Debug, Clone)]
pub struct HoldSpec {
    pub purpose: String,
    pub start_wal: String,
    pub segment_size: u32,
    pub snapshot: Option<String>,
    /// How long the hold lasts without a refresh (at most [`MAX_EXPIRY`]).
    pub expires_after: Duration,
}

/// A hold as [`list`] finds it.
#[derive(Debug, Clone)]
pub enum Listed {
    Hold(Hold),
    /// An object under `wal/holds/` that cannot be read. Retention removes no WAL while one
    /// exists (it might protect a running recovery); `coffer wal-hold release ID` removes it.
    Unreadable {
        id: String,
        error: String,
    },
}

impl Listed {
    pub fn id(&self) -> &str {
        match self {
            Listed::Hold(h) => &h.id,
            Listed::Unreadable { id, .. } => id,
        }
    }
}

/// Whether `id` can name a hold (32 lowercase hex digits): ids become object names.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_id(id: &str) -> Result<()> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{id:?} is not a WAL hold id (32 lowercase hex digits)"
        ))
        .into())
    }
}

/// The name a hold is sealed under (bound into its content, so a hold object copied to
/// another id does not pass for it).
fn sealed_name(id: &str) -> String {
    format!("holds/{id}")
}

fn write(repo: &Repository, h: &Hold) -> Result<()> {
    let sealed = archive::seal_file(repo, &sealed_name(&h.id), &serde_json::to_vec(h)?)?;
    repo.backend.write(FileKind::WalHold, &h.id, &sealed)
}

/// Read one hold; `Ok(None)` when it does not exist.
pub fn read(repo: &Repository, id: &str) -> Result<Option<Hold>> {
    check_id(id)?;
    let sealed = match repo.backend.read(FileKind::WalHold, id) {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let data = archive::open_file(repo, &sealed_name(id), &sealed)?;
    let path = FileKind::WalHold.path(id);
    let h: Hold = serde_json::from_slice(&data)
        .map_err(|e| Error::integrity(format!("{path} is malformed: {e}")))?;
    if h.id != id || !archive::valid_segment_size(h.segment_size) {
        return Err(Error::integrity(format!(
            "{path} is malformed (another id, or an impossible segment size)"
        ))
        .into());
    }
    Ok(Some(h))
}

/// Take a hold on the archived WAL from `spec.start_wal` on. Take it under a lock that
/// conflicts with `forget`'s exclusive one (restore's shared lock): then every `forget`
/// that runs later sees it, and none is running meanwhile.
pub fn take(repo: &Repository, spec: &HoldSpec) -> Result<Hold> {
    if !archive::valid_segment_size(spec.segment_size)
        || archive::parse_segment(&spec.start_wal, spec.segment_size).is_none()
    {
        return Err(Error::usage(format!(
            "{:?} is not a WAL segment name for {}-byte segments",
            spec.start_wal, spec.segment_size
        ))
        .into());
    }
    let now = chrono::Local::now().fixed_offset();
    let h = Hold {
        id: hex::encode(rand::random::<[u8; 16]>()),
        purpose: spec.purpose.clone(),
        host: crate::repo::hostname(),
        start_wal: spec.start_wal.clone(),
        segment_size: spec.segment_size,
        snapshot: spec.snapshot.clone(),
        created: now,
        refreshed: now,
        expires_after_secs: spec.expires_after.min(MAX_EXPIRY).as_secs(),
    };
    write(repo, &h)?;
    Ok(h)
}

/// A hold taken at the start of an operation (a restore) that may still fail: released
/// again when dropped, unless [`keep`](Taken::keep) was called once the operation succeeded.
pub struct Taken<'a> {
    repo: &'a Repository,
    hold: Option<Hold>,
}

impl<'a> Taken<'a> {
    pub fn new(repo: &'a Repository, spec: &HoldSpec) -> Result<Taken<'a>> {
        Ok(Taken {
            repo,
            hold: Some(take(repo, spec)?),
        })
    }

    pub fn id(&self) -> &str {
        self.hold.as_ref().map(|h| h.id.as_str()).unwrap_or("")
    }

    pub fn keep(mut self) -> Hold {
        self.hold.take().expect("kept once")
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.hold.take() {
            if let Err(e) = release(self.repo, &h.id) {
                self.repo
                    .events()
                    .warn(&format!("cannot release WAL hold {} again: {e:#}", h.id));
            }
        }
    }
}

/// Mark a hold as used now (its expiry starts again). `Ok(None)` when it no longer exists
/// (released, or expired and removed by `forget`): it is not taken again, since the WAL it
/// held may be gone already.
pub fn refresh(repo: &Repository, id: &str) -> Result<Option<Hold>> {
    let Some(mut h) = read(repo, id)? else {
        return Ok(None);
    };
    h.refreshed = chrono::Local::now().fixed_offset();
    write(repo, &h)?;
    Ok(Some(h))
}

/// Remove a hold; false when there was none. A hold that cannot be read is removed too.
pub fn release(repo: &Repository, id: &str) -> Result<bool> {
    check_id(id)?;
    match repo.backend.stat(FileKind::WalHold, id)? {
        None => Ok(false),
        Some(_) => {
            repo.backend.remove(FileKind::WalHold, id)?;
            Ok(true)
        }
    }
}

/// Every hold: those that cannot be read first (as [`Listed::Unreadable`]), then the others
/// oldest first. Objects
/// whose name is not a hold id are ignored (like `.tmp-*` files of interrupted writes).
pub fn list(repo: &Repository) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for l in repo.backend.list(FileKind::WalHold)? {
        let id = l.name.rsplit('/').next().unwrap_or("").to_string();
        if !valid_id(&id) {
            continue;
        }
        match read(repo, &id) {
            Ok(Some(h)) => out.push(Listed::Hold(h)),
            // Released meanwhile.
            Ok(None) => {}
            Err(e) => out.push(Listed::Unreadable {
                id,
                error: format!("{e:#}"),
            }),
        }
    }
    out.sort_by_key(|l| match l {
        Listed::Hold(h) => Some(h.created),
        Listed::Unreadable { .. } => None,
    });
    Ok(out)
}

/// The hold whose id is `prefix` or starts with it (also an unreadable one).
pub fn find(repo: &Repository, prefix: &str) -> Result<String> {
    let p = prefix.to_ascii_lowercase();
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::usage(format!("{prefix:?} is not a WAL hold id")).into());
    }
    let ids: Vec<String> = list(repo)?
        .iter()
        .map(|l| l.id().to_string())
        .filter(|id| id.starts_with(&p))
        .collect();
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::new(ErrorKind::NotFound, format!("no WAL hold {prefix}")).into()),
        _ => Err(Error::usage(format!(
            "{prefix:?} matches {} WAL holds; give more of the id",
            ids.len()
        ))
        .into()),
    }
}

/// The stamp file whose modification time says when a `wal-fetch` last refreshed hold `id`.
pub fn stamp_path(prefetch_dir: &Path, id: &str) -> PathBuf {
    prefetch_dir.join(format!(".hold-{id}"))
}

/// Whether the hold behind `stamp` is due for a refresh: no stamp, one older than
/// [`REFRESH_AFTER`], or one from the future (the clock was set back).
pub fn refresh_due(stamp: &Path) -> bool {
    let Ok(modified) = std::fs::metadata(stamp).and_then(|m| m.modified()) else {
        return true;
    };
    match std::time::SystemTime::now().duration_since(modified) {
        Ok(age) => age >= REFRESH_AFTER,
        Err(_) => true,
    }
}

/// Record that the hold behind `stamp` was refreshed now (also after a failed refresh, so a
/// storage that refuses writes costs one attempt per [`REFRESH_AFTER`], not one per call).
pub fn touch(stamp: &Path) -> Result<()> {
    if let Some(dir) = stamp.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let f = std::fs::File::create(stamp)
        .with_context(|| format!("cannot write {}", stamp.display()))?;
    f.set_modified(std::time::SystemTime::now())
        .with_context(|| format!("cannot write {}", stamp.display()))
}

/// The retention horizon: WAL below it was removed on purpose.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Horizon {
    /// The lowest segment number retention keeps; below it, on every timeline, segments,
    /// `.partial` and `.backup` files were removed.
    pub segno: u64,
    /// The segment size `segno` is counted in.
    pub segment_size: u32,
    /// The segment retention kept from when it last raised the horizon (for messages).
    pub first_kept: String,
    pub updated: DateTime<FixedOffset>,
}

impl Horizon {
    /// Whether `name` is a file retention removes (a segment, `.partial` or `.backup` file)
    /// below the horizon. `.history` files are never removed, so never covered.
    pub fn covers(&self, name: &str) -> bool {
        match archive::classify(name) {
            Some(WalFileKind::Segment | WalFileKind::Partial | WalFileKind::Backup) => name
                .get(..24)
                .and_then(|seg| archive::parse_segment(seg, self.segment_size))
                .is_some_and(|(_, segno)| segno < self.segno),
            _ => false,
        }
    }
}

/// The recorded horizon, if retention ever removed WAL.
pub fn horizon(repo: &Repository) -> Result<Option<Horizon>> {
    let sealed = match repo.backend.read(FileKind::Wal, HORIZON) {
        Ok(s) => s,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let data = archive::open_file(repo, HORIZON, &sealed)?;
    let h: Horizon = serde_json::from_slice(&data)
        .map_err(|e| Error::integrity(format!("wal/{HORIZON} is malformed: {e}")))?;
    if !archive::valid_segment_size(h.segment_size) {
        return Err(Error::integrity(format!(
            "wal/{HORIZON} records an impossible segment size ({} bytes)",
            h.segment_size
        ))
        .into());
    }
    Ok(Some(h))
}

/// Raise the horizon to segment number `segno` (never lower it: what is below the old one
/// is gone already). Retention calls this before it removes anything below `segno`, under
/// its exclusive lock, so that a `wal-fetch` that finds a removed segment missing always
/// finds the horizon too.
pub fn raise_horizon(
    repo: &Repository,
    segno: u64,
    segment_size: u32,
    first_kept: &str,
) -> Result<Horizon> {
    if let Some(h) = horizon(repo)? {
        if h.segment_size == segment_size && h.segno >= segno {
            return Ok(h);
        }
    }
    let h = Horizon {
        segno,
        segment_size,
        first_kept: first_kept.to_string(),
        updated: chrono::Local::now().fixed_offset(),
    };
    let sealed = archive::seal_file(repo, HORIZON, &serde_json::to_vec(&h)?)?;
    repo.backend.write(FileKind::Wal, HORIZON, &sealed)?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::super::fetch::{fetch, Fetched};
    use super::*;

    const SEG: u32 = 16 << 20;

    #[test]
    fn the_horizon_only_rises_and_fetch_refuses_what_is_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repo::test_repository(dir.path());
        assert!(horizon(&repo).unwrap().is_none());
        raise_horizon(&repo, 0x105, SEG, "000000010000000100000005").unwrap();
        let h = raise_horizon(&repo, 0x103, SEG, "000000010000000100000003").unwrap();
        assert_eq!(h.segno, 0x105);
        assert_eq!(horizon(&repo).unwrap(), Some(h));
        let dest = dir.path().join("pg_wal/RECOVERYXLOG");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let e = fetch(&repo, "000000020000000100000004", &dest, 0).unwrap_err();
        assert!(
            format!("{e}").contains("removed from the archive by WAL retention"),
            "{e}"
        );
        for name in ["000000020000000100000005", "00000002.history"] {
            assert_eq!(fetch(&repo, name, &dest, 0).unwrap(), Fetched::NotArchived);
        }
        assert!(!dest.exists());
    }

    #[test]
    fn holds_are_taken_refreshed_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repo::test_repository(dir.path());
        let spec = HoldSpec {
            purpose: "drill".into(),
            start_wal: "000000010000000000000007".into(),
            segment_size: SEG,
            snapshot: None,
            expires_after: DEFAULT_EXPIRY,
        };
        let h = take(&repo, &spec).unwrap();
        assert!(valid_id(&h.id));
        assert_eq!(h.expires_after_secs, 24 * 3600);
        let r = refresh(&repo, &h.id).unwrap().unwrap();
        assert!(r.refreshed > h.refreshed && r.created == h.created);
        assert_eq!(find(&repo, &h.id[..6]).unwrap(), h.id);
        assert!(release(&repo, &h.id).unwrap());
        assert!(!release(&repo, &h.id).unwrap());
        assert!(refresh(&repo, &h.id).unwrap().is_none());
        // A guard releases its hold unless kept.
        let id = {
            let t = Taken::new(&repo, &spec).unwrap();
            assert_eq!(list(&repo).unwrap().len(), 1);
            t.id().to_string()
        };
        assert!(read(&repo, &id).unwrap().is_none());
        let kept = Taken::new(&repo, &spec).unwrap().keep();
        assert!(read(&repo, &kept.id).unwrap().is_some());
        // A hold object copied under another id does not pass for it.
        let other = "ffffffffffffffffffffffffffffffff";
        let holds = dir.path().join("repo/wal/holds");
        std::fs::copy(holds.join(&kept.id), holds.join(other)).unwrap();
        assert!(read(&repo, other).is_err());
        assert!(matches!(
            list(&repo).unwrap().as_slice(),
            [Listed::Unreadable { .. }, Listed::Hold(_)]
        ));
        // Bad specs and ids are refused.
        let bad = HoldSpec {
            segment_size: 0,
            ..spec.clone()
        };
        assert!(take(&repo, &bad).is_err());
        assert!(read(&repo, "../../config").is_err());
    }

    fn hold(start: &str, refreshed: &str, secs: u64) -> Hold {
        let t = DateTime::parse_from_rfc3339(refreshed).unwrap();
        Hold {
            id: "0123456789abcdef0123456789abcdef".into(),
            purpose: "test".into(),
            host: "h".into(),
            start_wal: start.into(),
            segment_size: SEG,
            snapshot: None,
            created: t,
            refreshed: t,
            expires_after_secs: secs,
        }
    }

    #[test]
    fn holds_expire_after_their_time_without_a_refresh() {
        let h = hold("000000020000000100000003", "2030-01-01T00:00:00Z", 3600);
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap();
        assert!(!h.expired(at("2030-01-01T00:59:59Z")));
        assert!(h.expired(at("2030-01-01T01:00:00Z")));
        assert_eq!(h.start_segno(SEG), Some(0x103));
        assert_eq!(h.start_segno(SEG * 2), None);
        // An expiry too far to represent never comes.
        let forever = hold("000000020000000100000003", "2030-01-01T00:00:00Z", u64::MAX);
        assert!(!forever.expired(at("9999-01-01T00:00:00Z")));
    }

    #[test]
    fn ids_are_hex_only() {
        assert!(valid_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!valid_id("../../config"));
        assert!(!valid_id("0123456789abcdef"));
    }

    #[test]
    fn the_horizon_covers_removable_files_below_it() {
        let h = Horizon {
            segno: 0x103,
            segment_size: SEG,
            first_kept: "000000010000000100000003".into(),
            updated: DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap(),
        };
        assert!(h.covers("000000010000000100000002"));
        assert!(h.covers("000000030000000000000099"));
        assert!(h.covers("000000010000000100000002.partial"));
        assert!(h.covers("000000010000000100000002.00000028.backup"));
        assert!(!h.covers("000000010000000100000003"));
        assert!(!h.covers("0000000100000002000000FF"));
        assert!(!h.covers("00000001.history"));
        assert!(!h.covers("RECOVERYHISTORY"));
    }
}
