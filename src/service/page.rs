//! `/`, the status page of `coffer run`: one HTML document, no JavaScript and no external
//! assets, that reloads itself every [`REFRESH_SECS`] seconds. It shows each source (last
//! success, age against its RPO, next run, last error, and bar charts of the duration and
//! the added bytes of its last runs, in inline SVG), the recoverable WAL window, the
//! repository and the recent runs.

use super::daemon::{RunSummary, ServiceState};
use crate::ops::status::{human, CopyState, State, WalCopyState};
use crate::repo::runs::RunStatus;
use chrono::{DateTime, Local, Utc};
use std::fmt::Write;

/// How often the page reloads itself.
pub const REFRESH_SECS: u32 = 30;

/// Runs drawn in each chart.
const CHART_RUNS: usize = 30;

/// Runs listed in the table of recent runs.
const TABLE_RUNS: usize = 25;

/// Text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn when(t: DateTime<Utc>) -> String {
    t.with_timezone(&Local)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// `1.5 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A bar chart of `values` (oldest first), failed runs in red; empty without values.
fn chart(label: &str, values: &[(f64, bool)], show: &dyn Fn(f64) -> String) -> String {
    if values.is_empty() {
        return String::new();
    }
    let (w, h, bar) = (150.0, 28.0, 150.0 / CHART_RUNS as f64);
    let max = values.iter().map(|v| v.0).fold(0.0, f64::max);
    let min = values.iter().map(|v| v.0).fold(f64::INFINITY, f64::min);
    let title = format!(
        "{label} of the last {} run(s): {} to {}, newest {}",
        values.len(),
        show(min),
        show(max),
        show(values[values.len() - 1].0)
    );
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(&title)
    );
    let offset = w - bar * values.len() as f64;
    for (i, (v, ok)) in values.iter().enumerate() {
        let bh = if max > 0.0 {
            (v / max * (h - 2.0)).max(1.0)
        } else {
            1.0
        };
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"/>",
            offset + i as f64 * bar,
            h - bh,
            bar - 1.0,
            if *ok { "#4a7bd0" } else { "#c0392b" }
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A source's copies, one line per `copy_to` repository: its state and its newest copy.
fn copies(s: &crate::ops::status::SourceStatus) -> String {
    if s.copies.is_empty() {
        return "<span class=\"muted\">none</span>".into();
    }
    let mut out = Vec::new();
    for c in &s.copies {
        let (class, word) = match c.state {
            CopyState::Ok => ("ok", "OK"),
            CopyState::Lagging => ("run", "LAGGING"),
            CopyState::Behind => ("bad", "BEHIND"),
            CopyState::Unknown => ("bad", "UNKNOWN"),
        };
        let newest = match &c.newest {
            Some(n) => format!(
                "{} ({} old)",
                esc(&n.original[..8.min(n.original.len())]),
                human(n.age_secs)
            ),
            None => "no copy".into(),
        };
        let title = c
            .problem(s.last_success.as_ref(), s.rpo_secs)
            .map(|p| format!(" title=\"{}\"", esc(&p)))
            .unwrap_or_default();
        out.push(format!(
            "<span data-repository=\"{r}\"{title}>{r}: <span class=\"{class}\">{word}</span> {newest}</span>",
            r = esc(&c.repository)
        ));
    }
    out.join("<br>")
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}th,td{padding:.3em .7em;border-bottom:1px solid #ddd;\
text-align:left;vertical-align:top;white-space:nowrap}th{background:#f4f4f4}td.n{text-align:right}\
.ok{color:#1e7b34;font-weight:600}.bad{color:#c0392b;font-weight:600}\
.run{color:#a66b00;font-weight:600}.muted{color:#777}.err{color:#c0392b;max-width:40em;white-space:normal}\
code{font-size:.95em}";

/// The page.
pub fn render(state: &ServiceState, now: DateTime<Utc>) -> String {
    let mut h = String::new();
    let host = crate::repo::hostname();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>coffer on {host}</title><style>{STYLE}</style></head><body>\
         <h1>coffer on {host}</h1>",
        host = esc(&host)
    );
    let Some(config) = state.config.as_deref() else {
        h.push_str("<p>Starting…</p></body></html>");
        return h;
    };
    let report = state
        .overview
        .report(config, now.with_timezone(&Local).fixed_offset());
    let within = report.sources.len() - report.breached;
    let wal_behind = report
        .wal_copies
        .iter()
        .filter(|w| w.state == WalCopyState::Behind)
        .count();
    let _ = write!(
        h,
        "<p id=\"summary\" class=\"{}\">{within} of {} source(s) within their RPO{}</p>\
         <p class=\"muted\">As of {}; service started {}; this page reloads every {REFRESH_SECS} s.</p>",
        if report.breached == 0 && report.copies_behind == 0 && wal_behind == 0 {
            "ok"
        } else {
            "bad"
        },
        report.sources.len(),
        match (report.copies_behind, wal_behind) {
            (0, 0) => String::new(),
            (n, 0) => format!("; {n} cop{} behind", if n == 1 { "y" } else { "ies" }),
            (0, w) => format!("; WAL copies behind in {w} repositor{}", if w == 1 { "y" } else { "ies" }),
            (n, w) => format!(
                "; {n} cop{} behind; WAL copies behind in {w} repositor{}",
                if n == 1 { "y" } else { "ies" },
                if w == 1 { "y" } else { "ies" }
            ),
        },
        when(now),
        state.started.map(when).unwrap_or_else(|| "-".into()),
    );

    h.push_str(
        "<h2>Sources</h2><table id=\"sources\"><tr><th>source</th><th>type</th><th>state</th>\
         <th>last success</th><th>age / RPO</th><th>next run</th><th>snapshots</th>\
         <th>duration</th><th>added</th><th>last drill</th><th>copies</th><th>last error</th></tr>",
    );
    for s in &report.sources {
        let backup = format!("backup {}", s.source);
        let job = state.jobs.iter().find(|j| j.job == backup);
        let running = job.and_then(|j| j.running_since);
        let (class, word) = match (running, s.state) {
            (Some(_), _) => ("run", "RUNNING"),
            (None, State::Ok) => ("ok", "OK"),
            (None, State::Breached) => ("bad", "BREACHED"),
        };
        let (last, age) = match &s.last_success {
            Some(l) => (
                format!(
                    "{} <span class=\"muted\">{}</span>",
                    esc(&l.time.format("%Y-%m-%d %H:%M:%S").to_string()),
                    esc(&l.snapshot[..8.min(l.snapshot.len())])
                ),
                human(l.age_secs),
            ),
            None => ("never".into(), "-".into()),
        };
        let rpo = s.rpo_secs.map(human).unwrap_or_else(|| "none".into());
        let next = match (running, job.and_then(|j| j.next_run)) {
            (Some(since), _) => format!("running since {}", when(since)),
            (None, Some(n)) => when(n),
            (None, None) => "not scheduled".into(),
        };
        let error = s
            .last_failure
            .as_ref()
            .map(|f| {
                format!(
                    "{} ago on {}: {}",
                    human(f.age_secs),
                    f.host,
                    f.error.as_deref().unwrap_or("(no message)")
                )
            })
            .unwrap_or_default();
        let runs: Vec<&RunSummary> = state.recent.iter().filter(|r| r.job == backup).collect();
        let runs = &runs[runs.len().saturating_sub(CHART_RUNS)..];
        let durations: Vec<(f64, bool)> = runs
            .iter()
            .map(|r| (r.duration_secs, r.status == RunStatus::Ok))
            .collect();
        let added: Vec<(f64, bool)> = runs
            .iter()
            .map(|r| (r.bytes_added as f64, r.status == RunStatus::Ok))
            .collect();
        let snapshots = state
            .overview
            .sources
            .get(&s.source)
            .map_or(0, |o| o.snapshots);
        let _ = write!(
            h,
            "<tr data-source=\"{name}\"><td><b>{name}</b></td><td>{ty}</td>\
             <td class=\"{class} state\">{word}</td><td>{last}</td><td>{age} / {rpo}</td>\
             <td>{next}</td><td class=\"n\">{snapshots}</td><td>{d}</td><td>{a}</td>\
             <td class=\"drill\">{drill}</td><td class=\"copies\">{copies}</td>\
             <td class=\"err\">{error}</td></tr>",
            name = esc(&s.source),
            ty = esc(&s.source_type),
            next = esc(&next),
            error = esc(&error),
            drill = match &s.last_drill {
                Some(dr) => format!(
                    "<span class=\"{}\">{}</span> {} ago, RTO {:.1} s{}",
                    if dr.passed { "ok" } else { "bad" },
                    if dr.passed { "passed" } else { "FAILED" },
                    human(dr.age_secs),
                    dr.rto_secs,
                    if s.drill_overdue {
                        " <span class=\"bad\">overdue</span>"
                    } else {
                        ""
                    }
                ),
                None if s.drill_overdue => "<span class=\"bad\">never (overdue)</span>".into(),
                None => "<span class=\"muted\">never</span>".into(),
            },
            copies = copies(s),
            d = chart("duration", &durations, &|v| format!("{v:.1} s")),
            a = chart("added bytes", &added, &|v| bytes(v as u64)),
        );
    }
    h.push_str("</table>");

    if let Some(w) = &state.overview.wal {
        h.push_str("<h2>Point-in-time recovery</h2><p id=\"wal\">");
        match &w.window {
            Some(win) => {
                let _ = write!(
                    h,
                    "Recoverable from <b>{}</b> (end of base backup {}) to <b>{}</b>{}. {}",
                    esc(&win.earliest_time.format("%Y-%m-%d %H:%M:%S").to_string()),
                    esc(&win.earliest_backup[..8.min(win.earliest_backup.len())]),
                    esc(&w
                        .latest_commit_time
                        .map(|t| format!("last commit {}", t.format("%Y-%m-%d %H:%M:%S")))
                        .unwrap_or_else(|| format!("segment {}", win.latest_segment))),
                    w.window_secs()
                        .map(|s| format!(" ({})", human(s)))
                        .unwrap_or_default(),
                    if w.gaps == 0 && w.ok {
                        "<span class=\"ok\">No gaps.</span>".to_string()
                    } else {
                        format!(
                            "<span class=\"bad\">{} gap(s): run coffer wal-verify.</span>",
                            w.gaps
                        )
                    }
                );
            }
            None => h.push_str("No recoverable window yet: no base backup has its WAL."),
        }
        h.push_str("</p>");
    }

    if !report.wal_copies.is_empty() {
        h.push_str(
            "<h2>WAL copies</h2><table id=\"wal-copies\"><tr><th>repository</th><th>state</th>\
             <th>pending</th><th>oldest</th><th>next copy</th></tr>",
        );
        let next = state
            .jobs
            .iter()
            .find(|j| j.job == "wal-copy")
            .and_then(|j| j.next_run)
            .map(when)
            .unwrap_or_else(|| "not scheduled".into());
        for w in &report.wal_copies {
            let (class, word) = match w.state {
                WalCopyState::Ok => ("ok", "OK"),
                WalCopyState::Behind => ("bad", "BEHIND"),
            };
            let title = w
                .problem()
                .map(|p| format!(" title=\"{}\"", esc(&p)))
                .unwrap_or_default();
            let _ = write!(
                h,
                "<tr data-repository=\"{r}\"{title}><td><b>{r}</b></td>\
                 <td class=\"{class} state\">{word}</td><td class=\"n pending\">{pending}</td>\
                 <td>{oldest}</td><td>{next}</td></tr>",
                r = esc(&w.repository),
                pending = w.pending,
                oldest = w.oldest_secs.map(human).unwrap_or_else(|| "-".into()),
                next = esc(&next),
            );
        }
        h.push_str("</table>");
    }

    let prunes: Vec<String> = state
        .prunes
        .iter()
        .map(|(name, p)| {
            format!(
                "{}: <span class=\"{}\">{}</span> {}",
                esc(name),
                if p.ok { "ok" } else { "bad" },
                if p.ok { "ok" } else { "FAILED" },
                when(p.finished)
            )
        })
        .collect();
    let _ = write!(
        h,
        "<h2>Repository</h2><p id=\"repository\">{} stored; last successful check: {}; \
         last prune: {}.</p>",
        bytes(state.stored_bytes),
        state
            .overview
            .check_last_success
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "never".into()),
        if prunes.is_empty() {
            "never".into()
        } else {
            prunes.join(", ")
        }
    );

    h.push_str(
        "<h2>Recent runs</h2><table id=\"runs\"><tr><th>started</th><th>job</th><th>status</th>\
         <th>duration</th><th>read</th><th>added</th><th>snapshot</th><th>error</th></tr>",
    );
    if state.recent.is_empty() {
        h.push_str("<tr><td colspan=\"8\" class=\"muted\">no runs yet</td></tr>");
    }
    for r in state.recent.iter().rev().take(TABLE_RUNS) {
        let ok = r.status == RunStatus::Ok;
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"n\">{:.1} s</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td><code>{}</code></td>\
             <td class=\"err\">{}</td></tr>",
            when(r.started),
            esc(&r.job),
            if ok { "ok" } else { "bad" },
            if ok { "ok" } else { "failed" },
            r.duration_secs,
            bytes(r.bytes_read),
            bytes(r.bytes_added),
            esc(r.snapshot.as_deref().map_or("", |s| &s[..8.min(s.len())])),
            esc(r.error.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_charts_scale_to_their_maximum() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(chart("d", &[], &|v| v.to_string()), "");
        let svg = chart("d", &[(1.0, true), (2.0, false)], &|v| format!("{v}"));
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(
            svg.contains("height=\"26.0\""),
            "the tallest bar fills the chart: {svg}"
        );
        assert!(svg.contains("#c0392b"), "a failed run is red");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
