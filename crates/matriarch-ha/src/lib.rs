//! matriarch's HA engine.
//!
//! [`decide`] is a pure function from what was observed (the DCS view, the
//! local PostgreSQL, the peers, the time) to a plan of [`Action`]s. The
//! [`Engine`] loop observes, decides and acts through the `Dcs`, `Postgres`
//! and `Router` traits, and never names a backend.

mod decide;
mod engine;
#[cfg(feature = "sim")]
pub mod sim;

pub use decide::{
    decide, implausible_records, postgres_silence_limit, Action, DcsObservation, Decision,
    DemoteMode, EngineRole, FailsafeInputs, FailsafeRound, Inputs, LastLeader, LocalPostgres,
    LocalRole, Memory, NodeSettings, Outcome, PeerReport, ReceivedHeartbeat, Routes, SlotPlan,
    LOOPS_BEFORE_REWIND,
};
pub use engine::{
    local_postgres, BoxedError, Decider, Engine, EngineSettings, EngineStatus, FailsafeHandle,
    FailsafeRefusal, FailsafeSender, Fence, FenceError, MemberExtras, PeerProbe, PostgresCallError,
    RestartError, RestartFailure, RestartHandle, RestartRefusal, SettingsHandle, StatusHandle,
};
