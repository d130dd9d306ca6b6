//! Running coffer as a service, on top of the operations: `coffer run` ([`daemon`]: the
//! schedules, shutdown and reload), its alerts ([`alerts`]: alert state, Slack, webhooks,
//! healthcheck pings), and `coffer generate`'s units for systemd, cron and Kubernetes
//! ([`units`]).

pub mod alerts;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod page;
pub mod units;
