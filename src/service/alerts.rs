//! The alerts of `coffer run`: a state machine over what the daemon observes, and the
//! delivery of its events.
//!
//! The daemon tells an [`Alerter`] the state of each [`AlertKey`] (a source, or the
//! repository, and a [`Condition`]) as often as it likes: after every run, and on a timer for
//! the RPO and the WAL archive. The alerter sends
//! - an alert (`backup_failed`, `rpo_breached`, `wal_lagging`, `check_failed`,
//!   `drill_failed`, `copy_behind`, `wal_copy_behind`, with `status` `alert`) when a key
//!   changes from fine to a problem;
//! - a reminder (the same event, `status` `reminder`) every `remind` (default 24 h; `0s`
//!   turns reminders off) while the problem lasts, never more often;
//! - `recovered` (with `status` naming the event it ends) on the change back to fine, only
//!   for a problem it alerted on.
//!
//! A key first observed fine sends nothing. The state is in memory only: a daemon that starts
//! seeds the problems it finds in the repository, so that a restart does not alert again on a
//! problem that persists ([`seed_from_history`](Alerter::seed_from_history): the sources
//! whose newest backup runs, or newest drills, failed; [`seed`](Alerter::seed) for anything else). A problem
//! that is not seeded (a breached RPO, a lagging WAL archive, a failed check) is alerted once
//! more after a restart.
//!
//! Delivery never blocks or fails a backup: events become HTTP requests on a bounded queue,
//! sent by one background thread, each retried with exponential backoff (1 s, 2 s, 4 s … by
//! default) and, when every try failed, reported once through the [`Progress`] warning
//! channel. The URLs carry their secret in their path or query: what is logged shows only
//! their scheme and host ([`crate::redact::url_origin`]).

use crate::config::{AlertsConfig, SourceConfig};
use crate::ops::stack::SourceRun;
use crate::ops::status::{human, State, StatusReport};
use crate::progress::Progress;
use crate::redact;
use crate::repo::runs::{RunRecord, RunStatus};
use chrono::{DateTime, FixedOffset};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a problem that lasts is reminded when `[alerts] remind` is not set.
pub const DEFAULT_REMIND: Duration = Duration::from_secs(24 * 3600);

/// The most of a log sent with a healthcheck ping (its last lines).
pub const LOG_TAIL_MAX: usize = 10 * 1024;

/// What can be wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Condition {
    /// The last backup of the source failed.
    BackupFailed,
    /// No successful backup for longer than the source's `rpo`.
    RpoBreached,
    /// A physical source's WAL archive: its newest segment is older than the `rpo`, or
    /// wal-verify found a gap.
    WalLagging,
    /// `coffer check` failed (source `None`: the repository).
    CheckFailed,
    /// The last restore drill of the source failed (`coffer drill`).
    DrillFailed,
    /// A `copy_to` repository (the key's `repository`) lacks the source's newest snapshot
    /// and its newest copy is older than the `rpo`, or it cannot be read.
    CopyBehind,
    /// The WAL spooled for a `wal = "async"` repository (the key's `repository`; source
    /// `None`) waits longer than the `rpo` of the physical sources that copy to it (15 min
    /// without one), or the spool cannot be read.
    WalCopyBehind,
}

impl Condition {
    /// The `event` of its alerts.
    pub fn event(self) -> &'static str {
        match self {
            Condition::BackupFailed => "backup_failed",
            Condition::RpoBreached => "rpo_breached",
            Condition::WalLagging => "wal_lagging",
            Condition::CheckFailed => "check_failed",
            Condition::DrillFailed => "drill_failed",
            Condition::CopyBehind => "copy_behind",
            Condition::WalCopyBehind => "wal_copy_behind",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Condition::BackupFailed => "backup failed",
            Condition::RpoBreached => "RPO breached",
            Condition::WalLagging => "WAL archive lagging",
            Condition::CheckFailed => "check failed",
            Condition::DrillFailed => "restore drill failed",
            Condition::CopyBehind => "copy behind",
            Condition::WalCopyBehind => "WAL copy behind",
        }
    }
}

/// What an alert is about: a declared source (or `None`, the repository) and a condition,
/// and for `CopyBehind` and `WalCopyBehind` the repository of the copies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlertKey {
    pub source: Option<String>,
    pub condition: Condition,
    pub repository: Option<String>,
}

impl AlertKey {
    pub fn new(source: Option<&str>, condition: Condition) -> AlertKey {
        AlertKey {
            source: source.map(str::to_string),
            condition,
            repository: None,
        }
    }

    /// `CopyBehind` of `source`'s copies in `repository`.
    pub fn copy(source: &str, repository: &str) -> AlertKey {
        AlertKey {
            repository: Some(repository.to_string()),
            ..AlertKey::new(Some(source), Condition::CopyBehind)
        }
    }

    /// `WalCopyBehind` of the WAL spooled for `repository`.
    pub fn wal_copy(repository: &str) -> AlertKey {
        AlertKey {
            repository: Some(repository.to_string()),
            ..AlertKey::new(None, Condition::WalCopyBehind)
        }
    }
}

/// A problem as observed: its message, and the run it comes from when there is one.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub error: String,
    pub snapshot: Option<String>,
    pub duration_s: Option<f64>,
}

impl Problem {
    pub fn new(error: impl Into<String>) -> Problem {
        Problem {
            error: error.into(),
            snapshot: None,
            duration_s: None,
        }
    }
}

/// One alert: the JSON body the generic webhook gets, exactly these fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertEvent {
    /// `backup_failed`, `rpo_breached`, `wal_lagging`, `check_failed`, `drill_failed`,
    /// `copy_behind`, `wal_copy_behind` or `recovered`.
    pub event: &'static str,
    /// The source; `null` for the repository (and for `wal_copy_behind`).
    pub source: Option<String>,
    /// The repository of the copies, for `copy_behind` and `wal_copy_behind` (and their
    /// `recovered`) only: the other events have no such field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// `alert` (a new problem) or `reminder` (it lasts); for `recovered`, the event it ends.
    pub status: &'static str,
    pub error: Option<String>,
    pub snapshot: Option<String>,
    pub duration_s: Option<f64>,
    /// The host the daemon runs on.
    pub host: String,
    /// When it was observed (RFC 3339).
    pub time: String,
}

impl AlertEvent {
    /// The Slack message: one readable line.
    fn text(&self, condition: Condition, since: Option<DateTime<FixedOffset>>) -> String {
        let source = match (&self.source, &self.repository) {
            (Some(s), Some(r)) => format!("{s} (copies in {r})"),
            (Some(s), None) => s.clone(),
            (None, Some(r)) => format!("WAL copies to {r}"),
            (None, None) => "repository".into(),
        };
        let since = since
            .map(|t| format!(" since {}", t.format("%Y-%m-%d %H:%M:%S %:z")))
            .unwrap_or_default();
        let mut line = match self.status {
            "alert" => format!("coffer on {}: {source}: {}", self.host, condition.what()),
            "reminder" => format!(
                "coffer on {}: {source}: still {}{since}",
                self.host,
                condition.what()
            ),
            _ => format!(
                "coffer on {}: {source}: recovered ({}{since})",
                self.host,
                condition.what()
            ),
        };
        if let Some(e) = &self.error {
            line.push_str(": ");
            line.push_str(&e.replace('\n', " "));
        }
        let mut details = Vec::new();
        if let Some(s) = &self.snapshot {
            details.push(format!("snapshot {}", s.get(..8).unwrap_or(s)));
        }
        if let Some(d) = self.duration_s {
            details.push(format!("{d:.1} s"));
        }
        if !details.is_empty() {
            line.push_str(&format!(" ({})", details.join(", ")));
        }
        // Slack reads these three as markup.
        line.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }
}

/// How events are delivered. The defaults suit a daemon; tests make them short.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Tries of each request (at least 1).
    pub tries: u32,
    /// The wait after the first failed try; it doubles after each, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// The time limit of one try.
    pub request_timeout: Duration,
    /// Requests waiting to be sent; more are dropped (and counted as failed).
    pub queue: usize,
    /// The `host` of the events.
    pub host: String,
}

impl Default for Delivery {
    fn default() -> Delivery {
        Delivery {
            tries: 6,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            queue: 1000,
            host: gethostname::gethostname().to_string_lossy().into_owned(),
        }
    }
}

/// A problem being alerted on.
struct Active {
    since: DateTime<FixedOffset>,
    /// The alert or the last reminder.
    last_sent: DateTime<FixedOffset>,
}

/// What a fine observation tells `recovered`.
#[derive(Default)]
struct Fine {
    snapshot: Option<String>,
    duration_s: Option<f64>,
}

#[derive(Clone, Copy)]
enum Method {
    Get,
    Post,
}

/// One HTTP request to deliver.
struct Job {
    /// `slack`, `webhook` or `healthcheck`: for the log.
    channel: &'static str,
    url: String,
    method: Method,
    body: Option<(&'static str, Vec<u8>)>,
}

/// What the caller and the sender thread share.
struct Shared {
    sent: AtomicU64,
    failed: AtomicU64,
    /// Requests queued or being sent.
    pending: Mutex<u64>,
    idle: Condvar,
    progress: Progress,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, u64> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn done(&self, ok: bool) {
        if ok {
            self.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut p = self.pending();
        *p = p.saturating_sub(1);
        if *p == 0 {
            self.idle.notify_all();
        }
    }
}

/// The alert state machine and its channels. Cheap to call often, from any thread: every
/// method returns at once, delivery is on a background thread.
pub struct Alerter {
    slack_webhook: Option<String>,
    webhook: Option<String>,
    healthchecks: HashMap<String, String>,
    /// Zero: no reminders.
    remind: Duration,
    host: String,
    states: Mutex<HashMap<AlertKey, Active>>,
    queue: Sender<Job>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("slack_webhook", &redact::Redacted(&self.slack_webhook))
            .field("webhook", &redact::Redacted(&self.webhook))
            .field("healthchecks", &self.healthchecks.len())
            .field("remind", &self.remind)
            .finish_non_exhaustive()
    }
}

impl Alerter {
    /// The channels of `config` and the `healthcheck_url` of each of `sources`; final
    /// delivery failures are warned through `progress`. Starts the sender thread.
    pub fn new(
        config: &AlertsConfig,
        sources: &[SourceConfig],
        delivery: Delivery,
        progress: Progress,
    ) -> Alerter {
        let (queue, jobs) = crossbeam_channel::bounded(delivery.queue.max(1));
        let shared = Arc::new(Shared {
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            pending: Mutex::new(0),
            idle: Condvar::new(),
            progress,
        });
        let host = delivery.host.clone();
        {
            let theirs = shared.clone();
            let spawned = std::thread::Builder::new()
                .name("coffer-alerts".into())
                .spawn(move || send_loop(jobs, &theirs, &delivery));
            if let Err(e) = spawned {
                // The queue's receiver is gone with the closure: every request fails, is
                // counted and warned about, and nothing blocks.
                shared
                    .progress
                    .warn(&format!("alerts: cannot start the sender thread: {e}"));
            }
        }
        let healthchecks = sources
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.healthcheck_url.clone()?)))
            .collect();
        Alerter {
            slack_webhook: config.slack_webhook.clone(),
            webhook: config.webhook.clone(),
            healthchecks,
            remind: config.remind.unwrap_or(DEFAULT_REMIND),
            host,
            states: Mutex::new(HashMap::new()),
            queue,
            shared,
        }
    }

    fn states(&self) -> MutexGuard<'_, HashMap<AlertKey, Active>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of `key` at `now`: `Some` problem, or `None` when it is fine.
    pub fn observe(&self, key: AlertKey, problem: Option<Problem>, now: DateTime<FixedOffset>) {
        match problem {
            Some(p) => self.problem(key, p, now),
            None => self.fine(key, Fine::default(), now),
        }
    }

    /// A backup run's result: `BackupFailed` for its source, with its error, snapshot and
    /// duration (a success's `recovered` names the snapshot that fixed it).
    pub fn backup_result(&self, run: &SourceRun, now: DateTime<FixedOffset>) {
        let key = AlertKey::new(Some(&run.source), Condition::BackupFailed);
        match run.status {
            RunStatus::Failed => self.problem(
                key,
                Problem {
                    error: run
                        .error
                        .clone()
                        .unwrap_or_else(|| "the backup failed (no message)".into()),
                    snapshot: run.snapshot.clone(),
                    duration_s: Some(run.duration_secs),
                },
                now,
            ),
            RunStatus::Ok => self.fine(
                key,
                Fine {
                    snapshot: run.snapshot.clone(),
                    duration_s: Some(run.duration_secs),
                },
                now,
            ),
        }
    }

    /// The copies of a `coffer status` report, at its time: `CopyBehind` for each source's
    /// copies in each of its `copy_to` repositories (behind, or the repository cannot be
    /// read).
    pub fn copies(&self, report: &StatusReport) {
        for s in &report.sources {
            for c in &s.copies {
                self.observe(
                    AlertKey::copy(&s.source, &c.repository),
                    c.problem(s.last_success.as_ref(), s.rpo_secs)
                        .map(Problem::new),
                    report.time,
                );
            }
        }
    }

    /// The WAL copies of a `coffer status` report, at its time: `WalCopyBehind` for each
    /// async repository (its oldest spooled file waits too long, or the spool cannot be
    /// read).
    pub fn wal_copies(&self, report: &StatusReport) {
        for w in &report.wal_copies {
            self.observe(
                AlertKey::wal_copy(&w.repository),
                w.problem().map(Problem::new),
                report.time,
            );
        }
    }

    /// The RPO, WAL and copy states of a `coffer status` report, at its time:
    /// `RpoBreached` for each source with an `rpo` (breached: its newest snapshot is older,
    /// or there is none), `WalLagging` for each physical PostgreSQL source (wal-verify found
    /// a gap, or the newest archived segment is older than the `rpo`),
    /// [`copies`](Alerter::copies) and [`wal_copies`](Alerter::wal_copies).
    pub fn status_report(&self, report: &StatusReport) {
        self.copies(report);
        self.wal_copies(report);
        let now = report.time;
        for s in &report.sources {
            let Some(rpo) = s.rpo_secs else { continue };
            let rpo_problem = (s.state == State::Breached).then(|| match &s.last_success {
                Some(l) => Problem {
                    error: format!(
                        "the newest snapshot is {} old, beyond the RPO of {}",
                        human(l.age_secs),
                        human(rpo)
                    ),
                    snapshot: Some(l.snapshot.clone()),
                    duration_s: None,
                },
                None => Problem::new(format!("never backed up (RPO {})", human(rpo))),
            });
            self.observe(
                AlertKey::new(Some(&s.source), Condition::RpoBreached),
                rpo_problem,
                now,
            );
            let Some(r) = &s.recoverable else { continue };
            let archived = r.window.as_ref().and_then(|w| {
                let at = w.latest_archived_at?.fixed_offset();
                Some((
                    w.latest_segment.as_str(),
                    (now - at).num_seconds().max(0) as u64,
                ))
            });
            let wal_problem = if !r.ok {
                Some(Problem::new(
                    "wal-verify finds a gap in the WAL archive: run coffer wal-verify",
                ))
            } else {
                match archived {
                    Some((segment, age)) if age > rpo => Some(Problem::new(format!(
                        "the newest archived WAL segment {segment} is {} old, beyond the RPO of {}",
                        human(age),
                        human(rpo)
                    ))),
                    _ => None,
                }
            };
            self.observe(
                AlertKey::new(Some(&s.source), Condition::WalLagging),
                wal_problem,
                now,
            );
        }
    }

    /// Start the state of `key` as a problem since `since` that was alerted on (by a
    /// previous process): the fix sends `recovered`, and reminders continue on the grid
    /// `since + k × remind`, the next at the first point after `now`. For a daemon that
    /// starts and finds a problem in the repository.
    pub fn seed(&self, key: AlertKey, since: DateTime<FixedOffset>, now: DateTime<FixedOffset>) {
        // The last point of the grid at or before now (since itself when now is before).
        let last_sent = match ((now - since).to_std(), self.remind.is_zero()) {
            (Ok(age), false) => {
                let k = (age.as_secs_f64() / self.remind.as_secs_f64()).floor() as i32;
                chrono::Duration::from_std(self.remind)
                    .ok()
                    .and_then(|r| r.checked_mul(k))
                    .and_then(|d| since.checked_add_signed(d))
                    .unwrap_or(now)
            }
            _ => since,
        };
        self.states().insert(key, Active { since, last_sent });
    }

    /// Seed `BackupFailed` for each source whose newest backup runs in `history` (the
    /// repository's run history, [`crate::repo::runs::load`]) failed, since the first of
    /// those failures: what a daemon calls when it starts, so that a restart does not alert
    /// again on a backup that keeps failing. Returns the sources seeded.
    pub fn seed_from_history(
        &self,
        history: &[RunRecord],
        now: DateTime<FixedOffset>,
    ) -> Vec<String> {
        let mut by_source: BTreeMap<(&str, &str), Vec<&RunRecord>> = BTreeMap::new();
        for r in history
            .iter()
            .filter(|r| r.job == "backup" || r.job == "drill")
        {
            by_source.entry((&r.source, &r.job)).or_default().push(r);
        }
        let mut seeded = Vec::new();
        for ((source, job), mut runs) in by_source {
            let condition = if job == "drill" {
                Condition::DrillFailed
            } else {
                Condition::BackupFailed
            };
            runs.sort_by_key(|r| r.finished);
            let since = runs
                .iter()
                .rev()
                .take_while(|r| r.status == RunStatus::Failed)
                .last()
                .map(|r| r.finished);
            if let Some(since) = since {
                self.seed(AlertKey::new(Some(source), condition), since, now);
                seeded.push(if job == "drill" {
                    format!("{source} (drill)")
                } else {
                    source.to_string()
                });
            }
        }
        seeded
    }

    /// The keys with a problem now, and since when.
    pub fn problems(&self) -> Vec<(AlertKey, DateTime<FixedOffset>)> {
        let mut v: Vec<_> = self
            .states()
            .iter()
            .map(|(k, a)| (k.clone(), a.since))
            .collect();
        v.sort();
        v
    }

    fn problem(&self, key: AlertKey, p: Problem, now: DateTime<FixedOffset>) {
        let mut states = self.states();
        let (status, since) = match states.get_mut(&key) {
            None => {
                states.insert(
                    key.clone(),
                    Active {
                        since: now,
                        last_sent: now,
                    },
                );
                ("alert", None)
            }
            Some(a) => {
                let due = match (now - a.last_sent).to_std() {
                    Ok(elapsed) => !self.remind.is_zero() && elapsed >= self.remind,
                    // The clock went back: not due.
                    Err(_) => false,
                };
                if !due {
                    return;
                }
                a.last_sent = now;
                ("reminder", Some(a.since))
            }
        };
        let ev = AlertEvent {
            event: key.condition.event(),
            source: key.source.clone(),
            repository: key.repository.clone(),
            status,
            error: Some(p.error),
            snapshot: p.snapshot,
            duration_s: p.duration_s,
            host: self.host.clone(),
            time: now.to_rfc3339(),
        };
        // Queued under the lock, so the events of one key keep their order.
        self.send(&ev, key.condition, since);
    }

    fn fine(&self, key: AlertKey, fine: Fine, now: DateTime<FixedOffset>) {
        let mut states = self.states();
        let Some(a) = states.remove(&key) else {
            return;
        };
        let ev = AlertEvent {
            event: "recovered",
            source: key.source.clone(),
            repository: key.repository.clone(),
            status: key.condition.event(),
            error: None,
            snapshot: fine.snapshot,
            duration_s: fine.duration_s,
            host: self.host.clone(),
            time: now.to_rfc3339(),
        };
        self.send(&ev, key.condition, Some(a.since));
    }

    fn send(&self, ev: &AlertEvent, condition: Condition, since: Option<DateTime<FixedOffset>>) {
        if let Some(url) = &self.slack_webhook {
            let body = serde_json::json!({ "text": ev.text(condition, since) });
            self.enqueue(Job {
                channel: "slack",
                url: url.clone(),
                method: Method::Post,
                body: Some(("application/json", body.to_string().into_bytes())),
            });
        }
        if let Some(url) = &self.webhook {
            // An AlertEvent is strings, numbers and nulls: it serializes.
            let body = serde_json::to_vec(ev).unwrap_or_default();
            self.enqueue(Job {
                channel: "webhook",
                url: url.clone(),
                method: Method::Post,
                body: Some(("application/json", body)),
            });
        }
    }

    /// Healthcheck: `source`'s run starts (GET `<healthcheck_url>/start`). Nothing when the
    /// source has no `healthcheck_url`.
    pub fn ping_start(&self, source: &str) {
        self.ping(source, Some("start"), None);
    }

    /// Healthcheck: `source`'s run succeeded (POST `<healthcheck_url>` with the last
    /// [`LOG_TAIL_MAX`] bytes of `log_tail`).
    pub fn ping_success(&self, source: &str, log_tail: &str) {
        self.ping(source, None, Some(log_tail));
    }

    /// Healthcheck: `source`'s run failed (POST `<healthcheck_url>/fail` with the last
    /// [`LOG_TAIL_MAX`] bytes of `log_tail`).
    pub fn ping_fail(&self, source: &str, log_tail: &str) {
        self.ping(source, Some("fail"), Some(log_tail));
    }

    fn ping(&self, source: &str, suffix: Option<&str>, log: Option<&str>) {
        let Some(base) = self.healthchecks.get(source) else {
            return;
        };
        let url = match suffix {
            Some(s) => with_suffix(base, s),
            None => base.clone(),
        };
        let (method, body) = match log {
            Some(l) => (
                Method::Post,
                Some(("text/plain; charset=utf-8", log_tail(l).as_bytes().to_vec())),
            ),
            None => (Method::Get, None),
        };
        self.enqueue(Job {
            channel: "healthcheck",
            url,
            method,
            body,
        });
    }

    fn enqueue(&self, job: Job) {
        *self.shared.pending() += 1;
        let (job, why) = match self.queue.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Full(j)) => (j, "the queue of unsent alerts is full"),
            Err(TrySendError::Disconnected(j)) => (j, "the sender thread is not running"),
        };
        self.shared.progress.warn(&format!(
            "alert to {} {} dropped: {why}",
            job.channel,
            redact::url_origin(&job.url)
        ));
        self.shared.done(false);
    }

    /// Requests delivered (after any retries) and given up (every try failed, or dropped
    /// from a full queue): `coffer_alerts_sent_total` and `coffer_alerts_failed_total`. Each
    /// channel's request counts, healthcheck pings too.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.shared.sent.load(Ordering::Relaxed),
            self.shared.failed.load(Ordering::Relaxed),
        )
    }

    /// Wait until every queued request is delivered or given up, at most `timeout`; true
    /// when none is left. For shutdown and tests.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = self.shared.pending();
        while *p > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            p = self
                .shared
                .idle
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// The end of a log, at most [`LOG_TAIL_MAX`] bytes: whole lines when it is cut.
pub fn log_tail(log: &str) -> &str {
    if log.len() <= LOG_TAIL_MAX {
        return log;
    }
    let mut start = log.len() - LOG_TAIL_MAX;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    let tail = &log[start..];
    match tail.find('\n') {
        Some(i) if i + 1 < tail.len() => &tail[i + 1..],
        _ => tail,
    }
}

/// `<url>/<suffix>`, before any query.
fn with_suffix(url: &str, suffix: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = format!("{}/{suffix}", base.trim_end_matches('/'));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn send_loop(jobs: Receiver<Job>, shared: &Shared, d: &Delivery) {
    // Built on the first request: a daemon without channels keeps no HTTP runtime.
    let mut client: Option<Result<reqwest::blocking::Client, String>> = None;
    for job in jobs {
        let built = client.get_or_insert_with(|| {
            reqwest::blocking::Client::builder()
                .timeout(d.request_timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("coffer/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| chain(&e.without_url()))
        });
        let result = match built {
            Ok(c) => deliver(c, &job, d),
            Err(e) => Err(format!("cannot make an HTTP client: {e}")),
        };
        if let Err(e) = &result {
            shared.progress.warn(&format!(
                "alert to {} {} failed: {}",
                job.channel,
                redact::url_origin(&job.url),
                redact::scrub_url(e, &job.url)
            ));
        }
        shared.done(result.is_ok());
    }
}

/// Send `job`, retrying with backoff; the last error when every try failed.
fn deliver(c: &reqwest::blocking::Client, job: &Job, d: &Delivery) -> Result<(), String> {
    let tries = d.tries.max(1);
    let mut wait = d.first_backoff;
    let mut last = String::new();
    for attempt in 1..=tries {
        match try_once(c, job) {
            Ok(()) => return Ok(()),
            Err(e) => {
                let e = redact::scrub_url(&e, &job.url);
                tracing::debug!(
                    "alert to {} {}: try {attempt} of {tries} failed: {e}",
                    job.channel,
                    redact::url_origin(&job.url)
                );
                last = e;
            }
        }
        if attempt < tries {
            std::thread::sleep(wait);
            wait = (wait * 2).min(d.max_backoff);
        }
    }
    Err(format!("{last} (after {tries} tries)"))
}

fn try_once(c: &reqwest::blocking::Client, job: &Job) -> Result<(), String> {
    let mut req = match job.method {
        Method::Get => c.get(&job.url),
        Method::Post => c.post(&job.url),
    };
    if let Some((content_type, body)) = &job.body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, *content_type)
            .body(body.clone());
    }
    let resp = req.send().map_err(|e| chain(&e.without_url()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().unwrap_or_default();
    let text: String = text.chars().take(200).collect();
    let text = text.trim();
    Err(if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    })
}

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(x) = source {
        let m = x.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        source = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tails_are_bounded_whole_lines() {
        assert_eq!(log_tail("a\nb\n"), "a\nb\n");
        let long: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        let t = log_tail(&long);
        assert!(t.len() <= LOG_TAIL_MAX);
        assert!(t.starts_with("line ") && t.ends_with("line 4999\n"), "{t}");
        // Multi-byte characters are not cut.
        let wide = "é".repeat(LOG_TAIL_MAX);
        assert!(log_tail(&wide).len() <= LOG_TAIL_MAX);
    }

    #[test]
    fn ping_suffixes_go_before_the_query() {
        assert_eq!(
            with_suffix("https://hc/p/uuid", "fail"),
            "https://hc/p/uuid/fail"
        );
        assert_eq!(
            with_suffix("https://hc/p/uuid/", "start"),
            "https://hc/p/uuid/start"
        );
        assert_eq!(
            with_suffix("https://hc/p/uuid?rid=1", "start"),
            "https://hc/p/uuid/start?rid=1"
        );
    }

    #[test]
    fn slack_text_is_one_escaped_line() {
        let ev = AlertEvent {
            event: "backup_failed",
            source: Some("db".into()),
            repository: None,
            status: "alert",
            error: Some("pg_dump: <fatal> a & b\nsecond line".into()),
            snapshot: None,
            duration_s: Some(2.5),
            host: "web1".into(),
            time: String::new(),
        };
        assert_eq!(
            ev.text(Condition::BackupFailed, None),
            "coffer on web1: db: backup failed: pg_dump: &lt;fatal&gt; a &amp; b second line (2.5 s)"
        );
    }
}
