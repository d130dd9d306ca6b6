//! `coffer run`, the service, as a real process: schedules, no overlap, missed runs caught
//! up from the repository, `--once`, SIGTERM within the grace (no snapshot, no lock left),
//! SIGHUP with a broken config. Schedules are seconds long; nothing asserts on time taken.

mod common;

use common::{ok, stderr, Env};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn start(env: &Env, config: &Path) -> Child {
    let mut c = env.std_cmd(assert_cmd::cargo::cargo_bin("coffer"));
    c.arg("--config")
        .arg(config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill on the pid of our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Wait for the child to exit (at most `limit`); its status and standard error.
fn wait(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status, err);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "coffer run did not exit within {limit:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `coffer --config CONFIG backup --source NAME`, which must succeed.
fn backup_source(env: &Env, config: &Path, name: &str) {
    ok(&env
        .cmd()
        .arg("--config")
        .arg(config)
        .args(["backup", "--source", name])
        .output()
        .unwrap());
}

/// SIGTERM, then the service must exit 0 within a minute; its standard error.
fn stop(child: Child) -> String {
    signal(&child, libc::SIGTERM);
    let (status, err) = wait(child, Duration::from_secs(60));
    assert!(status.success(), "{err}");
    err
}

/// The JSON bodies the receiver got.
fn bodies(hooks: &common::http::Receiver) -> Vec<serde_json::Value> {
    hooks
        .requests()
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

/// The alerts of `event` among `alerts`, each required to name `source` and to say `says`
/// in its error.
fn alerts_of<'a>(
    alerts: &'a [serde_json::Value],
    event: &str,
    source: &str,
    says: &str,
) -> Vec<&'a serde_json::Value> {
    let of: Vec<&serde_json::Value> = alerts.iter().filter(|a| a["event"] == event).collect();
    for a in &of {
        assert_eq!(a["source"], source, "{alerts:?}");
        assert!(a["error"].as_str().unwrap().contains(says), "{alerts:?}");
    }
    of
}

fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(env: &Env, source: &str) -> usize {
    env.snapshots()
        .iter()
        .filter(|s| s["source"] == source)
        .count()
}

fn locks(env: &Env) -> usize {
    fs::read_dir(env.repo.join("locks"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn sources_run_on_schedule_without_overlap_and_stop_on_sigterm() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    let log = env.path("slow.log");
    let config = env.path("coffer.toml");
    fs::write(
        &config,
        format!(
            r#"
[service]
max_parallel = 2
shutdown_grace = "30s"

[sources.fast]
type = "files"
paths = ["{data}"]
every = "1s"

[sources.slow]
type = "command"
shell = "echo start >> {log}; sleep 2.5; echo end >> {log}; echo output"
every = "1s"
"#,
            data = data.display(),
            log = log.display()
        ),
    )
    .unwrap();
    let child = start(&env, &config);
    until(
        "three snapshots of each source",
        Duration::from_secs(60),
        || count(&env, "fast") >= 3 && count(&env, "slow") >= 3,
    );
    signal(&child, libc::SIGTERM);
    let (status, err) = wait(child, Duration::from_secs(60));
    assert!(status.success(), "{status:?}\n{err}");
    // The slow source never ran twice at once: its log alternates start, end.
    let lines: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert!(lines.len() >= 6, "{lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, if i % 2 == 0 { "start" } else { "end" }, "{lines:?}");
    }
    assert!(
        err.contains("backup slow: skipped: the previous run is still going"),
        "{err}"
    );
    assert!(err.contains("stopping: no new runs"), "{err}");
    assert_eq!(locks(&env), 0, "no lock is left behind");
    // Each snapshot is a run of its own, recorded in the history.
    let runs = fs::read_dir(env.repo.join("runs")).unwrap().count();
    assert!(runs >= 6, "{runs} run records");
}

#[test]
fn sigterm_past_the_grace_stops_a_long_backup_without_a_snapshot_or_lock() {
    let env = Env::new();
    env.init();
    let marker = env.path("started");
    let config = env.path("coffer.toml");
    fs::write(
        &config,
        format!(
            r#"
[service]
shutdown_grace = "1s"

[sources.long]
type = "command"
shell = "touch {m}; echo partial; sleep 60; echo rest"
every = "1h"
"#,
            m = marker.display()
        ),
    )
    .unwrap();
    let child = start(&env, &config);
    until("the long backup to start", Duration::from_secs(60), || {
        marker.exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGTERM);
    let (status, err) = wait(child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{err}");
    assert!(err.contains("shutdown grace of 1s passed"), "{err}");
    assert!(err.contains("backup long: FAILED"), "{err}");
    assert_eq!(
        count(&env, "long"),
        0,
        "no snapshot of the interrupted backup"
    );
    assert_eq!(locks(&env), 0, "no lock is left behind");
}

#[test]
fn missed_runs_are_caught_up_from_the_repository_and_once_runs_what_is_due() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    let config = env.path("coffer.toml");
    // Yearly on 1 January: `missed` last succeeded in 2020 (a scheduled time has passed
    // since), `current` just now (its next time is next January), `never` never.
    fs::write(
        &config,
        format!(
            r#"
[sources.missed]
type = "files"
paths = ["{d}"]
schedule = "0 0 1 1 *"
timezone = "UTC"

[sources.current]
type = "files"
paths = ["{d}"]
schedule = "0 0 1 1 *"

[sources.never]
type = "files"
paths = ["{d}"]
schedule = "0 0 1 1 *"

[sources.unscheduled]
type = "files"
paths = ["{d}"]
"#,
            d = data.display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    ok(&env
        .cmd()
        .args([
            "--config",
            cfg,
            "backup",
            "--source",
            "missed",
            "--time",
            "2020-06-01T00:00:00Z",
        ])
        .output()
        .unwrap());
    ok(&env
        .cmd()
        .args(["--config", cfg, "backup", "--source", "current"])
        .output()
        .unwrap());
    let out = env
        .cmd()
        .args(["--config", cfg, "run", "--once", "--json"])
        .output()
        .unwrap();
    let said = stderr(&out);
    assert!(out.status.success(), "{said}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ran: Vec<&str> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["job"].as_str().unwrap())
        .collect();
    ran.sort();
    assert_eq!(ran, ["backup missed", "backup never"], "{said}");
    assert_eq!(count(&env, "missed"), 2);
    assert_eq!(count(&env, "current"), 1);
    assert_eq!(count(&env, "unscheduled"), 0);
    // Now nothing is due.
    let out = env
        .cmd()
        .args(["--config", cfg, "run", "--once"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing is due"), "{}", stderr(&out));
    // A failing due job makes --once exit 8.
    fs::write(
        &config,
        "[sources.bad]\ntype = \"files\"\npaths = [\"/nonexistent-coffer-service-test\"]\nevery = \"1h\"\n",
    )
    .unwrap();
    let out = env
        .cmd()
        .args(["--config", cfg, "run", "--once"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
}

#[test]
fn sighup_with_a_broken_config_keeps_the_old_one() {
    let env = Env::new();
    env.init();
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    let config = env.path("coffer.toml");
    let good = format!(
        "[sources.a]\ntype = \"files\"\npaths = [\"{}\"]\nevery = \"1s\"\n",
        data.display()
    );
    fs::write(&config, &good).unwrap();
    let child = start(&env, &config);
    until("a first snapshot", Duration::from_secs(60), || {
        count(&env, "a") >= 1
    });
    fs::write(&config, "[sources.a]\ntype = \"files\"\npathz = 1\n").unwrap();
    signal(&child, libc::SIGHUP);
    let before = count(&env, "a");
    until(
        "more snapshots after the failed reload",
        Duration::from_secs(60),
        || count(&env, "a") >= before + 2,
    );
    // A good config is taken: a second source joins.
    fs::write(
        &config,
        format!(
            "{good}[sources.b]\ntype = \"files\"\npaths = [\"{}\"]\nevery = \"1s\"\n",
            data.display()
        ),
    )
    .unwrap();
    signal(&child, libc::SIGHUP);
    until(
        "a snapshot of the new source",
        Duration::from_secs(60),
        || count(&env, "b") >= 1,
    );
    let err = stop(child);
    assert!(
        err.contains("the config was not reloaded, the old one keeps running")
            && err.contains("pathz"),
        "{err}"
    );
    assert!(err.contains("reloaded the config: 2 job(s)"), "{err}");
}

#[test]
fn a_failing_source_alerts_once_and_then_recovers() {
    let hooks = common::http::Receiver::start();
    let env = Env::new();
    env.init();
    let data = env.path("data");
    let config = env.path("coffer.toml");
    fs::write(
        &config,
        format!(
            "[alerts]\nwebhook = \"{url}/hook/secret-token\"\n[sources.a]\ntype = \"files\"\npaths = [\"{d}\"]\nevery = \"1s\"\nhealthcheck_url = \"{url}/ping/a\"\n",
            url = hooks.url,
            d = data.display()
        ),
    )
    .unwrap();
    let child = start(&env, &config);
    let events = || -> Vec<serde_json::Value> {
        hooks
            .requests()
            .iter()
            .filter(|r| r.path == "/hook/secret-token")
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect()
    };
    let fails = || {
        hooks
            .requests()
            .iter()
            .filter(|r| r.path == "/ping/a/fail")
            .count()
    };
    until("three failed runs", Duration::from_secs(60), || {
        fails() >= 3
    });
    let e = events();
    assert_eq!(e.len(), 1, "one alert for a failure that lasts: {e:?}");
    assert_eq!(e[0]["event"], "backup_failed");
    assert_eq!(e[0]["source"], "a");
    assert!(e[0]["error"].as_str().unwrap().contains("data"), "{e:?}");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    until("the recovery alert", Duration::from_secs(60), || {
        events().len() >= 2
    });
    until("a success ping", Duration::from_secs(60), || {
        hooks
            .requests()
            .iter()
            .any(|r| r.path == "/ping/a" && r.method == "POST")
    });
    let err = stop(child);
    let e = events();
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(e[1]["event"], "recovered");
    assert!(hooks.requests().iter().any(|r| r.path == "/ping/a/start"));
    assert!(
        !err.contains("secret-token"),
        "the webhook's secret is not logged:\n{err}"
    );
}

#[test]
fn nothing_scheduled_is_a_clear_error() {
    let env = Env::new();
    env.init();
    let config = env.path("coffer.toml");
    fs::write(&config, "[sources.a]\ntype = \"files\"\npaths = [\"/x\"]\n").unwrap();
    let out = env
        .cmd()
        .arg("--config")
        .arg(&config)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nothing to run"), "{}", stderr(&out));
}

/// `GET` a path of the service's listener, with basic authentication when given.
fn get(port: u16, path: &str, auth: Option<(&str, &str)>) -> reqwest::blocking::Response {
    let c = reqwest::blocking::Client::new();
    let mut r = c.get(format!("http://127.0.0.1:{port}{path}"));
    if let Some((u, p)) = auth {
        r = r.basic_auth(u, Some(p));
    }
    r.send().unwrap()
}

/// Whether the listener answers `/healthz` (without authentication).
fn healthy(port: u16) -> bool {
    reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz"))
        .is_ok_and(|r| r.status() == 200)
}

/// The samples of `/metrics`, parsed as Prometheus text, by name and `source` (or `job`)
/// label; `repository` (alone, or after the source: `db/offsite`) for those that have one.
fn scrape(port: u16, auth: Option<(&str, &str)>) -> BTreeMap<(String, String), f64> {
    let r = get(port, "/metrics", auth);
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parses as Prometheus text");
    // Every family has its HELP and TYPE.
    for s in &scrape.samples {
        assert!(
            scrape.docs.contains_key(&s.metric),
            "{} has no HELP",
            s.metric
        );
        assert!(
            text.contains(&format!("# TYPE {} ", s.metric)),
            "{} has no TYPE",
            s.metric
        );
    }
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let label = match (s.labels.get("source"), s.labels.get("repository")) {
                (Some(source), Some(repository)) => format!("{source}/{repository}"),
                (Some(source), None) => source.to_string(),
                (None, Some(repository)) => repository.to_string(),
                (None, None) => s.labels.get("job").unwrap_or("").to_string(),
            };
            let v = match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("{}: unexpected {other:?}", s.metric),
            };
            ((s.metric, label), v)
        })
        .collect()
}

fn metric(m: &BTreeMap<(String, String), f64>, name: &str, label: &str) -> Option<f64> {
    m.get(&(name.to_string(), label.to_string())).copied()
}

/// The config of the listener tests: `files` succeeds, `broken` fails, `idle` is not
/// scheduled (and never backed up).
fn listener_config(env: &Env, port: u16, every: &str, extra: &str) -> std::path::PathBuf {
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"some data").unwrap();
    let config = env.path("coffer.toml");
    fs::write(
        &config,
        format!(
            r#"
[service]
listen = "127.0.0.1:{port}"
{extra}

[sources.files]
type = "files"
paths = ["{data}"]
every = "{every}"
rpo = "1h"

[sources.broken]
type = "command"
shell = "echo the disk is on fire >&2; exit 3"
every = "1h"

[sources.idle]
type = "files"
paths = ["{data}"]
rpo = "2h"
"#,
            data = data.display(),
        ),
    )
    .unwrap();
    config
}

#[test]
fn metrics_and_api_status_follow_the_runs_and_ask_for_basic_auth() {
    let env = Env::new();
    env.init();
    let port = common::free_port();
    let auth_file = env.path("auth");
    fs::write(&auth_file, "admin:s3cret\n").unwrap();
    fs::set_permissions(
        &auth_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = listener_config(
        &env,
        port,
        "1h",
        &format!("basic_auth_file = \"{}\"", auth_file.display()),
    );
    let auth = Some(("admin", "s3cret"));
    let child = start(&env, &config);
    until("/healthz", Duration::from_secs(60), || healthy(port));
    // Everything but /healthz asks for the password.
    for path in ["/metrics", "/api/status", "/"] {
        let r = get(port, path, None);
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        assert_eq!(get(port, path, Some(("admin", "wrong"))).status(), 401);
    }
    until(
        "both scheduled sources ran",
        Duration::from_secs(60),
        || {
            let m = scrape(port, auth);
            metric(&m, "coffer_last_run_timestamp_seconds", "files").is_some()
                && metric(&m, "coffer_last_run_timestamp_seconds", "broken").is_some()
        },
    );
    let m = scrape(port, auth);
    let snaps = env.snapshots();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let snap = &snaps[0];
    let snap_time = chrono::DateTime::parse_from_rfc3339(snap["time"].as_str().unwrap()).unwrap();
    let at = |n: &str, l: &str| metric(&m, n, l);
    assert_eq!(at("coffer_snapshots", "files"), Some(1.0));
    assert_eq!(at("coffer_snapshots", "broken"), Some(0.0));
    assert_eq!(at("coffer_snapshots", "idle"), Some(0.0));
    assert_eq!(at("coffer_last_run_success", "files"), Some(1.0));
    assert_eq!(at("coffer_last_run_success", "broken"), Some(0.0));
    assert_eq!(at("coffer_last_run_success", "idle"), None, "never ran");
    assert_eq!(at("coffer_backup_failures_total", "broken"), Some(1.0));
    assert_eq!(at("coffer_backup_failures_total", "files"), Some(0.0));
    assert_eq!(at("coffer_skipped_runs_total", "files"), Some(0.0));
    assert_eq!(
        at("coffer_last_success_timestamp_seconds", "files"),
        Some(snap_time.timestamp_millis() as f64 / 1000.0)
    );
    assert_eq!(
        at("coffer_backup_read_bytes", "files"),
        Some(snap["size"].as_f64().unwrap())
    );
    assert!(at("coffer_backup_added_bytes", "files").unwrap() > 0.0);
    assert!(at("coffer_backup_duration_seconds", "files").unwrap() >= 0.0);
    assert_eq!(at("coffer_rpo_seconds", "files"), Some(3600.0));
    assert_eq!(at("coffer_rpo_seconds", "idle"), Some(7200.0));
    assert_eq!(at("coffer_rpo_seconds", "broken"), None, "no rpo");
    assert_eq!(
        at("coffer_repository_stored_bytes", ""),
        snap["summary"]["bytes_stored"].as_f64(),
        "the one backup stored all of it"
    );
    assert_eq!(at("coffer_alerts_sent_total", ""), Some(0.0));
    assert_eq!(at("coffer_alerts_failed_total", ""), Some(0.0));
    assert_eq!(at("coffer_check_last_success_timestamp_seconds", ""), None);
    assert_eq!(at("coffer_job_running", "backup files"), Some(0.0));
    let next = at("coffer_job_next_run_timestamp_seconds", "backup files").unwrap();
    assert!(
        next > snap_time.timestamp() as f64 + 3000.0,
        "in about an hour"
    );

    // /api/status: coffer status --json, and the jobs.
    let r = get(port, "/api/status", auth);
    assert_eq!(r.status(), 200);
    let s: serde_json::Value = serde_json::from_str(&r.text().unwrap()).unwrap();
    assert_eq!(s["breached"], 2, "{s:#}");
    let by = |name: &str| {
        s["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["source"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by("files")["state"], "ok");
    assert_eq!(by("files")["last_success"]["snapshot"], snap["id"]);
    assert_eq!(by("broken")["state"], "breached");
    assert!(by("broken")["last_failure"]["error"]
        .as_str()
        .unwrap()
        .contains("the disk is on fire"));
    assert!(by("idle")["last_success"].is_null());
    let jobs = s["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0]["job"], "backup files");
    assert!(jobs[0]["next_run"].is_string());
    assert_eq!(jobs[1]["last_run"]["status"], "failed");

    // A restart reads the repository once: the counts and the last runs come back from it,
    // and `files`, backed up a moment ago, is not run again.
    let err = stop(child);
    assert!(!err.contains("s3cret"));
    let child = start(&env, &config);
    until("broken ran again", Duration::from_secs(60), || {
        healthy(port)
            && metric(
                &scrape(port, auth),
                "coffer_backup_failures_total",
                "broken",
            ) == Some(1.0)
    });
    let m2 = scrape(port, auth);
    for (name, source) in [
        ("coffer_snapshots", "files"),
        ("coffer_last_run_success", "files"),
        ("coffer_last_success_timestamp_seconds", "files"),
        ("coffer_backup_read_bytes", "files"),
        ("coffer_repository_stored_bytes", ""),
    ] {
        assert_eq!(
            metric(&m2, name, source),
            metric(&m, name, source),
            "{name}"
        );
    }
    assert_eq!(
        metric(&m2, "coffer_backup_failures_total", "files"),
        Some(0.0)
    );
    assert_eq!(count(&env, "files"), 1, "files was not backed up again");
    stop(child);
}

#[test]
fn the_status_page_in_chromium_shows_the_sources_and_their_state() {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is not installed: scripts/test installs it (apt-get install chromium)");
    let env = Env::new();
    env.init();
    let port = common::free_port();
    let config = listener_config(&env, port, "1s", "");
    let child = start(&env, &config);
    until(
        "three runs of files and one of broken",
        Duration::from_secs(60),
        || {
            healthy(port) && {
                let m = scrape(port, None);
                metric(&m, "coffer_snapshots", "files") >= Some(3.0)
                    && metric(&m, "coffer_backup_failures_total", "broken") == Some(1.0)
            }
        },
    );
    let url = format!("http://127.0.0.1:{port}/");
    let browse = |args: &[&str]| -> String {
        let mut c = std::process::Command::new(chromium);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,900",
        ])
        .arg(format!(
            "--user-data-dir={}",
            env.path("chromium").display()
        ))
        .args(args)
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut child = c.spawn().unwrap();
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(90) {
                let _ = child.kill();
                panic!("chromium did not finish within 90 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "chromium failed: {:?}", out.status);
        String::from_utf8(out.stdout).unwrap()
    };
    let row_in = |dom: &str, source: &str| -> String {
        let start = dom
            .find(&format!("<tr data-source=\"{source}\">"))
            .unwrap_or_else(|| panic!("no row for {source}:\n{dom}"));
        let end = dom[start..].find("</tr>").unwrap();
        dom[start..start + end].to_string()
    };
    // `files` runs every second: a page rendered while one of its runs is in flight shows
    // RUNNING, which is right; take the page again (a few times at most) for its resting
    // state.
    let mut dom = browse(&["--dump-dom"]);
    for _ in 0..10 {
        if !row_in(&dom, "files").contains(">RUNNING<") {
            break;
        }
        dom = browse(&["--dump-dom"]);
    }
    let row = |source: &str| row_in(&dom, source);
    let files = row("files");
    assert!(files.contains(">OK<"), "{files}");
    assert!(files.contains("<svg"), "a chart of its runs: {files}");
    let snaps = env.snapshots();
    let newest = snaps
        .iter()
        .filter(|s| s["source"] == "files")
        .max_by_key(|s| s["time"].as_str().unwrap().to_string())
        .unwrap();
    let broken = row("broken");
    assert!(broken.contains(">BREACHED<"), "{broken}");
    assert!(broken.contains("the disk is on fire"), "{broken}");
    let idle = row("idle");
    assert!(
        idle.contains(">BREACHED<") && idle.contains("never") && idle.contains("not scheduled"),
        "{idle}"
    );
    assert!(dom.contains("1 of 3 source(s) within their RPO"), "{dom}");
    assert!(
        dom.contains("backup broken") && dom.contains(">failed<"),
        "{dom}"
    );
    assert!(dom.contains("http-equiv=\"refresh\""), "it reloads itself");
    assert!(!dom.contains("<script"), "no JavaScript");
    // A snapshot of files that the page lists is in the repository (the page may be a run
    // behind the newest).
    let listed: Vec<&serde_json::Value> = snaps
        .iter()
        .filter(|s| dom.contains(&s["short_id"].as_str().unwrap()[..8]))
        .collect();
    assert!(
        !listed.is_empty(),
        "no snapshot of the repository on the page"
    );
    assert!(newest["short_id"].is_string());

    // The screenshot, kept as an artifact of the test run.
    let dir = std::env::var_os("COFFER_TEST_ARTIFACTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts"));
    fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("status-page.png");
    let _ = fs::remove_file(&shot);
    browse(&[&format!("--screenshot={}", shot.display())]);
    let png = fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
    stop(child);
}

#[test]
fn an_rpo_breach_alerts_without_any_run() {
    let hooks = common::http::Receiver::start();
    let env = Env::new();
    env.init();
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    let config = env.path("coffer.toml");
    fs::write(
        &config,
        format!(
            "[alerts]\nwebhook = \"{url}/hook\"\n[sources.a]\ntype = \"files\"\npaths = [\"{d}\"]\nevery = \"1h\"\nrpo = \"3s\"\n",
            url = hooks.url,
            d = data.display()
        ),
    )
    .unwrap();
    // A fresh backup: the service has nothing to run for an hour.
    backup_source(&env, &config, "a");
    let child = start(&env, &config);
    until("the rpo_breached alert", Duration::from_secs(60), || {
        !hooks.requests().is_empty()
    });
    let err = stop(child);
    let reqs = hooks.requests();
    assert_eq!(reqs.len(), 1, "one alert: {reqs:?}");
    let body: serde_json::Value = serde_json::from_str(&reqs[0].body).unwrap();
    assert_eq!(body["event"], "rpo_breached");
    assert_eq!(body["source"], "a");
    assert_eq!(count(&env, "a"), 1, "no run happened");
    assert!(!err.contains("backup a: started"), "{err}");
}

#[test]
fn a_gap_in_the_wal_archive_alerts_and_shows_in_the_metrics() {
    use common::pg::ArchiveRepo;
    let hooks = common::http::Receiver::start();
    let a = ArchiveRepo::new("wal secret\n", &[]);
    let pg = a.start_archiving(&[]);
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coffer.toml");
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    fs::write(
        &config,
        format!(
            r#"
[service]
listen = "127.0.0.1:{port}"
wal_verify = "0 0 1 1 *"

[alerts]
webhook = "{url}/hook"

[sources.db]
type = "postgres"
mode = "physical"
url = {db}
pgdata = {pgdata}
every = "1h"
rpo = "1h"
"#,
            url = hooks.url,
            db = quote(&pg.url("postgres")),
            pgdata = quote(&pg.data_dir().display().to_string()),
        ),
    )
    .unwrap();
    a.cmd()
        .arg("--config")
        .arg(&config)
        .args(["backup", "--source", "db"])
        .assert()
        .success();
    pg.psql("postgres", "CREATE TABLE t (x int)");
    for i in 0..3 {
        pg.psql("postgres", &format!("INSERT INTO t VALUES ({i})"));
        pg.archive_all();
    }
    // Lose the second-newest segment: recovery from the backup now stops before it.
    let mut segments: Vec<std::path::PathBuf> = common::list_files(&a.repo.join("wal"))
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    fs::remove_file(&segments[segments.len() - 2]).unwrap();

    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("coffer"));
    common::clean_env(&mut c);
    c.envs(a.vars())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    until("the wal_lagging alert", Duration::from_secs(90), || {
        hooks
            .requests()
            .iter()
            .any(|r| r.body.contains("wal_lagging"))
    });
    // The wal-verify job (never run before, so due at start) fails on the gap.
    until("the wal-verify run", Duration::from_secs(60), || {
        healthy(port) && {
            let s: serde_json::Value =
                serde_json::from_str(&get(port, "/api/status", None).text().unwrap()).unwrap();
            s["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["job"] == "wal-verify" && j["last_run"]["status"] == "failed")
        }
    });
    let m = scrape(port, None);
    assert_eq!(metric(&m, "coffer_wal_gaps", "db"), Some(1.0));
    let window = metric(&m, "coffer_wal_recoverable_window_seconds", "db").unwrap();
    assert!(window >= 0.0, "{window}");
    let newest = metric(&m, "coffer_wal_newest_segment_timestamp_seconds", "db").unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        newest <= now + 1.0 && newest > now - 600.0,
        "{newest} vs {now}"
    );
    assert_eq!(metric(&m, "coffer_snapshots", "db"), Some(1.0));
    let s: serde_json::Value =
        serde_json::from_str(&get(port, "/api/status", None).text().unwrap()).unwrap();
    assert_eq!(s["sources"][0]["recoverable"]["ok"], false, "{s:#}");
    stop(child);
    let alerts = bodies(&hooks);
    let lagging = alerts_of(&alerts, "wal_lagging", "db", "1 gap(s)");
    assert_eq!(lagging.len(), 1, "one alert while it lasts: {alerts:?}");
    assert!(
        !alerts.iter().any(|a| a["event"] == "rpo_breached"),
        "{alerts:?}"
    );
}

#[test]
fn a_scheduled_drill_that_fails_alerts_and_shows_in_the_metrics() {
    let hooks = common::http::Receiver::start();
    let env = Env::new();
    env.init();
    let data = env.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    let port = common::free_port();
    let config = env.path("coffer.toml");
    fs::write(
        &config,
        format!(
            "[service]\nlisten = \"127.0.0.1:{port}\"\n[alerts]\nwebhook = \"{url}/hook\"\n\
             [sources.up]\ntype = \"files\"\npaths = [\"{d}\"]\nevery = \"1h\"\n\
             drill = {{ every = \"1s\", checks = [\"{d}/missing\"] }}\n",
            url = hooks.url,
            d = data.display()
        ),
    )
    .unwrap();
    backup_source(&env, &config, "up");
    let child = start(&env, &config);
    until("the drill_failed alert", Duration::from_secs(60), || {
        hooks
            .requests()
            .iter()
            .any(|r| r.body.contains("drill_failed"))
    });
    until("a few drills", Duration::from_secs(60), || {
        healthy(port)
            && get(port, "/api/status", None)
                .text()
                .unwrap()
                .contains("\"passed\": false")
    });
    let m = scrape(port, None);
    assert_eq!(metric(&m, "coffer_drill_last_success", "up"), Some(0.0));
    assert!(metric(&m, "coffer_drill_rto_seconds", "up").unwrap() > 0.0);
    assert_eq!(
        metric(&m, "coffer_drill_last_success_timestamp_seconds", "up"),
        None,
        "no drill ever passed"
    );
    assert_eq!(
        metric(&m, "coffer_snapshots", "up"),
        Some(1.0),
        "drills add no snapshot"
    );
    let page = get(port, "/", None).text().unwrap();
    assert!(page.contains(">FAILED</span>"), "{page}");
    let err = stop(child);
    let alerts = bodies(&hooks);
    let drill = alerts_of(&alerts, "drill_failed", "up", "missing");
    assert_eq!(drill.len(), 1, "once while it lasts: {alerts:?}");
    assert!(
        !alerts.iter().any(|a| a["event"] == "backup_failed"),
        "a drill is not a backup: {alerts:?}"
    );
    assert!(err.contains("drill up: FAILED"), "{err}");
}

/// A config with the Env's repository as the primary, `[repositories.offsite]` (with its own
/// passphrase, created like the primary) and `extra`.
fn with_offsite(env: &Env, offsite_keep: &str, extra: &str) -> std::path::PathBuf {
    let quote = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    fs::write(env.path("offsite-pw"), "offsite secret\n").unwrap();
    let config = env.path("coffer.toml");
    fs::write(
        &config,
        format!(
            "repository = {repo}\n{extra}\n[repositories.offsite]\nlocation = {offsite}\n\
             password_file = \"offsite-pw\"\n{offsite_keep}\n",
            repo = quote(&env.repo),
            offsite = quote(&env.path("offsite")),
        ),
    )
    .unwrap();
    coffer(
        env,
        &config,
        &["--repo", "offsite", "init", "--like", "primary"],
    );
    config
}

/// `coffer --config CONFIG ARGS`, which must succeed; its standard output.
fn coffer(env: &Env, config: &Path, args: &[&str]) -> String {
    ok(&env
        .cmd()
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap())
}

fn snapshots_in(env: &Env, config: &Path, repo: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&coffer(
        env,
        config,
        &["--repo", repo, "snapshots", "--json"],
    ))
    .unwrap()
}

#[test]
fn prune_runs_in_every_repository_with_its_keep_and_one_failing_fails_the_job() {
    let env = Env::new();
    env.init();
    let port = common::free_port();
    let gone = env.path("gone");
    let config = with_offsite(
        &env,
        "keep = { last = 1 }",
        &format!(
            "[service]\nlisten = \"127.0.0.1:{port}\"\nprune = \"0 0 1 1 *\"\n\
             [repositories.gone]\nlocation = {gone:?}\n\
             [sources.noise]\ntype = \"command\"\nshell = \"head -c 3000000 /dev/urandom\"\n"
        ),
    );
    // Two snapshots in each repository (the copy applies no keep); the primary forgets one
    // without pruning it.
    backup_source(&env, &config, "noise");
    backup_source(&env, &config, "noise");
    coffer(&env, &config, &["copy", "--to", "offsite"]);
    assert_eq!(snapshots_in(&env, &config, "offsite").len(), 2);
    coffer(&env, &config, &["forget", "--keep-last", "1"]);
    let offsite = env.path("offsite");
    let packs = || {
        (
            common::list_files(&env.repo.join("data")).len(),
            common::list_files(&offsite.join("data")).len(),
        )
    };
    let before = packs();

    // Prune has never run: it runs at start.
    let child = start(&env, &config);
    until(
        "the prune of every repository",
        Duration::from_secs(60),
        || {
            healthy(port)
                && metric(&scrape(port, None), "coffer_prune_last_run_success", "gone").is_some()
        },
    );
    let m = scrape(port, None);
    assert_eq!(
        metric(&m, "coffer_prune_last_run_success", "primary"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "coffer_prune_last_run_success", "offsite"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "coffer_prune_last_run_success", "gone"),
        Some(0.0)
    );
    for (repo, pruned) in [("primary", true), ("offsite", true), ("gone", false)] {
        assert_eq!(
            metric(&m, "coffer_prune_last_success_timestamp_seconds", repo).is_some(),
            pruned,
            "{repo}"
        );
    }
    let s: serde_json::Value =
        serde_json::from_str(&get(port, "/api/status", None).text().unwrap()).unwrap();
    let prune = s["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "prune")
        .unwrap()
        .clone();
    assert_eq!(prune["last_run"]["status"], "failed", "{prune:#}");
    let error = prune["last_run"]["error"].as_str().unwrap();
    assert!(
        error.contains("1 of 3 repositories (gone: ") && !error.contains("offsite:"),
        "{error}"
    );
    let err = stop(child);
    assert!(err.contains("prune primary: ok"), "{err}");
    assert!(
        err.contains("prune offsite: ok, its keep removed 1 snapshot(s)"),
        "{err}"
    );
    assert!(err.contains("prune gone: FAILED"), "{err}");

    // The offsite's keep ran, then each repository lost the packs of its forgotten snapshot,
    // and no lock is left in either.
    assert_eq!(snapshots_in(&env, &config, "offsite").len(), 1);
    assert_eq!(env.snapshots().len(), 1);
    let after = packs();
    assert!(
        after.0 < before.0 && after.1 < before.1,
        "{before:?} -> {after:?}"
    );
    assert_eq!(locks(&env), 0);
    assert_eq!(fs::read_dir(offsite.join("locks")).unwrap().count(), 0);
    coffer(
        &env,
        &config,
        &["--repo", "offsite", "check", "--read-data"],
    );
    coffer(&env, &config, &["check", "--read-data"]);
    // The failed job is due again at the next start.
    let out = env
        .cmd()
        .arg("--config")
        .arg(&config)
        .args(["run", "--once", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["runs"][0]["job"], "prune", "{r:#}");
}

#[test]
fn copy_to_in_the_service_shows_each_copy_in_status_and_metrics_and_applies_its_keep() {
    let env = Env::new();
    env.init();
    let port = common::free_port();
    let config = with_offsite(
        &env,
        "keep = { last = 1 }",
        &format!(
            "[service]\nlisten = \"127.0.0.1:{port}\"\n\
             [sources.noise]\ntype = \"command\"\nshell = \"head -c 100000 /dev/urandom\"\n\
             schedule = \"0 0 1 1 *\"\nrpo = \"1h\"\ncopy_to = [\"offsite\"]\n"
        ),
    );
    // A backup of 2020, copied: the service misses a run since, and makes it at once.
    coffer(
        &env,
        &config,
        &[
            "backup",
            "--source",
            "noise",
            "--time",
            "2020-06-01T00:00:00Z",
        ],
    );
    let old = snapshots_in(&env, &config, "offsite");
    assert_eq!(old.len(), 1);
    let child = start(&env, &config);
    until("the service's backup", Duration::from_secs(60), || {
        healthy(port) && metric(&scrape(port, None), "coffer_snapshots", "noise") == Some(2.0)
    });
    let m = scrape(port, None);
    let newest = metric(&m, "coffer_last_success_timestamp_seconds", "noise").unwrap();
    assert!(newest > 1.7e9, "{newest}");
    assert_eq!(
        metric(
            &m,
            "coffer_copy_last_success_timestamp_seconds",
            "noise/offsite"
        ),
        Some(newest),
        "the copy of the newest snapshot"
    );
    assert_eq!(metric(&m, "coffer_copy_behind", "noise/offsite"), Some(0.0));
    let s: serde_json::Value =
        serde_json::from_str(&get(port, "/api/status", None).text().unwrap()).unwrap();
    let src = &s["sources"][0];
    let primary_id = src["last_success"]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(src["copies"][0]["repository"], "offsite", "{s:#}");
    assert_eq!(src["copies"][0]["state"], "ok", "{s:#}");
    assert_eq!(src["copies"][0]["newest"]["original"], primary_id.as_str());
    assert_eq!(s["copies_behind"], 0);
    let page = get(port, "/", None).text().unwrap();
    assert!(
        page.contains("<span data-repository=\"offsite\">offsite: <span class=\"ok\">OK</span>"),
        "{page}"
    );
    stop(child);

    // The offsite's keep ran after the service's copy: only that copy is left there.
    let offsite = snapshots_in(&env, &config, "offsite");
    assert_eq!(offsite.len(), 1, "{offsite:#?}");
    assert_eq!(offsite[0]["original"], primary_id.as_str());
    assert_eq!(env.snapshots().len(), 2);
    // `coffer status` reads the offsite repository itself and says the same.
    let out = env
        .cmd()
        .arg("--config")
        .arg(&config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let copy = &st["sources"][0]["copies"][0];
    assert_eq!(copy["state"], "ok", "{st:#}");
    assert_eq!(copy["newest"]["original"], primary_id.as_str());
    assert!(copy["newest"]["age_secs"].as_u64().unwrap() < 3600);
}

#[test]
fn a_copy_that_falls_behind_alerts_naming_its_repository_and_recovers() {
    let hooks = common::http::Receiver::start();
    let env = Env::new();
    env.init();
    let port = common::free_port();
    let offsite = env.path("offsite");
    let away = env.path("offsite.away");
    let arm = env.path("arm");
    // A backup after `arm` is made moves the offsite repository away (once): its copy fails.
    let config = with_offsite(
        &env,
        "",
        &format!(
            "[service]\nlisten = \"127.0.0.1:{port}\"\n[alerts]\nwebhook = \"{url}/hook\"\n\
             [sources.noise]\ntype = \"command\"\nshell = \"head -c 100000 /dev/urandom\"\n\
             every = \"1s\"\nrpo = \"4s\"\ncopy_to = [\"offsite\"]\n\
             before = [\"if test -e {arm}; then mv {o} {a} && rm {arm}; fi\"]\n",
            url = hooks.url,
            arm = arm.display(),
            o = offsite.display(),
            a = away.display(),
        ),
    );
    // A first backup, copied; the service's first backup is not.
    backup_source(&env, &config, "noise");
    assert_eq!(snapshots_in(&env, &config, "offsite").len(), 1);
    fs::write(&arm, "").unwrap();
    let child = start(&env, &config);
    let copy_alerts = || -> Vec<serde_json::Value> {
        bodies(&hooks)
            .into_iter()
            .filter(|b| b["event"] == "copy_behind" || b["status"] == "copy_behind")
            .collect()
    };
    until("the copy_behind alert", Duration::from_secs(90), || {
        !copy_alerts().is_empty()
    });
    let m = scrape(port, None);
    assert_eq!(metric(&m, "coffer_copy_behind", "noise/offsite"), Some(1.0));
    let s: serde_json::Value =
        serde_json::from_str(&get(port, "/api/status", None).text().unwrap()).unwrap();
    assert_eq!(s["sources"][0]["copies"][0]["state"], "behind", "{s:#}");
    assert_eq!(s["copies_behind"], 1, "{s:#}");
    // The offsite comes back: the next backup's copy ends it.
    fs::rename(&away, &offsite).unwrap();
    until("the recovery", Duration::from_secs(90), || {
        copy_alerts().len() >= 2
    });
    let err = stop(child);
    let alerts = bodies(&hooks);
    let copies = copy_alerts();
    assert_eq!(
        copies.len(),
        2,
        "one alert while it lasts, one recovery: {alerts:#?}"
    );
    let a = &copies[0];
    assert_eq!(
        (&a["event"], &a["status"]),
        (&"copy_behind".into(), &"alert".into())
    );
    assert_eq!(a["source"], "noise");
    assert_eq!(a["repository"], "offsite");
    let e = a["error"].as_str().unwrap();
    assert!(
        e.contains("the newest copy in offsite is") && e.contains("is not there"),
        "{e}"
    );
    assert_eq!(copies[1]["event"], "recovered");
    assert_eq!(copies[1]["repository"], "offsite");
    // The copies' failures failed the backups too; those events have no repository.
    let failed = alerts_of(&alerts, "backup_failed", "noise", "copy to offsite");
    assert_eq!(failed.len(), 1, "{alerts:#?}");
    assert!(failed[0].get("repository").is_none(), "{alerts:#?}");
    assert!(err.contains("copy to offsite"), "{err}");
}

#[test]
fn the_service_drains_the_wal_spool_of_an_async_repository_and_alerts_while_it_waits() {
    let hooks = common::http::Receiver::start();
    let env = Env::new();
    env.init();
    let port = common::free_port();
    let offsite = env.path("offsite");
    let away = env.path("offsite.away");
    let spool = env.path("spool").join("offsite");
    let config = with_offsite(
        &env,
        "wal = \"async\"",
        &format!(
            "wal_spool = \"spool\"\n[service]\nlisten = \"127.0.0.1:{port}\"\nwal_copy = \"1s\"\n\
             [alerts]\nwebhook = \"{url}/hook\"\n\
             [sources.db]\ntype = \"postgres\"\nmode = \"physical\"\ncopy_to = [\"offsite\"]\n\
             rpo = \"1s\"\n",
            url = hooks.url,
        ),
    );
    // Two segments archived while offsite is away: both wait in the spool.
    let wal = env.path("pg_wal");
    fs::create_dir_all(&wal).unwrap();
    let names = ["000000010000000000000001", "000000010000000000000002"];
    for n in names {
        fs::write(wal.join(n), common::pg::fake_segment(42)).unwrap();
    }
    fs::rename(&offsite, &away).unwrap();
    for n in names {
        let p = wal.join(n);
        coffer(&env, &config, &["wal-push", "-j", "1", p.to_str().unwrap()]);
    }
    let spooled = || common::list_files(&spool).len();
    assert_eq!(spooled(), 2);
    let runs_before = common::list_files(&env.repo.join("runs")).len();

    let child = start(&env, &config);
    let api = || -> serde_json::Value {
        serde_json::from_str(&get(port, "/api/status", None).text().unwrap()).unwrap()
    };
    let wal_copy_run = |status: &str| {
        healthy(port)
            && api()["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["job"] == "wal-copy" && j["last_run"]["status"] == status)
    };
    let wal_alerts = || -> Vec<serde_json::Value> {
        bodies(&hooks)
            .into_iter()
            .filter(|b| b["event"] == "wal_copy_behind" || b["status"] == "wal_copy_behind")
            .collect()
    };
    // It cannot reach offsite: the runs fail, the files stay, the lag shows and (older
    // than the source's rpo of 1 s) alerts.
    until("a failed wal-copy run", Duration::from_secs(90), || {
        wal_copy_run("failed")
    });
    until("the wal_copy_behind alert", Duration::from_secs(90), || {
        !wal_alerts().is_empty()
    });
    assert_eq!(spooled(), 2);
    let m = scrape(port, None);
    assert_eq!(
        metric(&m, "coffer_wal_copy_pending_files", "offsite"),
        Some(2.0)
    );
    assert!(metric(&m, "coffer_wal_copy_lag_seconds", "offsite").unwrap() >= 1.0);
    let s = api();
    assert_eq!(s["wal_copies"][0]["repository"], "offsite", "{s:#}");
    assert_eq!(s["wal_copies"][0]["pending"], 2, "{s:#}");
    assert_eq!(s["wal_copies"][0]["state"], "behind", "{s:#}");
    let page = get(port, "/", None).text().unwrap();
    assert!(
        page.contains("id=\"wal-copies\"")
            && page.contains("<tr data-repository=\"offsite\"")
            && page.contains("BEHIND"),
        "{page}"
    );

    // Offsite is back: the next run pushes both, empties the spool and ends the alert.
    fs::rename(&away, &offsite).unwrap();
    until("the spool drained", Duration::from_secs(90), || {
        spooled() == 0 && wal_copy_run("ok")
    });
    until("the recovery", Duration::from_secs(90), || {
        wal_alerts().len() >= 2
    });
    let m = scrape(port, None);
    assert_eq!(
        metric(&m, "coffer_wal_copy_pending_files", "offsite"),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "coffer_wal_copy_lag_seconds", "offsite"),
        Some(0.0)
    );
    let s = api();
    assert_eq!(s["wal_copies"][0]["pending"], 0, "{s:#}");
    assert_eq!(s["wal_copies"][0]["oldest_secs"], serde_json::Value::Null);
    stop(child);

    let there: Vec<String> = common::list_files(&offsite.join("wal"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for n in names {
        assert!(
            there.iter().any(|t| t == n),
            "{n} not in offsite: {there:?}"
        );
    }
    // Each run left its record in the primary's history.
    assert!(common::list_files(&env.repo.join("runs")).len() >= runs_before + 2);
    let alerts = wal_alerts();
    assert_eq!(alerts.len(), 2, "one alert, one recovery: {alerts:#?}");
    assert_eq!(
        (&alerts[0]["event"], &alerts[0]["status"]),
        (&"wal_copy_behind".into(), &"alert".into())
    );
    assert_eq!(alerts[0]["repository"], "offsite");
    assert_eq!(alerts[0]["source"], serde_json::Value::Null);
    assert_eq!(
        (&alerts[1]["event"], &alerts[1]["repository"]),
        (&"recovered".into(), &"offsite".into())
    );
}
