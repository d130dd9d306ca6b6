//! README.md's `--json` field lists, held against the report types: each list is read
//! from the README and compared with a report serialized from a small repository made
//! here. A field the README names that the type lacks, or a top-level field of the type
//! that the README leaves out, fails the test.

mod common;

use coffer::ops::{self, forget::ForgetOptions};
use coffer::progress::Progress;
use coffer::repo::check::ReadData;
use coffer::repo::forget::Policy;
use coffer::repo::Repository;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Field names, each with the fields of its objects when the README lists them.
#[derive(Debug, Default)]
struct Fields(BTreeMap<String, Option<Fields>>);

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The paragraph or list item of README.md that holds `marker`, its lines joined.
fn passage(marker: &str) -> String {
    let text = readme();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("README.md has no {marker:?}"));
    let mut out = vec![lines[at].trim()];
    for l in &lines[at + 1..] {
        if l.trim().is_empty() || l.trim_start().starts_with("- ") {
            break;
        }
        out.push(l.trim());
    }
    out.join(" ")
}

/// `{a, b: [{c, d}], e}` (from the first `{` of `s`).
fn braces(s: &str) -> Fields {
    let mut chars = s[s.find('{').expect("a { list")..].chars().peekable();
    chars.next();
    parse_object(&mut chars)
}

fn parse_object(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Fields {
    let mut fields = Fields::default();
    let mut name = String::new();
    let mut last: Option<String> = None;
    while let Some(c) = chars.next() {
        match c {
            '{' => {
                let inner = parse_object(chars);
                if let Some(k) = &last {
                    fields.0.insert(k.clone(), Some(inner));
                }
            }
            '}' | ',' => {
                if !name.is_empty() {
                    fields.0.insert(name.clone(), None);
                    last = Some(std::mem::take(&mut name));
                }
                if c == '}' {
                    return fields;
                }
            }
            ':' => {
                fields.0.insert(name.clone(), None);
                last = Some(std::mem::take(&mut name));
            }
            // `[ids]` and `[{…}]`: the brackets only say "a list of".
            '[' if chars.peek() != Some(&'{') => {
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                }
            }
            c if c.is_alphanumeric() || c == '_' => name.push(c),
            _ => {}
        }
    }
    fields
}

/// The backticked names of `s` outside parentheses, from `from` on up to the end of its
/// sentence.
fn ticked(s: &str, from: &str) -> Fields {
    let s = &s[s.find(from).unwrap_or_else(|| panic!("no {from:?}")) + from.len()..];
    let s = s.split(". ").next().unwrap();
    let mut fields = Fields::default();
    let (mut depth, mut inside, mut name) = (0, false, String::new());
    for c in s.chars() {
        match c {
            '(' if !inside => depth += 1,
            ')' if !inside => depth -= 1,
            '`' if inside => {
                inside = false;
                if depth == 0 {
                    fields.0.insert(std::mem::take(&mut name), None);
                }
                name.clear();
            }
            '`' => inside = true,
            c if inside => name.push(c),
            _ => {}
        }
    }
    fields
}

/// Hold the README's `doc` list for `what` against a serialized report.
fn holds(what: &str, doc: &Fields, v: &Value) {
    let v = match v {
        Value::Array(a) => match a.first() {
            Some(first) => first,
            None => return,
        },
        // Nothing to compare (an absent window, say).
        Value::Null => return,
        v => v,
    };
    let Value::Object(map) = v else {
        panic!("{what}: the report is not an object: {v}");
    };
    let documented: Vec<&String> = doc.0.keys().collect();
    let actual: Vec<&String> = map.keys().collect();
    let mut missing: Vec<_> = documented
        .iter()
        .filter(|k| !map.contains_key(**k))
        .collect();
    let mut undocumented: Vec<_> = actual.iter().filter(|k| !doc.0.contains_key(**k)).collect();
    missing.sort();
    undocumented.sort();
    assert!(
        missing.is_empty() && undocumented.is_empty(),
        "{what}: README.md lists {missing:?}, which the report lacks, and leaves out \
         {undocumented:?}, which it has"
    );
    for (k, sub) in &doc.0 {
        if let Some(sub) = sub {
            holds(&format!("{what}.{k}"), sub, &map[k]);
        }
    }
}

struct Repo {
    _dir: tempfile::TempDir,
    repo: Arc<Repository>,
}

fn repo() -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("a.txt"), "hello").unwrap();
    let access = common::library_access(dir.path());
    access.init(None, 4, None).unwrap();
    let repo = access.open().unwrap();
    common::library_backup(&repo, vec![data], &Progress::hidden());
    Repo { _dir: dir, repo }
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

#[test]
fn backup_json_is_as_documented() {
    let r = repo();
    let data = r.repo.load_snapshots().unwrap()[0].paths[0].clone();
    let report = common::library_backup(&r.repo, vec![data.into()], &Progress::hidden());
    holds(
        "backup",
        &braces(&passage("- `--json`: print `{id, short_id")),
        &json(&report),
    );
}

#[test]
fn snapshots_and_ls_json_are_as_documented() {
    let r = repo();
    let list = ops::snapshots::snapshots(&r.repo, &[], &[]).unwrap();
    holds(
        "snapshots",
        &ticked(
            &passage("prints an array of objects with the fields"),
            "the fields",
        ),
        &json(&list),
    );
    let mut entries = Vec::new();
    ops::ls::ls(&r.repo, "latest", &mut |e| {
        entries.push(json(e));
        Ok(())
    })
    .unwrap();
    holds(
        "ls",
        &ticked(&passage("prints one JSON object per line"), "per line:"),
        &Value::Array(entries),
    );
}

#[test]
fn check_json_is_as_documented() {
    let r = repo();
    let report = ops::check::check(&r.repo, ReadData::None, &Progress::hidden()).unwrap();
    holds(
        "check",
        &braces(&passage("- `--json`: print `{ok, errors")),
        &json(&report),
    );
}

#[test]
fn forget_json_is_as_documented() {
    let r = repo();
    let opts = ForgetOptions {
        snapshots: vec![],
        policy: Policy {
            last: 1,
            ..Policy::default()
        },
        tags: vec![],
        sources: vec![],
        group_by: vec!["host".into()],
        dry_run: true,
        prune: false,
    };
    let report = ops::forget::forget(&r.repo, &opts, &|_| {}, &Progress::hidden()).unwrap();
    let text = passage("- `--json`: print `{groups");
    let mut doc = braces(&text);
    doc.0.insert(
        "wal".into(),
        Some(ticked(&text, "where `wal` reports WAL retention:")),
    );
    holds("forget", &doc, &json(&report));
}

#[test]
fn wal_verify_json_is_as_documented() {
    let r = repo();
    let report = ops::wal_verify::wal_verify(&r.repo).unwrap();
    let text = passage("- `--json` prints `{ok, system_identifier");
    let mut doc = braces(&text);
    let window = braces(&text[text.find("where a window is").unwrap()..]);
    assert!(!window.0.is_empty());
    doc.0.insert("window".into(), Some(window));
    holds("wal-verify", &doc, &json(&report));
}

#[test]
fn stack_backup_and_status_json_are_as_documented() {
    let r = repo();
    let data = r.repo.load_snapshots().unwrap()[0].paths[0].clone();
    let config = coffer::config::Config::parse(
        &format!("[sources.data]\ntype = \"files\"\npaths = [{data:?}]\n[sources.gone]\ntype = \"files\"\npaths = [\"/nonexistent-coffer-docs-test\"]\n"),
        None,
        &|_| None,
    )
    .unwrap();
    let opts = ops::stack::StackOptions {
        sources: vec![],
        forget: true,
        common: Default::default(),
    };
    let report =
        ops::stack::backup_stack(&r.repo, &config, &opts, &|_| Progress::hidden()).unwrap();
    assert_eq!(report.failed, 1);
    holds(
        "backup of the stack",
        &braces(&passage("- `--json` prints `{run, sources")),
        &json(&report),
    );
    let status = ops::status::status(&r.repo, &config).unwrap();
    let v = json(&status);
    assert!(v["sources"][1]["last_failure"].is_object(), "{v}");
    let doc = braces(&passage("Exit 0 when every source is within its RPO"));
    holds("status", &doc, &v);
    // The failed source's entry has the failure (the first has none).
    let Some(Some(sources)) = doc.0.get("sources") else {
        panic!("status: README lists no source fields")
    };
    holds("status.sources[1]", sources, &v["sources"][1]);
}

#[test]
fn restore_stack_json_is_as_documented() {
    let r = repo();
    let data = r.repo.load_snapshots().unwrap()[0].paths[0].clone();
    let config = coffer::config::Config::parse(
        &format!(
            "[sources.data]\ntype = \"files\"\npaths = [{}]\n",
            toml::Value::String(data)
        ),
        None,
        &|_| None,
    )
    .unwrap();
    let backup = ops::stack::backup_stack(
        &r.repo,
        &config,
        &ops::stack::StackOptions {
            sources: vec![],
            forget: false,
            common: Default::default(),
        },
        &|_| Progress::hidden(),
    )
    .unwrap();
    assert_eq!(backup.failed, 0);
    let report = ops::restore_stack::restore_stack(
        &r.repo,
        &config,
        &ops::restore_stack::StackRestoreOptions {
            dry_run: true,
            ..Default::default()
        },
        &Progress::hidden(),
        &mut |_, _| Ok(false),
    )
    .unwrap();
    assert!(report.ok, "{report}");
    let text = passage("- `--json` prints `{ok, dry_run, time, sources");
    holds("restore --stack", &braces(&text), &json(&report));
}

#[test]
fn api_status_json_is_as_documented() {
    use coffer::service::daemon::{Effect, JobState, RunSummary};
    let r = repo();
    let data = r.repo.load_snapshots().unwrap()[0].paths[0].clone();
    let config = coffer::config::Config::parse(
        &format!(
            "[sources.data]\ntype = \"files\"\npaths = [{}]\nevery = \"1h\"\n",
            toml::Value::String(data)
        ),
        None,
        &|_| None,
    )
    .unwrap();
    let now = chrono::Utc::now();
    let run = RunSummary {
        job: "backup data".into(),
        source: Some("data".into()),
        started: now,
        finished: now,
        duration_secs: 0.5,
        status: coffer::repo::runs::RunStatus::Ok,
        error: None,
        bytes_read: 1,
        bytes_added: 1,
        snapshot: None,
        effect: Effect::None,
    };
    let api = coffer::service::http::ApiStatus {
        status: ops::status::status(&r.repo, &config).unwrap(),
        jobs: vec![JobState {
            job: "backup data".into(),
            source: Some("data".into()),
            next_run: Some(now),
            running_since: None,
            last_success: Some(now),
            last_run: Some(run),
            runs_total: 1,
            failures_total: 0,
            skipped_total: 0,
        }],
        service_started: Some(now),
    };
    let doc = braces(&passage("**`/api/status`** prints"));
    holds("/api/status", &doc, &json(&api));
    let Some(Some(jobs)) = doc.0.get("jobs") else {
        panic!("/api/status: README lists no job fields")
    };
    holds("/api/status jobs[0]", jobs, &json(&api)["jobs"][0]);
}

#[test]
fn wal_copy_json_is_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let config = coffer::config::Config::parse(
        &format!(
            "wal_spool = {}\n[repositories.offsite]\nlocation = {}\nwal = \"async\"\n\
             [sources.db]\ntype = \"postgres\"\nmode = \"physical\"\ncopy_to = [\"offsite\"]\n",
            toml::Value::String(dir.path().join("spool").display().to_string()),
            toml::Value::String(dir.path().join("offsite").display().to_string()),
        ),
        None,
        &|_| None,
    )
    .unwrap();
    let report = ops::wal_copy::wal_copy(&config, None, &Progress::hidden()).unwrap();
    assert_eq!(report.repositories.len(), 1, "{report}");
    let text = passage("- `wal-copy [--repo NAME] [--json]`");
    let doc = braces(&text[text.find("`--json` prints").unwrap()..]);
    holds("wal-copy", &doc, &json(&report));
}
