//! The library reports through observers, not by printing: what a service records.

mod common;

use coffer::ops;
use coffer::progress::{Progress, Tally};
use std::sync::Arc;

#[test]
fn a_repository_reports_its_warnings_to_the_observer_it_was_opened_with() {
    let dir = tempfile::tempdir().unwrap();
    common::library_access(dir.path())
        .init(None, 4, None)
        .unwrap();
    // Slots are tried in name order: opening meets this one before the good slot.
    std::fs::write(dir.path().join("repo/keys/00-broken"), b"{").unwrap();

    let tally = Arc::new(Tally::default());
    let observed = common::library_access(dir.path()).reporting_to(Progress::to(tally.clone()));
    let repo = observed.open().unwrap();
    let w = tally.counts().warnings;
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("00-broken") && w[0].contains("skipped"),
        "{w:?}"
    );
    // `key list` warns about it through the same handle ...
    ops::key::list(&repo).unwrap();
    let w = tally.counts().warnings;
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[1].contains("coffer key remove"), "{w:?}");
    // ... and a handle opened without an observer tells this one nothing.
    let quiet = common::library_access(dir.path()).open().unwrap();
    ops::key::list(&quiet).unwrap();
    assert_eq!(tally.counts().warnings, w);
}

#[test]
fn a_backup_reports_its_progress_and_check_its_warnings_as_events() {
    let dir = tempfile::tempdir().unwrap();
    let a = common::library_access(dir.path());
    a.init(None, 4, None).unwrap();
    let repo = a.open().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("a.bin"), vec![7u8; 300_000]).unwrap();
    std::fs::write(data.join("b.txt"), "hello").unwrap();

    let tally = Arc::new(Tally::default());
    let p = Progress::to(tally.clone());
    common::library_backup(&repo, vec![data], &p);
    let c = tally.counts();
    assert_eq!(c.bytes, 300_005, "{c:?}");
    assert!(c.warnings.is_empty(), "{c:?}");

    // A pack that no index names (an interrupted backup's) is a warning of check: in its
    // report and as an event.
    let packs = dir.path().join("repo/data");
    let some = walk(&packs).into_iter().next().expect("a pack");
    // Another name: the same but for its last two hex digits, which must differ.
    let name = some.file_name().unwrap().to_string_lossy().to_string();
    let tail = if name.ends_with("ff") { "00" } else { "ff" };
    let stray = some.with_file_name(format!("{}{tail}", &name[..62]));
    std::fs::copy(&some, &stray).unwrap();
    let tally = Arc::new(Tally::default());
    let r = ops::check::check(
        &repo,
        coffer::repo::check::ReadData::None,
        &Progress::to(tally.clone()),
    )
    .unwrap();
    let c = tally.counts();
    assert_eq!(c.warnings.len(), 1, "{c:?}");
    assert!(c.warnings[0].contains("not in any index"), "{c:?}");
    assert_eq!(r.warnings, c.warnings);
    assert!(!c.notes.is_empty(), "check says what it does: {c:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
