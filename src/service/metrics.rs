//! `/metrics` of `coffer run`: the Prometheus text format (version 0.0.4), rendered from
//! the service's state alone ([`ServiceState`]: its own runs, and the one read of the
//! repository at start). A scrape never touches the storage.

use super::daemon::ServiceState;
use crate::config::sources::PgMode;
use crate::config::SourceKind;
use chrono::{DateTime, TimeZone};
use std::fmt::Write;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
    started: bool,
    help: &'static str,
    kind: &'static str,
}

impl Family<'_> {
    /// One sample; the family's HELP and TYPE lines come before its first one.
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        if !self.started {
            self.started = true;
            let _ = writeln!(self.out, "# HELP {} {}", self.name, self.help);
            let _ = writeln!(self.out, "# TYPE {} {}", self.name, self.kind);
        }
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }
}

/// A label value: backslash, double quote and line feed escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn ts<Tz: TimeZone>(t: &DateTime<Tz>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// The families in the order they are written, with their help and type.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "coffer_last_success_timestamp_seconds",
        "gauge",
        "Time of the source's newest snapshot (safety backups aside).",
    ),
    (
        "coffer_last_run_timestamp_seconds",
        "gauge",
        "End of the source's newest backup run, ok or failed.",
    ),
    (
        "coffer_last_run_success",
        "gauge",
        "Whether the source's newest backup run succeeded (1) or failed (0).",
    ),
    (
        "coffer_backup_duration_seconds",
        "gauge",
        "Duration of the source's newest backup run.",
    ),
    (
        "coffer_backup_read_bytes",
        "gauge",
        "Bytes the source's newest backup run read.",
    ),
    (
        "coffer_backup_added_bytes",
        "gauge",
        "Plaintext bytes new to the repository in the source's newest backup run.",
    ),
    (
        "coffer_backup_failures_total",
        "counter",
        "Failed backup runs of the source since the service started.",
    ),
    (
        "coffer_skipped_runs_total",
        "counter",
        "Scheduled runs skipped because the previous one was still going, since the service started.",
    ),
    (
        "coffer_rpo_seconds",
        "gauge",
        "The source's recovery point objective (rpo).",
    ),
    (
        "coffer_snapshots",
        "gauge",
        "Snapshots of the source in the repository.",
    ),
    (
        "coffer_wal_newest_segment_timestamp_seconds",
        "gauge",
        "When the newest WAL segment reachable without a gap was archived (physical sources; as of the last wal-verify).",
    ),
    (
        "coffer_wal_recoverable_window_seconds",
        "gauge",
        "Length of the window point-in-time recovery can reach (physical sources).",
    ),
    (
        "coffer_wal_gaps",
        "gauge",
        "Runs of missing segments in the WAL archive (physical sources).",
    ),
    (
        "coffer_drill_last_success_timestamp_seconds",
        "gauge",
        "End of the source's newest restore drill that passed.",
    ),
    (
        "coffer_drill_last_success",
        "gauge",
        "Whether the source's newest restore drill passed (1) or failed (0).",
    ),
    (
        "coffer_drill_rto_seconds",
        "gauge",
        "The measured RTO of the source's newest restore drill: from its start to the restore verified and checked.",
    ),
    (
        "coffer_copy_last_success_timestamp_seconds",
        "gauge",
        "Time of the source's newest copy in a copy_to repository (the time of the snapshot it copies).",
    ),
    (
        "coffer_copy_behind",
        "gauge",
        "Whether the copy_to repository is behind (1: it lacks the source's newest snapshot and its newest copy is older than the rpo, or it cannot be read) or not (0).",
    ),
    (
        "coffer_wal_copy_pending_files",
        "gauge",
        "WAL files in the spool of the wal = \"async\" repository, waiting for wal-copy to push them there.",
    ),
    (
        "coffer_wal_copy_lag_seconds",
        "gauge",
        "Age of the oldest WAL file in the spool of the wal = \"async\" repository (0 when it is empty).",
    ),
    (
        "coffer_repository_stored_bytes",
        "gauge",
        "Compressed and encrypted bytes of the blobs the repository's index lists (pack headers aside).",
    ),
    (
        "coffer_check_last_success_timestamp_seconds",
        "gauge",
        "End of the newest successful coffer check.",
    ),
    (
        "coffer_prune_last_run_success",
        "gauge",
        "Whether the newest prune of the repository succeeded (1) or failed (0).",
    ),
    (
        "coffer_prune_last_success_timestamp_seconds",
        "gauge",
        "End of the newest successful prune of the repository.",
    ),
    (
        "coffer_alerts_sent_total",
        "counter",
        "Alerts and pings delivered since the service started.",
    ),
    (
        "coffer_alerts_failed_total",
        "counter",
        "Alerts and pings that could not be delivered (after retries) since the service started.",
    ),
    (
        "coffer_job_next_run_timestamp_seconds",
        "gauge",
        "When each scheduled job runs next.",
    ),
    (
        "coffer_job_running",
        "gauge",
        "Whether each scheduled job is running now (1) or not (0).",
    ),
    (
        "coffer_service_start_timestamp_seconds",
        "gauge",
        "When this coffer run started.",
    ),
];

/// The text of `/metrics`.
pub fn render(state: &ServiceState) -> String {
    let mut out = String::new();
    let Some(config) = state.config.as_deref() else {
        return out;
    };
    let report = state
        .overview
        .report(config, chrono::Local::now().fixed_offset());
    for &(name, kind, help) in FAMILIES {
        let mut f = Family {
            out: &mut out,
            name,
            started: false,
            help,
            kind,
        };
        match name {
            "coffer_repository_stored_bytes" => f.sample(&[], state.stored_bytes as f64),
            "coffer_check_last_success_timestamp_seconds" => {
                if let Some(t) = &state.overview.check_last_success {
                    f.sample(&[], ts(t));
                }
            }
            "coffer_copy_last_success_timestamp_seconds" | "coffer_copy_behind" => {
                for s in &report.sources {
                    for c in &s.copies {
                        let labels = [
                            ("source", s.source.as_str()),
                            ("repository", c.repository.as_str()),
                        ];
                        if name == "coffer_copy_behind" {
                            f.sample(&labels, c.is_behind() as u8 as f64);
                        } else if let Some(n) = &c.newest {
                            f.sample(&labels, ts(&n.time));
                        }
                    }
                }
            }
            "coffer_wal_copy_pending_files" | "coffer_wal_copy_lag_seconds" => {
                for w in &report.wal_copies {
                    let labels = [("repository", w.repository.as_str())];
                    if name == "coffer_wal_copy_pending_files" {
                        f.sample(&labels, w.pending as f64);
                    } else {
                        f.sample(&labels, w.oldest_secs.unwrap_or(0) as f64);
                    }
                }
            }
            "coffer_prune_last_run_success" | "coffer_prune_last_success_timestamp_seconds" => {
                for (repository, p) in &state.prunes {
                    let labels = [("repository", repository.as_str())];
                    if name == "coffer_prune_last_run_success" {
                        f.sample(&labels, p.ok as u8 as f64);
                    } else if let Some(t) = &p.last_success {
                        f.sample(&labels, ts(t));
                    }
                }
            }
            "coffer_alerts_sent_total" => f.sample(&[], state.alerts_sent as f64),
            "coffer_alerts_failed_total" => f.sample(&[], state.alerts_failed as f64),
            "coffer_service_start_timestamp_seconds" => {
                if let Some(t) = &state.started {
                    f.sample(&[], ts(t));
                }
            }
            "coffer_job_next_run_timestamp_seconds" | "coffer_job_running" => {
                for j in &state.jobs {
                    let labels = [("job", j.job.as_str())];
                    if name == "coffer_job_running" {
                        f.sample(&labels, j.running_since.is_some() as u8 as f64);
                    } else if let Some(t) = &j.next_run {
                        f.sample(&labels, ts(t));
                    }
                }
            }
            _ => {
                for src in &config.sources {
                    let labels = [("source", src.name.as_str())];
                    let o = state.overview.sources.get(&src.name);
                    let last_run = o.and_then(|o| o.last_run.as_ref());
                    let backup = format!("backup {}", src.name);
                    let job = state.jobs.iter().find(|j| j.job == backup);
                    let drill = o.and_then(|o| o.last_drill.as_ref());
                    let physical = matches!(&src.kind,
                        SourceKind::Postgres(p) if p.mode == PgMode::Physical);
                    let wal = state.overview.wal.as_ref().filter(|_| physical);
                    let v = match name {
                        "coffer_last_success_timestamp_seconds" => {
                            o.and_then(|o| o.last_success.as_ref()).map(|s| ts(&s.time))
                        }
                        "coffer_last_run_timestamp_seconds" => last_run.map(|r| ts(&r.finished)),
                        "coffer_last_run_success" => last_run.map(|r| r.ok as u8 as f64),
                        "coffer_backup_duration_seconds" => last_run
                            .map(|r| (r.finished - r.started).num_milliseconds() as f64 / 1e3),
                        "coffer_backup_read_bytes" => last_run.map(|r| r.bytes_read as f64),
                        "coffer_backup_added_bytes" => last_run.map(|r| r.bytes_added as f64),
                        "coffer_backup_failures_total" => {
                            Some(job.map_or(0, |j| j.failures_total) as f64)
                        }
                        "coffer_skipped_runs_total" => {
                            Some(job.map_or(0, |j| j.skipped_total) as f64)
                        }
                        "coffer_rpo_seconds" => src.rpo.map(|r| r.as_secs_f64()),
                        "coffer_snapshots" => Some(o.map_or(0, |o| o.snapshots) as f64),
                        "coffer_wal_newest_segment_timestamp_seconds" => {
                            wal.and_then(|w| w.newest_segment_time()).map(|t| ts(&t))
                        }
                        "coffer_wal_recoverable_window_seconds" => {
                            wal.and_then(|w| w.window_secs()).map(|s| s as f64)
                        }
                        "coffer_wal_gaps" => wal.map(|w| w.gaps as f64),
                        "coffer_drill_last_success_timestamp_seconds" => {
                            o.and_then(|o| o.last_drill_passed.as_ref()).map(ts)
                        }
                        "coffer_drill_last_success" => drill.map(|d| d.passed as u8 as f64),
                        "coffer_drill_rto_seconds" => drill.map(|d| d.rto_secs),
                        other => unreachable!("metric family {other} has no renderer"),
                    };
                    if let Some(v) = v {
                        f.sample(&labels, v);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_numbers_are_written_as_the_format_wants() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(1_700_000_000.25), "1700000000.25");
    }

    #[test]
    fn a_state_without_config_renders_nothing_and_families_come_once() {
        let mut st = ServiceState::default();
        assert_eq!(render(&st), "");
        let c = crate::config::Config::parse(
            "[sources.a]\ntype = \"files\"\npaths = [\"/x\"]\nrpo = \"1h\"\n[sources.b]\ntype = \"files\"\npaths = [\"/y\"]\n",
            None,
            &|_| None,
        )
        .unwrap();
        st.config = Some(std::sync::Arc::new(c));
        let text = render(&st);
        assert_eq!(text.matches("# TYPE coffer_snapshots gauge").count(), 1);
        assert!(text.contains("coffer_snapshots{source=\"a\"} 0\n"));
        assert!(text.contains("coffer_snapshots{source=\"b\"} 0\n"));
        assert!(text.contains("coffer_rpo_seconds{source=\"a\"} 3600\n"));
        assert!(!text.contains("coffer_rpo_seconds{source=\"b\"}"));
        assert!(text.contains("coffer_backup_failures_total{source=\"b\"} 0\n"));
        // Nothing known yet: no last-run samples (absent, not zero).
        assert!(!text.contains("coffer_last_run_success"));
    }
}
