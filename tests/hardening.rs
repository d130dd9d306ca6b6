//! Inputs that used to be misread, crash coffer or leak: passphrase files, names, times,
//! warnings on a pipe.

mod common;

use common::*;
use std::fs;

/// `--password-file` and `--new-password-file` read a passphrase file by one rule: one
/// trailing newline (LF or CRLF) is removed, nothing more.
#[test]
fn passphrase_files_are_read_by_one_rule() {
    let env = Env::new();
    let first = env.path("first");
    fs::write(&first, "first pass\r\n").unwrap();
    env.cmd()
        .env_remove("COFFER_PASSWORD")
        .arg("--password-file")
        .arg(&first)
        .arg("init")
        .assert()
        .success();
    // The CRLF was removed: the passphrase is "first pass".
    env.cmd()
        .env("COFFER_PASSWORD", "first pass")
        .arg("snapshots")
        .assert()
        .success();

    // A new passphrase that ends in a blank line keeps one newline, by the same rule.
    let second = env.path("second");
    fs::write(&second, "second pass\n\n").unwrap();
    env.cmd()
        .env("COFFER_PASSWORD", "first pass")
        .args(["key", "add", "--new-password-file"])
        .arg(&second)
        .assert()
        .success();
    env.cmd()
        .env_remove("COFFER_PASSWORD")
        .arg("--password-file")
        .arg(&second)
        .arg("snapshots")
        .assert()
        .success();
    env.cmd()
        .env("COFFER_PASSWORD", "second pass\n")
        .arg("snapshots")
        .assert()
        .success();
    env.cmd()
        .env("COFFER_PASSWORD", "second pass")
        .arg("snapshots")
        .assert()
        .code(4);

    // Trailing spaces are part of the passphrase, for both options.
    let third = env.path("third");
    fs::write(&third, "third pass \n").unwrap();
    env.cmd()
        .env("COFFER_PASSWORD", "first pass")
        .args(["key", "add", "--new-password-file"])
        .arg(&third)
        .assert()
        .success();
    env.cmd()
        .env("COFFER_PASSWORD", "third pass ")
        .arg("snapshots")
        .assert()
        .success();
}

/// A damaged key slot, or one with a short name, is listed as such (never a panic, never
/// silently left out), can be removed, and is named when no slot opens.
#[test]
fn damaged_and_oddly_named_key_slots_are_reported() {
    let env = Env::new();
    env.init();
    let keys = env.repo.join("keys");
    let good = list_files(&keys).pop().unwrap();
    fs::write(keys.join("0123456789abcdef-broken"), b"{ not json").unwrap();
    // A valid slot under a name shorter than the 8 characters shown.
    fs::copy(&good, keys.join("zz")).unwrap();

    let out = env.cmd().args(["key", "list"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("01234567 damaged"), "{stdout}");
    assert!(stdout.contains(" zz "), "{stdout}");
    assert!(stderr.contains("0123456789abcdef-broken"), "{stderr}");
    // Standard error is a pipe here: plain text, no colour codes.
    assert!(!stderr.contains('\x1b'), "{stderr:?}");

    let listed = env.json(&["key", "list", "--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed
        .iter()
        .any(|k| k["id"] == "0123456789abcdef-broken" && k["damaged"].is_string()));

    // No slot opens: the error names the damaged one.
    let out = env
        .cmd()
        .env("COFFER_PASSWORD", "wrong")
        .arg("snapshots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0123456789abcdef-broken"));

    env.cmd()
        .args(["key", "remove", "0123456789abcdef-b"])
        .assert()
        .success();
    // One of the two copies of the good slot is in use; the other can go.
    let listed = env.json(&["key", "list", "--json"]);
    let spare = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.cmd().args(["key", "remove", &spare]).assert().success();
    assert_eq!(
        env.json(&["key", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Warnings are coloured on a terminal only, and never with NO_COLOR set.
#[test]
fn warnings_are_coloured_only_on_a_terminal_without_no_color() {
    let env = Env::new();
    env.init();
    fs::write(env.repo.join("keys").join("ff-broken"), b"{").unwrap();
    let coffer = assert_cmd::cargo::cargo_bin("coffer");
    let on_tty = |no_color: Option<&str>| {
        let mut c = std::process::Command::new("script");
        c.args([
            "-qec",
            &format!("{} key list", coffer.display()),
            "/dev/null",
        ])
        .env("COFFER_REPO", &env.repo)
        .env("COFFER_PASSWORD", "correct horse")
        .env("COFFER_HOME", env.path("home"))
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null());
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = c.output().expect("run script(1)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let coloured = on_tty(None);
    assert!(coloured.contains("ff-broken"), "{coloured}");
    assert!(coloured.contains('\x1b'), "{coloured:?}");
    let plain = on_tty(Some("1"));
    assert!(plain.contains("ff-broken"), "{plain}");
    assert!(!plain.contains('\x1b'), "{plain:?}");
}

/// Modification times before 1970 and after 2262 (past i64 nanoseconds) are backed up and
/// restored exactly, and shown by `ls --json`.
#[test]
fn times_before_1970_and_after_2262_round_trip() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    let cases = [
        ("y1960", -315_619_200i64, 123_456_789u32),
        ("y1969", -1, 999_999_999),
        ("y2300", 10_413_792_000, 1),
        ("y2440", 14_831_769_600, 999_999_999), // near ext4's limit (2446)
    ];
    for (name, secs, nsec) in cases {
        let p = src.join(name);
        fs::write(&p, name).unwrap();
        filetime::set_file_mtime(&p, filetime::FileTime::from_unix_time(secs, nsec)).unwrap();
    }
    env.backup(&[src.to_str().unwrap()]);
    let target = env.path("target");
    env.cmd()
        .args(["restore", "latest", "--target"])
        .arg(&target)
        .assert()
        .success();
    let back = restored(&target, &src);
    for (name, secs, nsec) in cases {
        let m = fs::metadata(back.join(name)).unwrap();
        let t = filetime::FileTime::from_last_modification_time(&m);
        assert_eq!((t.unix_seconds(), t.nanoseconds()), (secs, nsec), "{name}");
    }
    let out = env.cmd().args(["ls", "--json", "latest"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"mtime_ns\":10413792000000000001"), "{text}");
    assert!(text.contains("\"mtime_ns\":-315619199876543211"), "{text}");
}

/// A parent snapshot whose trees cannot be read no longer means a silent full re-read: the
/// backup goes on (it reads everything again) and says so.
#[test]
fn an_unreadable_parent_tree_is_reported() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.backup(&[src.to_str().unwrap()]);
    for p in env.packs() {
        fs::remove_file(p).unwrap();
    }
    let out = env.cmd().arg("backup").arg(&src).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("of the previous snapshot cannot be read") && err.contains("coffer check"),
        "{err}"
    );
}

/// A stream name that restore would refuse is refused by the backup, before anything is
/// stored.
#[test]
fn stream_names_restore_cannot_write_are_refused_at_backup() {
    let env = Env::new();
    env.init();
    for name in ["..", ".", "/", "a/b", ""] {
        let out = env
            .cmd()
            .args(["backup", "--stdin", "--stdin-name", name])
            .write_stdin("data")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name:?}: {out:?}");
    }
    assert!(env.snapshots().is_empty());
    env.cmd()
        .args(["backup", "--stdin", "--stdin-name", "/db.dump/"])
        .write_stdin("data")
        .assert()
        .success();
}

/// Names in a listing are not ours: a stray pack file with a short or non-ASCII name is
/// reported by check, not a panic.
#[test]
fn odd_pack_names_in_a_listing_do_not_crash_check() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.backup(&[src.to_str().unwrap()]);
    let dir = env.repo.join("data").join("e9");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("aé"), b"stray").unwrap();
    fs::write(dir.join("e"), b"stray").unwrap();
    let out = env.cmd().arg("check").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(matches!(out.status.code(), Some(0) | Some(3)), "{out:?}");
}
