//! A deterministic simulation of a whole cluster: the real [`Engine`](crate::Engine) loop
//! and [`decide`](crate::decide) on every node, over [`MemoryDcs`] and the
//! in-memory PostgreSQL of [`matriarch_postgres::memory`] (held to the same
//! conformance suite as the real controller), on tokio's virtual clock, with
//! faults chosen by a seed. The same seed replays the same run.
//!
//! The world is not kind: every node's clock drifts (±2 %) and is skewed;
//! WAL ships with random lag and stalls; synchronous commits wait for the
//! standbys `synchronous_standby_names` names (`*`: any standby; `FIRST n`,
//! `ANY n`); a slowed DCS request lands even after its caller timed out;
//! the store may keep the lock for less than the ttl
//! ([`MemoryDcs::set_max_ttl`]); an operator changes ttl, loop_wait,
//! retry_timeout, the synchronous count and strictness during the run and
//! malformed values land in the config, sync, failover and member keys;
//! PostgreSQL is restarted through the REST API; a disarmed write fence (a
//! fresh one after a crash) does not stop a primary from writing.
//!
//! Invariants, checked whenever they can change:
//! - at most one node acknowledges writes at any instant: a running primary
//!   whose write fence has not expired and, when it names synchronous
//!   standbys, enough of them stream from it to acknowledge a commit;
//! - a node never promotes (or starts as primary) without holding the lock;
//! - in synchronous mode, no acknowledged write is missing from a newly
//!   promoted primary, and in strict synchronous mode no commit is
//!   acknowledged before a standby holds it (a failover would lose it);
//! - once faults stop, a primary exists within 2 × ttl + loop_wait, and
//!   every live node follows it within a further ttl;
//! - in failsafe mode (`failsafe_mode` on), with the DCS cut off from every
//!   node, the primary keeps running when it reaches every member and stops
//!   writing within ttl when one does not answer ([`Scenario::FailsafeOutage`]).

mod client;
mod cluster;
mod config;
mod dcs;
mod faults;
mod invariants;
pub mod plants;
mod postgres;
mod runner;
mod time;
mod world;

pub use cluster::{member_settings, running_member};
pub use config::{Scenario, SimConfig, MAX_DRIFT_PPM};
pub use plants::ModelBug;
pub use runner::{run, SimReport};
