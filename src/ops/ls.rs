//! `ls`: every entry of a snapshot's tree.

use crate::repo::tree::NodeKind;
use crate::repo::{walk_tree, Repository};
use anyhow::Result;
use serde::Serialize;

/// One entry (`ls --json` prints one per line).
#[derive(Serialize)]
pub struct LsEntry<'a> {
    pub path: &'a str,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Octal.
    pub mode: String,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// An integer of any size (past 2262 it does not fit in 64 bits).
    pub mtime_ns: i128,
    pub target: Option<String>,
}

/// Call `each` with every entry of snapshot `spec`, depth first.
pub fn ls(
    repo: &Repository,
    spec: &str,
    each: &mut dyn FnMut(&LsEntry<'_>) -> Result<()>,
) -> Result<()> {
    repo.require_full("ls")?;
    let snap = repo.find_snapshot(spec)?;
    let index = repo.load_index()?;
    walk_tree(repo, &index, &snap.tree, "", &mut |path, n| {
        each(&LsEntry {
            path,
            kind: n.kind,
            mode: format!("{:o}", n.mode),
            size: n.size,
            uid: n.uid,
            gid: n.gid,
            mtime_ns: n.mtime_ns,
            target: n.target.as_ref().map(|t| t.display()),
        })
    })
}

impl std::fmt::Display for LsEntry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = match self.kind {
            NodeKind::Dir => 'd',
            NodeKind::File => '-',
            NodeKind::Symlink => 'l',
            NodeKind::Stream => 's',
        };
        let link = self
            .target
            .as_ref()
            .map(|t| format!(" -> {t}"))
            .unwrap_or_default();
        write!(
            f,
            "{t}{:0>4} {:>12} {}{link}",
            self.mode, self.size, self.path
        )
    }
}
