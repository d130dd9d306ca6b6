//! `coffer run`: the backup service, on top of the operations. It knows the stack from the
//! config file and keeps it backed up: schedules ([`daemon`]), alerts, metrics and units.

pub mod daemon;
