//! Property test: random trees survive backup and restore byte-identically, through the
//! library API (fast key derivation parameters, small packs).

mod common;

use coffer::backend::{Backend, LocalBackend};
use coffer::progress::Progress;
use coffer::repo::keys::KdfParams;
use coffer::repo::restore::{restore, RestoreOptions};
use coffer::repo::{InitOptions, Repository};
use coffer::sources::files::{backup_files, FilesOptions};
use proptest::prelude::*;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Entry {
    File {
        name: Vec<u8>,
        len: usize,
        seed: u64,
        mode: u32,
    },
    Link {
        name: Vec<u8>,
        target: Vec<u8>,
    },
    Dir {
        name: Vec<u8>,
        children: Vec<Entry>,
    },
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    // Any bytes but '/' and NUL, never "." or "..".
    prop::collection::vec(prop_oneof![1u8..=46u8, 48u8..=255u8], 1..12)
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn entry() -> impl Strategy<Value = Entry> {
    let leaf = prop_oneof![
        (
            name(),
            prop_oneof![Just(0usize), 1usize..5000, 200_000usize..1_500_000],
            any::<u64>(),
            prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o400])
        )
            .prop_map(|(name, len, seed, mode)| Entry::File {
                name,
                len,
                seed,
                mode
            }),
        (name(), name()).prop_map(|(name, target)| Entry::Link { name, target }),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        (name(), prop::collection::vec(inner, 0..6))
            .prop_map(|(name, children)| Entry::Dir { name, children })
    })
}

fn write(dir: &Path, entries: &[Entry]) {
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        let n = match e {
            Entry::File { name, .. } | Entry::Link { name, .. } | Entry::Dir { name, .. } => {
                name.clone()
            }
        };
        if !seen.insert(n.clone()) {
            continue;
        }
        let p = dir.join(std::ffi::OsStr::from_bytes(&n));
        match e {
            Entry::File {
                len, seed, mode, ..
            } => {
                // Half the bytes repeat, so files share chunks.
                let mut data = common::noise(*seed % 4, len / 2);
                data.extend(common::noise(*seed, len - len / 2));
                fs::write(&p, data).unwrap();
                fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(*mode))
                    .unwrap();
            }
            Entry::Link { target, .. } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &p).unwrap();
            }
            Entry::Dir { children, .. } => {
                fs::create_dir(&p).unwrap();
                write(&p, children);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn random_trees_round_trip(entries in prop::collection::vec(entry(), 0..8)) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        write(&src, &entries);
        // A file modified within a second of being read is stored racy (inode 0) and read
        // again, which would change the second tree.
        common::wait_until_not_racy(&src);
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(t.path().join("repo")));
        let repo = Arc::new(Repository::init(backend, b"pw", &InitOptions {
            kdf: KdfParams::insecure_for_tests(),
            compression: 3,
            pack_size: 1 << 20,
            like: None,
        }).unwrap());
        let opts = FilesOptions { paths: vec![src.clone()], ..Default::default() };
        let snap = backup_files(repo.clone(), &opts, &Progress::hidden()).unwrap();
        // Nothing changed below src: a second backup (with the first as parent) yields the
        // same tree for it. (The root tree may differ: it records the metadata of /tmp and
        // the other ancestors, which other processes change.)
        let snap2 = backup_files(repo.clone(), &opts, &Progress::hidden()).unwrap();
        let index = repo.load_index().unwrap();
        let src_str = src.to_str().unwrap();
        let tree_of = |s| coffer::repo::restore::find_node(&repo, &index, s, src_str).unwrap().subtree;
        prop_assert_eq!(tree_of(&snap2), tree_of(&snap));
        let target = t.path().join("out");
        restore(&repo, &index, &snap, &RestoreOptions { target: target.clone(), includes: vec![], tree: None, delta: false, sync: false }, &Progress::hidden()).unwrap();
        common::assert_same_tree(&src, &common::restored(&target, &src));
    }
}
