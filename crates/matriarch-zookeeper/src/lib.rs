//! The ZooKeeper backend of matriarch's DCS: [`ZooKeeperDcs`] implements
//! [`matriarch_dcs::Dcs`] on a ZooKeeper 3.6+ ensemble (persistent recursive
//! watches and multi-reads are used), with Patroni's layout
//! (`docs/dcs-layout.md`) as znodes.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use matriarch_dcs::Dcs;
//! use matriarch_model::MemberName;
//! use matriarch_zookeeper::{ZooKeeperConfig, ZooKeeperDcs};
//!
//! let config = ZooKeeperConfig::new(["zk1:2181", "zk2:2181", "zk3:2181"], "pg-main")
//!     .with_session_timeout(Duration::from_secs(5));
//! let dcs = ZooKeeperDcs::connect(config).await?;
//! let me = MemberName::new("node1")?;
//! if dcs.acquire_leader(&me, Duration::from_secs(5)).await? {
//!     dcs.renew_leader(&me, Duration::from_secs(5)).await?;
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod config;
mod dcs;
mod error;
mod lease;
mod session;

pub use config::{DigestAuth, ZooKeeperConfig, DEFAULT_RETRY_TIMEOUT, DEFAULT_SESSION_TIMEOUT};
pub use dcs::ZooKeeperDcs;
pub use error::{ConfigError, ZooKeeperError};
