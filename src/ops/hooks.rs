//! Hooks: the shell command lines of a source's `before`/`after` and of `[stack]
//! before_restore`/`after_restore`, run in order with `sh -c`.
//!
//! A hook's standard output and error go to coffer's standard error (standard output may be
//! a `--json` report). It does not see coffer's passphrase variables (`SECRET_VARS`, as a
//! command source). The first line that
//! fails (non-zero exit, killed, not started) stops the list.

use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use anyhow::Result;
use std::process::{Command, Stdio};

use crate::sources::command::SECRET_VARS;

/// Run `lines` in order; `what` names the list in messages (`before hook of source db`).
/// A failure is an error of `kind` naming the line and how it ended.
pub fn run(
    what: &str,
    lines: &[String],
    env: &[(&str, String)],
    kind: ErrorKind,
    progress: &Progress,
) -> Result<()> {
    for line in lines {
        progress.log(&format!("{what}: {line}"));
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(line).stdin(Stdio::null());
        cmd.stdout(Stdio::from(std::io::stderr()));
        for v in SECRET_VARS {
            cmd.env_remove(v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let status = cmd
            .status()
            .map_err(|e| Error::new(kind, format!("{what} `{line}` could not be started: {e}")))?;
        if !status.success() {
            return Err(Error::new(
                kind,
                format!("{what} `{line}` failed: {}", describe(status)),
            )
            .into());
        }
    }
    Ok(())
}

/// "exit status 3" or "killed by signal 9".
pub fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_order_and_stops_at_the_first_failure() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let l = log.display();
        let lines = vec![
            format!("echo one:$X >> {l}"),
            format!("echo two >> {l}"),
            "exit 3".to_string(),
            format!("echo never >> {l}"),
        ];
        let e = run(
            "before hook of source db",
            &lines,
            &[("X", "x".into())],
            ErrorKind::Source,
            &Progress::hidden(),
        )
        .unwrap_err();
        assert_eq!(crate::error::kind_of(&e), ErrorKind::Source);
        assert_eq!(
            e.to_string(),
            "before hook of source db `exit 3` failed: exit status 3"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one:x\ntwo\n");
    }
}
