//! Cancellation of running operations, for a clean shutdown of `coffer run`.
//!
//! When the service's shutdown grace has passed, it calls [`request`]. From then on every
//! backup in this process fails at its next blob ([`check`] in the blob saver), before its
//! snapshot is written (the check in `sources::run`), and command sources stop their
//! process group; their locks are released as their guards drop. A run that already
//! committed its snapshot is a success: the snapshot is complete. The request is
//! process-wide and cannot be withdrawn: it is only made when the process is about to exit.

use crate::error::{Error, ErrorKind};
use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Ask every running operation of this process to stop.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether [`request`] was called.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Fail (a source failure: no snapshot) once cancellation was requested.
pub fn check() -> Result<()> {
    if requested() {
        return Err(Error::new(
            ErrorKind::Source,
            "stopped: coffer is shutting down and the shutdown grace has passed; no snapshot was written",
        )
        .into());
    }
    Ok(())
}
