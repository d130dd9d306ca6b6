//! The alerts of `coffer run` against a real HTTP receiver on a local port: the state
//! machine (alert on change, reminders, recovered), Slack and webhook bodies, healthcheck
//! pings, retries, failures, and secrets kept out of the logs.

mod common;

use chrono::{DateTime, FixedOffset};
use coffer::config::{AlertsConfig, Config};
use coffer::ops::stack::SourceRun;
use coffer::ops::status::{
    CopyState, CopyStatus, LastSuccess, NewestCopy, SourceStatus, State, StatusReport,
    WalCopyState, WalCopyStatus,
};
use coffer::progress::{Progress, Tally};
use coffer::repo::runs::{RunRecord, RunStatus};
use coffer::service::alerts::{
    log_tail, AlertKey, Alerter, Condition, Delivery, Problem, LOG_TAIL_MAX,
};
use common::http::{Receiver, Request};
use serde_json::Value;
use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A URL where nothing listens.
fn down_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn delivery() -> Delivery {
    Delivery {
        tries: 3,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        request_timeout: Duration::from_secs(30),
        queue: 100,
        host: "test-host".into(),
    }
}

fn alerter(slack: Option<String>, webhook: Option<String>) -> (Alerter, Arc<Tally>) {
    let tally = Arc::new(Tally::default());
    let config = AlertsConfig {
        slack_webhook: slack,
        webhook,
        remind: None,
    };
    let a = Alerter::new(&config, &[], delivery(), Progress::to(tally.clone()));
    (a, tally)
}

fn flush(a: &Alerter) {
    assert!(a.flush(Duration::from_secs(60)), "requests left unsent");
}

fn t(s: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(s).unwrap()
}

fn hours(h: i64) -> chrono::Duration {
    chrono::Duration::hours(h)
}

fn run(status: RunStatus, error: Option<&str>, snapshot: Option<&str>, secs: f64) -> SourceRun {
    SourceRun {
        source: "db".into(),
        source_type: "postgres".into(),
        status,
        duration_secs: secs,
        bytes_read: 0,
        bytes_added: 0,
        bytes_stored: 0,
        snapshot: snapshot.map(str::to_string),
        snapshot_time: None,
        error: error.map(str::to_string),
        forgotten: vec![],
        copied_to: vec![],
    }
}

fn json(r: &Request) -> serde_json::Map<String, Value> {
    match serde_json::from_str(&r.body).unwrap() {
        Value::Object(m) => m,
        v => panic!("not an object: {v}"),
    }
}

fn slack_text(r: &Request) -> String {
    let m = json(r);
    assert_eq!(m.len(), 1, "{m:?}");
    m["text"].as_str().unwrap().to_string()
}

/// The requests to `path`.
fn to<'a>(reqs: &'a [Request], path: &str) -> Vec<&'a Request> {
    reqs.iter().filter(|r| r.path == path).collect()
}

#[test]
fn a_failing_backup_alerts_once_reminds_after_remind_and_recovers_once() {
    let rx = Receiver::start();
    let (slack, hook) = ("/services/T0/B0/slack-secret", "/hooks/webhook-secret");
    let (a, tally) = alerter(
        Some(format!("{}{slack}", rx.url)),
        Some(format!("{}{hook}", rx.url)),
    );
    let t0 = t("2026-12-03T02:00:00+01:00");
    // First seen fine: nothing.
    a.backup_result(&run(RunStatus::Ok, None, Some("aaaa"), 1.0), t0 - hours(24));
    flush(&a);
    assert!(rx.requests().is_empty());

    let failed = run(
        RunStatus::Failed,
        Some("pg_dump: connection refused"),
        None,
        3.5,
    );
    a.backup_result(&failed, t0);
    flush(&a);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let s = to(&reqs, slack);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].method, "POST");
    assert_eq!(
        slack_text(s[0]),
        "coffer on test-host: db: backup failed: pg_dump: connection refused (3.5 s)"
    );
    let w = to(&reqs, hook);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].method, "POST");
    let body = json(w[0]);
    let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "duration_s",
            "error",
            "event",
            "host",
            "snapshot",
            "source",
            "status",
            "time"
        ]
    );
    assert_eq!(body["event"], "backup_failed");
    assert_eq!(body["source"], "db");
    assert_eq!(body["status"], "alert");
    assert_eq!(body["error"], "pg_dump: connection refused");
    assert_eq!(body["snapshot"], Value::Null);
    assert_eq!(body["duration_s"], 3.5);
    assert_eq!(body["host"], "test-host");
    assert_eq!(body["time"], "2026-12-03T02:00:00+01:00");

    // It keeps failing: nothing more until 24 h have passed.
    a.backup_result(&failed, t0 + hours(1));
    a.backup_result(&failed, t0 + hours(24) - chrono::Duration::seconds(1));
    flush(&a);
    assert_eq!(rx.requests().len(), 2);
    a.backup_result(&failed, t0 + hours(24));
    flush(&a);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 4, "{reqs:?}");
    assert_eq!(
        slack_text(to(&reqs, slack)[1]),
        "coffer on test-host: db: still backup failed since 2026-12-03 02:00:00 +01:00: \
         pg_dump: connection refused (3.5 s)"
    );
    let body = json(to(&reqs, hook)[1]);
    assert_eq!(body["event"], "backup_failed");
    assert_eq!(body["status"], "reminder");
    assert_eq!(body["time"], "2026-12-04T02:00:00+01:00");
    // The next reminder is 24 h after this one, not after the first alert.
    a.backup_result(&failed, t0 + hours(47));
    flush(&a);
    assert_eq!(rx.requests().len(), 4);

    // Fixed: one recovered, naming the snapshot that fixed it.
    a.backup_result(
        &run(RunStatus::Ok, None, Some("0123456789abcdef"), 4.0),
        t0 + hours(47),
    );
    a.backup_result(&run(RunStatus::Ok, None, Some("fedc"), 4.0), t0 + hours(48));
    flush(&a);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 6, "{reqs:?}");
    assert_eq!(
        slack_text(to(&reqs, slack)[2]),
        "coffer on test-host: db: recovered (backup failed since 2026-12-03 02:00:00 +01:00) \
         (snapshot 01234567, 4.0 s)"
    );
    let body = json(to(&reqs, hook)[2]);
    assert_eq!(body["event"], "recovered");
    assert_eq!(body["source"], "db");
    assert_eq!(body["status"], "backup_failed");
    assert_eq!(body["error"], Value::Null);
    assert_eq!(body["snapshot"], "0123456789abcdef");
    assert_eq!(body["duration_s"], 4.0);
    assert_eq!(a.counters(), (6, 0));
    assert!(a.problems().is_empty());
    assert!(tally.counts().warnings.is_empty());
}

fn report(now: DateTime<FixedOffset>, db_age_h: i64) -> StatusReport {
    let source = |name: &str, age_h: i64, state| SourceStatus {
        source: name.into(),
        source_type: "files".into(),
        state,
        rpo_secs: Some(26 * 3600),
        last_success: Some(LastSuccess {
            snapshot: format!("{name}-snapshot"),
            time: now - hours(age_h),
            age_secs: (age_h * 3600) as u64,
            size: 1,
        }),
        last_failure: None,
        recoverable: None,
        last_drill: None,
        drill_max_age_secs: None,
        drill_overdue: false,
        copies: Vec::new(),
    };
    let db_state = if db_age_h > 26 {
        State::Breached
    } else {
        State::Ok
    };
    StatusReport {
        time: now,
        sources: vec![
            source("db", db_age_h, db_state),
            source("cache", 1, State::Ok),
        ],
        breached: usize::from(db_state == State::Breached),
        drills_overdue: 0,
        copies_behind: 0,
        wal_copies: Vec::new(),
    }
}

/// `report` at `now` with db's newest snapshot an hour old, and its copies in each of
/// `copies`: behind (the newest copy 30 h old) or ok.
fn with_copies(now: DateTime<FixedOffset>, copies: &[(&str, bool)]) -> StatusReport {
    let mut r = report(now, 1);
    r.sources[0].copies = copies
        .iter()
        .map(|&(repository, behind)| CopyStatus {
            repository: repository.into(),
            state: if behind {
                CopyState::Behind
            } else {
                CopyState::Ok
            },
            newest: Some(NewestCopy {
                original: "0123456789abcdef".into(),
                time: now - hours(if behind { 30 } else { 1 }),
                age_secs: if behind { 30 * 3600 } else { 3600 },
            }),
            error: None,
        })
        .collect();
    r.copies_behind = copies.iter().filter(|c| c.1).count();
    r
}

#[test]
fn a_copy_behind_alerts_once_per_repository_and_names_it() {
    let rx = Receiver::start();
    let (slack, hook) = (format!("{}/slack", rx.url), format!("{}/hook", rx.url));
    let (a, _) = alerter(Some(slack), Some(hook));
    let t0 = t("2026-12-03T12:00:00Z");
    a.status_report(&with_copies(t0, &[("offsite", true), ("b2", false)]));
    a.status_report(&with_copies(
        t0 + hours(1),
        &[("offsite", true), ("b2", true)],
    ));
    a.status_report(&with_copies(
        t0 + hours(2),
        &[("offsite", false), ("b2", true)],
    ));
    flush(&a);
    let reqs = rx.requests();
    let events: Vec<_> = to(&reqs, "/hook").into_iter().map(json).collect();
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
                e["repository"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("copy_behind", "alert", "offsite"),
            ("copy_behind", "alert", "b2"),
            ("recovered", "copy_behind", "offsite"),
        ]
    );
    assert_eq!(events[0]["source"], "db");
    assert_eq!(
        events[0]["error"],
        "the newest copy in offsite is 1d 6h old, beyond the RPO of 1d 2h, and snapshot db-snaps is not there"
    );
    assert_eq!(
        slack_text(to(&reqs, "/slack")[0]),
        "coffer on test-host: db (copies in offsite): copy behind: the newest copy in offsite is \
         1d 6h old, beyond the RPO of 1d 2h, and snapshot db-snaps is not there"
    );
    assert_eq!(
        a.problems(),
        [(AlertKey::copy("db", "b2"), t0 + hours(1))],
        "b2 is still behind"
    );
}

/// `report` at `now` with the WAL spool of `offsite` holding `pending` files, the oldest
/// `oldest_min` minutes old, against a limit of 15 minutes.
fn with_wal_spool(now: DateTime<FixedOffset>, pending: u64, oldest_min: u64) -> StatusReport {
    let mut r = report(now, 1);
    let behind = oldest_min > 15;
    r.wal_copies = vec![WalCopyStatus {
        repository: "offsite".into(),
        pending,
        oldest_secs: (pending > 0).then_some(oldest_min * 60),
        state: if behind {
            WalCopyState::Behind
        } else {
            WalCopyState::Ok
        },
        error: None,
        limit_secs: 900,
    }];
    r
}

#[test]
fn a_wal_copy_behind_alerts_once_naming_its_repository_and_recovers() {
    let rx = Receiver::start();
    let (slack, hook) = (format!("{}/slack", rx.url), format!("{}/hook", rx.url));
    let (a, _) = alerter(Some(slack), Some(hook));
    let t0 = t("2026-12-03T12:00:00Z");
    a.status_report(&with_wal_spool(t0, 2, 5));
    a.status_report(&with_wal_spool(t0 + hours(1), 40, 20));
    a.status_report(&with_wal_spool(t0 + hours(2), 41, 80));
    a.status_report(&with_wal_spool(t0 + hours(3), 0, 0));
    flush(&a);
    let reqs = rx.requests();
    let events: Vec<_> = to(&reqs, "/hook").into_iter().map(json).collect();
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
                e["repository"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("wal_copy_behind", "alert", "offsite"),
            ("recovered", "wal_copy_behind", "offsite"),
        ]
    );
    assert_eq!(events[0]["source"], Value::Null);
    assert_eq!(
        events[0]["error"],
        "40 WAL file(s) wait in the spool for offsite, the oldest for 20m 0s, beyond 15m 0s: \
         is wal-copy failing?"
    );
    assert_eq!(
        slack_text(to(&reqs, "/slack")[0]),
        "coffer on test-host: WAL copies to offsite: WAL copy behind: 40 WAL file(s) wait in \
         the spool for offsite, the oldest for 20m 0s, beyond 15m 0s: is wal-copy failing?"
    );
    assert!(a.problems().is_empty());
}

#[test]
fn an_rpo_breach_without_any_run_alerts_once() {
    let rx = Receiver::start();
    let (a, _) = alerter(None, Some(format!("{}/hook", rx.url)));
    let t0 = t("2026-12-03T12:00:00Z");
    a.status_report(&report(t0, 20));
    a.status_report(&report(t0 + hours(10), 30));
    a.status_report(&report(t0 + hours(11), 31));
    a.status_report(&report(t0 + hours(12), 32));
    flush(&a);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let body = json(&reqs[0]);
    assert_eq!(body["event"], "rpo_breached");
    assert_eq!(body["source"], "db");
    assert_eq!(body["status"], "alert");
    assert_eq!(
        body["error"],
        "the newest snapshot is 1d 6h old, beyond the RPO of 1d 2h"
    );
    assert_eq!(body["snapshot"], "db-snapshot");
    assert_eq!(body["time"], "2026-12-03T22:00:00+00:00");
    assert_eq!(
        a.problems(),
        [(
            AlertKey::new(Some("db"), Condition::RpoBreached),
            t0 + hours(10)
        )]
    );
    // Back within the RPO: recovered.
    a.status_report(&report(t0 + hours(13), 1));
    flush(&a);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(json(&reqs[1])["event"], "recovered");
    assert_eq!(json(&reqs[1])["status"], "rpo_breached");
    assert_eq!(a.counters(), (2, 0));
}

#[test]
fn a_send_is_retried_until_the_receiver_answers() {
    let rx = Receiver::start();
    rx.answer(&[500, 500]);
    let (a, tally) = alerter(None, Some(format!("{}/hook", rx.url)));
    a.observe(
        AlertKey::new(Some("db"), Condition::BackupFailed),
        Some(Problem::new("boom")),
        t("2026-12-03T12:00:00Z"),
    );
    flush(&a);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert!(reqs.iter().all(|r| r.body == reqs[0].body));
    assert_eq!(json(&reqs[2])["error"], "boom");
    assert_eq!(a.counters(), (1, 0));
    assert!(tally.counts().warnings.is_empty());

    // A receiver that keeps failing: given up after the tries, counted and warned once.
    rx.answer(&[500, 500, 500]);
    a.observe(
        AlertKey::new(Some("db"), Condition::BackupFailed),
        None,
        t("2026-12-03T13:00:00Z"),
    );
    flush(&a);
    assert_eq!(rx.requests().len(), 6);
    assert_eq!(a.counters(), (1, 1));
    let w = tally.counts().warnings;
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains(&format!("alert to webhook {} failed", rx.url))
            && w[0].contains("500")
            && w[0].contains("after 3 tries"),
        "{w:?}"
    );
}

#[test]
fn a_receiver_that_is_down_or_slow_blocks_nothing() {
    // Slow: observe returns while the receiver holds its answer.
    let rx = Receiver::start();
    rx.hold(true);
    let (a, _) = alerter(Some(format!("{}/services/slow", rx.url)), None);
    let key = AlertKey::new(None, Condition::CheckFailed);
    a.observe(
        key.clone(),
        Some(Problem::new("pack 1234 is damaged")),
        t("2026-12-03T12:00:00Z"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.requests().is_empty() {
        assert!(Instant::now() < deadline, "the request never came");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(a.counters(), (0, 0));
    assert!(!a.flush(Duration::ZERO), "the held request is not done yet");
    rx.hold(false);
    flush(&a);
    assert_eq!(a.counters(), (1, 0));
    assert_eq!(
        slack_text(&rx.requests()[0]),
        "coffer on test-host: repository: check failed: pack 1234 is damaged"
    );

    // Down: each channel's request fails after its tries and is counted.
    let down = down_url();
    let (a, tally) = alerter(
        Some(format!("{down}/services/T0/B0/slack-secret")),
        Some(format!("{down}/hooks/webhook-secret")),
    );
    a.observe(
        key.clone(),
        Some(Problem::new("pack 1234 is damaged")),
        t("2026-12-03T12:00:00Z"),
    );
    flush(&a);
    assert_eq!(a.counters(), (0, 2));
    let w = tally.counts().warnings;
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains(&format!("alert to slack {down} failed")),
        "{w:?}"
    );
    assert!(
        w[1].contains(&format!("alert to webhook {down} failed")),
        "{w:?}"
    );
    assert!(w.iter().all(|l| l.contains("after 3 tries")), "{w:?}");
    // The problem is still known: the fix sends recovered (which fails too).
    a.observe(key, None, t("2026-12-03T13:00:00Z"));
    flush(&a);
    assert_eq!(a.counters(), (0, 4));
}

#[test]
fn healthcheck_pings_start_success_and_fail_with_the_log_tail() {
    let rx = Receiver::start();
    let text = format!(
        "[sources.db]\ntype = \"files\"\npaths = [\"/srv\"]\nhealthcheck_url = \"{}/ping/secret-uuid\"\n\
         [sources.other]\ntype = \"files\"\npaths = [\"/srv\"]\n",
        rx.url
    );
    let config = Config::parse(&text, None, &|_| None).unwrap();
    let a = Alerter::new(
        &config.alerts,
        &config.sources,
        delivery(),
        Progress::hidden(),
    );
    let long: String = (0..3000).map(|i| format!("log line {i}\n")).collect();
    assert!(long.len() > LOG_TAIL_MAX);
    a.ping_start("db");
    a.ping_start("other");
    a.ping_success("db", "line 1\nline 2\n");
    a.ping_fail("db", &long);
    a.ping_fail("nope", "x");
    flush(&a);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(
        (
            reqs[0].method.as_str(),
            reqs[0].path.as_str(),
            reqs[0].body.as_str()
        ),
        ("GET", "/ping/secret-uuid/start", "")
    );
    assert_eq!(
        (
            reqs[1].method.as_str(),
            reqs[1].path.as_str(),
            reqs[1].body.as_str()
        ),
        ("POST", "/ping/secret-uuid", "line 1\nline 2\n")
    );
    assert_eq!(
        (reqs[2].method.as_str(), reqs[2].path.as_str()),
        ("POST", "/ping/secret-uuid/fail")
    );
    assert_eq!(reqs[2].body, log_tail(&long));
    assert!(reqs[2].body.len() <= LOG_TAIL_MAX);
    assert!(reqs[2].body.starts_with("log line "));
    assert!(reqs[2].body.ends_with("log line 2999\n"));
    assert_eq!(a.counters(), (3, 0));
}

#[test]
fn a_seeded_problem_is_not_alerted_again_after_a_restart() {
    let rx = Receiver::start();
    let (a, _) = alerter(None, Some(format!("{}/hook", rx.url)));
    let key = AlertKey::new(Some("db"), Condition::BackupFailed);
    let since = t("2026-12-01T02:00:00Z");
    let now = since + hours(54);
    // Alerted at since, reminded at +24 h and +48 h by the previous process.
    a.seed(key.clone(), since, now);
    a.observe(key.clone(), Some(Problem::new("still down")), now);
    a.observe(
        key.clone(),
        Some(Problem::new("still down")),
        since + hours(71),
    );
    flush(&a);
    assert!(rx.requests().is_empty());
    a.observe(
        key.clone(),
        Some(Problem::new("still down")),
        since + hours(72),
    );
    a.observe(key.clone(), None, since + hours(73));
    flush(&a);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(json(&reqs[0])["status"], "reminder");
    assert_eq!(json(&reqs[0])["error"], "still down");
    assert_eq!(json(&reqs[1])["event"], "recovered");
}

#[test]
fn a_restart_seeds_the_failing_backups_from_the_run_history() {
    let rx = Receiver::start();
    let (a, _) = alerter(None, Some(format!("{}/hook", rx.url)));
    let t0 = t("2026-12-03T02:00:00Z");
    let record = |source: &str, h: i64, status| RunRecord {
        id: Default::default(),
        run: format!("run-{h}"),
        job: "backup".into(),
        source: source.into(),
        source_type: "files".into(),
        host: "test-host".into(),
        started: t0 + hours(h),
        finished: t0 + hours(h),
        status,
        error: None,
        bytes_read: 0,
        bytes_added: 0,
        snapshot: None,
        drill: None,
        repositories: Vec::new(),
    };
    // Out of order, as a listing may give them.
    let history = [
        record("db", 2, RunStatus::Failed),
        record("db", 0, RunStatus::Ok),
        record("db", 1, RunStatus::Failed),
        record("cache", 0, RunStatus::Failed),
        record("cache", 1, RunStatus::Ok),
        record("uploads", 3, RunStatus::Failed),
    ];
    let now = t0 + hours(4);
    assert_eq!(a.seed_from_history(&history, now), ["db", "uploads"]);
    assert_eq!(
        a.problems(),
        [
            (
                AlertKey::new(Some("db"), Condition::BackupFailed),
                t0 + hours(1)
            ),
            (
                AlertKey::new(Some("uploads"), Condition::BackupFailed),
                t0 + hours(3)
            ),
        ]
    );
    let failed = run(RunStatus::Failed, Some("still"), None, 1.0);
    a.backup_result(&failed, now);
    flush(&a);
    assert!(rx.requests().is_empty(), "{:?}", rx.requests());
    // db was alerted at +1 h: the reminder is due at +25 h.
    a.backup_result(&failed, t0 + hours(25));
    flush(&a);
    assert_eq!(rx.requests().len(), 1);
    assert_eq!(json(&rx.requests()[0])["status"], "reminder");
}

#[test]
fn https_is_tls_verified_and_a_failed_handshake_is_a_counted_failure() {
    // A plain-HTTP receiver behind an https:// URL: the TLS handshake fails, nothing is
    // sent in clear, and the failure is counted and warned about like any other.
    let rx = Receiver::start();
    let (a, tally) = alerter(
        None,
        Some(format!(
            "{}/hooks/tls-secret",
            rx.url.replace("http://", "https://")
        )),
    );
    a.observe(
        AlertKey::new(Some("db"), Condition::BackupFailed),
        Some(Problem::new("boom")),
        t("2026-12-03T12:00:00Z"),
    );
    flush(&a);
    assert_eq!(a.counters(), (0, 1));
    assert!(
        rx.requests().iter().all(|r| r.body.is_empty()),
        "{:?}",
        rx.requests()
    );
    let w = tally.counts().warnings;
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(!w[0].contains("tls-secret"), "{w:?}");
}

/// Everything the tracing subscriber of this test binary writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn secrets_in_urls_never_appear_in_logged_errors() {
    let logged = Capture::default();
    let writer = logged.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let rx = Receiver::start();
    rx.answer(&[500; 3]);
    let down = down_url();
    let (a, tally) = alerter(
        Some(format!(
            "{}/services/T0/B0/slack-secret?token=tok-secret",
            rx.url
        )),
        Some(format!(
            "{}/hooks/webhook-secret",
            down.replace("http://", "http://user:pw-secret@")
        )),
    );
    a.observe(
        AlertKey::new(Some("db"), Condition::WalLagging),
        Some(Problem::new("gap")),
        t("2026-12-03T12:00:00Z"),
    );
    flush(&a);
    assert_eq!(a.counters(), (0, 2));
    let warnings = tally.counts().warnings.join("\n");
    let logs = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
    // The errors were logged: the 500 and the refused connection, every try.
    assert!(warnings.contains("500"), "{warnings}");
    // (Other tests of this binary log too: count the lines about this one's URLs.)
    for origin in [&rx.url, &down] {
        let ours = |needle: &str| {
            logs.lines()
                .filter(|l| l.contains(origin.as_str()) && l.contains(needle))
                .count()
        };
        assert_eq!(ours("try 1 of 3 failed"), 1, "{logs}");
        assert_eq!(ours("try 3 of 3 failed"), 1, "{logs}");
    }
    for text in [&warnings, &logs] {
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("/services/T0"), "{text}");
    }
    // The receiver did get the secret path: the test would see it if it leaked.
    assert!(rx.requests()[0].path.contains("slack-secret"));
}
