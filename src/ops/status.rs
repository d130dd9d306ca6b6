//! `status`: each declared source's newest successful snapshot, its age against the
//! source's `rpo`, its last failure when newer, for physical PostgreSQL the recoverable
//! window, and its newest copy in each of its `copy_to` repositories. Read from the
//! repositories alone (snapshots and the run history), so it works from any host with the
//! config file; and, for the repositories that take WAL asynchronously, the local WAL
//! spool (what `wal-copy` has still to push there).

use super::mib;
use crate::config::sources::PgMode;
use crate::config::{Config, SourceKind};
use crate::error::{Error, ErrorKind};
use crate::repo::runs::{self, RunRecord, RunStatus};
use crate::repo::snapshot::Snapshot;
use crate::repo::Repository;
use crate::sources::postgres::wal::verify::Window;
use anyhow::Result;
use chrono::{DateTime, FixedOffset};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `status --json`.
#[derive(Serialize)]
pub struct StatusReport {
    #[serde(serialize_with = "super::rfc3339")]
    pub time: DateTime<FixedOffset>,
    pub sources: Vec<SourceStatus>,
    /// Sources out of their RPO, or never backed up.
    pub breached: usize,
    /// Sources whose last successful drill is older than their `drill_max_age` (or that
    /// have none).
    pub drills_overdue: usize,
    /// Copies (a source in one of its `copy_to` repositories) that are behind, or whose
    /// repository could not be read.
    pub copies_behind: usize,
    /// The WAL spooled for each `wal = "async"` repository, by name.
    pub wal_copies: Vec<WalCopyStatus>,
}

/// The WAL that `wal-copy` has still to push into one async repository.
#[derive(Clone, Debug, Serialize)]
pub struct WalCopyStatus {
    pub repository: String,
    /// Files in its spool.
    pub pending: u64,
    /// The age of the oldest one (by its mtime: when it was spooled); null when none.
    pub oldest_secs: Option<u64>,
    pub state: WalCopyState,
    /// Why the spool could not be read (then it is `behind`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What `behind` is measured against: the smallest `rpo` of the physical sources that
    /// copy to it, else [`WAL_COPY_LAG_DEFAULT`].
    #[serde(skip)]
    pub limit_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WalCopyState {
    /// Nothing spooled, or the oldest file is within the limit.
    Ok,
    /// The oldest spooled file is older than the limit, or the spool cannot be read.
    Behind,
}

/// How old the oldest spooled WAL file of an async repository may be when no physical
/// source that copies to it has an `rpo`.
pub const WAL_COPY_LAG_DEFAULT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

#[derive(Serialize)]
pub struct SourceStatus {
    pub source: String,
    #[serde(rename = "type")]
    pub source_type: String,
    /// `ok`; `breached` (older than `rpo`, or never backed up).
    pub state: State,
    pub rpo_secs: Option<u64>,
    pub last_success: Option<LastSuccess>,
    /// The newest failed run, when newer than the last success.
    pub last_failure: Option<LastFailure>,
    /// Physical PostgreSQL: the window point-in-time recovery can reach (wal-verify).
    pub recoverable: Option<Recoverable>,
    /// The newest restore drill (`coffer drill`), passed or failed.
    pub last_drill: Option<DrillState>,
    /// Its `drill_max_age`, when set.
    pub drill_max_age_secs: Option<u64>,
    /// No drill passed within `drill_max_age`.
    pub drill_overdue: bool,
    /// Its newest copy in each of its `copy_to` repositories, in that order.
    pub copies: Vec<CopyStatus>,
}

/// A source's copies in one of its `copy_to` repositories.
#[derive(Serialize)]
pub struct CopyStatus {
    pub repository: String,
    pub state: CopyState,
    /// The newest copy there (safety backups aside).
    pub newest: Option<NewestCopy>,
    /// Why the repository could not be read.
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyState {
    /// It has the source's newest snapshot (or the source has none yet).
    Ok,
    /// It lacks the newest snapshot, but its own newest copy is within the source's `rpo`
    /// (or the source has no `rpo`).
    Lagging,
    /// It lacks the newest snapshot and its newest copy is older than the `rpo` (with no
    /// copy: the newest snapshot is).
    Behind,
    /// The repository could not be read.
    Unknown,
}

#[derive(Serialize)]
pub struct NewestCopy {
    /// The snapshot it copies (its id in this repository), and that snapshot's time.
    pub original: String,
    #[serde(serialize_with = "super::rfc3339")]
    pub time: DateTime<FixedOffset>,
    pub age_secs: u64,
}

#[derive(Serialize)]
pub struct DrillState {
    #[serde(serialize_with = "super::rfc3339")]
    pub time: DateTime<FixedOffset>,
    pub age_secs: u64,
    pub passed: bool,
    pub rto_secs: f64,
    pub snapshot: Option<String>,
    /// When the newest drill passed (this one, or an earlier one).
    pub last_passed: Option<DateTime<FixedOffset>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Breached,
}

#[derive(Serialize)]
pub struct LastSuccess {
    pub snapshot: String,
    #[serde(serialize_with = "super::rfc3339")]
    pub time: DateTime<FixedOffset>,
    pub age_secs: u64,
    pub size: u64,
}

#[derive(Serialize)]
pub struct LastFailure {
    #[serde(serialize_with = "super::rfc3339")]
    pub time: DateTime<FixedOffset>,
    pub age_secs: u64,
    pub error: Option<String>,
    pub host: String,
}

#[derive(Serialize)]
pub struct Recoverable {
    /// No base backup is cut off by a gap in the archive.
    pub ok: bool,
    pub window: Option<Window>,
    pub latest_commit_time: Option<DateTime<FixedOffset>>,
}

fn secs(from: DateTime<FixedOffset>, to: DateTime<FixedOffset>) -> u64 {
    (to - from).num_seconds().max(0) as u64
}

/// `status`: one read of the repository, and one of each `copy_to` repository.
pub fn status(repo: &Arc<Repository>, config: &Config) -> Result<StatusReport> {
    if config.sources.is_empty() {
        return Err(Error::usage(
            "the config file declares no sources: status reports on [sources.NAME] tables",
        )
        .into());
    }
    let overview = Overview::read(repo, config)?;
    Ok(overview.report(config, chrono::Local::now().fixed_offset()))
}

/// What `status` reads from the repository about the declared sources: the snapshots, the
/// run history and (with a physical source) the WAL archive. `coffer run` reads it once at
/// start, then keeps it up to date from its own runs, so that its metrics and status page
/// never read the storage.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overview {
    /// By declared source name.
    pub sources: BTreeMap<String, SourceOverview>,
    /// The WAL archive (wal-verify), when a source is physical PostgreSQL.
    pub wal: Option<WalOverview>,
    /// The newest successful `check` in the run history.
    pub check_last_success: Option<DateTime<FixedOffset>>,
    /// The WAL spool of each async repository, by name (read from the local disk).
    pub wal_spools: BTreeMap<String, SpoolOverview>,
}

/// The spool of one async repository.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SpoolOverview {
    pub pending: u64,
    /// When its oldest file was spooled.
    pub oldest: Option<DateTime<FixedOffset>>,
    /// Why it could not be read.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceOverview {
    /// Snapshots of the source (safety backups included).
    pub snapshots: u64,
    /// Its newest snapshot, safety backups aside.
    pub last_success: Option<Success>,
    /// When its oldest one was made (safety backups aside): what a repository that has no
    /// copy of it lacks since.
    pub oldest: Option<DateTime<FixedOffset>>,
    /// Its newest failed run, when newer than the last success.
    pub last_failure: Option<Failure>,
    /// Its newest run in the history, ok or failed.
    pub last_run: Option<LastRun>,
    /// Its newest restore drill.
    pub last_drill: Option<LastDrill>,
    /// When its newest passing drill finished.
    pub last_drill_passed: Option<DateTime<FixedOffset>>,
    /// Its newest copy in each of its `copy_to` repositories, by repository name.
    pub copies: BTreeMap<String, CopyOverview>,
}

/// A source's copies in one repository.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyOverview {
    /// The newest one (safety backups aside).
    pub newest: Option<Copied>,
    /// Why the repository could not be read (then nothing else is known).
    pub error: Option<String>,
}

/// A copy: the snapshot of the primary it copies, and its time (a copy keeps it).
#[derive(Clone, Debug, Serialize)]
pub struct Copied {
    pub original: String,
    pub time: DateTime<FixedOffset>,
}

/// The snapshots of each `copy_to` repository, by name, or why it could not be read.
pub type CopyReads = BTreeMap<String, std::result::Result<Vec<Snapshot>, String>>;

#[derive(Clone, Debug, Serialize)]
pub struct LastDrill {
    pub finished: DateTime<FixedOffset>,
    pub passed: bool,
    pub rto_secs: f64,
    pub snapshot: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Success {
    pub snapshot: String,
    pub time: DateTime<FixedOffset>,
    pub size: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub time: DateTime<FixedOffset>,
    pub error: Option<String>,
    pub host: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct LastRun {
    pub started: DateTime<FixedOffset>,
    pub finished: DateTime<FixedOffset>,
    pub ok: bool,
    pub bytes_read: u64,
    pub bytes_added: u64,
}

/// The WAL archive as wal-verify sees it.
#[derive(Clone, Debug, Serialize)]
pub struct WalOverview {
    /// No base backup is cut off by a gap.
    pub ok: bool,
    pub gaps: usize,
    pub window: Option<Window>,
    pub latest_commit_time: Option<DateTime<FixedOffset>>,
}

impl WalOverview {
    pub fn from_report(r: &crate::sources::postgres::wal::verify::Report) -> WalOverview {
        WalOverview {
            ok: r.ok,
            gaps: r.gaps.len(),
            window: r.window.clone(),
            latest_commit_time: r.latest_commit_time,
        }
    }

    /// When the newest segment reachable without a gap was archived.
    pub fn newest_segment_time(&self) -> Option<DateTime<FixedOffset>> {
        self.window
            .as_ref()
            .and_then(|w| w.latest_archived_at)
            .map(|t| t.fixed_offset())
    }

    /// From the end of the oldest usable base backup to the latest commit recovery reaches
    /// (or, when pg_waldump found none, to when the newest segment was archived).
    pub fn window_secs(&self) -> Option<u64> {
        let w = self.window.as_ref()?;
        let end = self.latest_commit_time.or(self.newest_segment_time())?;
        Some(secs(w.earliest_time, end))
    }
}

/// Whether any declared source is physical PostgreSQL (and so has a WAL archive).
pub fn has_physical(config: &Config) -> bool {
    config
        .sources
        .iter()
        .any(|s| matches!(&s.kind, SourceKind::Postgres(p) if p.mode == PgMode::Physical))
}

impl Overview {
    /// One read of the repository, of each `copy_to` repository and of the WAL spool.
    pub fn read(repo: &Arc<Repository>, config: &Config) -> Result<Overview> {
        let wal = Overview::read_wal(repo, config)?;
        let mut o = Overview::from_parts(
            config,
            &repo.load_snapshots()?,
            &runs::load(repo)?,
            wal,
            &Overview::read_copies(config, repo.events()),
        );
        o.wal_spools = Overview::read_spools(config);
        Ok(o)
    }

    /// The spool of each repository `wal-copy` drains (a listing of a local directory).
    pub fn read_spools(config: &Config) -> BTreeMap<String, SpoolOverview> {
        use crate::sources::postgres::wal::spool;
        super::wal_copy::spooled_repositories(config)
            .into_iter()
            .map(|name| {
                let dir = config.wal_spool_of(&name).unwrap_or_default();
                let o = match spool::pending(&dir) {
                    Ok(files) => SpoolOverview {
                        pending: files.len() as u64,
                        oldest: files
                            .iter()
                            .map(|f| f.modified)
                            .min()
                            .map(|t| DateTime::<chrono::Local>::from(t).fixed_offset()),
                        error: None,
                    },
                    Err(e) => SpoolOverview {
                        pending: 0,
                        oldest: None,
                        error: Some(format!("{e:#}")),
                    },
                };
                (name, o)
            })
            .collect()
    }

    /// The snapshots of every repository a declared source copies to, each read once. One
    /// that cannot be opened or listed is not an error here: its copies are unknown, and
    /// `status` says why.
    pub fn read_copies(config: &Config, events: &crate::progress::Progress) -> CopyReads {
        let names: std::collections::BTreeSet<&String> =
            config.sources.iter().flat_map(|s| &s.copy_to).collect();
        names
            .into_iter()
            .map(|name| {
                let snaps = super::access::open_named(config, name, events)
                    .and_then(|r| r.load_snapshots())
                    .map_err(|e| format!("{e:#}"));
                (name.clone(), snaps)
            })
            .collect()
    }

    /// The WAL archive's view, when a declared source is physical.
    pub fn read_wal(repo: &Arc<Repository>, config: &Config) -> Result<Option<WalOverview>> {
        Ok(if has_physical(config) {
            Some(WalOverview::from_report(
                &super::wal_verify::wal_verify(repo)?.0,
            ))
        } else {
            None
        })
    }

    /// From the snapshots and the run history, already read.
    pub fn from_parts(
        config: &Config,
        snaps: &[Snapshot],
        history: &[RunRecord],
        wal: Option<WalOverview>,
        copies: &CopyReads,
    ) -> Overview {
        let mut sources = BTreeMap::new();
        for src in &config.sources {
            let mine = || {
                snaps
                    .iter()
                    .filter(|s| s.source.as_deref() == Some(&src.name))
            };
            let newest = newest_of(snaps, &src.name);
            let oldest = mine()
                .filter(|s| !s.has_tag("safety-backup"))
                .map(|s| s.time)
                .min();
            let runs = || {
                history
                    .iter()
                    .filter(|r| r.source == src.name && r.job == "backup")
            };
            let drills = || {
                history
                    .iter()
                    .filter(|r| r.source == src.name && r.job == "drill")
            };
            let last_failure = runs()
                .filter(|r| r.status == RunStatus::Failed)
                .filter(|r| newest.is_none_or(|s| r.finished > s.time))
                .max_by_key(|r| r.finished)
                .map(|r| Failure {
                    time: r.finished,
                    error: r.error.clone(),
                    host: r.host.clone(),
                });
            let last_run = runs().max_by_key(|r| r.finished).map(|r| LastRun {
                started: r.started,
                finished: r.finished,
                ok: r.status == RunStatus::Ok,
                bytes_read: r.bytes_read,
                bytes_added: r.bytes_added,
            });
            let copies = src
                .copy_to
                .iter()
                .map(|name| {
                    let o = match copies.get(name) {
                        Some(Ok(there)) => CopyOverview {
                            newest: newest_of(there, &src.name).map(|s| Copied {
                                original: s.original.unwrap_or(s.id).to_hex(),
                                time: s.time,
                            }),
                            error: None,
                        },
                        Some(Err(e)) => CopyOverview {
                            newest: None,
                            error: Some(e.clone()),
                        },
                        None => CopyOverview {
                            newest: None,
                            error: Some("not read".into()),
                        },
                    };
                    (name.clone(), o)
                })
                .collect();
            sources.insert(
                src.name.clone(),
                SourceOverview {
                    copies,
                    oldest,
                    snapshots: mine().count() as u64,
                    last_success: newest.map(|s| Success {
                        snapshot: s.id.to_hex(),
                        time: s.time,
                        size: s.size,
                    }),
                    last_failure,
                    last_run,
                    last_drill: drills().max_by_key(|r| r.finished).map(|r| LastDrill {
                        finished: r.finished,
                        passed: r.status == RunStatus::Ok,
                        rto_secs: r.drill.as_ref().map_or(0.0, |d| d.rto_secs),
                        snapshot: r.snapshot.clone(),
                    }),
                    last_drill_passed: drills()
                        .filter(|r| r.status == RunStatus::Ok)
                        .map(|r| r.finished)
                        .max(),
                },
            );
        }
        let check_last_success = history
            .iter()
            .filter(|r| r.job == "check" && r.status == RunStatus::Ok)
            .map(|r| r.finished)
            .max();
        Overview {
            sources,
            wal,
            check_last_success,
            wal_spools: BTreeMap::new(),
        }
    }

    /// The status of each declared source at `now`.
    pub fn report(&self, config: &Config, now: DateTime<FixedOffset>) -> StatusReport {
        let mut out = Vec::new();
        let none = SourceOverview::default();
        for src in &config.sources {
            let o = self.sources.get(&src.name).unwrap_or(&none);
            let last_success = o.last_success.as_ref().map(|s| LastSuccess {
                snapshot: s.snapshot.clone(),
                time: s.time,
                age_secs: secs(s.time, now),
                size: s.size,
            });
            let last_failure = o.last_failure.as_ref().map(|f| LastFailure {
                time: f.time,
                age_secs: secs(f.time, now),
                error: f.error.clone(),
                host: f.host.clone(),
            });
            let state = match (&last_success, src.rpo) {
                (None, _) => State::Breached,
                (Some(s), Some(rpo)) if s.age_secs > rpo.as_secs() => State::Breached,
                _ => State::Ok,
            };
            let recoverable = match (&src.kind, &self.wal) {
                (SourceKind::Postgres(p), Some(w)) if p.mode == PgMode::Physical => {
                    Some(Recoverable {
                        ok: w.ok,
                        window: w.window.clone(),
                        latest_commit_time: w.latest_commit_time,
                    })
                }
                _ => None,
            };
            let drill_overdue = src.drill_max_age.is_some_and(|max| {
                o.last_drill_passed
                    .is_none_or(|t| secs(t, now) > max.as_secs())
            });
            let copies = src
                .copy_to
                .iter()
                .map(|name| {
                    let c = o.copies.get(name);
                    copy_status(name, c, o.last_success.as_ref(), o.oldest, src.rpo, now)
                })
                .collect();
            out.push(SourceStatus {
                copies,
                source: src.name.clone(),
                source_type: src.kind.type_name().to_string(),
                state,
                rpo_secs: src.rpo.map(|d| d.as_secs()),
                last_success,
                last_failure,
                recoverable,
                last_drill: o.last_drill.as_ref().map(|d| DrillState {
                    time: d.finished,
                    age_secs: secs(d.finished, now),
                    passed: d.passed,
                    rto_secs: d.rto_secs,
                    snapshot: d.snapshot.clone(),
                    last_passed: o.last_drill_passed,
                }),
                drill_max_age_secs: src.drill_max_age.map(|d| d.as_secs()),
                drill_overdue,
            });
        }
        let wal_copies = self
            .wal_spools
            .iter()
            .map(|(name, o)| wal_copy_status(name, o, wal_copy_limit(config, name), now))
            .collect();
        StatusReport {
            wal_copies,
            time: now,
            breached: out.iter().filter(|s| s.state == State::Breached).count(),
            drills_overdue: out.iter().filter(|s| s.drill_overdue).count(),
            copies_behind: out
                .iter()
                .flat_map(|s| &s.copies)
                .filter(|c| c.is_behind())
                .count(),
            sources: out,
        }
    }
}

/// How old the oldest spooled WAL file of `repository` may be: the smallest `rpo` of the
/// physical sources that copy to it, else [`WAL_COPY_LAG_DEFAULT`].
fn wal_copy_limit(config: &Config, repository: &str) -> std::time::Duration {
    config
        .sources
        .iter()
        .filter(|s| matches!(&s.kind, SourceKind::Postgres(p) if p.mode == PgMode::Physical))
        .filter(|s| s.copy_to.iter().any(|n| n == repository))
        .filter_map(|s| s.rpo)
        .min()
        .unwrap_or(WAL_COPY_LAG_DEFAULT)
}

fn wal_copy_status(
    repository: &str,
    o: &SpoolOverview,
    limit: std::time::Duration,
    now: DateTime<FixedOffset>,
) -> WalCopyStatus {
    let oldest_secs = o.oldest.map(|t| secs(t, now));
    let behind = o.error.is_some() || oldest_secs.is_some_and(|a| a > limit.as_secs());
    WalCopyStatus {
        repository: repository.to_string(),
        pending: o.pending,
        oldest_secs,
        state: if behind {
            WalCopyState::Behind
        } else {
            WalCopyState::Ok
        },
        error: o.error.clone(),
        limit_secs: limit.as_secs(),
    }
}

impl WalCopyStatus {
    /// What is wrong, for messages and alerts; `None` when it is not behind.
    pub fn problem(&self) -> Option<String> {
        if self.state != WalCopyState::Behind {
            return None;
        }
        if let Some(e) = &self.error {
            return Some(format!(
                "cannot read the WAL spool of {}: {e}",
                self.repository
            ));
        }
        Some(format!(
            "{} WAL file(s) wait in the spool for {}, the oldest for {}, beyond {}: is \
             wal-copy failing?",
            self.pending,
            self.repository,
            human(self.oldest_secs.unwrap_or(0)),
            human(self.limit_secs)
        ))
    }
}

/// The newest snapshot of source `name` among `snaps`, safety backups aside.
fn newest_of<'a>(snaps: &'a [Snapshot], name: &str) -> Option<&'a Snapshot> {
    snaps
        .iter()
        .filter(|s| s.source.as_deref() == Some(name) && !s.has_tag("safety-backup"))
        .max_by_key(|s| s.time)
}

/// The state of a source's copies in `repository` at `now`, against the source's newest
/// snapshot (and oldest) and its `rpo`.
fn copy_status(
    repository: &str,
    copy: Option<&CopyOverview>,
    newest: Option<&Success>,
    oldest: Option<DateTime<FixedOffset>>,
    rpo: Option<std::time::Duration>,
    now: DateTime<FixedOffset>,
) -> CopyStatus {
    let there = copy.and_then(|c| c.newest.as_ref());
    let state = match (copy.and_then(|c| c.error.as_ref()), newest, there) {
        (Some(_), _, _) => CopyState::Unknown,
        (None, None, _) => CopyState::Ok,
        (None, Some(p), Some(c)) if c.time >= p.time => CopyState::Ok,
        (None, Some(p), c) => {
            // What a restore from this repository alone would lose: everything since its
            // newest copy, or with none, since the source's first snapshot.
            let since = c.map_or(oldest.unwrap_or(p.time), |c| c.time);
            match rpo {
                Some(rpo) if secs(since, now) > rpo.as_secs() => CopyState::Behind,
                _ => CopyState::Lagging,
            }
        }
    };
    CopyStatus {
        repository: repository.to_string(),
        state,
        newest: there.map(|c| NewestCopy {
            original: c.original.clone(),
            time: c.time,
            age_secs: secs(c.time, now),
        }),
        error: copy.and_then(|c| c.error.clone()),
    }
}

impl CopyStatus {
    /// Behind, or not known: what `status` fails on and the service alerts on.
    pub fn is_behind(&self) -> bool {
        matches!(self.state, CopyState::Behind | CopyState::Unknown)
    }

    /// What is wrong, for messages and alerts; `None` when nothing is.
    pub fn problem(&self, newest: Option<&LastSuccess>, rpo_secs: Option<u64>) -> Option<String> {
        if !self.is_behind() {
            return None;
        }
        if let Some(e) = &self.error {
            return Some(format!(
                "cannot read repository {} to see its copies: {e}",
                self.repository
            ));
        }
        let rpo = rpo_secs.map(human).unwrap_or_default();
        let missing = newest
            .map(|p| {
                format!(
                    "snapshot {} is not there",
                    &p.snapshot[..8.min(p.snapshot.len())]
                )
            })
            .unwrap_or_default();
        Some(match &self.newest {
            Some(c) => format!(
                "the newest copy in {} is {} old, beyond the RPO of {rpo}, and {missing}",
                self.repository,
                human(c.age_secs)
            ),
            None => format!(
                "{} has no copy of the source, beyond the RPO of {rpo}: {missing}",
                self.repository
            ),
        })
    }
}

impl StatusReport {
    /// Exit 1 when a source is out of its RPO (or was never backed up), its drills are
    /// overdue, or a copy is behind.
    pub fn verdict(&self) -> Result<()> {
        let copies: Vec<String> = self
            .sources
            .iter()
            .flat_map(|s| {
                s.copies
                    .iter()
                    .filter_map(|c| c.problem(s.last_success.as_ref(), s.rpo_secs))
                    .map(move |p| format!("{}: {p}", s.source))
            })
            .collect();
        let wal: Vec<String> = self.wal_copies.iter().filter_map(|w| w.problem()).collect();
        let copies = match (copies.is_empty(), wal.is_empty()) {
            (true, true) => None,
            (false, true) => Some(format!(
                "{} cop{} behind: {}",
                copies.len(),
                if copies.len() == 1 { "y is" } else { "ies are" },
                copies.join("; ")
            )),
            (true, false) => Some(format!("WAL copies are behind: {}", wal.join("; "))),
            (false, false) => Some(format!(
                "{} cop{} behind: {}; WAL copies are behind: {}",
                copies.len(),
                if copies.len() == 1 { "y is" } else { "ies are" },
                copies.join("; "),
                wal.join("; ")
            )),
        };
        match (self.verdict_sources(), copies) {
            (Ok(()), None) => Ok(()),
            (Err(e), None) => Err(e),
            (Ok(()), Some(c)) => Err(Error::new(ErrorKind::Other, c).into()),
            (Err(e), Some(c)) => Err(Error::new(ErrorKind::Other, format!("{e:#}; {c}")).into()),
        }
    }

    fn verdict_sources(&self) -> Result<()> {
        if self.breached == 0 && self.drills_overdue > 0 {
            let names: Vec<&str> = self
                .sources
                .iter()
                .filter(|s| s.drill_overdue)
                .map(|s| s.source.as_str())
                .collect();
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "no restore drill passed within drill_max_age for: {}",
                    names.join(", ")
                ),
            )
            .into());
        }
        if self.breached == 0 {
            return Ok(());
        }
        let names: Vec<&str> = self
            .sources
            .iter()
            .filter(|s| s.state == State::Breached)
            .map(|s| s.source.as_str())
            .collect();
        Err(Error::new(
            ErrorKind::Other,
            format!(
                "{} of {} sources are out of their RPO or were never backed up: {}",
                self.breached,
                self.sources.len(),
                names.join(", ")
            ),
        )
        .into())
    }
}

/// `3d 4h`, `2h 5m`, `40s`.
pub fn human(secs: u64) -> String {
    let (d, h, m) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", secs % 60)
    } else {
        format!("{secs}s")
    }
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<16} {:<20} {:<9} {:<10} {:>9} {:>9} {:>11}  last success",
            "source", "type", "state", "snapshot", "age", "rpo", "size"
        )?;
        for s in &self.sources {
            let (snap, age, size, when) = match &s.last_success {
                Some(l) => (
                    l.snapshot[..8].to_string(),
                    human(l.age_secs),
                    mib(l.size),
                    l.time.format("%Y-%m-%d %H:%M:%S").to_string(),
                ),
                None => ("-".into(), "-".into(), "-".into(), "never".into()),
            };
            writeln!(
                f,
                "{:<16} {:<20} {:<9} {:<10} {:>9} {:>9} {:>11}  {when}",
                s.source,
                s.source_type,
                match s.state {
                    State::Ok => "OK",
                    State::Breached => "BREACHED",
                },
                snap,
                age,
                s.rpo_secs.map(human).unwrap_or("-".into()),
                size
            )?;
            if let Some(l) = &s.last_failure {
                writeln!(
                    f,
                    "  last failure {} ago on {}: {}",
                    human(l.age_secs),
                    l.host,
                    l.error.as_deref().unwrap_or("(no message)")
                )?;
            }
            match (&s.last_drill, s.drill_overdue) {
                (Some(d), overdue) => writeln!(
                    f,
                    "  last drill {} {} ago (RTO {:.1} s){}",
                    if d.passed { "passed" } else { "FAILED" },
                    human(d.age_secs),
                    d.rto_secs,
                    if overdue {
                        " — DRILL OVERDUE: no drill passed within drill_max_age"
                    } else {
                        ""
                    }
                )?,
                (None, true) => writeln!(f, "  never drilled — DRILL OVERDUE: run coffer drill")?,
                (None, false) => {}
            }
            for c in &s.copies {
                let newest = match &c.newest {
                    Some(n) => format!(
                        "newest copy {} of {}, {} old",
                        &n.original[..8.min(n.original.len())],
                        n.time.format("%Y-%m-%d %H:%M:%S"),
                        human(n.age_secs)
                    ),
                    None => "no copy".into(),
                };
                match c.state {
                    CopyState::Ok => writeln!(f, "  copy in {}: {newest}", c.repository)?,
                    CopyState::Lagging => writeln!(
                        f,
                        "  copy in {}: {newest}; the newest snapshot is not there yet",
                        c.repository
                    )?,
                    CopyState::Behind => writeln!(
                        f,
                        "  copy in {}: {newest} — BEHIND: {}",
                        c.repository,
                        c.problem(s.last_success.as_ref(), s.rpo_secs)
                            .unwrap_or_default()
                    )?,
                    CopyState::Unknown => writeln!(
                        f,
                        "  copy in {}: UNKNOWN: {}",
                        c.repository,
                        c.problem(s.last_success.as_ref(), s.rpo_secs)
                            .unwrap_or_default()
                    )?,
                }
            }
            if let Some(r) = &s.recoverable {
                match &r.window {
                    Some(w) => writeln!(
                        f,
                        "  recoverable from {} (end of base backup {}) to {}{}{}",
                        w.earliest_time.format("%Y-%m-%d %H:%M:%S"),
                        &w.earliest_backup.get(..8).unwrap_or(&w.earliest_backup),
                        w.latest_segment,
                        r.latest_commit_time
                            .map(|t| format!(", last commit {}", t.format("%Y-%m-%d %H:%M:%S")))
                            .unwrap_or_default(),
                        if r.ok {
                            ""
                        } else {
                            " — GAPS: run coffer wal-verify"
                        }
                    )?,
                    None => writeln!(f, "  no recoverable window: run coffer wal-verify")?,
                }
            }
        }
        for w in &self.wal_copies {
            let oldest = w
                .oldest_secs
                .map(|a| format!(", the oldest {} old", human(a)))
                .unwrap_or_default();
            match w.state {
                WalCopyState::Ok => writeln!(
                    f,
                    "WAL copy to {}: {} file(s) in the spool{oldest}",
                    w.repository, w.pending
                )?,
                WalCopyState::Behind => writeln!(
                    f,
                    "WAL copy to {}: BEHIND: {}",
                    w.repository,
                    w.problem().unwrap_or_default()
                )?,
            }
        }
        write!(
            f,
            "{} of {} sources within their RPO",
            self.sources.len() - self.breached,
            self.sources.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    #[test]
    fn a_wal_copy_is_behind_when_its_oldest_spooled_file_is_older_than_the_rpo() {
        let now = t("2024-05-03T12:00:00Z");
        let spool = |pending: u64, oldest: Option<&str>| SpoolOverview {
            pending,
            oldest: oldest.map(t),
            error: None,
        };
        let rpo = Duration::from_secs(600);
        let empty = wal_copy_status("offsite", &spool(0, None), rpo, now);
        assert_eq!((empty.state, empty.oldest_secs), (WalCopyState::Ok, None));
        assert_eq!(empty.problem(), None);
        let fresh = wal_copy_status("offsite", &spool(3, Some("2024-05-03T11:55:00Z")), rpo, now);
        assert_eq!(
            (fresh.state, fresh.oldest_secs),
            (WalCopyState::Ok, Some(300))
        );
        let old = wal_copy_status("offsite", &spool(3, Some("2024-05-03T11:45:00Z")), rpo, now);
        assert_eq!(old.state, WalCopyState::Behind);
        assert_eq!(
            old.problem().unwrap(),
            "3 WAL file(s) wait in the spool for offsite, the oldest for 15m 0s, beyond 10m 0s: \
             is wal-copy failing?"
        );
        let unread = SpoolOverview {
            error: Some("permission denied".into()),
            ..SpoolOverview::default()
        };
        let u = wal_copy_status("offsite", &unread, rpo, now);
        assert_eq!(u.state, WalCopyState::Behind);
        assert!(u.problem().unwrap().contains("permission denied"));
        let v = serde_json::to_value(&fresh).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"repository": "offsite", "pending": 3, "oldest_secs": 300, "state": "ok"})
        );
        // No rpo on the physical source: 15 minutes.
        let c = Config::parse(
            "wal_spool = \"/s\"\n[repositories.offsite]\nlocation = \"/o\"\nwal = \"async\"\n\
             [sources.db]\ntype = \"postgres\"\nmode = \"physical\"\ncopy_to = [\"offsite\"]\n",
            None,
            &|_| None,
        )
        .unwrap();
        assert_eq!(wal_copy_limit(&c, "offsite"), WAL_COPY_LAG_DEFAULT);
        assert_eq!(WAL_COPY_LAG_DEFAULT, Duration::from_secs(900));
    }

    #[test]
    fn a_copy_is_behind_when_it_lacks_the_newest_snapshot_beyond_the_rpo() {
        let now = t("2024-05-03T12:00:00Z");
        let newest = Success {
            snapshot: "bbbbbbbbbbbbbbbb".into(),
            time: t("2024-05-03T02:00:00Z"),
            size: 1,
        };
        let copy = |time: &str| CopyOverview {
            newest: Some(Copied {
                original: "aaaaaaaaaaaaaaaa".into(),
                time: t(time),
            }),
            error: None,
        };
        let rpo = Some(Duration::from_secs(26 * 3600));
        let first = Some(newest.time);
        let state = |c: &CopyOverview, rpo| {
            copy_status("offsite", Some(c), Some(&newest), first, rpo, now).state
        };
        // It has the newest one.
        assert_eq!(state(&copy("2024-05-03T02:00:00Z"), rpo), CopyState::Ok);
        // It lacks it; its newest copy is 34 h old, beyond 26 h; within 48 h.
        assert_eq!(state(&copy("2024-05-02T02:00:00Z"), rpo), CopyState::Behind);
        assert_eq!(
            state(
                &copy("2024-05-02T02:00:00Z"),
                Some(Duration::from_secs(48 * 3600))
            ),
            CopyState::Lagging
        );
        // Without an rpo it is never behind.
        assert_eq!(
            state(&copy("2024-01-01T00:00:00Z"), None),
            CopyState::Lagging
        );
        // No copy at all: the age of the source's first snapshot counts (here 10 h, then
        // 58 h), however often it is backed up since.
        let none = CopyOverview::default();
        assert_eq!(state(&none, rpo), CopyState::Lagging);
        assert_eq!(
            state(&none, Some(Duration::from_secs(3600))),
            CopyState::Behind
        );
        let since_may_1 = Some(t("2024-05-01T02:00:00Z"));
        assert_eq!(
            copy_status("offsite", Some(&none), Some(&newest), since_may_1, rpo, now).state,
            CopyState::Behind
        );
        // Nothing to copy yet.
        assert_eq!(
            copy_status("offsite", Some(&none), None, None, rpo, now).state,
            CopyState::Ok
        );
        // A repository that could not be read.
        let unread = CopyOverview {
            newest: None,
            error: Some("connection refused".into()),
        };
        let s = copy_status("offsite", Some(&unread), Some(&newest), first, rpo, now);
        assert_eq!(s.state, CopyState::Unknown);
        assert!(s.is_behind());
        let p = s.problem(None, Some(3600)).unwrap();
        assert!(
            p.contains("cannot read repository offsite") && p.contains("connection refused"),
            "{p}"
        );
        let behind = copy_status(
            "offsite",
            Some(&copy("2024-05-02T02:00:00Z")),
            Some(&newest),
            first,
            rpo,
            now,
        );
        let last = LastSuccess {
            snapshot: newest.snapshot.clone(),
            time: newest.time,
            age_secs: secs(newest.time, now),
            size: 1,
        };
        let p = behind.problem(Some(&last), Some(26 * 3600)).unwrap();
        assert_eq!(
            p,
            "the newest copy in offsite is 1d 10h old, beyond the RPO of 1d 2h, and snapshot bbbbbbbb is not there"
        );
    }
}
