//! Restoring a command snapshot's output: into a directory, or through a command that loads
//! it (`mariadb < dump.sql`, `etcdutl snapshot restore {output_dir}/etcd.db`).
//!
//! Every chunk is verified before it is written or piped (the restore and dump machinery of
//! [`crate::repo::restore`]). The caller holds the repository lock.

use super::run::{self, In, Out};
use super::{CommandInfo, Output, OutputDir, Program, OUTPUT_DIR};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::index::MasterIndex;
use crate::repo::restore::{self, RestoreOptions};
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::NodeKind;
use crate::repo::Repository;
use crate::sources::sources_of;
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a command snapshot's output goes.
#[derive(Debug, Clone)]
pub enum CommandRestore {
    /// Into this directory: standard output as the file `DIR/NAME`, a directory output as
    /// `DIR/NAME/…`.
    Dir(PathBuf),
    /// Through a command: standard output is piped into its standard input; a directory
    /// output is restored into a fresh private directory, given to it as `{output_dir}` and
    /// `COFFER_OUTPUT_DIR`, and removed afterwards. It must exit 0 within `timeout`.
    Run {
        program: Program,
        timeout: Option<Duration>,
    },
}

/// What a restore of a command's output did.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRestoreReport {
    /// The snapshot's id.
    pub snapshot: String,
    /// The source's name.
    pub source: String,
    /// "stdout" or "dir".
    pub output: String,
    /// With [`CommandRestore::Dir`]: the directory written into.
    pub target: Option<PathBuf>,
    /// With [`CommandRestore::Run`]: the program run (its name, not its arguments).
    pub program: Option<String>,
    /// With [`CommandRestore::Run`]: its exit code.
    pub exit_code: Option<i32>,
    /// Files written (1 for standard output piped into a command).
    pub files: u64,
    /// Bytes written or piped, every chunk verified.
    pub bytes: u64,
    pub duration_secs: f64,
}

impl std::fmt::Display for CommandRestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = self.snapshot.get(..8).unwrap_or(&self.snapshot);
        let what = format!(
            "the output of command source {:?} (snapshot {short}, {}, {} files)",
            self.source,
            crate::ops::mib(self.bytes),
            self.files
        );
        match (&self.target, &self.program) {
            (Some(t), _) => write!(
                f,
                "restored {what} into {} (every chunk verified) in {:.1}s",
                t.display(),
                self.duration_secs
            ),
            (None, p) => write!(
                f,
                "restored {what} through {} (exit status {}, every chunk verified) in {:.1}s",
                p.as_deref().unwrap_or("a command"),
                self.exit_code.unwrap_or(0),
                self.duration_secs
            ),
        }
    }
}

/// Restore the output of command snapshot `snap` as `to` says. A restore command that
/// fails (a non-zero exit, a signal, its timeout, or an exit before it read all of its
/// input) is an error (exit 8) with the last lines it wrote; a chunk that fails
/// verification is an integrity error (exit 3), and a restore command then receiving the
/// output is killed (SIGKILL) before it sees the end of its input (what it loaded until then
/// stays loaded).
pub fn restore_command_output(
    repo: &Arc<Repository>,
    index: &MasterIndex,
    snap: &Snapshot,
    to: &CommandRestore,
    progress: &Progress,
) -> Result<CommandRestoreReport> {
    snap.check_features()?;
    let (name, path, info) = the_output(snap)?;
    let started = Instant::now();
    progress.set_total(info.bytes);
    let mut report = CommandRestoreReport {
        snapshot: snap.id.to_hex(),
        source: name.clone(),
        output: info.output.clone(),
        target: None,
        program: None,
        exit_code: None,
        files: 0,
        bytes: 0,
        duration_secs: 0.0,
    };
    match to {
        CommandRestore::Dir(dir) => {
            let opts = RestoreOptions {
                target: dir.clone(),
                includes: vec![path],
                ..Default::default()
            };
            let r = restore::restore(repo, index, snap, &opts, progress)?;
            report.target = Some(dir.clone());
            report.files = r.files;
            report.bytes = r.bytes;
        }
        CommandRestore::Run { program, timeout } => {
            program.check()?;
            if info.output() == Output::Stdout && program.mentions_output_dir() {
                return Err(Error::usage(format!(
                    "the restore command names {OUTPUT_DIR}, but the output of {name:?} is a \
                     stream: it is given on the command's standard input"
                ))
                .into());
            }
            if *timeout == Some(Duration::ZERO) {
                return Err(
                    Error::usage("a restore command's timeout must be longer than 0").into(),
                );
            }
            program.find(&[])?;
            let what = || {
                format!(
                    "restoring the output of {name:?} (snapshot {}) through {} failed",
                    snap.id.short(),
                    program.name()
                )
            };
            let (code, files, bytes) = match info.output() {
                Output::Stdout => pipe_into(repo, index, snap, &path, program, *timeout),
                Output::Dir => run_on_dir(repo, index, snap, &path, program, *timeout, progress),
            }
            .with_context(what)?;
            report.program = Some(program.name().to_string());
            report.exit_code = Some(code);
            report.files = files;
            report.bytes = bytes;
        }
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The one command source of a snapshot: its name, path and metadata.
fn the_output(snap: &Snapshot) -> Result<(String, String, CommandInfo)> {
    let mut found = sources_of::<CommandInfo>(snap)?;
    match found.len() {
        1 => {
            let (src, info) = found.remove(0);
            Ok((src.name.clone(), src.path.clone(), info))
        }
        0 => Err(Error::usage(format!(
            "snapshot {} holds no command output (it is of kind {})",
            snap.id.short(),
            snap.kind
        ))
        .into()),
        n => Err(Error::usage(format!(
            "snapshot {} holds {n} command outputs; restore them with coffer restore --target",
            snap.id.short()
        ))
        .into()),
    }
}

/// The command's standard input, remembering whether it closed early.
struct Stdin {
    pipe: std::process::ChildStdin,
    broken: bool,
}

impl Write for Stdin {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pipe.write(buf).inspect_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                self.broken = true;
            }
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.pipe.flush()
    }
}

/// Block SIGPIPE on the calling thread: a write into a pipe the command closed then fails
/// with EPIPE instead of killing the process, whatever its SIGPIPE disposition (coffer's
/// binary ignores it; a program using the library may not).
/// The signal stays pending on this thread only and goes with it when it ends.
fn block_sigpipe() {
    // SAFETY: the signal mask of the calling thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Pipe the stream at `path` into `program`'s standard input.
fn pipe_into(
    repo: &Repository,
    index: &MasterIndex,
    snap: &Snapshot,
    path: &str,
    program: &Program,
    timeout: Option<Duration>,
) -> Result<(i32, u64, u64)> {
    let name = program.name();
    let cmd = program.command(None, &[])?;
    let (child, _, stdin) = run::spawn(cmd, name, timeout, In::Piped, Out::Tail)?;
    let pipe = stdin.ok_or_else(|| anyhow::anyhow!("the command has no standard input"))?;
    let (dumped, broken) = std::thread::scope(|s| {
        s.spawn(move || {
            block_sigpipe();
            let mut w = Stdin {
                pipe,
                broken: false,
            };
            let r = restore::dump(repo, index, snap, path, &mut w);
            // Closing its input here is the command's end of input.
            (r, w.broken)
        })
        .join()
    })
    .map_err(|_| anyhow::anyhow!("the thread writing to {name} panicked"))?;
    let fin = match &dumped {
        // A chunk failed verification: the command must not take what it has for the
        // whole output.
        Err(_) if !broken => child.abort()?,
        _ => child.finish()?,
    };
    let written = match dumped {
        Err(e) if !broken => return Err(e),
        Err(_) => None,
        Ok(n) => Some(n),
    };
    let code = run::judge(&fin, name, timeout, &[])?;
    match written {
        Some(n) if !broken => Ok((code, 1, n)),
        _ => Err(Error::new(
            ErrorKind::Source,
            format!(
                "{name} exited (status {code}) before it read all of its input{}",
                run::tail_text(&fin)
            ),
        )
        .into()),
    }
}

/// Restore the directory at `path` into a fresh private directory and run `program` on it.
fn run_on_dir(
    repo: &Repository,
    index: &MasterIndex,
    snap: &Snapshot,
    path: &str,
    program: &Program,
    timeout: Option<Duration>,
    progress: &Progress,
) -> Result<(i32, u64, u64)> {
    let node = restore::find_node(repo, index, snap, path)?;
    let tree = match (node.kind, node.subtree) {
        (NodeKind::Dir, Some(t)) => t,
        _ => {
            return Err(Error::integrity(format!(
                "snapshot {}: {path} records a directory output but is not a directory",
                snap.id.short()
            ))
            .into())
        }
    };
    let dir = OutputDir::create(progress)?;
    let opts = RestoreOptions {
        target: dir.path().to_path_buf(),
        tree: Some(tree),
        ..Default::default()
    };
    let r = restore::restore(repo, index, snap, &opts, progress)?;
    let name = program.name();
    let cmd = program.command(Some(dir.path()), &[])?;
    let (child, _, _) = run::spawn(cmd, name, timeout, In::Null, Out::Tail)?;
    progress.set_message(format!("running {name} on the restored output"));
    let fin = child.finish()?;
    let code = run::judge(&fin, name, timeout, &[])?;
    drop(dir);
    Ok((code, r.files, r.bytes))
}
