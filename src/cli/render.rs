//! How the CLI shows an operation's events: a bar on a terminal, plain lines otherwise,
//! nothing but errors with `--quiet`. Warnings go to the log (standard error, coloured only
//! on a terminal), above the bar.

use coffer::progress::{Event, Observer, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

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

/// An observer for one operation.
pub struct Terminal {
    mode: Mode,
    bar: Mutex<Option<ProgressBar>>,
}

impl Terminal {
    pub fn new(mode: Mode) -> Terminal {
        Terminal {
            mode,
            bar: Mutex::new(None),
        }
    }

    /// A handle reporting to a new terminal observer.
    pub fn progress(mode: Mode) -> Progress {
        Progress::to(Arc::new(Terminal::new(mode)))
    }

    fn bar(&self) -> Option<ProgressBar> {
        self.bar.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Observer for Terminal {
    fn event(&self, event: &Event<'_>) {
        match *event {
            Event::Begin { what, total } => match self.mode {
                Mode::Bar => {
                    let b = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
                    b.set_style(style(total.is_some()));
                    b.set_prefix(what.to_string());
                    b.enable_steady_tick(std::time::Duration::from_millis(200));
                    *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(b);
                }
                Mode::Lines => eprintln!("{what}…"),
                Mode::Quiet => {}
            },
            Event::Total(total) => {
                if let Some(b) = self.bar() {
                    b.set_length(total);
                    b.set_style(style(true));
                }
            }
            Event::Bytes(n) => {
                if let Some(b) = self.bar() {
                    b.inc(n);
                }
            }
            Event::Step(m) => {
                if let Some(b) = self.bar() {
                    b.set_message(m.to_string());
                }
            }
            Event::Note(line) => match (self.bar(), self.mode) {
                (Some(b), _) => b.println(line),
                (None, Mode::Quiet) => {}
                (None, _) => eprintln!("{line}"),
            },
            Event::Warning(line) => match self.bar() {
                Some(b) => b.suspend(|| tracing::warn!(target: "coffer", "{line}")),
                None => tracing::warn!(target: "coffer", "{line}"),
            },
            Event::End => {
                if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    b.finish_and_clear();
                }
            }
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
