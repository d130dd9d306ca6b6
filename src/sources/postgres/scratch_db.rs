//! Scratch databases on a configured server (a logical source's `drill_url`), for restore
//! drills that must run where the user says rather than in a scratch cluster.
//!
//! - Each database of the dump is restored into a new database
//!   `coffer_drill_<host>_<pid>_<random>_<n>`: `<host>` is six hex digits of a hash of this
//!   machine's name, `<pid>` the coffer process's. The name is never one that exists: the
//!   restore refuses to replace a database that is not empty, so nothing of the user's is
//!   dropped even by a clash.
//! - They are dropped (`DROP DATABASE … WITH (FORCE)` from PostgreSQL 13, after ending
//!   their sessions before it) when the drill ends, on success or failure, and at once on
//!   SIGTERM ([`drop_all_now`]).
//! - A coffer that was killed leaves them; the next drill on the same server from the same
//!   machine finds them by their name and drops those whose process is gone
//!   ([`ScratchServer::open`]). Databases of other machines are left alone: whether their
//!   coffer still runs cannot be told from here.

use super::conn::{describe, quote_ident, PgTarget};
use crate::error::{Error, ErrorKind};
use crate::progress::Progress;
use anyhow::Result;
use std::sync::Mutex;

/// The prefix of every scratch database's name.
pub const PREFIX: &str = "coffer_drill_";

/// The scratch databases this process has created and not dropped yet, with the server
/// they are on, for [`drop_all_now`].
static LIVE: Mutex<Vec<(PgTarget, String)>> = Mutex::new(Vec::new());

/// Six hex digits naming this machine in scratch database names.
fn host_tag() -> String {
    blake3::hash(crate::repo::hostname().as_bytes()).to_hex()[..6].to_string()
}

/// The pid of the coffer that made scratch database `name`, if it was made on this machine.
fn owner_here(name: &str, host: &str) -> Option<i32> {
    let mut parts = name.strip_prefix(PREFIX)?.split('_');
    (parts.next()? == host).then_some(())?;
    parts.next()?.parse().ok()
}

/// A server that drills restore into: the drill's scratch databases there.
pub struct ScratchServer {
    /// The maintenance connection's target (the URL's database, default `postgres`).
    maint: PgTarget,
    /// `coffer_drill_<host>_<pid>_<random>`: the names of this drill's databases start so.
    stem: String,
    created: Vec<String>,
}

impl ScratchServer {
    /// Connect to `url` (a PostgreSQL URL or libpq string; its database is the one
    /// connected to for creating and dropping, default `postgres`) and drop the scratch
    /// databases that coffer processes of this machine left there when they died. Returns
    /// the server and the names of the databases dropped.
    pub fn open(url: &str, events: &Progress) -> Result<(ScratchServer, Vec<String>)> {
        let mut maint = PgTarget::resolve(Some(url), false, events)?;
        if maint.dbname.is_none() {
            maint.dbname = Some("postgres".into());
        }
        let mut c = connect(&maint, "connecting to drill_url")?;
        let host = host_tag();
        let names: Vec<String> = c
            .query(
                "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)",
                &[&PREFIX],
            )
            .map_err(|e| server_error(&maint, "listing scratch databases", &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut dropped = Vec::new();
        for name in names {
            match owner_here(&name, &host) {
                Some(pid) if !super::scratch::alive(pid) => {
                    drop_database(&mut c, &maint, &name)?;
                    dropped.push(name);
                }
                _ => {}
            }
        }
        let stem = format!(
            "{PREFIX}{host}_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        Ok((
            ScratchServer {
                maint,
                stem,
                created: Vec::new(),
            },
            dropped,
        ))
    }

    /// The server, for messages (`host:port`).
    pub fn server(&self) -> String {
        self.maint.server()
    }

    /// A new scratch database name on this server, and the target to restore into it. The
    /// database is created by the restore; it is dropped with the others by
    /// [`ScratchServer::remove`] (or on drop) whether or not it came to exist.
    pub fn database(&mut self) -> PgTarget {
        let name = format!("{}_{}", self.stem, self.created.len());
        self.created.push(name.clone());
        LIVE.lock()
            .unwrap()
            .push((self.maint.clone(), name.clone()));
        self.maint.with_db(&name)
    }

    /// Drop every scratch database of this drill.
    pub fn remove(mut self) -> Result<()> {
        self.drop_created()
    }

    fn drop_created(&mut self) -> Result<()> {
        if self.created.is_empty() {
            return Ok(());
        }
        let mut c = connect(
            &self.maint,
            "connecting to drill_url to drop the scratch databases",
        )?;
        for name in std::mem::take(&mut self.created) {
            drop_database(&mut c, &self.maint, &name)?;
            LIVE.lock().unwrap().retain(|(_, n)| n != &name);
        }
        Ok(())
    }
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        if let Err(e) = self.drop_created() {
            self.maint.events.warn(&format!(
                "could not drop the drill's scratch databases on {} ({e:#}); the next drill \
                 from this machine drops them",
                self.maint.server()
            ));
        }
    }
}

/// Drop the scratch databases of this process now (SIGTERM): their pg_restore sessions
/// are ended, so the drill fails on them. Returns what was dropped, as `NAME on HOST:PORT`.
pub fn drop_all_now() -> Vec<String> {
    let live: Vec<(PgTarget, String)> = std::mem::take(&mut *LIVE.lock().unwrap());
    let mut dropped = Vec::new();
    for (maint, name) in live {
        let Ok(mut c) = connect(&maint, "") else {
            continue;
        };
        if drop_database(&mut c, &maint, &name).is_ok() {
            dropped.push(format!("database {name} on {}", maint.server()));
        }
    }
    dropped
}

fn connect(t: &PgTarget, what: &str) -> Result<postgres::Client> {
    t.connect().map_err(|e| {
        if what.is_empty() {
            e
        } else {
            e.context(what.to_string())
        }
    })
}

fn server_error(t: &PgTarget, what: &str, e: &postgres::Error) -> anyhow::Error {
    Error::new(
        ErrorKind::Source,
        format!("{what} on {} failed: {}", t.server(), describe(e)),
    )
    .into()
}

/// End the sessions of scratch database `name` and drop it, if it exists.
fn drop_database(c: &mut postgres::Client, maint: &PgTarget, name: &str) -> Result<()> {
    debug_assert!(name.starts_with(PREFIX));
    let version: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .map_err(|e| server_error(maint, "reading the server version", &e))?
        .get(0);
    let force = if version >= 130000 {
        " WITH (FORCE)"
    } else {
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .map_err(|e| server_error(maint, "ending the sessions of a scratch database", &e))?;
        ""
    };
    c.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {}{force}",
        quote_ident(name)
    ))
    .map_err(|e| server_error(maint, &format!("dropping scratch database {name}"), &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_this_machine_have_an_owner_here() {
        assert_eq!(
            owner_here("coffer_drill_abc123_42_0badf00d_0", "abc123"),
            Some(42)
        );
        assert_eq!(
            owner_here("coffer_drill_abc123_42_0badf00d_0", "def456"),
            None
        );
        assert_eq!(owner_here("coffer_drill_abc123_x_0", "abc123"), None);
        assert_eq!(owner_here("shop", "abc123"), None);
    }
}
