//! `check`: verify the repository.

use crate::error::Error;
use crate::progress::Progress;
use crate::repo::check::{self, ReadData};
use crate::repo::lock::Lock;
use crate::repo::Repository;
use anyhow::Result;
use serde::Serialize;
use std::sync::Arc;

/// What check found (`check --json`).
#[derive(Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub damaged_packs: Vec<DamagedPack>,
    pub snapshots: usize,
    pub packs: usize,
    pub packs_read: usize,
}

#[derive(Serialize)]
pub struct DamagedPack {
    pub pack: String,
    pub problem: String,
    /// The snapshots that need it.
    pub snapshots: Vec<String>,
}

/// `--read-data-subset`: a percentage like `10%`, as the fraction of packs to read.
pub fn read_data_subset(s: &str) -> Result<ReadData> {
    let pct: f64 = s.trim_end_matches('%').parse().map_err(|_| {
        Error::usage(format!(
            "--read-data-subset {s:?}: expected a percentage like 10%"
        ))
    })?;
    if !(pct > 0.0 && pct <= 100.0) {
        return Err(Error::usage("--read-data-subset must be between 0% and 100%").into());
    }
    Ok(ReadData::Subset(pct / 100.0))
}

/// Check the repository, reading the data `read` says; `progress` hears what is checked.
pub fn check(repo: &Arc<Repository>, read: ReadData, progress: &Progress) -> Result<CheckReport> {
    repo.require_full("check")?;
    let _lock = Lock::shared(repo, "check")?;
    let r = check::check(repo, read, progress)?;
    Ok(CheckReport {
        ok: r.ok(),
        damaged_packs: r
            .damaged_packs
            .iter()
            .map(|(p, why)| DamagedPack {
                pack: p.to_hex(),
                problem: why.clone(),
                snapshots: r
                    .affected
                    .get(p)
                    .map(|v| v.iter().map(|s| s.to_hex()).collect())
                    .unwrap_or_default(),
            })
            .collect(),
        errors: r.errors,
        warnings: r.warnings,
        snapshots: r.snapshots,
        packs: r.packs,
        packs_read: r.packs_read,
    })
}

impl CheckReport {
    /// The errors and damaged packs, one `error:` line each (empty when sound).
    pub fn problems(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.errors.iter().map(|e| format!("error: {e}")).collect();
        for d in &self.damaged_packs {
            lines.push(format!(
                "error: pack {} is damaged: {}\n       snapshots that depend on it: {}",
                d.pack,
                d.problem,
                if d.snapshots.is_empty() {
                    "none".to_string()
                } else {
                    d.snapshots
                        .iter()
                        .map(|s| &s[..8])
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            ));
        }
        lines
    }

    /// Ok with the summary line when no error was found; the integrity error otherwise.
    pub fn verdict(&self) -> Result<String> {
        if self.ok {
            return Ok(format!(
                "no errors were found ({} snapshots, {} packs{})",
                self.snapshots,
                self.packs,
                if self.packs_read > 0 {
                    format!(", {} read and verified", self.packs_read)
                } else {
                    String::new()
                }
            ));
        }
        Err(Error::integrity(format!(
            "the repository is damaged: {} error(s), {} damaged pack(s)",
            self.errors.len(),
            self.damaged_packs.len()
        ))
        .into())
    }
}
