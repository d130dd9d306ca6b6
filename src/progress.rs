//! Events: how an operation tells the world what it is doing.
//!
//! The library prints nothing. An operation reports its progress (bytes done, the step it is
//! on), its notes for the user and its warnings as [`Event`]s through a [`Progress`] handle,
//! to whatever [`Observer`] the caller gave: the CLI renders them (a bar on a terminal, log
//! lines otherwise, nothing with `--quiet`, see `src/cli/render.rs`); a service records and
//! counts them; [`Tally`] keeps them for a test or a report. Warnings have one channel,
//! [`Progress::warn`], including those of the repository handle itself (damaged key slots,
//! a lock that could not be refreshed), which reports through the handle it was opened with.

use std::sync::{Arc, Mutex};

/// One thing an operation reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// An operation starts; `total` bytes when known.
    Begin { what: &'a str, total: Option<u64> },
    /// The total is known now.
    Total(u64),
    /// This many more bytes are done.
    Bytes(u64),
    /// What the operation is doing now (a database, a file, a phase).
    Step(&'a str),
    /// A line for the user.
    Note(&'a str),
    /// Something the user should know that does not fail the operation.
    Warning(&'a str),
    /// The operation is over (whether it succeeded or not).
    End,
}

/// Receives the events of operations. Called from any thread the operation uses, so it
/// must be cheap and must not block for long.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

/// The handle an operation reports through. Cheap to clone and share between threads;
/// [`Progress::hidden`] drops everything.
#[derive(Clone, Default)]
pub struct Progress {
    observer: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.observer.is_some() {
            "Progress(observed)"
        } else {
            "Progress(hidden)"
        })
    }
}

/// Two handles are equal when they report to the same observer (or both to nobody).
impl PartialEq for Progress {
    fn eq(&self, other: &Progress) -> bool {
        match (&self.observer, &other.observer) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Progress {
    /// Reports to nobody.
    pub fn hidden() -> Progress {
        Progress { observer: None }
    }

    /// Reports to `observer`.
    pub fn to(observer: Arc<dyn Observer>) -> Progress {
        Progress {
            observer: Some(observer),
        }
    }

    fn emit(&self, e: Event<'_>) {
        if let Some(o) = &self.observer {
            o.event(&e);
        }
    }

    /// An operation starts: a byte counter with an optional total.
    pub fn begin(&self, what: &str, total: Option<u64>) {
        self.emit(Event::Begin { what, total });
    }

    /// The total, once it is known.
    pub fn set_total(&self, total: u64) {
        self.emit(Event::Total(total));
    }

    pub fn inc(&self, n: u64) {
        self.emit(Event::Bytes(n));
    }

    /// What the operation is doing now.
    pub fn set_message(&self, m: impl AsRef<str>) {
        self.emit(Event::Step(m.as_ref()));
    }

    /// A line for the user.
    pub fn log(&self, line: &str) {
        self.emit(Event::Note(line));
    }

    /// A warning: something the user should know that does not fail the operation. This is
    /// the one channel for warnings.
    pub fn warn(&self, line: &str) {
        self.emit(Event::Warning(line));
    }

    pub fn finish(&self) {
        self.emit(Event::End);
    }
}

/// An observer that keeps what it is told: bytes, steps, notes and warnings.
#[derive(Debug, Default)]
pub struct Tally {
    inner: Mutex<Counts>,
}

/// What a [`Tally`] has seen.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub operations: u64,
    pub bytes: u64,
    pub steps: Vec<String>,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

impl Tally {
    pub fn counts(&self) -> Counts {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Observer for Tally {
    fn event(&self, event: &Event<'_>) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match *event {
            Event::Begin { .. } => c.operations += 1,
            Event::Bytes(n) => c.bytes += n,
            Event::Step(s) => c.steps.push(s.to_string()),
            Event::Note(s) => c.notes.push(s.to_string()),
            Event::Warning(s) => c.warnings.push(s.to_string()),
            Event::Total(_) | Event::End => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_sees_what_is_reported_from_every_thread_and_hidden_sees_nothing() {
        let tally = Arc::new(Tally::default());
        let p = Progress::to(tally.clone());
        p.begin("backup", None);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let p = p.clone();
                s.spawn(move || p.inc(10));
            }
        });
        p.set_message("db");
        p.log("a note");
        p.warn("a warning");
        p.finish();
        Progress::hidden().warn("nobody hears this");
        let c = tally.counts();
        assert_eq!(c.operations, 1);
        assert_eq!(c.bytes, 40);
        assert_eq!(c.steps, ["db"]);
        assert_eq!(c.notes, ["a note"]);
        assert_eq!(c.warnings, ["a warning"]);
    }
}
