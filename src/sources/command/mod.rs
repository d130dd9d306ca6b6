//! Command sources: what a program writes, checked by its exit status.
//!
//! coffer runs the command itself (so it sees the exit status that `cmd | coffer backup
//! --stdin` loses), in a process group of its own ([`run`]), and keeps either its standard
//! output (streamed into the repository as `--stdin` is, never held in memory) or what it
//! leaves in a fresh private directory (`{output_dir}`, also `COFFER_OUTPUT_DIR`), archived
//! with the file archiver and then removed. The command succeeds when it exits with one of
//! its success codes, within its timeout, having produced at least `min_bytes`; anything
//! else fails the source (exit 8) with the last lines of its standard error, and no snapshot
//! is written.
//!
//! The snapshot (kind `command`, feature `command-output`) holds `/NAME`: a stream of the
//! standard output, or a directory with the output directory's contents. Its
//! [`CommandInfo`] records the program's name (not its arguments, which may hold secrets),
//! its exit code, the time it took and the size of the output. [`restore`] writes it back
//! into a directory or through a command.

pub mod restore;
pub(crate) mod run;

use super::files::Archiver;
use super::stream::{read_ahead, save_stream};
use super::{run as run_source, CommonOptions, Metadata, Saved, Session, Source};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use crate::repo::features::{self, Features};
use crate::repo::snapshot::{Kind, Snapshot};
use crate::repo::tree::Node;
use crate::repo::Repository;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use restore::{restore_command_output, CommandRestore, CommandRestoreReport};

/// The placeholder replaced by the output directory's path.
pub const OUTPUT_DIR: &str = "{output_dir}";
/// The variable that also holds it.
pub const OUTPUT_DIR_VAR: &str = "COFFER_OUTPUT_DIR";

/// Variables removed from a command's environment: coffer's passphrase, and where to find
/// it. A command that needs the repository's passphrase must be given it explicitly
/// ([`CommandOptions::env`]).
pub const SECRET_VARS: &[&str] = &[
    "COFFER_PASSWORD",
    "COFFER_PASSWORD_FILE",
    "COFFER_NEW_PASSWORD",
    "COFFER_NEW_PASSWORD_FILE",
];

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A program and its arguments, run without a shell.
    Argv(Vec<String>),
    /// A command line for `sh -c`.
    Shell(String),
}

impl Program {
    /// The name the snapshot records and messages use: the program (`argv[0]`), or `sh`.
    /// Never the arguments, which may hold secrets.
    pub fn name(&self) -> &str {
        match self {
            Program::Argv(v) => v.first().map_or("", String::as_str),
            Program::Shell(_) => "sh",
        }
    }

    fn words(&self) -> Vec<&str> {
        match self {
            Program::Argv(v) => v.iter().map(String::as_str).collect(),
            Program::Shell(s) => vec![s.as_str()],
        }
    }

    fn mentions_output_dir(&self) -> bool {
        self.words().iter().any(|w| w.contains(OUTPUT_DIR))
    }

    /// Refuse what cannot run (exit 2).
    pub fn check(&self) -> Result<()> {
        match self {
            Program::Argv(v) if v.first().is_none_or(|p| p.is_empty()) => {
                Err(Error::usage("the command is empty: give a program to run").into())
            }
            Program::Shell(s) if s.trim().is_empty() => {
                Err(Error::usage("the shell command is empty").into())
            }
            _ if self.words().iter().any(|w| w.contains('\0')) => {
                Err(Error::usage("the command holds a NUL byte").into())
            }
            _ => Ok(()),
        }
    }

    /// The command to spawn: `{output_dir}` replaced by `dir` in every word, coffer's
    /// secrets removed from the environment and `env` added (with `COFFER_OUTPUT_DIR`
    /// when there is a directory).
    pub(crate) fn command(
        &self,
        dir: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<std::process::Command> {
        let dir_str = dir.map(|d| d.display().to_string());
        let subst = |w: &str| match &dir_str {
            Some(d) => w.replace(OUTPUT_DIR, d),
            None => w.to_string(),
        };
        let mut cmd = match self {
            Program::Argv(v) => {
                let mut c = std::process::Command::new(subst(&v[0]));
                c.args(v[1..].iter().map(|a| subst(a)));
                c
            }
            Program::Shell(s) => {
                if let Some(d) = &dir_str {
                    if s.contains(OUTPUT_DIR)
                        && crate::sources::postgres::tools::shell_quote(d) != *d
                    {
                        return Err(Error::usage(format!(
                            "the output directory {d:?} holds characters the shell would \
                             interpret, so {OUTPUT_DIR} cannot be put into a shell command: use \
                             \"${OUTPUT_DIR_VAR}\" in it instead, or set TMPDIR to a plain path"
                        ))
                        .into());
                    }
                }
                let mut c = std::process::Command::new("sh");
                c.arg("-c").arg(subst(s));
                c
            }
        };
        for v in SECRET_VARS {
            cmd.env_remove(v);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(d) = dir {
            cmd.env(OUTPUT_DIR_VAR, d);
        }
        Ok(cmd)
    }

    /// Fail (exit 8, "command not found: X") when the program is not there: on PATH (the
    /// one in `env`, else coffer's) or, for a name with a `/`, at that path.
    pub(crate) fn find(&self, env: &[(String, String)]) -> Result<()> {
        let name = match self {
            Program::Argv(v) => v[0].as_str(),
            Program::Shell(_) => "sh",
        };
        if name.contains(OUTPUT_DIR) {
            return Ok(());
        }
        let runnable = |p: &Path| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        let found = if name.contains('/') {
            runnable(Path::new(name))
        } else {
            let path = env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| OsString::from(v))
                .or_else(|| std::env::var_os("PATH"))
                .unwrap_or_else(|| "/usr/bin:/bin".into());
            std::env::split_paths(&path).any(|d| runnable(&d.join(name)))
        };
        if found {
            return Ok(());
        }
        let hint = if name.contains('/') {
            "no executable file there"
        } else {
            "not on PATH; give its full path or install it"
        };
        Err(Error::new(
            ErrorKind::Source,
            format!("command not found: {name} ({hint})"),
        )
        .into())
    }
}

/// Where the command's output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// Its standard output.
    #[default]
    Stdout,
    /// The files it leaves in `{output_dir}`.
    Dir,
}

impl Output {
    pub fn parse(s: &str) -> Result<Output> {
        match s {
            "stdout" => Ok(Output::Stdout),
            "dir" => Ok(Output::Dir),
            _ => Err(Error::usage(format!(
                "command output {s:?}: give stdout (its standard output) or dir (the files it \
                 writes into {OUTPUT_DIR})"
            ))
            .into()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Output::Stdout => "stdout",
            Output::Dir => "dir",
        }
    }
}

/// A command source.
#[derive(Debug, Clone)]
pub struct CommandOptions {
    /// The source's name: the output is stored as `/NAME` (a config's `[sources.NAME]`, or
    /// `--name`, by default the program's name).
    pub name: String,
    pub program: Program,
    pub output: Output,
    /// How long the command may run (none: as long as it takes).
    pub timeout: Option<Duration>,
    /// The exit codes that mean success; empty means `[0]`.
    pub success_codes: Vec<i32>,
    /// Less output than this (standard output bytes, or the bytes of the files in the
    /// directory) fails the source; 1 by default, so that empty output fails.
    pub min_bytes: u64,
    /// More environment for the command.
    pub env: Vec<(String, String)>,
    pub common: CommonOptions,
}

impl CommandOptions {
    /// Options with the defaults: standard output, no timeout, success 0, at least 1 byte.
    pub fn new(name: &str, program: Program) -> CommandOptions {
        CommandOptions {
            name: name.to_string(),
            program,
            output: Output::Stdout,
            timeout: None,
            success_codes: Vec::new(),
            min_bytes: 1,
            env: Vec::new(),
            common: CommonOptions::default(),
        }
    }
}

/// The default name of a command source: the program's file name (`/usr/bin/pg_dump` →
/// `pg_dump`).
pub fn default_name(program: &Program) -> String {
    let p = program.name();
    let base = p.rsplit('/').next().unwrap_or(p);
    if base.is_empty() {
        "command".to_string()
    } else {
        base.to_string()
    }
}

/// The metadata of a command source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandInfo {
    /// "stdout" or "dir".
    pub output: String,
    /// The program run (`argv[0]`, or `sh` for a shell command line); never its arguments.
    pub program: String,
    pub exit_code: i32,
    pub duration_secs: f64,
    /// Bytes of output: of standard output, or of the files in the directory.
    pub bytes: u64,
    /// Files of output: 1 for standard output, else the regular files in the directory.
    pub files: u64,
    /// When the command was started (RFC 3339).
    pub started_at: String,
}

impl Metadata for CommandInfo {
    const KIND: Kind = Kind::Command;

    fn validate(&self) -> std::result::Result<(), String> {
        match self.output.as_str() {
            "stdout" | "dir" => Ok(()),
            o => Err(format!("unknown output {o:?}")),
        }
    }
}

impl CommandInfo {
    pub fn output(&self) -> Output {
        if self.output == "dir" {
            Output::Dir
        } else {
            Output::Stdout
        }
    }
}

/// A private directory for a command's output, removed when dropped.
pub(crate) struct OutputDir {
    path: PathBuf,
    progress: Progress,
}

impl OutputDir {
    /// A new directory (mode 0700, a unique name, created exclusively) in the temporary
    /// directory (`TMPDIR`, else /tmp).
    pub(crate) fn create(progress: &Progress) -> Result<OutputDir> {
        let base = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("coffer-command-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&base)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Source,
                    format!(
                        "cannot create an output directory in {}: {e} (set TMPDIR to a writable \
                         directory)",
                        base.display()
                    ),
                )
            })?;
        Ok(OutputDir {
            path: dir.keep(),
            progress: progress.clone(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            self.progress.warn(&format!(
                "cannot remove the command's output directory {}: {e}; remove it by hand",
                self.path.display()
            ));
        }
    }
}

/// Remove a directory tree that a command wrote, also where it took away our write or
/// search permission. Symlinks are removed, never followed.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    fn open_up(p: &Path) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return;
        };
        if m.is_dir() {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(path);
    std::fs::remove_dir_all(path)
}

/// The bytes and regular files below `dir`, symlinks not followed.
fn measure(dir: &Path) -> Result<(u64, u64)> {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| {
            Error::new(
                ErrorKind::Source,
                format!("cannot read the output directory {}: {e}", d.display()),
            )
        })?;
        for e in rd {
            let e = e.map_err(|e| {
                Error::new(
                    ErrorKind::Source,
                    format!("cannot read {}: {e}", d.display()),
                )
            })?;
            let m = std::fs::symlink_metadata(e.path()).map_err(|err| {
                Error::new(
                    ErrorKind::Source,
                    format!("cannot read {}: {err}", e.path().display()),
                )
            })?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                bytes += m.len();
                files += 1;
            }
        }
    }
    Ok((bytes, files))
}

fn too_little(program: &str, output: Output, bytes: u64, min: u64) -> anyhow::Error {
    let what = match output {
        Output::Stdout => "on standard output",
        Output::Dir => "in the output directory",
    };
    let msg = if bytes == 0 {
        format!("{program} succeeded but the output is empty: it wrote nothing {what}")
    } else {
        format!(
            "{program} succeeded but wrote only {bytes} bytes {what}, fewer than min_bytes ({min})"
        )
    };
    Error::new(ErrorKind::Source, msg).into()
}

/// A command, checked and ready to run.
pub struct Command {
    opts: CommandOptions,
}

impl Command {
    /// Check the options and find the program: everything that can fail before data is
    /// stored.
    pub fn new(opts: &CommandOptions) -> Result<Command> {
        if !crate::repo::tree::valid_name(opts.name.as_bytes()) {
            return Err(Error::usage(format!(
                "the source name {:?} cannot be a file name in the snapshot: give a plain name \
                 (not empty, . or .., no /), e.g. app-db",
                opts.name
            ))
            .into());
        }
        opts.program.check()?;
        if opts.output == Output::Stdout && opts.program.mentions_output_dir() {
            return Err(Error::usage(format!(
                "the command names {OUTPUT_DIR}, but its output is its standard output: use the \
                 output \"dir\" to be given a directory"
            ))
            .into());
        }
        if opts.timeout == Some(Duration::ZERO) {
            return Err(Error::usage("a command's timeout must be longer than 0").into());
        }
        opts.program.find(&opts.env)?;
        Ok(Command { opts: opts.clone() })
    }
}

impl Source for Command {
    fn kind(&self) -> Kind {
        Kind::Command
    }

    fn save(self: Box<Self>, session: &mut Session, progress: &Progress) -> Result<Saved> {
        let name = self.opts.name.clone();
        self.capture(session, progress).map_err(|e| {
            e.context(format!(
                "the command source {name:?} failed; no snapshot was written"
            ))
        })
    }
}

impl Command {
    fn capture(self, session: &mut Session, progress: &Progress) -> Result<Saved> {
        let o = &self.opts;
        let program = o.program.name().to_string();
        let started_at = chrono::Local::now().fixed_offset();
        let path = format!("/{}", o.name);
        let (node, size, files, fin, code) = match o.output {
            Output::Stdout => {
                let cmd = o.program.command(None, &o.env)?;
                let (child, out, _) =
                    run::spawn(cmd, &program, o.timeout, run::In::Null, run::Out::Piped)?;
                let out =
                    out.ok_or_else(|| anyhow::anyhow!("the command has no standard output"))?;
                let state = child.state();
                progress.set_message(format!("{}: output of {program}", o.name));
                // Read ahead of the chunker (up to 16 MiB), so the command rarely waits.
                let (saved, _) = read_ahead(out, 16, |r| {
                    let saved = save_stream(session, r, progress);
                    if saved.is_err() {
                        state.abort();
                    }
                    saved
                });
                let fin = child.finish()?;
                let (content, size) = match saved {
                    Ok(s) => s,
                    // Reading stops when the command times out: say that, not "read error".
                    Err(e) if fin.timed_out => {
                        return Err(run::judge(&fin, &program, o.timeout, &o.success_codes)
                            .err()
                            .unwrap_or(e))
                    }
                    Err(e) => return Err(e),
                };
                let code = run::judge(&fin, &program, o.timeout, &o.success_codes)?;
                if size < o.min_bytes {
                    return Err(too_little(&program, o.output, size, o.min_bytes));
                }
                session.summary.files_new = 1;
                let mtime = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
                (
                    Node::stream(&o.name, size, content, mtime),
                    size,
                    1,
                    fin,
                    code,
                )
            }
            Output::Dir => {
                let dir = OutputDir::create(progress)?;
                let cmd = o.program.command(Some(dir.path()), &o.env)?;
                let (child, _, _) =
                    run::spawn(cmd, &program, o.timeout, run::In::Null, run::Out::Tail)?;
                progress.set_message(format!("{}: running {program}", o.name));
                let fin = child.finish()?;
                let code = run::judge(&fin, &program, o.timeout, &o.success_codes)?;
                let (bytes, _) = measure(dir.path())?;
                if bytes < o.min_bytes {
                    return Err(too_little(&program, o.output, bytes, o.min_bytes));
                }
                progress.set_total(bytes);
                progress.set_message(format!("{}: the files {program} wrote", o.name));
                let mut a = Archiver::new(session, progress, None)?;
                let node = a
                    .archive_node(dir.path(), o.name.as_bytes(), None)?
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Source,
                            format!(
                                "the output directory {} vanished while it was read",
                                dir.path().display()
                            ),
                        )
                    })?;
                let size = a.size();
                let s = &session.summary;
                let files = s.files_new + s.files_changed + s.files_unchanged;
                drop(dir);
                (node, size, files, fin, code)
            }
        };
        let info = CommandInfo {
            output: o.output.as_str().to_string(),
            program,
            exit_code: code,
            duration_secs: fin.duration.as_secs_f64(),
            bytes: size,
            files,
            started_at: started_at.to_rfc3339(),
        };
        Ok(Saved {
            nodes: vec![node],
            paths: vec![path.clone()],
            size,
            parent: None,
            excludes: vec![],
            sources: vec![info.entry(&o.name, &path)?],
            requires: Features::default().with(features::COMMAND_OUTPUT),
        })
    }
}

/// Run a command and back up its output as `/NAME`. A command that fails (an exit code not
/// among the success codes, a signal, the timeout, too little output, a missing program)
/// leaves no snapshot (exit 8).
pub fn backup_command(
    repo: Arc<Repository>,
    opts: &CommandOptions,
    progress: &Progress,
) -> Result<Snapshot> {
    let source = Command::new(opts).map_err(|e| {
        e.context(format!(
            "the command source {:?} failed; no snapshot was written",
            opts.name
        ))
    })?;
    run_source(repo, source, &opts.common, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_dir_is_substituted_and_secrets_removed() {
        let p = Program::Argv(vec!["tool".into(), "--out={output_dir}/x".into()]);
        let cmd = p
            .command(Some(Path::new("/tmp/d")), &[("A".into(), "1".into())])
            .unwrap();
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, ["--out=/tmp/d/x"]);
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&("COFFER_PASSWORD".as_ref(), None)));
        assert!(envs.contains(&("A".as_ref(), Some("1".as_ref()))));
        assert!(envs.contains(&(OUTPUT_DIR_VAR.as_ref(), Some("/tmp/d".as_ref()))));
        let sh = Program::Shell("cp x {output_dir}".into());
        assert!(sh.command(Some(Path::new("/tmp/a b")), &[]).is_err());
        assert_eq!(
            sh.command(Some(Path::new("/tmp/ab")), &[])
                .unwrap()
                .get_args()
                .collect::<Vec<_>>(),
            ["-c", "cp x /tmp/ab"]
        );
    }

    #[test]
    fn names_and_checks() {
        assert_eq!(
            default_name(&Program::Argv(vec!["/usr/bin/pg_dump".into()])),
            "pg_dump"
        );
        assert_eq!(default_name(&Program::Shell("x | y".into())), "sh");
        assert!(Program::Argv(vec![]).check().is_err());
        assert!(Program::Shell(" ".into()).check().is_err());
        let e = Program::Argv(vec!["no-such-program-here".into()])
            .find(&[])
            .unwrap_err();
        assert_eq!(crate::error::kind_of(&e), ErrorKind::Source);
        assert!(
            e.to_string()
                .starts_with("command not found: no-such-program-here"),
            "{e}"
        );
        Program::Argv(vec!["sh".into()]).find(&[]).unwrap();
        let mut o = CommandOptions::new(
            "x",
            Program::Argv(vec!["echo".into(), "{output_dir}".into()]),
        );
        assert!(Command::new(&o).is_err());
        o.output = Output::Dir;
        Command::new(&o).unwrap();
        o.name = "a/b".into();
        assert!(Command::new(&o).is_err());
    }
}
