//! Redis (placeholder until the backup half lands from main).

pub mod rdb;
pub mod restore;
