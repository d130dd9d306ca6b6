//! Progress reporting: a bar on a terminal, plain lines otherwise, nothing with --quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Lines,
    Quiet,
}

impl Mode {
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        }
    }
}

/// A progress display for one operation. Cheap to clone and share between threads.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    mode: Mode,
}

impl Progress {
    pub fn hidden() -> Progress {
        Progress {
            bar: None,
            mode: Mode::Quiet,
        }
    }

    /// A byte counter with an optional total.
    pub fn bytes(mode: Mode, what: &str, total: Option<u64>) -> Progress {
        let bar = (mode == Mode::Bar).then(|| {
            let b = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            b.set_style(style(total.is_some()));
            b.set_prefix(what.to_string());
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        });
        if mode == Mode::Lines {
            eprintln!("{what}…");
        }
        Progress { bar, mode }
    }

    /// The total, once it is known: the counter becomes a bar.
    pub fn set_total(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_style(style(true));
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    pub fn set_message(&self, m: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(m.into());
        }
    }

    /// A line for the user (above the bar on a terminal; omitted when quiet).
    pub fn log(&self, line: &str) {
        match (&self.bar, self.mode) {
            (Some(b), _) => b.println(line),
            (None, Mode::Quiet) => {}
            (None, _) => eprintln!("{line}"),
        }
    }

    /// A warning: something the user should know that does not fail the operation. This is
    /// the one channel for warnings.
    pub fn warn(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| tracing::warn!("{line}")),
            None => tracing::warn!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn style(with_total: bool) -> ProgressStyle {
    let tmpl = if with_total {
        "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}"
    } else {
        "{prefix} [{elapsed_precise}] {bytes} {bytes_per_sec} {msg}"
    };
    ProgressStyle::with_template(tmpl).unwrap()
}
