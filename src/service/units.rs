//! `coffer generate`: units that run coffer from systemd, cron or Kubernetes.
//!
//! * [`systemd`]: `coffer.service`, running `coffer run` (the service schedules everything).
//! * [`systemd_timers`]: per scheduled job, a oneshot `coffer-backup-NAME.service` (or
//!   `coffer-prune`, `coffer-check`, `coffer-wal-verify`) and its `.timer`, the cron
//!   expression converted by [`on_calendar`].
//! * [`crontab`]: crontab lines, each run under `flock -n` so that runs never overlap.
//! * [`kubernetes`]: a Deployment for `coffer run`, or one CronJob per scheduled job.
//!
//! No secret is ever written into a unit: the passphrase goes through systemd's credentials
//! (or the Kubernetes Secret), and the `${VAR}`s of the config file through an environment
//! file (or the Secret) that the user fills in.

use crate::config::sources::Schedule;
use crate::config::{Config, SourceKind};
use crate::error::Error;
use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What every generator needs: the loaded config, where it is, and the coffer binary.
pub struct Setup<'a> {
    pub config: &'a Config,
    /// The config file, absolute.
    pub config_path: &'a Path,
    /// The coffer binary, absolute.
    pub bin: &'a Path,
    /// The `${VAR}` names the config file uses (see [`config_variables`]).
    pub variables: Vec<String>,
    /// Where the default repository lives when the config names none (`$COFFER_HOME`), and
    /// whether it exists on this machine.
    pub default_home: Option<PathBuf>,
    /// The secrets the config file holds as plain values (see [`literal_secrets`]).
    pub literal_secrets: Vec<String>,
}

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    pub name: String,
    pub text: String,
}

/// Generated files, and what the user should know (printed on standard error).
#[derive(Debug, Default)]
pub struct Generated {
    pub files: Vec<UnitFile>,
    pub notes: Vec<String>,
}

/// The `${VAR}` names used in a config file's text, sorted, each once: what the
/// environment file or Secret must hold. Shell command lines count too (the shell expands
/// them from the same environment).
pub fn config_variables(text: &str) -> Vec<String> {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let names = std::cell::RefCell::new(BTreeSet::new());
    fn walk(v: &toml::Value, names: &std::cell::RefCell<BTreeSet<String>>) {
        match v {
            toml::Value::String(s) => {
                // An unclosed `${` ends the scan of this value; the config's loading
                // reports it.
                let _ = crate::config::expand::expand(s, &|n| {
                    names.borrow_mut().insert(n.to_string());
                    Some("x".into())
                });
            }
            toml::Value::Array(a) => a.iter().for_each(|x| walk(x, names)),
            toml::Value::Table(t) => t.values().for_each(|x| walk(x, names)),
            _ => {}
        }
    }
    table.values().for_each(|v| walk(v, &names));
    names.into_inner().into_iter().collect()
}

/// The secrets a config file's text holds as plain values (not `${VAR}`s): `password`,
/// `[s3] secret_access_key` and `session_token`, by key.
pub fn literal_secrets(text: &str) -> Vec<String> {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let plain = |v: Option<&toml::Value>| {
        v.and_then(|v| v.as_str())
            .is_some_and(|s| !s.contains("${"))
    };
    let mut out = Vec::new();
    if plain(table.get("password")) {
        out.push("password".to_string());
    }
    if let Some(s3) = table.get("s3").and_then(|t| t.as_table()) {
        for k in ["secret_access_key", "session_token"] {
            if plain(s3.get(k)) {
                out.push(format!("[s3] {k}"));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Jobs: what runs when.

/// When a job runs.
#[derive(Debug, Clone, PartialEq)]
enum When {
    Cron {
        expr: String,
        timezone: Option<String>,
    },
    Every(Duration),
}

/// One scheduled job: a source's backup or drill, or a repository job.
#[derive(Debug, Clone)]
struct Job {
    /// `backup-db`, `drill-db`, `prune`, `check`, `wal-verify`: unit and lock names.
    id: String,
    /// What it does, for descriptions.
    what: String,
    /// coffer's arguments after `--config CONFIG`.
    args: Vec<String>,
    when: When,
    jitter: Option<Duration>,
}

/// The jobs of the named sources, or of every scheduled source and repository job when none
/// is named.
fn jobs(config: &Config, config_path: &Path, names: &[String]) -> Result<Vec<Job>> {
    let when = |schedule: &Schedule| match schedule {
        Schedule::Cron { expr, timezone } => When::Cron {
            expr: expr.clone(),
            timezone: timezone.map(|t| t.name().to_string()),
        },
        Schedule::Every(d) => When::Every(*d),
    };
    // A source's drill job, when its drill table has a schedule.
    let drill_job = |s: &crate::config::SourceConfig| {
        s.drill
            .as_ref()
            .and_then(|d| d.schedule.as_ref())
            .map(|schedule| Job {
                id: format!("drill-{}", s.name),
                what: format!(
                    "restore-drill the source {} ({})",
                    s.name,
                    s.kind.type_name()
                ),
                args: vec!["drill".into(), "--source".into(), s.name.clone()],
                when: when(schedule),
                jitter: s.jitter,
            })
    };
    let source_job = |s: &crate::config::SourceConfig, schedule: &Schedule| Job {
        id: format!("backup-{}", s.name),
        what: format!("back up the source {} ({})", s.name, s.kind.type_name()),
        args: vec!["backup".into(), "--source".into(), s.name.clone()],
        when: match schedule {
            Schedule::Cron { expr, timezone } => When::Cron {
                expr: expr.clone(),
                timezone: timezone.map(|t| t.name().to_string()),
            },
            Schedule::Every(d) => When::Every(*d),
        },
        jitter: s.jitter,
    };
    let mut out = Vec::new();
    if !names.is_empty() {
        for n in names {
            let Some(s) = config.source(n) else {
                let declared: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::usage(format!(
                    "--source {n}: {} declares no source {n:?} (declared: {})",
                    config_path.display(),
                    if declared.is_empty() {
                        "none".to_string()
                    } else {
                        declared.join(", ")
                    }
                ))
                .into());
            };
            let drill = drill_job(s);
            let Some(schedule) = &s.schedule else {
                if let Some(d) = drill {
                    if !out.iter().any(|j: &Job| j.id == d.id) {
                        out.push(d);
                    }
                    continue;
                }
                return Err(Error::usage(format!(
                    "--source {n}: the source has no schedule: give [sources.{n}] schedule = \"0 2 * * *\" \
                     (a cron expression) or every = \"1h\" in {}",
                    config_path.display()
                ))
                .into());
            };
            if !out.iter().any(|j: &Job| j.id == format!("backup-{n}")) {
                out.push(source_job(s, schedule));
                out.extend(drill);
            }
        }
        return Ok(out);
    }
    for s in &config.sources {
        if let Some(schedule) = &s.schedule {
            out.push(source_job(s, schedule));
        }
    }
    out.extend(config.sources.iter().filter_map(drill_job));
    let sv = &config.service;
    let repo_job = |id: &str, what: &str, args: Vec<String>, expr: &String| Job {
        id: id.into(),
        what: what.into(),
        args,
        when: When::Cron {
            expr: expr.clone(),
            timezone: sv.timezone.clone(),
        },
        jitter: None,
    };
    if let Some(e) = &sv.prune {
        out.push(repo_job(
            "prune",
            "remove data no snapshot needs",
            vec!["prune".into()],
            e,
        ));
        // Each other repository on its own (its own lock; one failing stops no other),
        // its `keep` first, as `coffer run` does.
        for (name, r) in &config.repositories {
            let mut args = vec!["--repo".to_string(), name.clone()];
            match r.keep {
                Some(_) => args.extend(["forget".into(), "--prune".into()]),
                None => args.push("prune".into()),
            }
            out.push(repo_job(
                &format!("prune-{name}"),
                &format!(
                    "{}remove data no snapshot needs in the repository {name}",
                    if r.keep.is_some() {
                        "apply its keep rules and "
                    } else {
                        ""
                    }
                ),
                args,
                e,
            ));
        }
    }
    if let Some(e) = &sv.check {
        let mut args = vec!["check".to_string()];
        if let Some(subset) = &sv.check_read_data_subset {
            args.push("--read-data-subset".into());
            args.push(subset.clone());
        }
        out.push(repo_job("check", "verify the repository", args, e));
    }
    if let Some(e) = &sv.wal_verify {
        out.push(repo_job(
            "wal-verify",
            "check the WAL archive for gaps",
            vec!["wal-verify".into()],
            e,
        ));
    }
    if out.is_empty() {
        return Err(Error::usage(format!(
            "{} schedules nothing: give sources a schedule (schedule = \"0 2 * * *\" or \
             every = \"1h\" in [sources.NAME]) or [service] prune/check/wal_verify",
            config_path.display()
        ))
        .into());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// cron → OnCalendar.

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// One field of a cron expression.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, … (months, days of the week).
    names: &'static [&'static str],
}

impl Field {
    fn value(&self, s: &str, whole: &str) -> Result<u32, String> {
        let upper = s.to_ascii_uppercase();
        if self.names.iter().all(|n| !n.eq_ignore_ascii_case(s))
            && (upper.contains('#') || upper.ends_with('L') || upper.ends_with('W'))
        {
            return Err(format!(
                "the {} field {whole:?} uses L, W or # (last day, nearest weekday, nth weekday), \
                 which OnCalendar cannot express",
                self.name
            ));
        }
        let v = if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            self.min + i as u32
        } else {
            s.parse::<u32>()
                .map_err(|_| format!("the {} field {whole:?}: {s:?} is not a number", self.name))?
        };
        if v < self.min || v > self.max {
            return Err(format!(
                "the {} field {whole:?}: {v} is out of {}-{}",
                self.name, self.min, self.max
            ));
        }
        Ok(v)
    }

    /// The values the field matches.
    fn set(&self, text: &str) -> Result<BTreeSet<u32>, String> {
        let text = if text == "?" { "*" } else { text };
        let mut out = BTreeSet::new();
        for item in text.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => {
                    let step = s.parse::<u32>().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!(
                            "the {} field {text:?}: step {s:?} is not a positive number",
                            self.name
                        )
                    })?;
                    (r, Some(step))
                }
                None => (item, None),
            };
            let (lo, hi) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.value(a, text)?, self.value(b, text)?)
            } else {
                let a = self.value(range, text)?;
                (a, if step.is_some() { self.max } else { a })
            };
            if lo > hi {
                return Err(format!(
                    "the {} field {text:?}: the range {range} runs backwards, which OnCalendar cannot express",
                    self.name
                ));
            }
            let mut v = lo;
            while v <= hi {
                out.insert(v);
                v += step.unwrap_or(1);
            }
        }
        Ok(out)
    }
}

/// A set of values as an OnCalendar component: `*`, `a/step` (a progression to the end),
/// or a list of values and `a..b` ranges.
fn render(set: &BTreeSet<u32>, min: u32, max: u32) -> String {
    if set.len() as u32 == max - min + 1 {
        return "*".into();
    }
    let v: Vec<u32> = set.iter().copied().collect();
    if v.len() >= 3 {
        let step = v[1] - v[0];
        if step > 1 && v.windows(2).all(|w| w[1] - w[0] == step) && v[v.len() - 1] + step > max {
            return format!("{:02}/{step}", v[0]);
        }
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        if j - i >= 2 {
            parts.push(format!("{:02}..{:02}", v[i], v[j]));
        } else {
            for x in &v[i..=j] {
                parts.push(format!("{x:02}"));
            }
        }
        i = j + 1;
    }
    parts.join(",")
}

/// Days of the week (0 = Sunday) as OnCalendar's weekday list, Monday first.
fn render_days(set: &BTreeSet<u32>) -> String {
    let order: Vec<u32> = (1..7).chain([0]).filter(|d| set.contains(d)).collect();
    let pos = |d: u32| (d + 6) % 7; // Monday 0 … Sunday 6
    let mut parts = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && pos(order[j + 1]) == pos(order[j]) + 1 {
            j += 1;
        }
        if j - i >= 2 {
            parts.push(format!(
                "{}..{}",
                DAYS[order[i] as usize], DAYS[order[j] as usize]
            ));
        } else {
            for d in &order[i..=j] {
                parts.push(DAYS[*d as usize].to_string());
            }
        }
        i = j + 1;
    }
    parts.join(",")
}

/// A 5-field cron expression as a systemd `OnCalendar=` value with the same times, in
/// `timezone` (an IANA name) when given: `0 2 * * *` → `*-*-* 02:00:00`, `*/15 * * * *` →
/// `*-*-* *:00/15:00`, `0 4 * * 0` → `Sun *-*-* 04:00:00`. An expression OnCalendar cannot
/// express is an error that says which field.
pub fn on_calendar(expr: &str, timezone: Option<&str>) -> Result<String, String> {
    let f: Vec<&str> = expr.split_whitespace().collect();
    if f.len() != 5 {
        return Err(format!(
            "{expr:?} is not a 5-field cron expression (minute hour day-of-month month day-of-week)"
        ));
    }
    fn field(name: &'static str, min: u32, max: u32, names: &'static [&'static str]) -> Field {
        Field {
            name,
            min,
            max,
            names,
        }
    }
    let minute = field("minute", 0, 59, &[]).set(f[0])?;
    let hour = field("hour", 0, 23, &[]).set(f[1])?;
    let dom = field("day-of-month", 1, 31, &[]).set(f[2])?;
    let month = field("month", 1, 12, &MONTHS).set(f[3])?;
    let mut dow = field("day-of-week", 0, 7, &DAYS).set(f[4])?;
    if dow.remove(&7) {
        dow.insert(0);
    }
    let star = |s: &str| s == "*" || s == "?";
    if !star(f[2]) && !star(f[4]) {
        return Err(format!(
            "the day-of-month field {:?} and the day-of-week field {:?} are both set: cron runs on \
             days that match either, OnCalendar only on days that match both; split it into two \
             sources or leave one of them *",
            f[2], f[4]
        ));
    }
    let mut out = String::new();
    if dow.len() < 7 {
        out.push_str(&render_days(&dow));
        out.push(' ');
    }
    let _ = write!(
        out,
        "*-{}-{} {}:{}:00",
        render(&month, 1, 12),
        render(&dom, 1, 31),
        render(&hour, 0, 23),
        render(&minute, 0, 59)
    );
    if let Some(tz) = timezone {
        out.push(' ');
        out.push_str(tz);
    }
    Ok(out)
}

/// An interval as a cron expression, when it divides an hour or a day evenly (`15m` →
/// `*/15 * * * *`, `6h` → `0 */6 * * *`, `1d` → `0 0 * * *`).
pub fn every_as_cron(d: Duration) -> Option<String> {
    let s = d.as_secs();
    if s == 0 || !s.is_multiple_of(60) || d.subsec_nanos() != 0 {
        return None;
    }
    let m = s / 60;
    match m {
        1 => Some("* * * * *".into()),
        m if m < 60 && 60u64.is_multiple_of(m) => Some(format!("*/{m} * * * *")),
        60 => Some("0 * * * *".into()),
        m if m.is_multiple_of(60) && m / 60 < 24 && 24u64.is_multiple_of(m / 60) => {
            Some(format!("0 */{} * * *", m / 60))
        }
        1440 => Some("0 0 * * *".into()),
        _ => None,
    }
}

/// A job's schedule as a cron expression and time zone, for cron and Kubernetes.
fn cron_of(job: &Job) -> Result<(String, Option<String>)> {
    match &job.when {
        When::Cron { expr, timezone } => Ok((expr.clone(), timezone.clone())),
        When::Every(d) => every_as_cron(*d).map(|e| (e, None)).ok_or_else(|| {
            Error::usage(format!(
                "{}: every = {:?} does not divide an hour or a day evenly, so cron cannot run it: \
                 give the source a schedule (a cron expression) instead, or use coffer run",
                job.id,
                humantime::format_duration(*d).to_string()
            ))
            .into()
        }),
    }
}

// ---------------------------------------------------------------------------------------
// systemd.

/// A word of a systemd command line or path list: specifiers (`%`) and variables (`$`)
/// escaped, quoted when it has spaces or quotes.
fn sd_word(s: &str) -> String {
    let e = s.replace('%', "%%").replace('$', "$$");
    if e.is_empty()
        || e.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '\\' || c == ';')
    {
        format!("\"{}\"", e.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        e
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Paths are refused when they hold what no unit file can carry.
fn plain_path(what: &str, p: &Path) -> Result<String> {
    let s = p.to_str().ok_or_else(|| {
        Error::usage(format!(
            "{what} {} is not UTF-8: a unit file cannot name it",
            p.display()
        ))
    })?;
    if s.contains(|c: char| c.is_control()) {
        return Err(Error::usage(format!(
            "{what} {s:?} holds a control character: a unit file cannot name it"
        ))
        .into());
    }
    Ok(s.to_string())
}

fn under_home(p: &Path) -> bool {
    ["/home", "/root", "/run/user"]
        .iter()
        .any(|h| p.starts_with(h))
}

/// The `[Service]` lines every unit shares: environment, credentials and hardening.
struct Hardening {
    lines: Vec<String>,
    comments: Vec<String>,
    notes: Vec<String>,
}

fn hardening(s: &Setup) -> Result<Hardening> {
    let c = s.config;
    let mut lines = Vec::new();
    let mut comments = Vec::new();
    let mut notes = Vec::new();
    let mut writable: Vec<PathBuf> = Vec::new();
    match c.repository.as_deref() {
        Some(r) if r.starts_with("s3://") => {
            comments.push(format!(
                "The repository ({r}) is on object storage: nothing local to write but /tmp."
            ));
        }
        Some(r) => {
            let p = PathBuf::from(r);
            if p.is_relative() {
                return Err(Error::usage(format!(
                    "repository = {r:?} in {} is a relative path, and a service runs in /: write it as an absolute path",
                    s.config_path.display()
                ))
                .into());
            }
            if !p.exists() {
                notes.push(format!(
                    "the repository {r} does not exist yet: create it with `coffer --config {} init` before starting the units (ReadWritePaths needs it)",
                    s.config_path.display()
                ));
            }
            comments.push(format!(
                "ReadWritePaths: the repository ({r}), the only place coffer writes besides /tmp."
            ));
            writable.push(p);
        }
        None => match &s.default_home {
            Some(h) if h.exists() => {
                comments.push(format!(
                    "The config names no repository: coffer uses the default one in COFFER_HOME ({}), \
                     with its key file; ReadWritePaths makes it writable.",
                    h.display()
                ));
                lines.push(format!(
                    "Environment={}",
                    sd_word(&format!("COFFER_HOME={}", plain_path("COFFER_HOME", h)?))
                ));
                writable.push(h.clone());
            }
            _ => {
                comments.push(
                    "The config names no repository: coffer creates the default one, with its key file, \
                     in COFFER_HOME = /var/lib/coffer (StateDirectory, made by systemd). Copy the key \
                     file away from this machine: without it the backups cannot be read."
                        .into(),
                );
                lines.push("StateDirectory=coffer".into());
                lines.push("StateDirectoryMode=0700".into());
                lines.push("Environment=COFFER_HOME=%S/coffer".into());
            }
        },
    }
    // The other repositories: copy_to writes to them, and prune prunes them.
    for (name, r) in &c.repositories {
        if r.location.starts_with("s3://") {
            continue;
        }
        let p = PathBuf::from(&r.location);
        if p.is_relative() {
            return Err(Error::usage(format!(
                "[repositories.{name}] location = {:?} in {} is a relative path, and a service runs in /: write it as an absolute path",
                r.location,
                s.config_path.display()
            ))
            .into());
        }
        comments.push(format!(
            "ReadWritePaths: the repository {name} ({}), which copies and prunes write.",
            r.location
        ));
        writable.push(p);
    }
    let restore_only = c.sources.iter().any(|src| match &src.kind {
        SourceKind::Postgres(p) => p.pgdata.is_some(),
        SourceKind::Command(cmd) => cmd.restore_dir.is_some(),
        _ => false,
    }) || c.stack.restore_dir.is_some();
    if restore_only {
        comments.push(
            "pgdata and restore_dir are only written by `coffer restore --stack`, which these units \
             do not run; backups only read them."
                .into(),
        );
    }
    if c.sources.iter().any(|src| {
        matches!(src.kind, SourceKind::Command(_))
            || !src.before.is_empty()
            || !src.after.is_empty()
    }) {
        comments.push(
            "The command sources and hooks run under the same restrictions: add ReadWritePaths= for \
             what they write."
                .into(),
        );
    }
    lines.push("NoNewPrivileges=yes".into());
    lines.push("ProtectSystem=strict".into());
    for p in &writable {
        lines.push(format!(
            "ReadWritePaths={}",
            sd_word(&plain_path("path", p)?)
        ));
    }
    lines.push("PrivateTmp=yes".into());
    comments.push(
        "CacheDirectory: COFFER_CACHE = /var/cache/coffer, where a write-only key keeps its local \
         tree cache to skip unchanged files (losing it costs one full read, never data)."
            .into(),
    );
    lines.push("CacheDirectory=coffer".into());
    lines.push("CacheDirectoryMode=0700".into());
    lines.push("Environment=COFFER_CACHE=%C/coffer".into());
    if let Some(h) = writable.iter().find(|p| under_home(p)) {
        comments.push(format!(
            "No ProtectHome: {} is under /home, /root or /run/user, and coffer writes there.",
            h.display()
        ));
    } else {
        lines.push("ProtectHome=read-only".into());
        comments.push(
            "ProtectHome=read-only: /home, /root and /run/user can be read (files sources), not written."
                .into(),
        );
    }
    for l in [
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
    ] {
        lines.push(l.into());
    }
    if let Some(pw) = &c.password_file {
        let pw = plain_path("password_file", pw)?;
        comments.push(format!(
            "LoadCredential: systemd copies the passphrase file ({pw}) into the service's private \
             credentials directory (%d), readable by this service only; COFFER_PASSWORD_FILE \
             points coffer at that copy."
        ));
        lines.push(format!(
            "LoadCredential={}",
            sd_word(&format!("passphrase:{pw}"))
        ));
        lines.push("Environment=COFFER_PASSWORD_FILE=%d/passphrase".into());
    } else if c.password.is_some() {
        comments.push(
            "The passphrase is in the config file (password): better move it to a file named by \
             password_file, mode 0600, and generate again (LoadCredential passes it)."
                .into(),
        );
    } else if c.repository.is_some() {
        comments.push(
            "No password_file in the config: put COFFER_PASSWORD=… in the environment file, or set \
             password_file and generate again."
                .into(),
        );
    }
    let vars = if s.variables.is_empty() {
        "none now".to_string()
    } else {
        s.variables.join(", ")
    };
    comments.push(format!(
        "EnvironmentFile (optional, \"-\"): VAR=value lines for the ${{VAR}}s of the config ({vars}), \
         and AWS_* for an s3:// repository; keep it mode 0600. No secret is written in this unit."
    ));
    lines.push("EnvironmentFile=-/etc/coffer/coffer.env".into());
    Ok(Hardening {
        lines,
        comments,
        notes,
    })
}

fn exec(s: &Setup, args: &[String]) -> Result<String> {
    let mut words = vec![
        sd_word(&plain_path("the coffer binary", s.bin)?),
        "--config".to_string(),
        sd_word(&plain_path("the config file", s.config_path)?),
    ];
    words.extend(args.iter().map(|a| sd_word(a)));
    Ok(words.join(" "))
}

/// Paragraphs as `# - ` comment items, wrapped.
fn comment_block(out: &mut String, paragraphs: &[String]) {
    for p in paragraphs {
        let mut line = String::from("# -");
        for w in p.split_whitespace() {
            if line.len() + 1 + w.len() > 92 && line.len() > 4 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#  ");
            }
            line.push(' ');
            line.push_str(w);
        }
        out.push_str(&line);
        out.push('\n');
    }
}

/// `coffer generate systemd`: `coffer.service` for `coffer run`.
pub fn systemd(s: &Setup) -> Result<Generated> {
    let h = hardening(s)?;
    let grace = s
        .config
        .service
        .shutdown_grace
        .unwrap_or(Duration::from_secs(300));
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# coffer.service: `coffer run` keeps the stack of {} backed up, on each source's\n\
         # schedule, with the repository jobs of [service]. Generated by `coffer generate systemd`.\n\
         # Install: copy to /etc/systemd/system/, then `systemctl daemon-reload` and\n\
         # `systemctl enable --now coffer.service`; logs: `journalctl -u coffer`.\n#",
        s.config_path.display()
    );
    let mut parts = vec![
        "Type=simple: coffer run stays in the foreground; Restart=on-failure starts it again 30 s after a crash or a failing exit.".to_string(),
        "ExecReload sends SIGHUP: coffer run reads the config again (an invalid one is refused and the old one keeps running).".to_string(),
        format!(
            "KillSignal=SIGTERM: coffer run starts no new job and lets the running ones finish within [service] shutdown_grace ({}); TimeoutStopSec is that plus 30 s, after which systemd kills it.",
            humantime::format_duration(grace)
        ),
        "Hardening: NoNewPrivileges; ProtectSystem=strict makes the file system read-only except the ReadWritePaths; PrivateTmp gives the service its own /tmp.".to_string(),
    ];
    parts.extend(h.comments);
    comment_block(&mut t, &parts);
    let _ = writeln!(
        t,
        "\n[Unit]\nDescription=coffer backup service (coffer run)\n\
         Wants=network-online.target\nAfter=network-online.target\n\n[Service]\nType=simple\n\
         ExecStart={}\nExecReload=/bin/kill -HUP $MAINPID\nRestart=on-failure\nRestartSec=30s\n\
         KillSignal=SIGTERM\nKillMode=mixed\nTimeoutStopSec={}s",
        exec(s, &["run".to_string()])?,
        secs(grace) + 30
    );
    for l in &h.lines {
        let _ = writeln!(t, "{l}");
    }
    let _ = writeln!(t, "\n[Install]\nWantedBy=multi-user.target");
    Ok(Generated {
        files: vec![UnitFile {
            name: "coffer.service".into(),
            text: t,
        }],
        notes: h.notes,
    })
}

/// `coffer generate systemd-timer`: a oneshot service and a timer per job (the named
/// sources, or every scheduled source and repository job).
pub fn systemd_timers(s: &Setup, sources: &[String]) -> Result<Generated> {
    let jobs = jobs(s.config, s.config_path, sources)?;
    let h = hardening(s)?;
    let mut files = Vec::new();
    for job in &jobs {
        let unit = format!("coffer-{}", job.id);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# {unit}.service: {} once, started by {unit}.timer.\n\
             # Generated by `coffer generate systemd-timer` from {}.\n#",
            job.what,
            s.config_path.display()
        );
        let mut parts = vec![
            "Type=oneshot: the service is active while the job runs; a timer never starts it again before it ends, so runs do not overlap.".to_string(),
            "Hardening: NoNewPrivileges; ProtectSystem=strict makes the file system read-only except the ReadWritePaths; PrivateTmp gives the job its own /tmp.".to_string(),
        ];
        parts.extend(h.comments.iter().cloned());
        comment_block(&mut t, &parts);
        let _ = writeln!(
            t,
            "\n[Unit]\nDescription=coffer: {}\nWants=network-online.target\nAfter=network-online.target\n\n\
             [Service]\nType=oneshot\nExecStart={}\nKillSignal=SIGTERM",
            job.what,
            exec(s, &job.args)?
        );
        for l in &h.lines {
            let _ = writeln!(t, "{l}");
        }
        files.push(UnitFile {
            name: format!("{unit}.service"),
            text: t,
        });

        let mut t = String::new();
        let _ = writeln!(
            t,
            "# {unit}.timer: when {unit}.service runs.\n\
             # Install both in /etc/systemd/system/, then `systemctl daemon-reload` and\n\
             # `systemctl enable --now {unit}.timer`; `systemctl list-timers` shows the next run."
        );
        let when = match &job.when {
            When::Cron { expr, timezone } => {
                let cal = on_calendar(expr, timezone.as_deref())
                    .map_err(|e| Error::usage(format!("{}: schedule {expr:?}: {e}", job.id)))?;
                let _ = writeln!(
                    t,
                    "# OnCalendar is the cron expression {expr:?}{}.\n\
                     # Persistent=true: a time missed while the machine was off runs once at the next boot.",
                    timezone
                        .as_ref()
                        .map(|z| format!(" in {z}"))
                        .unwrap_or_default()
                );
                format!("OnCalendar={cal}\nPersistent=true")
            }
            When::Every(d) => {
                let _ = writeln!(
                    t,
                    "# every = {}: OnUnitActiveSec starts it that long after the last start, OnBootSec\n\
                     # 1 min after boot (or at once when the timer is started later than that).",
                    humantime::format_duration(*d)
                );
                format!(
                    "OnBootSec=1min\nOnUnitActiveSec={}s\nPersistent=true",
                    secs(*d)
                )
            }
        };
        if job.jitter.is_some() {
            let _ = writeln!(
                t,
                "# RandomizedDelaySec: the source's jitter, a random delay up to it."
            );
        }
        let _ = writeln!(
            t,
            "\n[Unit]\nDescription=coffer: {} (timer)\n\n[Timer]\n{when}",
            job.what
        );
        if let Some(j) = job.jitter {
            let _ = writeln!(t, "RandomizedDelaySec={}s", secs(j));
        }
        let _ = writeln!(
            t,
            "Unit={unit}.service\n\n[Install]\nWantedBy=timers.target"
        );
        files.push(UnitFile {
            name: format!("{unit}.timer"),
            text: t,
        });
    }
    Ok(Generated {
        files,
        notes: h.notes,
    })
}

// ---------------------------------------------------------------------------------------
// cron.

/// A word for `sh -c`, with cron's `%` (a newline unless escaped) escaped.
fn sh_word(s: &str) -> String {
    let quoted = if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    };
    quoted.replace('%', "\\%")
}

/// `coffer generate cron`: crontab lines (for `crontab -e`: no user field), one per job.
pub fn crontab(s: &Setup, sources: &[String]) -> Result<Generated> {
    let jobs = jobs(s.config, s.config_path, sources)?;
    let bin = plain_path("the coffer binary", s.bin)?;
    let cfg = plain_path("the config file", s.config_path)?;
    let mut by_zone: Vec<(Option<String>, Vec<String>)> = Vec::new();
    let mut notes = Vec::new();
    for job in &jobs {
        let (expr, tz) = cron_of(job)?;
        if job.jitter.is_some() {
            notes.push(format!(
                "{}: cron has no jitter; it runs at the scheduled minute",
                job.id
            ));
        }
        let lock = format!("/run/lock/coffer-{}.lock", job.id);
        let mut words = vec![
            "flock".to_string(),
            "-n".into(),
            sh_word(&lock),
            sh_word(&bin),
            "--config".into(),
            sh_word(&cfg),
        ];
        words.extend(job.args.iter().map(|a| sh_word(a)));
        let line = format!("{expr} {}", words.join(" "));
        match by_zone.iter_mut().find(|(z, _)| *z == tz) {
            Some((_, lines)) => lines.push(line),
            None => by_zone.push((tz, vec![line])),
        }
    }
    // Lines in local time first: CRON_TZ applies to every line after it.
    by_zone.sort_by_key(|(z, _)| z.is_some());
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# coffer's jobs from {}. Generated by `coffer generate cron`.\n\
         # Crontab lines (no user field): add them with `crontab -e`, or\n\
         #   (crontab -l; cat THIS_FILE) | crontab -\n\
         # flock -n (util-linux) takes /run/lock/coffer-JOB.lock: a run still going when the next one\n\
         # is due makes that one exit at once, so runs of a job never overlap (coffer's repository\n\
         # locks let backups run side by side, so they would not stop it). The ${{VAR}}s of the config\n\
         # ({}) must be in cron's environment: set them above these lines, or use the systemd units.\n\
         # CRON_TZ (cronie, busybox) sets the time zone of the lines after it.",
        cfg,
        if s.variables.is_empty() {
            "none now".to_string()
        } else {
            s.variables.join(", ")
        }
    );
    for (zone, lines) in by_zone {
        if let Some(z) = zone {
            let _ = writeln!(t, "CRON_TZ={z}");
        }
        for l in lines {
            let _ = writeln!(t, "{l}");
        }
    }
    Ok(Generated {
        files: vec![UnitFile {
            name: "coffer.crontab".into(),
            text: t,
        }],
        notes,
    })
}

// ---------------------------------------------------------------------------------------
// Kubernetes.

/// A Kubernetes object name (DNS-1123 label) for a job id.
fn k8s_name(id: &str) -> String {
    let n: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    n.trim_matches('-').to_string()
}

/// What `coffer generate kubernetes` is given beyond the setup.
pub struct KubeOptions<'a> {
    pub image: &'a str,
    pub cronjob: bool,
    pub sources: &'a [String],
}

const MOUNT: &str = "/etc/coffer";

fn container(s: &Setup, o: &KubeOptions, args: Vec<String>, probe: bool) -> Result<Value> {
    let file = s
        .config_path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("coffer.toml");
    let mut argv = vec!["--config".to_string(), format!("{MOUNT}/{file}")];
    argv.extend(args);
    let mut c = json!({
        "name": "coffer",
        "image": o.image,
        "command": ["coffer"],
        "args": argv,
        "envFrom": [{"secretRef": {"name": "coffer-env"}}],
        "env": [
            {"name": "COFFER_HOME", "value": "/var/cache/coffer"},
            {"name": "COFFER_CACHE", "value": "/var/cache/coffer/cache"}
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "2Gi"}
        },
        "securityContext": {
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}
        },
        "volumeMounts": [
            {"name": "config", "mountPath": MOUNT, "readOnly": true},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "cache", "mountPath": "/var/cache/coffer"}
        ]
    });
    if probe {
        if let Some(listen) = &s.config.service.listen {
            let port = listen
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .ok_or_else(|| {
                    Error::usage(format!(
                        "[service] listen = {listen:?} has no port: write it as HOST:PORT"
                    ))
                })?;
            c["ports"] = json!([{"name": "http", "containerPort": port}]);
            c["livenessProbe"] = json!({
                "httpGet": {"path": "/healthz", "port": "http"},
                "initialDelaySeconds": 10,
                "periodSeconds": 30,
                "timeoutSeconds": 5,
                "failureThreshold": 3
            });
        }
    }
    Ok(c)
}

fn pod_spec(containers: Value, restart: &str) -> Value {
    json!({
        "restartPolicy": restart,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "containers": containers,
        "volumes": [
            {"name": "config", "configMap": {"name": "coffer-config"}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "cache", "emptyDir": {}}
        ]
    })
}

fn labels(component: &str) -> Value {
    json!({"app.kubernetes.io/name": "coffer", "app.kubernetes.io/component": component})
}

/// Whether `[service] listen` is a loopback address (unreachable for the kubelet's probe).
fn loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn kube_header(s: &Setup, o: &KubeOptions) -> String {
    let file = s
        .config_path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("coffer.toml");
    let mut keys: Vec<String> = s.variables.clone();
    if s.config.password_file.is_some()
        || s.config.password.is_some()
        || s.config.repository.is_some()
    {
        keys.push("COFFER_PASSWORD".into());
    }
    if s.config
        .repository
        .as_deref()
        .is_some_and(|r| r.starts_with("s3://"))
    {
        keys.extend(["AWS_ACCESS_KEY_ID".into(), "AWS_SECRET_ACCESS_KEY".into()]);
    }
    format!(
        "# coffer on Kubernetes, from {cfg}. Generated by `coffer generate kubernetes{flag}`.\n\
         # What runs: {what}\n\
         # Before applying, create (no secret is written here):\n\
         #   the config, mounted read-only at {MOUNT}:\n\
         #     kubectl create configmap coffer-config --from-file={file}={cfg}\n\
         #   (a ConfigMap is not secret: keep passphrases and keys out of the file, as ${{VAR}}s)\n\
         #   the environment, every key becomes a variable (envFrom):\n\
         #     kubectl create secret generic coffer-env --from-env-file=coffer.env\n\
         #   with {keys}.\n\
         # The pod runs as a non-root user on a read-only root file system; /tmp and COFFER_HOME\n\
         # (/var/cache/coffer, with COFFER_CACHE in it) are emptyDirs.\n",
        cfg = s.config_path.display(),
        flag = if o.cronjob { " --cronjob" } else { "" },
        what = if o.cronjob {
            "one CronJob per scheduled job; concurrencyPolicy Forbid skips a run while the last one still goes."
        } else {
            "a Deployment of one pod running `coffer run` (strategy Recreate: never two at once)."
        },
        keys = if keys.is_empty() {
            "the variables the config needs".to_string()
        } else {
            keys.join(", ")
        },
    )
}

/// `coffer generate kubernetes`: a Deployment for `coffer run`, or (`cronjob`) a CronJob per
/// scheduled job, as YAML documents.
pub fn kubernetes(s: &Setup, o: &KubeOptions) -> Result<Generated> {
    let mut docs = Vec::new();
    let mut notes = Vec::new();
    if s.config.repository.is_none() {
        notes.push(
            "the config names no repository: in a pod the default one would live in an emptyDir \
             and be lost; set repository (e.g. s3://bucket/prefix) in the config"
                .to_string(),
        );
    }
    if !s.literal_secrets.is_empty() {
        notes.push(format!(
            "the config file holds {} as plain values, and a ConfigMap is no place for secrets: \
             write them as ${{VAR}}s (or use COFFER_PASSWORD, AWS_SECRET_ACCESS_KEY) and put the \
             values in the Secret coffer-env",
            s.literal_secrets.join(", ")
        ));
    }
    if o.cronjob {
        let mut names = BTreeSet::new();
        for job in jobs(s.config, s.config_path, o.sources)? {
            let (expr, tz) = cron_of(&job)?;
            let name = format!("coffer-{}", k8s_name(&job.id));
            // A CronJob's name is a DNS label of at most 52 characters.
            if name.len() > 52 || !names.insert(name.clone()) {
                return Err(Error::usage(format!(
                    "{}: its CronJob would be named {name:?}, {}: rename the source",
                    job.id,
                    if name.len() > 52 {
                        "longer than Kubernetes allows (52)"
                    } else {
                        "like another one's"
                    }
                ))
                .into());
            }
            let mut spec = json!({
                "schedule": expr,
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": 600,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {
                    "metadata": {"labels": labels(&k8s_name(&job.id))},
                    "spec": {
                        "backoffLimit": 2,
                        "template": {
                            "metadata": {"labels": labels(&k8s_name(&job.id))},
                            "spec": pod_spec(json!([container(s, o, job.args.clone(), false)?]), "Never")
                        }
                    }
                }
            });
            if let Some(z) = tz {
                spec["timeZone"] = json!(z);
            }
            docs.push(json!({
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "metadata": {"name": name, "labels": labels(&k8s_name(&job.id))},
                "spec": spec
            }));
        }
    } else {
        if let Some(l) = s.config.service.listen.as_deref().filter(|l| loopback(l)) {
            notes.push(format!(
                "[service] listen = {l:?} is a loopback address: the kubelet's probe cannot reach \
                 /healthz there; in the pod, listen on 0.0.0.0:PORT (with basic_auth_file)"
            ));
        }
        let grace = s
            .config
            .service
            .shutdown_grace
            .unwrap_or(Duration::from_secs(300));
        let mut pod = pod_spec(
            json!([container(s, o, vec!["run".into()], true)?]),
            "Always",
        );
        pod["terminationGracePeriodSeconds"] = json!(secs(grace) + 30);
        docs.push(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coffer", "labels": labels("run")},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels("run")},
                "template": {"metadata": {"labels": labels("run")}, "spec": pod}
            }
        }));
    }
    let mut t = kube_header(s, o);
    for d in &docs {
        t.push_str("---\n");
        t.push_str(&serde_norway::to_string(d)?);
    }
    Ok(Generated {
        files: vec![UnitFile {
            name: if o.cronjob {
                "coffer-cronjobs.yaml"
            } else {
                "coffer.yaml"
            }
            .into(),
            text: t,
        }],
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal(e: &str) -> String {
        on_calendar(e, None).unwrap_or_else(|m| panic!("{e}: {m}"))
    }

    #[test]
    fn cron_to_on_calendar() {
        for (cron, want) in [
            ("0 2 * * *", "*-*-* 02:00:00"),
            ("*/15 * * * *", "*-*-* *:00/15:00"),
            ("0 4 * * 0", "Sun *-*-* 04:00:00"),
            ("0 4 * * 7", "Sun *-*-* 04:00:00"),
            ("0 4 * * sun", "Sun *-*-* 04:00:00"),
            ("30 9 * * 1-5", "Mon..Fri *-*-* 09:30:00"),
            ("30 9 * * MON-FRI", "Mon..Fri *-*-* 09:30:00"),
            ("0 0 * * 6,0", "Sat,Sun *-*-* 00:00:00"),
            ("0 0 * * */2", "Tue,Thu,Sat,Sun *-*-* 00:00:00"),
            ("0 0 1 */3 *", "*-01/3-01 00:00:00"),
            ("0 0 1 jan,Jul *", "*-01,07-01 00:00:00"),
            ("5,10 8-18/2 * * *", "*-*-* 08,10,12,14,16,18:05,10:00"),
            ("0-5 * * * *", "*-*-* *:00..05:00"),
            ("0,1 * * * *", "*-*-* *:00,01:00"),
            ("10/20 * ? * *", "*-*-* *:10/20:00"),
            ("0 12 15 6 *", "*-06-15 12:00:00"),
            ("* * * * *", "*-*-* *:*:00"),
        ] {
            assert_eq!(cal(cron), want, "{cron}");
        }
        assert_eq!(
            on_calendar("0 2 * * *", Some("Europe/Paris")).unwrap(),
            "*-*-* 02:00:00 Europe/Paris"
        );
    }

    #[test]
    fn cron_refusals_name_the_field() {
        for (cron, needle) in [
            (
                "0 0 1 * 1",
                "day-of-month field \"1\" and the day-of-week field \"1\"",
            ),
            ("0 0 L * *", "day-of-month field \"L\" uses L, W or #"),
            ("0 0 15W * *", "day-of-month field \"15W\""),
            ("0 0 * * 5#3", "day-of-week field \"5#3\""),
            ("0 0 * * 5L", "day-of-week field \"5L\""),
            (
                "0 22-2 * * *",
                "hour field \"22-2\": the range 22-2 runs backwards",
            ),
            ("0 0 * 13 *", "month field \"13\": 13 is out of 1-12"),
            ("x 0 * * *", "minute field \"x\""),
            ("*/0 0 * * *", "step \"0\""),
            ("0 2 * *", "5-field"),
        ] {
            let e = on_calendar(cron, None).unwrap_err();
            assert!(e.contains(needle), "{cron}: {e}");
        }
    }

    #[test]
    fn intervals_as_cron() {
        let m = |n: u64| Duration::from_secs(n * 60);
        assert_eq!(every_as_cron(m(1)).as_deref(), Some("* * * * *"));
        assert_eq!(every_as_cron(m(15)).as_deref(), Some("*/15 * * * *"));
        assert_eq!(every_as_cron(m(60)).as_deref(), Some("0 * * * *"));
        assert_eq!(every_as_cron(m(360)).as_deref(), Some("0 */6 * * *"));
        assert_eq!(every_as_cron(m(1440)).as_deref(), Some("0 0 * * *"));
        for bad in [
            m(7),
            m(90),
            m(300),
            m(2880),
            Duration::from_secs(90),
            Duration::from_secs(30),
        ] {
            assert_eq!(every_as_cron(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn words_are_escaped() {
        assert_eq!(sd_word("/usr/bin/coffer"), "/usr/bin/coffer");
        assert_eq!(sd_word("/a b/50%"), "\"/a b/50%%\"");
        assert_eq!(sd_word("$HOME"), "$$HOME");
        assert_eq!(sh_word("5%"), "'5\\%'");
        assert_eq!(sh_word("/etc/it's"), "'/etc/it'\\''s'");
        assert_eq!(sh_word("/usr/bin/coffer"), "/usr/bin/coffer");
    }

    #[test]
    fn variables_of_a_config() {
        let v = config_variables(
            "repository = \"${REPO:-/r}\"\n[sources.db]\ntype = \"postgres\"\nurl = \"${DATABASE_URL}\"\n\
             before = [\"echo ${HOOK_VAR}\"]\n[sources.x]\ntype = \"files\"\npaths = [\"$${NOT_A_VAR}\"]\n",
        );
        assert_eq!(v, ["DATABASE_URL", "HOOK_VAR", "REPO"]);
    }

    #[test]
    fn plain_secrets_are_found() {
        let t = "password = \"hunter2\"\n[s3]\nsecret_access_key = \"${S3_SECRET}\"\nsession_token = \"tok\"\n";
        assert_eq!(literal_secrets(t), ["password", "[s3] session_token"]);
        assert!(literal_secrets("password_file = \"/p\"\n").is_empty());
    }

    #[test]
    fn prune_has_a_job_for_each_repository_and_each_is_writable() {
        let text = "[service]\nprune = \"0 4 * * 0\"\n\
                    [repositories.offsite]\nlocation = \"/srv/offsite\"\nkeep = { daily = 7 }\n\
                    [repositories.vault]\nlocation = \"s3://vault/coffer\"\n";
        let c = Config::parse(text, None, &|_| None).unwrap();
        let all = jobs(&c, Path::new("/etc/coffer/coffer.toml"), &[]).unwrap();
        let ids: Vec<&str> = all.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["prune", "prune-offsite", "prune-vault"]);
        assert_eq!(all[1].args, ["--repo", "offsite", "forget", "--prune"]);
        assert_eq!(all[2].args, ["--repo", "vault", "prune"]);
        assert_eq!(all[1].when, all[0].when);
        let setup = Setup {
            config: &c,
            config_path: Path::new("/etc/coffer/coffer.toml"),
            bin: Path::new("/usr/bin/coffer"),
            variables: Vec::new(),
            default_home: None,
            literal_secrets: Vec::new(),
        };
        let h = hardening(&setup).unwrap();
        assert!(
            h.lines.contains(&"ReadWritePaths=/srv/offsite".to_string()),
            "{:?}",
            h.lines
        );
        let relative = Config::parse(
            "[repositories.offsite]\nlocation = \"offsite\"\n",
            None,
            &|_| None,
        )
        .unwrap();
        let e = hardening(&Setup {
            config: &relative,
            ..setup
        });
        assert!(e.is_err_and(|e| e.to_string().contains("relative path")));
    }

    #[test]
    fn jobs_named_and_all() {
        let text = "[service]\nprune = \"0 4 * * 0\"\ncheck = \"0 5 * * *\"\ncheck_read_data_subset = \"5%\"\n\
                    [sources.db]\ntype = \"postgres\"\nschedule = \"0 2 * * *\"\n\
                    [sources.files]\ntype = \"files\"\npaths = [\"/x\"]\n";
        let c = Config::parse(text, None, &|_| None).unwrap();
        let p = Path::new("/etc/coffer/coffer.toml");
        let all = jobs(&c, p, &[]).unwrap();
        let ids: Vec<&str> = all.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["backup-db", "prune", "check"]);
        assert_eq!(all[2].args, ["check", "--read-data-subset", "5%"]);
        let e = jobs(&c, p, &["files".into()]).unwrap_err().to_string();
        assert!(e.contains("files") && e.contains("no schedule"), "{e}");
        let e = jobs(&c, p, &["nope".into()]).unwrap_err().to_string();
        assert!(
            e.contains("nope") && e.contains("declared: db, files"),
            "{e}"
        );
        let bare = Config::parse(
            "[sources.f]\ntype = \"files\"\npaths = [\"/x\"]\n",
            None,
            &|_| None,
        )
        .unwrap();
        let e = jobs(&bare, p, &[]).unwrap_err().to_string();
        assert!(e.contains("schedules nothing"), "{e}");
        // Drills with a schedule are jobs of their own.
        let drills = Config::parse(
            "[sources.db]\ntype = \"postgres\"\nschedule = \"0 2 * * *\"\n\
             drill = { schedule = \"0 5 * * 0\" }\n\
             [sources.f]\ntype = \"files\"\npaths = [\"/x\"]\ndrill = { every = \"24h\" }\n",
            None,
            &|_| None,
        )
        .unwrap();
        let all = jobs(&drills, p, &[]).unwrap();
        let ids: Vec<&str> = all.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["backup-db", "drill-db", "drill-f"]);
        assert_eq!(all[1].args, ["drill", "--source", "db"]);
        let named = jobs(&drills, p, &["f".into(), "db".into()]).unwrap();
        let ids: Vec<&str> = named.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, ["drill-f", "backup-db", "drill-db"]);
    }
}
