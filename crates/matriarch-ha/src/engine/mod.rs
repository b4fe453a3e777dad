//! The loop: observe, decide, act, through the `Dcs`, `Postgres` and `Router`
//! traits. It never names a backend.

mod act;
mod address;
mod apply;
mod errors;
mod handles;
mod lock;
mod observe;
mod record;
mod renewal;
mod restart;
mod run;
mod slots;
mod start_failure;
mod state;
mod timeouts;

pub use errors::{
    BoxedError, FenceError, PostgresCallError, RestartError, RestartFailure, RestartRefusal,
};
pub use handles::{
    EngineSettings, EngineStatus, FailsafeHandle, FailsafeRefusal, FailsafeSender, Fence,
    MemberExtras, PeerProbe, RestartHandle, SettingsHandle, StatusHandle,
};
pub use observe::local_postgres;
pub use state::{Decider, Engine};
