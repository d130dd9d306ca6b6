//! `coffer run`, the service, as a real process: schedules, no overlap, missed runs caught
//! up from the repository, `--once`, SIGTERM within the grace (no snapshot, no lock left),
//! SIGHUP with a broken config. Schedules are seconds long; nothing asserts on time taken.

mod common;

use common::{ok, stderr, Env};
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
    signal(&child, libc::SIGTERM);
    let (status, err) = wait(child, Duration::from_secs(60));
    assert!(status.success(), "{err}");
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
    signal(&child, libc::SIGTERM);
    let (status, err) = wait(child, Duration::from_secs(60));
    assert!(status.success(), "{err}");
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
