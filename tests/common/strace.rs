//! Watching a real run's system calls with strace, for the durability tests.

use std::collections::HashMap;
use std::path::Path;

/// The strace binary (scripts/test installs it on Debian).
pub fn binary() -> &'static Path {
    ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("strace is missing: install it (scripts/test does on Debian)")
}

/// The calls in a `strace -f -o LOG` log that succeeded ("= 0"), in the order they
/// completed, each as "PID call(args) = 0". Threads interleave: strace splits a call
/// another thread interrupts into "PID call(args <unfinished ...>" and
/// "PID <... call resumed>) = 0"; these are joined.
pub fn completed_calls(log: &str) -> Vec<String> {
    let mut pending = HashMap::new();
    let mut calls = Vec::new();
    for l in log.lines() {
        let (pid, rest) = l.split_once(' ').unwrap_or(("", l));
        let rest = rest.trim_start();
        if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, head);
        } else if rest.starts_with("<... ") {
            if let Some(head) = pending.remove(pid) {
                let tail = rest.split_once("resumed>").map_or("", |(_, t)| t);
                calls.push(format!("{pid} {head}{tail}"));
            }
        } else {
            calls.push(format!("{pid} {rest}"));
        }
    }
    calls.retain(|l| l.trim_end().ends_with("= 0"));
    calls
}
