//! matriarch's HA engine.
//!
//! [`decide`] is a pure function from what was observed (the DCS view, the
//! local PostgreSQL, the peers, the time) to a plan of [`Action`]s. The loop
//! observes, decides and acts through the `Dcs`, `Postgres` and `Router`
//! traits, and never names a backend.

mod decide;

pub use decide::{
    decide, Action, DcsObservation, Decision, DemoteMode, EngineRole, Inputs, LocalPostgres,
    LocalRole, Memory, NodeSettings, Outcome, PeerReport, Routes,
};
