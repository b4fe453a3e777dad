//! The [`Router`] trait, which sends database clients to the primary (and
//! readers to the replicas), and combinators that compose routers the way
//! tower layers compose services: [`FanOut`] drives several at once,
//! [`Retry`] retries transient failures, and [`RecordingRouter`] stands in
//! for a backend in tests. Backends (load balancers, DNS) live elsewhere;
//! behind the `testing` feature, the [`conformance`] suite checks them.

#![warn(missing_docs)]

#[cfg(feature = "testing")]
pub mod conformance;
mod error;
mod fan_out;
mod recording;
mod retry;
mod router;

pub use error::RouterError;
pub use fan_out::FanOut;
pub use recording::{RecordingRouter, RouterCall};
pub use retry::Retry;
pub use router::{Endpoint, Router, Routes};
