//! `coffer generate`: the units it writes, checked by the tools that read them
//! (`systemd-analyze verify` and `calendar`, a YAML parser, cron's own field syntax read
//! back) and, for schedules, against croner, which `coffer run` uses.

use chrono::{DateTime, TimeZone, Utc};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_coffer");
/// The value of a variable the config uses: never in a unit.
const SECRET: &str = "postgresql://app:Sup3r-s3cret@db:5432/app";

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::create_dir(root.join("repo")).unwrap();
        fs::write(root.join("passphrase"), "pw\n").unwrap();
        let config = root.join("coffer.toml");
        fs::write(
            &config,
            format!(
                r#"repository = "{repo}"
password_file = "passphrase"

[service]
listen = "0.0.0.0:9808"
prune = "0 4 * * 0"
check = "0 5 * * *"
check_read_data_subset = "5%"
wal_verify = "*/10 * * * *"
timezone = "America/New_York"
shutdown_grace = "2m"

[sources.db]
type = "postgres"
url = "${{DATABASE_URL}}"
schedule = "0 2 * * *"
timezone = "Europe/Paris"
jitter = "5m"

[sources.cache]
type = "redis"
url = "${{REDIS_URL:-redis://127.0.0.1:6379}}"
every = "15m"

[sources.uploads]
type = "files"
paths = ["/srv/uploads"]
schedule = "30 9 * * 1-5"

[sources.etc]
type = "files"
paths = ["/etc"]
{extra}"#,
                repo = root.join("repo").display()
            ),
        )
        .unwrap();
        Setup {
            _dir: dir,
            root,
            config,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let bin: &[&str] = if args[0] == "kubernetes" {
            &[]
        } else {
            &["--bin", BIN]
        };
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .arg("generate")
            .args(args)
            .args(bin)
            .env("DATABASE_URL", SECRET)
            .env_remove("COFFER_REPO")
            .env_remove("COFFER_PASSWORD_FILE")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "generate {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(!out.contains(SECRET), "a secret in the output: {out}");
        out
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(2), "generate {args:?} should fail");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

fn have_systemd_analyze() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("systemd-analyze is missing (scripts/test installs systemd)");
    }
    found
}

/// `systemd-analyze verify` on unit files: success, and nothing said about them.
fn verify(files: &[PathBuf]) {
    if !have_systemd_analyze() {
        eprintln!("systemd-analyze not installed: not verifying");
        return;
    }
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(files)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "systemd-analyze verify: {err}");
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            !err.contains(name),
            "systemd-analyze verify on {name}: {err}"
        );
    }
}

fn line<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .collect()
}

#[test]
fn systemd_service_verifies_and_wires_the_config() {
    let s = Setup::new("");
    let out = s.root.join("units");
    let o = s.run(&["systemd", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let path = out.join("coffer.service");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let unit = fs::read_to_string(&path).unwrap();
    assert!(!unit.contains(SECRET) && !unit.contains("\npw\n"), "{unit}");
    let cfg = s.config.to_str().unwrap();
    assert_eq!(
        line(&unit, "ExecStart"),
        [format!("{BIN} --config {cfg} run")]
    );
    assert_eq!(line(&unit, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(line(&unit, "Type"), ["simple"]);
    assert_eq!(line(&unit, "Restart"), ["on-failure"]);
    assert_eq!(line(&unit, "KillSignal"), ["SIGTERM"]);
    // shutdown_grace = 2m, plus 30 s.
    assert_eq!(line(&unit, "TimeoutStopSec"), ["150s"]);
    assert_eq!(line(&unit, "NoNewPrivileges"), ["yes"]);
    assert_eq!(line(&unit, "ProtectSystem"), ["strict"]);
    assert_eq!(line(&unit, "PrivateTmp"), ["yes"]);
    assert_eq!(line(&unit, "ProtectHome"), ["read-only"]);
    assert_eq!(
        line(&unit, "ReadWritePaths"),
        [s.root.join("repo").to_str().unwrap()]
    );
    let pw = s.root.join("passphrase");
    assert_eq!(
        line(&unit, "LoadCredential"),
        [format!("passphrase:{}", pw.display())]
    );
    assert_eq!(
        line(&unit, "Environment"),
        [
            "COFFER_CACHE=%C/coffer",
            "COFFER_PASSWORD_FILE=%d/passphrase"
        ]
    );
    assert_eq!(line(&unit, "CacheDirectory"), ["coffer"]);
    assert_eq!(line(&unit, "EnvironmentFile"), ["-/etc/coffer/coffer.env"]);
    // The variables to put in the environment file are named, their values are not.
    assert!(unit.contains("DATABASE_URL, REDIS_URL"), "{unit}");
    verify(std::slice::from_ref(&path));

    // No overwriting without --force.
    let e = s.fails(&["systemd", "--out", out.to_str().unwrap()]);
    assert!(e.contains("--force") && e.contains("coffer.service"), "{e}");
    fs::write(&path, "old").unwrap();
    let o = s.run(&["systemd", "--out", out.to_str().unwrap(), "--force"]);
    assert!(o.status.success());
    assert_eq!(fs::read_to_string(&path).unwrap(), unit);

    // On standard output, the same unit.
    assert_eq!(s.ok(&["systemd"]), unit);
}

#[test]
fn systemd_service_under_home_and_default_repository() {
    // A repository under /root: ProtectHome would hide it.
    let s = Setup::new("");
    let text = fs::read_to_string(&s.config)
        .unwrap()
        .replace(s.root.join("repo").to_str().unwrap(), "/root/backups/repo");
    fs::write(&s.config, text).unwrap();
    let unit = s.ok(&["systemd"]);
    assert!(line(&unit, "ProtectHome").is_empty(), "{unit}");
    assert_eq!(line(&unit, "ReadWritePaths"), ["/root/backups/repo"]);

    // No repository: the default one, in a StateDirectory when COFFER_HOME does not exist.
    let text = fs::read_to_string(&s.config)
        .unwrap()
        .replace("repository = \"/root/backups/repo\"\n", "");
    fs::write(&s.config, text).unwrap();
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&s.config)
        .args(["generate", "systemd", "--bin", BIN])
        .env("COFFER_HOME", s.root.join("no-such-home"))
        .env_remove("COFFER_REPO")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let unit = String::from_utf8(o.stdout).unwrap();
    assert_eq!(line(&unit, "StateDirectory"), ["coffer"]);
    assert!(
        line(&unit, "Environment").contains(&"COFFER_HOME=%S/coffer"),
        "{unit}"
    );
    let p = s.root.join("default.service");
    fs::write(&p, &unit).unwrap();
    verify(&[p]);

    // An existing COFFER_HOME is used and made writable.
    let home = s.root.join("home");
    fs::create_dir(&home).unwrap();
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&s.config)
        .args(["generate", "systemd", "--bin", BIN])
        .env("COFFER_HOME", &home)
        .output()
        .unwrap();
    let unit = String::from_utf8(o.stdout).unwrap();
    assert_eq!(line(&unit, "ReadWritePaths"), [home.to_str().unwrap()]);
    assert!(
        line(&unit, "Environment").contains(&format!("COFFER_HOME={}", home.display()).as_str()),
        "{unit}"
    );
}

#[test]
fn systemd_timers_verify_and_keep_the_schedules() {
    let s = Setup::new("");
    let out = s.root.join("timers");
    let o = s.run(&["systemd-timer", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want = Vec::new();
    for j in [
        "backup-cache",
        "backup-db",
        "backup-uploads",
        "check",
        "prune",
        "wal-verify",
    ] {
        want.push(format!("coffer-{j}.service"));
        want.push(format!("coffer-{j}.timer"));
    }
    assert_eq!(names, want, "the etc source has no schedule: no unit");
    let read = |n: &str| fs::read_to_string(out.join(n)).unwrap();
    let cfg = s.config.to_str().unwrap();
    let db = read("coffer-backup-db.service");
    assert_eq!(line(&db, "Type"), ["oneshot"]);
    assert_eq!(
        line(&db, "ExecStart"),
        [format!("{BIN} --config {cfg} backup --source db")]
    );
    assert_eq!(line(&db, "ProtectSystem"), ["strict"]);
    assert!(!line(&db, "LoadCredential").is_empty());
    let t = read("coffer-backup-db.timer");
    assert_eq!(line(&t, "OnCalendar"), ["*-*-* 02:00:00 Europe/Paris"]);
    assert_eq!(line(&t, "Persistent"), ["true"]);
    assert_eq!(line(&t, "RandomizedDelaySec"), ["300s"]);
    assert_eq!(line(&t, "Unit"), ["coffer-backup-db.service"]);
    let t = read("coffer-backup-cache.timer");
    assert_eq!(line(&t, "OnUnitActiveSec"), ["900s"]);
    assert_eq!(line(&t, "OnBootSec"), ["1min"]);
    assert!(line(&t, "OnCalendar").is_empty());
    let t = read("coffer-backup-uploads.timer");
    assert_eq!(line(&t, "OnCalendar"), ["Mon..Fri *-*-* 09:30:00"]);
    let t = read("coffer-prune.timer");
    assert_eq!(
        line(&t, "OnCalendar"),
        ["Sun *-*-* 04:00:00 America/New_York"]
    );
    let c = read("coffer-check.service");
    assert_eq!(
        line(&c, "ExecStart"),
        [format!("{BIN} --config {cfg} check --read-data-subset 5%%")]
    );
    let paths: Vec<PathBuf> = names.iter().map(|n| out.join(n)).collect();
    verify(&paths);

    // Named sources only; one without a schedule, or not declared, is an error naming it.
    let one = s.ok(&["systemd-timer", "--source", "db"]);
    assert!(
        one.contains("### coffer-backup-db.service") && one.contains("### coffer-backup-db.timer")
    );
    assert!(
        !one.contains("coffer-backup-cache") && !one.contains("coffer-prune"),
        "{one}"
    );
    let e = s.fails(&["systemd-timer", "--source", "etc"]);
    assert!(e.contains("etc") && e.contains("no schedule"), "{e}");
    let e = s.fails(&["systemd-timer", "--source", "nope"]);
    assert!(e.contains("nope"), "{e}");
    let e = s.fails(&["systemd", "--source", "db"]);
    assert!(e.contains("--source is for"), "{e}");
}

#[test]
fn an_inexpressible_cron_is_refused_naming_the_field() {
    let s = Setup::new(
        "\n[sources.monthly]\ntype = \"files\"\npaths = [\"/x\"]\nschedule = \"0 3 1 * 1\"\n",
    );
    let e = s.fails(&["systemd-timer"]);
    assert!(
        e.contains("backup-monthly") && e.contains("day-of-month") && e.contains("day-of-week"),
        "{e}"
    );
    // cron takes it as it is.
    let c = s.ok(&["cron"]);
    assert!(c.contains("0 3 1 * 1 flock"), "{c}");
}

/// The next `n` times `systemd-analyze calendar` gives for an OnCalendar value, from `base`.
fn systemd_next(value: &str, base: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let o = Command::new("systemd-analyze")
        .env("TZ", "UTC")
        .arg("calendar")
        .arg(format!("--iterations={n}"))
        .arg(format!(
            "--base-time={}",
            base.format("%Y-%m-%d %H:%M:%S UTC")
        ))
        .arg(value)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "systemd-analyze calendar {value:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("Next elapse: ").or_else(|| {
                l.strip_prefix("Iter. #")
                    .and_then(|r| r.split_once(": ").map(|x| x.1))
            })?;
            // "Fri 2026-01-16 01:00:00 UTC"
            let stamp = rest.split_once(' ')?.1.strip_suffix(" UTC")?;
            let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S").ok()?;
            Some(Utc.from_utc_datetime(&t))
        })
        .collect()
}

fn croner_next(expr: &str, tz: chrono_tz::Tz, base: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let cron = croner::Cron::new(expr).parse().unwrap();
    let mut t = base.with_timezone(&tz);
    (0..n)
        .map(|_| {
            t = cron.find_next_occurrence(&t, false).unwrap();
            t.with_timezone(&Utc)
        })
        .collect()
}

#[test]
fn on_calendar_elapses_when_croner_does() {
    if !have_systemd_analyze() {
        eprintln!("systemd-analyze not installed: not comparing");
        return;
    }
    let bases = [
        Utc.with_ymd_and_hms(2026, 1, 15, 10, 7, 0).unwrap(),
        Utc.with_ymd_and_hms(2027, 6, 30, 23, 59, 30).unwrap(),
    ];
    let mut compared = 0;
    for expr in [
        "0 2 * * *",
        "*/15 * * * *",
        "0 4 * * 0",
        "30 9 * * 1-5",
        "0 0 1 */3 *",
        "5,10 8-18/2 * * *",
        "0 0 * * 6,0",
        "0 0 * * */2",
        "0 12 15 6 *",
        "10/20 3 * * *",
        "0 0 31 * *",
        "0 0 29 2 *",
        "0-5 23 * JAN,jul *",
    ] {
        for tz in [
            None,
            Some(chrono_tz::Europe::Paris),
            Some(chrono_tz::America::New_York),
        ] {
            let value = coffer::service::units::on_calendar(expr, tz.map(|z| z.name())).unwrap();
            for base in bases {
                let n = if expr == "0 0 29 2 *" { 2 } else { 8 };
                let sd = systemd_next(&value, base, n);
                let cr = croner_next(expr, tz.unwrap_or(chrono_tz::UTC), base, n);
                assert_eq!(sd, cr, "{expr:?} as {value:?} from {base}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 13 * 3 * 2);
}

fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The same text through PyYAML, a second, independent parser.
fn python_yaml(text: &str) -> Option<serde_json::Value> {
    let child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        assert!(std::env::var_os("CI").is_none(), "python3 is missing");
        return None;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        // Without PyYAML (scripts/test installs it) only the Rust parser reads the YAML.
        assert!(
            err.contains("No module named 'yaml'") && std::env::var_os("CI").is_none(),
            "PyYAML: {err}"
        );
        return None;
    }
    Some(serde_json::from_slice(&o.stdout).unwrap())
}

#[test]
fn kubernetes_deployment_and_cronjobs_parse_with_their_fields() {
    let s = Setup::new("");
    let text = s.ok(&["kubernetes", "--image", "registry.example/coffer:1.2"]);
    let docs = yaml_docs(&text);
    if let Some(py) = python_yaml(&text) {
        assert_eq!(py, serde_json::Value::Array(docs.clone()));
    }
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(d["kind"], "Deployment");
    assert_eq!(d["apiVersion"], "apps/v1");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"], 150);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/coffer:1.2");
    assert_eq!(c["command"], serde_json::json!(["coffer"]));
    assert_eq!(
        c["args"],
        serde_json::json!(["--config", "/etc/coffer/coffer.toml", "run"])
    );
    assert_eq!(c["envFrom"][0]["secretRef"]["name"], "coffer-env");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["ports"][0]["containerPort"], 9808);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert!(c["resources"]["requests"]["memory"].is_string());
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, ["/etc/coffer", "/tmp", "/var/cache/coffer"]);
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "coffer-config");
    assert!(pod["volumes"][1]["emptyDir"].is_object());
    // The header says what the Secret must hold, without any value.
    assert!(text.contains("DATABASE_URL") && text.contains("COFFER_PASSWORD"));

    let text = s.ok(&["kubernetes", "--cronjob"]);
    let docs = yaml_docs(&text);
    if let Some(py) = python_yaml(&text) {
        assert_eq!(py, serde_json::Value::Array(docs.clone()));
    }
    let by_name = |n: &str| {
        docs.iter()
            .find(|d| d["metadata"]["name"] == n)
            .unwrap_or_else(|| panic!("no {n} in {text}"))
    };
    assert_eq!(docs.len(), 6);
    for d in &docs {
        assert_eq!(d["kind"], "CronJob");
        assert_eq!(d["apiVersion"], "batch/v1");
        assert_eq!(d["spec"]["concurrencyPolicy"], "Forbid");
        assert!(d["spec"]["startingDeadlineSeconds"].as_u64().unwrap() > 0);
        assert!(d["spec"]["jobTemplate"]["spec"]["backoffLimit"].is_u64());
        let c = &d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "coffer:latest");
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "coffer-env");
        assert!(c.get("livenessProbe").is_none());
    }
    let db = by_name("coffer-backup-db");
    assert_eq!(db["spec"]["schedule"], "0 2 * * *");
    assert_eq!(db["spec"]["timeZone"], "Europe/Paris");
    assert_eq!(
        db["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"],
        serde_json::json!([
            "--config",
            "/etc/coffer/coffer.toml",
            "backup",
            "--source",
            "db"
        ])
    );
    let cache = by_name("coffer-backup-cache");
    assert_eq!(cache["spec"]["schedule"], "*/15 * * * *");
    assert!(cache["spec"].get("timeZone").is_none());
    assert_eq!(
        by_name("coffer-prune")["spec"]["timeZone"],
        "America/New_York"
    );
    assert_eq!(
        by_name("coffer-wal-verify")["spec"]["schedule"],
        "*/10 * * * *"
    );
    let e = s.fails(&["kubernetes", "--source", "db"]);
    assert!(e.contains("--cronjob"), "{e}");
    let e = s.fails(&["systemd", "--image", "x"]);
    assert!(e.contains("--image is for kubernetes"), "{e}");
}

#[test]
fn crontab_lines_read_back_to_the_schedules() {
    let s = Setup::new("");
    let text = s.ok(&["cron"]);
    let cfg = s.config.to_str().unwrap();
    // (time zone, schedule, command) of each line, as cron reads them.
    let mut tz: Option<String> = None;
    let mut lines = Vec::new();
    for l in text.lines() {
        if l.starts_with('#') || l.trim().is_empty() {
            continue;
        }
        if let Some(z) = l.strip_prefix("CRON_TZ=") {
            tz = Some(z.to_string());
            continue;
        }
        let f: Vec<&str> = l.splitn(6, ' ').collect();
        assert_eq!(f.len(), 6, "{l}");
        lines.push((tz.clone(), f[..5].join(" "), f[5].to_string()));
    }
    let find = |cmd_end: &str| {
        lines
            .iter()
            .find(|(_, _, c)| c.ends_with(cmd_end))
            .unwrap_or_else(|| panic!("no {cmd_end:?} in {text}"))
    };
    let (z, sched, cmd) = find("backup --source db");
    assert_eq!(
        (z.as_deref(), sched.as_str()),
        (Some("Europe/Paris"), "0 2 * * *")
    );
    assert_eq!(
        cmd,
        &format!(
            "flock -n /run/lock/coffer-backup-db.lock {BIN} --config {cfg} backup --source db"
        )
    );
    let (z, sched, _) = find("backup --source cache");
    assert_eq!((z.as_deref(), sched.as_str()), (None, "*/15 * * * *"));
    let (z, sched, _) = find("backup --source uploads");
    assert_eq!((z.as_deref(), sched.as_str()), (None, "30 9 * * 1-5"));
    let (z, sched, _) = find(" prune");
    assert_eq!(
        (z.as_deref(), sched.as_str()),
        (Some("America/New_York"), "0 4 * * 0")
    );
    // cron turns an unescaped % into a newline.
    let (_, sched, _) = find(" check --read-data-subset '5\\%'");
    assert_eq!(sched, "0 5 * * *");
    let (_, sched, _) = find(" wal-verify");
    assert_eq!(sched, "*/10 * * * *");
    assert_eq!(lines.len(), 6);
    // Every schedule read back parses as the config's does.
    for (_, sched, _) in &lines {
        croner::Cron::new(sched).parse().unwrap();
    }

    // An interval cron cannot keep is an error naming the source.
    let s = Setup::new("\n[sources.odd]\ntype = \"files\"\npaths = [\"/x\"]\nevery = \"7m\"\n");
    let e = s.fails(&["cron"]);
    assert!(e.contains("backup-odd") && e.contains("7m"), "{e}");
    let only = s.ok(&["cron", "--source", "db"]);
    assert!(
        only.contains("--source db") && !only.contains("odd"),
        "{only}"
    );
}

#[test]
fn a_relative_config_path_is_written_absolute() {
    let s = Setup::new("");
    let o = Command::new(BIN)
        .current_dir(&s.root)
        .args([
            "--config",
            "coffer.toml",
            "generate",
            "systemd",
            "--bin",
            BIN,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let unit = String::from_utf8(o.stdout).unwrap();
    let cfg = s.config.to_str().unwrap();
    assert_eq!(
        line(&unit, "ExecStart"),
        [format!("{BIN} --config {cfg} run")]
    );
    // password_file = "passphrase" is relative to the config file.
    assert_eq!(
        line(&unit, "LoadCredential"),
        [format!(
            "passphrase:{}",
            s.root.join("passphrase").display()
        )]
    );
}

#[test]
fn kubernetes_warns_of_plain_secrets_in_the_config() {
    let s = Setup::new("");
    let text = fs::read_to_string(&s.config).unwrap();
    fs::write(&s.config, format!("password = \"hunter2-plain\"\n{text}")).unwrap();
    let o = s.run(&["kubernetes"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("password") && err.contains("ConfigMap"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("hunter2-plain"));
    assert!(!err.contains("hunter2-plain"), "{err}");
}

#[test]
fn generate_needs_the_config_file() {
    let o = Command::new(BIN)
        .args(["generate", "systemd"])
        .env_remove("COFFER_CONFIG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--config"));
    let _ = Path::new(BIN);
}
