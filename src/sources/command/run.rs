//! Running one command for a command source (or the restore of one): in a process group of
//! its own, with a timeout that stops the whole group, and the last lines it wrote kept for
//! the error message.
//!
//! A monitor thread watches the child without reaping it (`waitid(WNOWAIT)`), so its
//! process group id cannot be reused while coffer still signals it. At the deadline it sends
//! the group SIGTERM, and SIGKILL [`GRACE`] later if the command is still there. When the
//! command's main process has ended, whatever it left behind in its group is killed
//! (SIGKILL): a command source leaves no process running. Only then is the child reaped.
//! Should coffer die first, the command's main process gets SIGTERM (`PR_SET_PDEATHSIG`;
//! the command is spawned and waited for on the same thread, which the signal is tied to).

use crate::error::{Error, ErrorKind};
use anyhow::Result;
use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lines of the command's standard error kept for the error message.
pub const TAIL_LINES: usize = 20;
/// Characters kept of one line.
const LINE_MAX: usize = 500;
/// Time between SIGTERM and SIGKILL when a command overruns its timeout.
pub const GRACE: Duration = Duration::from_secs(3);
/// How often the monitor looks at the child.
const TICK: Duration = Duration::from_millis(25);

/// What the monitor and the readers share.
#[derive(Default)]
pub(crate) struct State {
    timed_out: AtomicBool,
    abort: AtomicBool,
}

impl State {
    /// Stop the command now (SIGKILL to its group): the caller gave up on it.
    pub(crate) fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.timed_out.load(Ordering::SeqCst) || self.abort.load(Ordering::SeqCst)
    }
}

/// The last lines of what a command wrote.
#[derive(Default)]
struct Ring {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

impl Ring {
    fn push(&mut self, bytes: &[u8], program: &str) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line(program);
            } else if self.partial.len() < LINE_MAX * 4 {
                self.partial.push(b);
            }
        }
    }

    fn end_line(&mut self, program: &str) {
        let line = clean(&self.partial);
        self.partial.clear();
        // Shown with -v only: the command's own messages are not coffer's.
        tracing::info!("{program}: {line}");
        self.lines.push_back(line);
        if self.lines.len() > TAIL_LINES {
            self.lines.pop_front();
        }
    }

    fn text(&self) -> String {
        let mut lines: Vec<String> = self.lines.iter().cloned().collect();
        if !self.partial.is_empty() {
            lines.push(clean(&self.partial));
            if lines.len() > TAIL_LINES {
                lines.remove(0);
            }
        }
        while lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
        }
        lines.join("\n")
    }
}

/// A line for a message: valid UTF-8, no control characters (a command's output must not
/// drive the terminal), at most [`LINE_MAX`] characters.
fn clean(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim_end_matches('\r');
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == LINE_MAX {
            out.push('…');
            break;
        }
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What a command said, collected on a thread so it never blocks on a full pipe.
struct Tail {
    ring: Arc<Mutex<Ring>>,
    done: crossbeam_channel::Receiver<()>,
}

impl Tail {
    fn collect(mut pipe: impl Read + Send + 'static, program: String) -> Tail {
        let ring = Arc::new(Mutex::new(Ring::default()));
        let (tx, done) = crossbeam_channel::bounded::<()>(0);
        let r = ring.clone();
        std::thread::spawn(move || {
            let _tx = tx;
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => r
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(&buf[..n], &program),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Tail { ring, done }
    }

    /// The last lines, once the pipe closed (or `wait` passed: a process that left the
    /// command's group may still hold it open).
    fn text(&self, wait: Duration) -> String {
        let _ = self.done.recv_timeout(wait);
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).text()
    }
}

/// Where the command's standard output goes.
pub(crate) enum Out {
    /// To the caller, as [`Output`].
    Piped,
    /// With its standard error, into the tail.
    Tail,
}

/// Where its standard input comes from.
pub(crate) enum In {
    Null,
    /// From the caller, as a [`ChildStdin`].
    Piped,
}

/// How a command ended.
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub timed_out: bool,
    /// Its last lines of standard error (and, with [`Out::Tail`], standard output).
    pub tail: String,
    /// Whether `tail` holds standard output too.
    pub merged: bool,
    pub duration: Duration,
}

/// A running command.
pub(crate) struct Child {
    child: std::process::Child,
    state: Arc<State>,
    monitor: Option<JoinHandle<()>>,
    tail: Tail,
    merged: bool,
    started: Instant,
}

fn signal_group(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: a plain kill(2). The group's leader is our unreaped child, so the id is ours.
    unsafe {
        libc::kill(-pid, sig);
    }
}

/// Whether the child has ended, without reaping it.
fn ended(pid: libc::pid_t) -> bool {
    // SAFETY: waitid with WNOWAIT only reads the child's state into `info`.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        if r == 0 {
            return info.si_pid() != 0;
        }
        // ECHILD (it is gone) counts as ended, so the monitor never spins forever; an
        // interrupted call is asked again.
        std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
    }
}

fn monitor(pid: libc::pid_t, state: Arc<State>, deadline: Option<Instant>) {
    let mut termed: Option<Instant> = None;
    loop {
        if ended(pid) {
            // Whatever it left in its group goes with it.
            signal_group(pid, libc::SIGKILL);
            return;
        }
        let now = Instant::now();
        if state.abort.load(Ordering::SeqCst) {
            signal_group(pid, libc::SIGKILL);
        } else if termed.is_none() && crate::cancel::requested() {
            // coffer is shutting down: stop the command as a timeout would.
            signal_group(pid, libc::SIGTERM);
            termed = Some(now);
        } else if termed.is_none() && deadline.is_some_and(|d| now >= d) {
            state.timed_out.store(true, Ordering::SeqCst);
            signal_group(pid, libc::SIGTERM);
            termed = Some(now);
        }
        if termed.is_some_and(|t| now >= t + GRACE) {
            signal_group(pid, libc::SIGKILL);
        }
        std::thread::sleep(TICK);
    }
}

/// Start `cmd` in a process group of its own. `program` names it in messages. A program
/// that does not exist is "command not found: X" (exit 8).
pub(crate) fn spawn(
    mut cmd: Command,
    program: &str,
    timeout: Option<Duration>,
    input: In,
    out: Out,
) -> Result<(Child, Option<Output>, Option<ChildStdin>)> {
    cmd.process_group(0);
    // Out of coffer's process group, a Ctrl-C at the terminal does not reach the command:
    // should coffer die, the command gets SIGTERM instead.
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and raise are async-signal-safe, as the time between fork and
    // exec requires; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            // coffer died before the request took effect.
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
    cmd.stdin(match input {
        In::Null => Stdio::null(),
        In::Piped => Stdio::piped(),
    });
    let (reader, writer) = std::io::pipe()?;
    let merged = matches!(out, Out::Tail);
    match out {
        Out::Piped => {
            cmd.stdout(Stdio::piped());
        }
        Out::Tail => {
            cmd.stdout(writer.try_clone()?);
        }
    }
    cmd.stderr(writer);
    let spawned = cmd.spawn();
    // The command holds the pipe's write ends: ours must close, or the tail never ends.
    drop(cmd);
    let mut child = spawned.map_err(|e| spawn_error(program, &e))?;
    let started = Instant::now();
    let pid = child.id() as libc::pid_t;
    let state = Arc::new(State::default());
    let deadline = timeout.map(|t| started + t);
    let s = state.clone();
    let monitor = std::thread::spawn(move || monitor(pid, s, deadline));
    let stdout = child.stdout.take().map(|pipe| {
        // A 1 MiB pipe: far fewer wake-ups between the command and the chunker (best
        // effort; the limit is /proc/sys/fs/pipe-max-size).
        // SAFETY: F_SETPIPE_SZ on a descriptor we own; failure leaves the default size.
        unsafe {
            libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
        }
        Output {
            pipe,
            state: state.clone(),
        }
    });
    let stdin = child.stdin.take();
    let tail = Tail::collect(reader, program.to_string());
    Ok((
        Child {
            child,
            state,
            monitor: Some(monitor),
            tail,
            merged,
            started,
        },
        stdout,
        stdin,
    ))
}

fn spawn_error(program: &str, e: &std::io::Error) -> anyhow::Error {
    let msg = match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("command not found: {program} (give a program on PATH or its full path)")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot run {program}: permission denied (is it executable?)")
        }
        _ => format!("cannot run {program}: {e}"),
    };
    Error::new(ErrorKind::Source, msg).into()
}

impl Child {
    /// The handle that stops the command from another thread.
    pub(crate) fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Wait until the command (and everything in its group) has ended, and reap it.
    pub(crate) fn finish(mut self) -> Result<Finished> {
        let status = self.reap()?;
        Ok(Finished {
            status,
            timed_out: self.state.timed_out.load(Ordering::SeqCst),
            tail: self.tail.text(Duration::from_secs(2)),
            merged: self.merged,
            duration: self.started.elapsed(),
        })
    }

    /// Stop the command at once (SIGKILL to its group) and reap it.
    pub(crate) fn abort(self) -> Result<Finished> {
        self.state.abort();
        self.finish()
    }

    fn reap(&mut self) -> Result<ExitStatus> {
        if let Some(m) = self.monitor.take() {
            if m.join().is_err() {
                // The monitor cannot panic short of a bug; the group is still stopped.
                signal_group(self.child.id() as libc::pid_t, libc::SIGKILL);
            }
        }
        Ok(self.child.wait()?)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.monitor.is_some() {
            self.state.abort();
            let _ = self.reap();
        }
    }
}

/// The command's standard output. A read waits at most a tick at a time, so that once the
/// command timed out (or was stopped) the reader gives up even if a process that left the
/// command's group still holds the pipe open.
pub(crate) struct Output {
    pipe: ChildStdout,
    state: Arc<State>,
}

impl Read for Output {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.state.timed_out.load(Ordering::SeqCst) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the command ran out of time",
                ));
            }
            if self.state.stopped() {
                return Err(std::io::Error::other("the command was stopped"));
            }
            let mut pfd = libc::pollfd {
                fd: self.pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one descriptor we own.
            let r = unsafe { libc::poll(&mut pfd, 1, 200) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r > 0 {
                return self.pipe.read(buf);
            }
        }
    }
}

/// How a command ended, in words: "exit status 3", "killed by signal 9 (SIGKILL)".
pub(crate) fn status_text(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}{}", signal_name(sig)),
        _ => format!("ended with {s}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => " (SIGHUP)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGPIPE => " (SIGPIPE)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGABRT => " (SIGABRT)",
        _ => "",
    }
}

/// The tail for an error message: indented lines after a colon, or a note that there
/// were none.
pub(crate) fn tail_text(fin: &Finished) -> String {
    let what = if fin.merged {
        "output"
    } else {
        "standard error"
    };
    if fin.tail.trim().is_empty() {
        format!(" (it wrote nothing on {what})")
    } else {
        let lines: Vec<String> = fin.tail.lines().map(|l| format!("  | {l}")).collect();
        format!("; its last lines of {what}:\n{}", lines.join("\n"))
    }
}

/// Check how a command ended: `Ok(exit code)` when it exited with one of `success` (empty:
/// 0) in time; otherwise an error (exit 8) with what it said last.
pub(crate) fn judge(
    fin: &Finished,
    program: &str,
    timeout: Option<Duration>,
    success: &[i32],
) -> Result<i32> {
    let ok: &[i32] = if success.is_empty() { &[0] } else { success };
    let why = if fin.timed_out {
        format!(
            "{program} did not finish within {} and was stopped (SIGTERM to its process group, \
             SIGKILL {}s later); raise the timeout if it needs longer",
            timeout.map_or_else(
                || "its timeout".to_string(),
                |t| humantime::format_duration(t).to_string()
            ),
            GRACE.as_secs()
        )
    } else {
        match fin.status.code() {
            Some(c) if ok.contains(&c) => return Ok(c),
            Some(_) => format!(
                "{program} {} (success is {})",
                status_text(fin.status),
                ok.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!("{program} {}", status_text(fin.status)),
        }
    };
    Err(Error::new(ErrorKind::Source, format!("{why}{}", tail_text(fin))).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The processes of group `pgid` that are not zombies, from /proc.
    pub fn live_in_group(pgid: i32) -> Vec<i32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            let f: Vec<&str> = rest.split(' ').collect();
            if f.len() > 2 && f[0] != "Z" && f[2] == pgid.to_string() {
                out.push(pid);
            }
        }
        out
    }

    #[test]
    fn the_ring_keeps_the_last_lines_cleaned() {
        let mut r = Ring::default();
        for i in 0..50 {
            r.push(format!("line {i}\n").as_bytes(), "t");
        }
        r.push(b"bell \x07 and \x1b[31mred\r\npartial", "t");
        let t = r.text();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 32");
        assert_eq!(lines[TAIL_LINES - 2], "bell \\u{7} and \\u{1b}[31mred");
        assert_eq!(lines[TAIL_LINES - 1], "partial");
        let long = clean(&vec![b'x'; 5000]);
        assert_eq!(long.chars().count(), LINE_MAX + 1);
    }

    #[test]
    fn a_timeout_stops_the_whole_group_and_reaps_it() {
        let mut cmd = Command::new("sh");
        // A grandchild that ignores nothing, and a shell that waits for it.
        cmd.args(["-c", "sleep 30 & sleep 30; wait"]);
        let (child, _, _) = spawn(
            cmd,
            "sh",
            Some(Duration::from_millis(300)),
            In::Null,
            Out::Tail,
        )
        .unwrap();
        let pid = child.child.id() as libc::pid_t;
        let t = Instant::now();
        let fin = child.finish().unwrap();
        assert!(fin.timed_out);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        // No process is left in its group (a killed one may linger a moment as a zombie,
        // until whoever inherited it reaps it).
        let until = Instant::now() + Duration::from_secs(5);
        while !live_in_group(pid).is_empty() {
            assert!(
                Instant::now() < until,
                "left behind: {:?}",
                live_in_group(pid)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let e = judge(&fin, "sh", Some(Duration::from_millis(300)), &[]).unwrap_err();
        assert_eq!(crate::error::kind_of(&e), ErrorKind::Source);
        assert!(e.to_string().contains("did not finish within 300ms"), "{e}");
    }

    #[test]
    fn exit_codes_and_signals() {
        let run = |script: &str| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]);
            spawn(cmd, "sh", None, In::Null, Out::Tail)
                .unwrap()
                .0
                .finish()
                .unwrap()
        };
        let fin = run("echo one >&2; echo two; exit 3");
        assert_eq!(judge(&fin, "sh", None, &[0, 3]).unwrap(), 3);
        let e = judge(&fin, "sh", None, &[]).unwrap_err().to_string();
        assert!(e.contains("sh exited with status 3 (success is 0)"), "{e}");
        assert!(e.contains("  | one\n  | two"), "{e}");
        let fin = run("kill -9 $$");
        let e = judge(&fin, "sh", None, &[]).unwrap_err().to_string();
        assert!(e.contains("killed by signal 9 (SIGKILL)"), "{e}");
        let e = spawn(
            Command::new("/nonexistent/prog"),
            "/nonexistent/prog",
            None,
            In::Null,
            Out::Tail,
        )
        .err()
        .unwrap();
        assert!(
            e.to_string()
                .starts_with("command not found: /nonexistent/prog"),
            "{e}"
        );
    }
}
