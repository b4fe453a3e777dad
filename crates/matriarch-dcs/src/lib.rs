//! The distributed configuration store (DCS) behind matriarch: the [`Dcs`]
//! trait that every backend implements, [`MemoryDcs`] (a complete in-process
//! backend with a clock that tests drive), and, behind the `testing` feature,
//! the [`conformance`] suite that every backend must pass.
//!
//! Every backend stores the same bytes in the same layout (Patroni's, see
//! `docs/dcs-layout.md`): values are made and read by `matriarch-model`.

mod clock;
#[cfg(feature = "testing")]
pub mod conformance;
mod error;
mod forwarding;
mod memory;
mod store;
#[cfg(feature = "testing")]
pub mod test_support;

pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use error::{DcsError, Expected};
pub use forwarding::ForwardingDcs;
pub use memory::MemoryDcs;
pub use store::{is_record_key, Dcs, WatchOutcome};
