//! Running coffer as a service: `coffer run` and what surrounds it.

pub mod units;
