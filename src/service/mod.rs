//! `coffer run`, the backup service: what the daemon uses beside the operations in
//! [`crate::ops`]. [`alerts`] turns the states it observes (a failed backup, a breached RPO,
//! a lagging WAL archive, a failed check) into alerts on change, reminders and recoveries,
//! and delivers them (Slack, a JSON webhook, healthchecks.io-style pings) from a background
//! thread that never blocks or fails a backup.

pub mod alerts;
