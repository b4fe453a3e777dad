//! The shared parts of `matriarch-demo` (`cargo xtask demo`) and `matriarch-bench`
//! (`cargo xtask bench`): a three-node matriarch cluster on loopback behind a DNS
//! name, a client writing through it, faults injected into the primary with the
//! failover timed event by event, and SVG plots of the client's writes.

pub mod bench;
pub mod cli;
pub mod cluster;
pub mod error;
pub mod failover;
pub mod interrupt;
pub mod plot;
pub mod procstat;
pub mod timeline;
pub mod watch;
pub mod writer;

/// The DNS client (the test kit's).
pub use matriarch_testkit::dns;
